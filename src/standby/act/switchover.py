"""A planned switchover, driven through both agents' APIs, with zero loss.

1. suspend automatic failover on both nodes (each agent ends that by itself
   after timings.maintenance_timeout_s, should this command die);
2. the primary lets go of its services and shuts PostgreSQL down cleanly; its
   shutdown checkpoint is the last WAL it will ever write in this role;
3. the standby promotes only once it has received WAL past that checkpoint,
   then takes the service IPs and services;
4. the old primary starts as a standby of the new one (sync is restored by
   the new primary's agent once it has caught up);
5. automatic failover is resumed.
If step 3 cannot happen in time, the old primary is started again as it was:
it has every commit, the standby never promoted, nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from standby import operations as ops
from standby.apiclient import AgentApi, ApiError, agent_status
from standby.config import Config
from standby.documents import AgentView, Demoted, Promoted
from standby.laps import Laps
from standby.model import DbState

Say = Callable[[str], None]


class SwitchoverError(Exception):
    pass


@dataclass
class Outcome:
    old_primary: str
    new_primary: str
    completed: bool
    steps: list[tuple[str, float]] = field(default_factory=list)
    reason: str = ""


def roles(cfg: Config) -> tuple[str, str, dict[str, AgentView]]:
    """(primary, standby, each agent's status), refusing anything but a healthy pair."""
    views: dict[str, AgentView] = {}
    for n in cfg.nodes:
        v = agent_status(cfg, n, timeout_s=2.0)
        if v is None:
            raise SwitchoverError(f"{n}'s agent does not answer; a switchover needs both agents")
        views[n] = v
        if ops.not_answering(v.postgres.unanswered_s):  # its steps would wait behind it: refused before any of them
            raise SwitchoverError("switchover refused: " + ops.Refusal.NOT_ANSWERING.describe(n, v.postgres.state))
    prim = [n for n, v in views.items() if v.postgres.state is DbState.PRIMARY]
    if len(prim) != 1:
        raise SwitchoverError(f"expected exactly one primary, found {prim or 'none'}")
    primary = prim[0]
    standby = cfg.peer_of(primary)
    sv = views[standby].postgres
    if sv.state is not DbState.STANDBY or not sv.streaming:
        raise SwitchoverError(f"{standby} is not a streaming standby ({sv.state.value}); rejoin it first")
    return primary, standby, views


class _Clock:
    """The command's steps on its own clock, each said as it ends; an agent's own steps are said
    indented under the command's step that ran them, and are not added to the command's steps."""

    def __init__(self, out: Outcome, say: Say) -> None:
        self.laps, self.say = Laps(out.steps), say

    def step(self, name: str) -> None:
        self.say(f"{name:<58} {1000 * self.laps.lap(name):8.1f} ms")

    def agent(self, node: str, steps: list[tuple[str, float]]) -> None:
        for name, s in steps:
            self.say(f"  - {node}: {name:<52} {1000 * s:8.1f} ms")


def _pair(cfg: Config, to: str | None) -> tuple[AgentApi, str, str]:
    try:
        api = AgentApi(cfg)
    except ApiError as e:
        raise SwitchoverError(str(e)) from None
    primary, standby, _ = roles(cfg)
    if to is not None and to != standby:
        if to == primary:
            raise SwitchoverError(f"{to} is already the primary")
        raise SwitchoverError(f"unknown node {to!r}")
    return api, primary, standby


def switchover(cfg: Config, to: str | None = None, catch_up_timeout_s: float = 10.0,
               say: Say = lambda m: None) -> Outcome:
    api, primary, standby = _pair(cfg, to)
    out = Outcome(primary, standby, completed=False)
    clock = _Clock(out, say)
    try:
        # Inside the try: if the second node cannot be suspended, the first is resumed below.
        for n in (primary, standby):
            api.maintenance(n, True)
        clock.step("automatic failover suspended on both nodes")
        demoted = _demote(api, primary, say)
        clock.step(f"{primary}: services released, shut down at {demoted.checkpoint_lsn}")
        clock.agent(primary, demoted.steps)
        promoted = _promote(cfg, api, out, demoted, catch_up_timeout_s, clock)
        clock.step(f"{standby}: received past it, promoted (term {promoted.term}), services taken")
        clock.agent(standby, promoted.steps)
        for problem in promoted.problems:
            say(f"warning: {standby}: {problem}; its agent retries, check `standby status`")
        out.completed = True
        try:
            api.follow(primary)
            clock.step(f"{primary}: streaming from {standby}")
        except ApiError as e:
            say(f"warning: {primary} did not start as a standby ({e}); run `standby rejoin --node {primary}`")
    finally:
        for n in (primary, standby):
            try:
                api.maintenance(n, False)
            except ApiError as e:
                say(f"warning: could not resume automatic failover on {n}: {e}")
        clock.step("automatic failover resumed")
    return out


def _demote(api: AgentApi, primary: str, say: Say) -> Demoted:
    """The primary's clean stop; if it fails, it serves again. Nothing was promoted: an abort like any other,
    although the stop may have ended immediate (walsenders that could not send the shutdown checkpoint):
    crash recovery keeps every acknowledged commit."""
    try:
        return api.demote(primary)
    except ApiError as e:
        raise SwitchoverError(_aborted(f"{primary} could not be stopped cleanly ({e})", primary,
                                       _resume(api, primary, say))) from None


def _promote(cfg: Config, api: AgentApi, out: Outcome, demoted: Demoted, catch_up_timeout_s: float,
             clock: _Clock) -> Promoted:
    """The standby's promotion past the shutdown checkpoint; if it did not happen, the old primary
    serves again; if it may have happened, the old primary stays stopped and a person decides."""
    primary, standby = out.old_primary, out.new_primary
    try:
        return api.promote(standby, demoted.checkpoint_lsn, catch_up_timeout_s)
    except ApiError as e:
        still = still_standby(cfg, standby)
        if still is not True:
            # The error may have come after the promotion (or the answer was lost):
            # starting the old primary again could make two. A person decides.
            out.reason = f"{e}; {still}"
            raise SwitchoverError(
                f"switchover stopped: promoting {standby} failed ({e}), and {still}. {primary} stays "
                f"stopped so that two primaries cannot happen. Look with `standby status`: if {standby} is "
                f"primary, run `standby rejoin --node {primary}`; if it is a streaming standby, run "
                f"`standby switchover` again.") from None
        resumed = _resume(api, primary, clock.say)
        out.reason = str(e)
        clock.step(f"aborted: {primary} is primary again" if resumed else f"aborted: {primary} did not resume")
        raise SwitchoverError(_aborted(str(e), primary, resumed)) from None


def still_standby(cfg: Config, node: str) -> bool | str:
    """True if ``node``'s agent says its PostgreSQL is a standby that is not being promoted; else why not."""
    st = agent_status(cfg, node, timeout_s=5.0)
    if st is None:
        return f"{node}'s agent does not answer, so it may have been promoted"
    if st.postgres.state is not DbState.STANDBY or st.state.promoting:
        return f"{node} is {st.postgres.state.value}{' (promoting)' if st.state.promoting else ''}"
    return True


def _resume(api: AgentApi, node: str, say: Say) -> bool:
    """The old primary serves again; False (and said) if its agent did not confirm it."""
    try:
        api.resume(node)
    except ApiError as e:
        say(f"ERROR: {node} could not resume as primary: {e}; check it at once (`standby status`)")
        return False
    return True


def _aborted(why: str, primary: str, resumed: bool) -> str:
    """An abort's one message: nothing was promoted, so nothing acknowledged is lost; whether the old primary
    serves again is said only when its agent confirmed it."""
    then = (f"{primary} serves again." if resumed else
            f"{primary} did not resume: check it at once with `standby status`; the pair has no primary until it does.")
    return f"switchover aborted, nothing lost: {why}. {then}"
