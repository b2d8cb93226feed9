"""The switchback after a DR promotion: the promoted follower hands the service back to a pair node, zero loss.

Run on the follower's host (`standby switchback --node gamma`): its server is stopped and restarted here, the
pair node is promoted by its own agent. standby.rebuild decides; this module observes and acts:

1. look: this server, this follower's agent, the pair node's agent and whether it streams from here, the
   other pair node's server; refuse (nothing changed) unless standby.rebuild.may_hand_back allows it;
2. suspend the pair node's automatic failover; a checkpoint here while serving (the shutdown checkpoint then
   has little to write); stop this server cleanly: the write pause starts, and its walsenders send the
   shutdown checkpoint before they exit;
3. the pair node's agent promotes it only once it has received WAL past that checkpoint (the switchover's
   operation: a new term written down first, then the service IPs and services);
4. this server starts as the new primary's standby; the address-change hook runs for the pair node;
5. automatic failover is resumed there.
If 3 did not happen, this server starts again as the primary it was: nothing was promoted, nothing lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from standby import rebuild
from standby.act import postgres as pgact
from standby.act.switchover import still_standby
from standby.agent.opsteps import hook_argv, run_hook
from standby.apiclient import AgentApi, ApiError, agent_status, follower_status
from standby.config import Config
from standby.laps import Laps
from standby.model import DbState, PgRole
from standby.observe import postgres as obs

Say = Callable[[str], None]


class HandBackError(Exception):
    """The switchback did not complete; the message says what serves and what to do."""


@dataclass
class Outcome:
    follower: str
    target: str
    term: int | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)


_REFUSED = {
    rebuild.Reason.NOT_WARM_FOLLOWER: "{here} is not a warm follower: `standby switchback --node {here}` hands the "
                                      "service back from a promoted DR node only",
    rebuild.Reason.HERE_NOT_PRIMARY: "PostgreSQL on {here} does not accept writes: it was not promoted, so there is "
                                     "nothing to hand back (for the pair itself, run `standby switchback` on a pair "
                                     "node)",
    rebuild.Reason.AGENT_RUNNING: "the follower agent on {here} answers: it would restart the stopped server, "
                                  "writable, beside {target}. Stop it first (`systemctl stop standby` on {here}); "
                                  "start it again once the switchback is done",
    rebuild.Reason.OTHER_WRITABLE: "{other} accepts writes: two primaries already. Decide which one keeps the "
                                   "data and fence the other (`standby fence --node {other}`), then retry",
    rebuild.Reason.TARGET_AGENT_SILENT: "the agent on {target} does not answer: only it can promote {target}. "
                                        "Start it (`systemctl start standby` on {target}), then retry",
    rebuild.Reason.TARGET_FENCED: "{target} is fenced: it promotes nothing. Rebuild it as {here}'s standby "
                                  "(`standby rejoin --node {target} --from {here}` on {target}), then retry",
    rebuild.Reason.TARGET_NOT_STREAMING: "{target} is not a standby streaming from {here}, so it cannot have "
                                         "{here}'s last WAL byte. Rebuild it (`standby rejoin --node {target} "
                                         "--from {here}` on {target}), wait until `standby status` shows it "
                                         "streaming, then retry",
}


def _streams_from_here(cfg: Config, here: str, target: str) -> bool:
    """Whether ``target``'s WAL receiver streams from this server (its private address, as pg_stat_replication
    sees it)."""
    ip = str(cfg.link(target, "private").ip)
    try:
        with obs.connect_local(cfg, here) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE client_addr = %s::inet "
                               "AND state = 'streaming'", (ip,)).fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0])


def _target_seen(cfg: Config, here: str, target: str) -> rebuild.TargetSeen:
    view = agent_status(cfg, target, timeout_s=2.0)
    if view is None:
        return rebuild.TargetSeen.AGENT_SILENT
    if view.state.fenced:
        return rebuild.TargetSeen.FENCED
    if view.postgres.state is DbState.STANDBY and _streams_from_here(cfg, here, target):
        return rebuild.TargetSeen.STREAMING_HERE
    return rebuild.TargetSeen.NOT_STREAMING_HERE


def _writable(cfg: Config, node: str) -> bool:
    return obs.observe_peer(cfg, node).role is PgRole.PRIMARY


def look(cfg: Config, here: str, target: str) -> rebuild.Decision:
    """Step 1: what standby.rebuild.may_hand_back says of what is seen now."""
    follower = cfg.follower(here)
    writable = obs.observe_local(cfg, here).role is PgRole.PRIMARY
    # Nothing streams from a server that is no primary: the pair node is not asked then.
    target_seen = _target_seen(cfg, here, target) if writable else rebuild.TargetSeen.NOT_STREAMING_HERE
    return rebuild.may_hand_back(None if follower is None else follower.role, writable,
                                 follower_status(cfg, here, timeout_s=2.0) is not None, target_seen,
                                 _writable(cfg, cfg.peer_of(target)))


def refusal(cfg: Config, here: str, target: str, d: rebuild.Decision) -> str:
    return _REFUSED[d.reason].format(here=here, target=target, other=cfg.peer_of(target))


def hand_back(cfg: Config, here: str, target: str, catch_up_timeout_s: float = 10.0,
              say: Say = lambda m: None) -> Outcome:
    out = Outcome(here, target)
    laps = Laps(out.steps)

    def step(name: str) -> None:
        say(f"{name:<66} {1000 * laps.lap(name):8.1f} ms")

    d = look(cfg, here, target)
    if not d.go:
        raise HandBackError(refusal(cfg, here, target, d))
    step(f"{here} is the only primary; {target} streams from it, its agent answers")
    try:
        api = AgentApi(cfg)
    except ApiError as e:
        raise HandBackError(str(e)) from None
    try:
        api.maintenance(target, True)
        step(f"{target}: automatic failover suspended")
        _run(cfg, api, out, catch_up_timeout_s, step, say)
    finally:
        try:
            api.maintenance(target, False)
            step(f"{target}: automatic failover resumed")
        except ApiError as e:
            say(f"warning: could not resume automatic failover on {target}: {e}")
    return out


def _run(cfg: Config, api: AgentApi, out: Outcome, timeout_s: float, step: Say, say: Say) -> None:
    here, target = out.follower, out.target
    try:
        with obs.connect_local(cfg, here) as conn:
            conn.execute("CHECKPOINT")
        step(f"{here}: checkpoint while serving")
    except psycopg.Error as e:
        say(f"{here}: checkpoint while serving not done ({e}); the shutdown checkpoint writes it all")
    checkpoint, why = _stop_cleanly(cfg, here)
    if checkpoint is None:
        _act(cfg, api, out, rebuild.next_step(False, rebuild.Promotion.NOT_ASKED), why, step)
        return
    step(f"{here}: stopped cleanly, writes paused; shutdown checkpoint at {checkpoint}")
    assert rebuild.next_step(True, rebuild.Promotion.NOT_ASKED) is rebuild.Next.PROMOTE_TARGET
    try:
        promoted = api.promote(target, checkpoint, timeout_s)
    except ApiError as e:
        still = still_standby(cfg, target)
        promotion = rebuild.Promotion.FAILED_STILL_STANDBY if still is True else rebuild.Promotion.FAILED_UNKNOWN
        _act(cfg, api, out, rebuild.next_step(True, promotion), f"{e}" + ("" if still is True else f"; {still}"),
             step)
        return
    out.term = promoted.term
    step(f"{target}: received past it, promoted (term {promoted.term}), services taken")
    for name, secs in promoted.steps:
        say(f"  - {target}: {name:<58} {1000 * secs:8.1f} ms")
    for problem in promoted.problems:
        say(f"warning: {target}: {problem}; its agent retries, check `standby status`")
    _act(cfg, api, out, rebuild.next_step(True, rebuild.Promotion.DONE), "", step)


def _stop_cleanly(cfg: Config, here: str) -> tuple[str | None, str]:
    """(shutdown checkpoint LSN, "") once this server stopped cleanly, else (None, why)."""
    try:
        pgact.stop(cfg, here, pgact.StopMode.FAST, timeout_s=60)
        ctl = pgact.control_data(cfg, here)
    except (pgact.PostgresActionError, OSError) as e:
        return None, f"{here} could not be stopped cleanly ({e})"
    if ctl.get("Database cluster state") != "shut down":
        return None, f"{here} did not shut down cleanly ({ctl.get('Database cluster state')})"
    return ctl["Latest checkpoint location"], ""


def _act(cfg: Config, api: AgentApi, out: Outcome, nxt: rebuild.Next, why: str, step: Say) -> None:
    here, target = out.follower, out.target
    match nxt:
        case rebuild.Next.FOLLOW_TARGET:
            _follow(cfg, here, target, step)
        case rebuild.Next.RESUME_HERE:
            try:
                if pgact.running_pid(cfg.pg(here).data_dir) is None:
                    pgact.start(cfg, here)
                then = f"{here} serves again."
            except (pgact.PostgresActionError, OSError) as e:
                then = f"{here} did not start again ({e}): start it at once (`standby status`)."
            step("aborted: " + then)
            raise HandBackError(f"switchback aborted, nothing lost: {why}. {then}")
        case rebuild.Next.HOLD_STOPPED:
            raise HandBackError(
                f"switchback stopped: promoting {target} failed ({why}). {here} stays stopped so that two "
                f"primaries cannot happen. Look with `standby status`: if {target} is primary, never start "
                f"{here}'s server as it is: create {cfg.pg(here).data_dir}/standby.signal (owned by "
                f"{cfg.pg(here).os_user}), then start {here}'s follower agent, which points it at {target}; if "
                f"{target} is a standby, start {here}'s server as it was and retry")
        case rebuild.Next.PROMOTE_TARGET:  # only the first step after a clean stop, handled by the caller
            raise AssertionError(nxt)


def _follow(cfg: Config, here: str, target: str, step: Say) -> None:
    """Step 4: this server, stopped at its shutdown checkpoint (which the new primary has), streams from it on
    the new timeline; then the clients that followed the DR promotion are pointed back."""
    try:
        with obs.connect_peer(cfg, target) as conn:
            pgact.ensure_slot(conn, cfg.slot_name(here))
        pgact.configure_as_standby(cfg, here, target)
        pgact.start(cfg, here)
        pgact.wait_streaming(cfg, here, timeout_s=60)
        step(f"{here}: streaming from {target}, a follower again")
    except (psycopg.Error, pgact.PostgresActionError, OSError) as e:
        step(f"warning: {here} did not start as {target}'s standby ({e}); its follower agent rejoins it "
             "once started")
    if argv := hook_argv(cfg, target):
        step(f"address-change hook for {target}: {run_hook(argv)}")
