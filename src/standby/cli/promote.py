"""`standby promote`: the guided manual failover (the warm standby's only way to become primary)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import click
import psycopg

from standby import operations as ops
from standby import siteloss
from standby.act import postgres as pgact
from standby.agent import followerobs
from standby.agent.opsteps import hook_argv, run_hook
from standby.apiclient import AgentApi, ApiError, agent_status, follower_status, replica_lag
from standby.cli.common import OperatorError, config_option, handle_errors, node_option
from standby.config import NODE_ENV, Config, Durability, load, resolve_node
from standby.documents import AgentView
from standby.model import DbState, PgRole
from standby.observe import postgres as obs
from standby.observe import probes
from standby.operations import PeerFirst

SLOW_AGENT_S = 5.0  # a pair agent whose API port takes connections is waited for this long before it counts as silent


@click.command("promote")
@config_option
@node_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--force", is_flag=True,
              help="The primary is still reachable: fence it first (services off, PostgreSQL stopped), then promote.")
@handle_errors
def command(config_path: Path, node: str | None, yes: bool, force: bool) -> None:
    """Promote this standby after a person's decision: shows what could be lost, makes sure the old
    primary cannot write, promotes, runs the address-change hook, starts the services."""
    cfg = load(config_path)
    name = node or os.environ.get(NODE_ENV)
    if name and cfg.follower(name) is not None:
        _promote_follower(cfg, name, yes, force)
        return
    me = resolve_node(cfg, node)
    peer = cfg.peer_of(me)
    mine = agent_status(cfg, me, timeout_s=2.0)
    if mine is None:
        raise OperatorError(f"the agent on {me} does not answer; start it first (`standby agent`)")
    if mine.postgres.state is not DbState.STANDBY:
        raise OperatorError(f"{me} is not a standby (PostgreSQL is {mine.postgres.state.value}); nothing to promote")
    if ops.not_answering(mine.postgres.unanswered_s):  # before the peer's fence: the promotion would be refused after it
        raise OperatorError("promotion refused: " + ops.Refusal.NOT_ANSWERING.describe(me, mine.postgres.state))

    heard = mine.last_heard_s_ago()
    click.echo(f"last contact with {peer}: " + (f"{heard:.1f} s ago" if heard is not None
                                                else "never since this agent started"))
    if cfg.replication.durability is Durability.SYNC and mine.state.eligible:
        click.echo("what could be lost: nothing acknowledged (this standby was in sync at the last contact)")
    else:
        # The agent computes it for GET /replica from the primary's position in its heartbeats.
        lag = replica_lag(cfg, me)
        click.echo("what could be lost: commits the primary acknowledged after its last WAL reached this node"
                   + (f" (at least {lag} bytes of WAL behind at the last contact)" if lag is not None
                      else " (how much is unknown: no position heard from the primary)"))

    seen, peer_agent = _look_at(cfg, peer)
    alive = seen.role is PgRole.PRIMARY or (peer_agent is not None and peer_agent.postgres.state is DbState.PRIMARY)
    first = ops.peer_first(alive, peer_agent is not None, force)
    try:
        api = AgentApi(cfg)
        if first is PeerFirst.REFUSE:
            raise OperatorError(
                f"{peer} is alive and primary: promoting {me} now would make two writable primaries. "
                "For planned maintenance use `standby switchover`; to take over anyway, re-run with --force "
                f"(it fences {peer} first)")
        if first is PeerFirst.FENCE:
            click.echo(f"{peer} is reachable: fencing it first (services off, PostgreSQL stopped)" if alive else
                       f"{peer}'s agent answers (PostgreSQL {peer_agent.postgres.state.value if peer_agent else '?'}): "
                       "fencing it first, so that it cannot start again as primary")
            try:
                api.fence(peer)
            except ApiError as e:
                if ops.after_failed_fence(alive, force) is PeerFirst.REFUSE:
                    raise OperatorError(f"promotion refused: fencing {peer} failed: {e}" + ("" if alive else (
                        f". To promote without it: stop {peer}'s agent (its fence then holds), or re-run with "
                        "--force"))) from None
                click.echo(f"fencing {peer} failed ({e}); promoting anyway (--force). If it had fenced itself as "
                           "a precaution, it may start again as primary until it hears this node's new term")
            else:
                after = obs.observe_peer(cfg, peer)
                if after.role is PgRole.PRIMARY:
                    raise OperatorError(f"{peer} still accepts writes after fencing; not promoting")
                click.echo(f"{peer} is fenced")
        else:
            click.echo(f"{peer} does not answer (PostgreSQL: {seen.error or seen.role.value}; agent: "
                       f"{'answers' if peer_agent else 'silent'}). If it is alive behind a broken link, it could "
                       "still accept writes from clients that reach it.")
        if not yes and not click.confirm(f"promote {me} now?", default=False):
            raise OperatorError("not confirmed; nothing changed")
        result = api.manual_promote(me)
    except ApiError as e:
        raise OperatorError(f"promotion refused: {e}") from None
    for name, secs in result.steps:
        click.echo(f"  {name:<60} {secs:7.3f} s")
    click.secho(f"{me} is the primary (term {result.term})", fg="green")



def _knock(cfg: Config, node: str) -> str | None:
    """A quick TCP knock on a pair node's PostgreSQL port, both links at once: None when something answers,
    else what was seen. Against a dead host a PostgreSQL connection attempt alone costs seconds, a knock
    half of one."""
    links = (cfg.nodes[node].private.ip, cfg.nodes[node].public.ip)
    port = cfg.pg(node).port
    with ThreadPoolExecutor(len(links)) as pool:
        if any(pool.map(lambda ip: probes.tcp_connect(str(ip), port, 0.5), links)):
            return None
    return f"nothing answers on port {port} at {', '.join(map(str, links))}"


def _agent_of(cfg: Config, node: str) -> AgentView | None:
    """A pair node's agent: asked for a second at each address, then for SLOW_AGENT_S at the first address
    whose API port takes connections. A slow agent (a loaded host, a busy API) is not a silent one: taken for
    silent, its node is left unfenced (PeerFirst.WARN) and, if its server had stopped on a fence of its own,
    it may start it again as primary beside this one."""
    view = agent_status(cfg, node, 1.0)
    if view is None:
        links = (str(cfg.nodes[node].private.ip), str(cfg.nodes[node].public.ip))
        taking = next((ip for ip in links if probes.tcp_connect(ip, cfg.api.port, 0.5)), None)
        if taking is not None:
            view = agent_status(cfg, node, SLOW_AGENT_S, via=(taking,))
    return view


def _look_at(cfg: Config, node: str) -> tuple[obs.PgObservation, AgentView | None]:
    """A pair node's server and agent, both looks at once; its server asked only if its port answers."""
    with ThreadPoolExecutor(2) as pool:
        agent_f = pool.submit(_agent_of, cfg, node)
        silent = _knock(cfg, node)
        seen = obs.observe_peer(cfg, node) if silent is None else obs.PgObservation(
            node=node, role=PgRole.UNREACHABLE, observed_at=datetime.now(UTC), error=silent)
        return seen, agent_f.result()


def _server_from_afar(cfg: Config, node: str) -> tuple[bool, bool, str]:
    """A pair node's server as a follower may ask it (a replication connection): (something answers on its
    port, it accepts writes, what was seen); asked only if its port answers."""
    if (silent := _knock(cfg, node)) is not None:
        return False, False, silent
    try:
        writes = followerobs.accepts_writes(cfg, node)
    except psycopg.Error as e:
        # Its port answers: a host that is up, whatever refused the question; never read as gone.
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        return True, False, f"answers on its port, but: {last}"
    return True, writes, "primary" if writes else "in recovery"


def _reserve_pair_slots(cfg: Config, me: str, conn: psycopg.Connection) -> None:
    """The pair nodes' slots, made here while still in recovery: each then holds the WAL from this server's
    last restartpoint, from before the fork, which a rewind of that node (`standby rejoin --from`) replays.
    Made after the promotion they would hold only what follows it, and a site rebuilt days later would have
    to be cloned over the WAN, where a rewind copies what changed. Bounded like every slot by
    max_slot_wal_keep_size; a failure here never stops the promotion."""
    made = []
    for node in cfg.nodes:
        try:
            if pgact.ensure_slot(conn, cfg.slot_name(node)):
                made.append(cfg.slot_name(node))
        except psycopg.Error as e:
            click.echo(f"  warning: replication slot {cfg.slot_name(node)} not made ({e}); {node} may have to be "
                       "cloned rather than rewound when it is rebuilt")
    if made:
        click.echo(f"  replication slots {', '.join(made)} reserved: the WAL from before the promotion stays for "
                   f"the pair's rebuild (up to postgres.max_slot_wal_keep_size_mb)")


def _pair_seen(cfg: Config) -> dict[str, siteloss.PairSeen]:
    with ThreadPoolExecutor(2 * len(cfg.nodes)) as pool:
        servers = {n: pool.submit(_server_from_afar, cfg, n) for n in cfg.nodes}
        agents = {n: pool.submit(agent_status, cfg, n, 1.0) for n in cfg.nodes}
        seen = {n: (servers[n].result(), agents[n].result()) for n in cfg.nodes}
    out = {}
    for n, ((answers, writes, said), agent) in seen.items():
        out[n] = _judged(answers, writes, agent)
        click.echo(f"{n}: {out[n].value} (PostgreSQL: {said}; agent: "
                   + (("fenced" if agent.state.fenced else "answers") if agent else "silent") + ")")
    return out


def _judged(answers: bool, writes: bool, agent: AgentView | None) -> siteloss.PairSeen:
    if writes or (agent is not None and agent.postgres.state is DbState.PRIMARY):
        return siteloss.PairSeen.PRIMARY
    if agent is None:
        return siteloss.PairSeen.LIVE_NO_AGENT if answers else siteloss.PairSeen.UNREACHABLE
    return siteloss.PairSeen.FENCED if agent.state.fenced else siteloss.PairSeen.LIVE


_REFUSED = {
    siteloss.Reason.REPORTING_FOLLOWER: "{me} is a reporting follower: it is never promoted (promote a warm one)",
    siteloss.Reason.AGENT_SILENT: "the agent on {me} does not answer; start it first (`standby agent --node {me}`)",
    siteloss.Reason.SERVER_DOWN: "PostgreSQL on {me} is not running; its agent starts it in recovery, then retry",
    siteloss.Reason.NOT_IN_RECOVERY: "{me} is already out of recovery (a primary); nothing to promote",
    siteloss.Reason.PAIR_ALIVE: "{nodes} of the pair still answers, not fenced: it serves, or its agent may promote "
                                "it by itself, and promoting {me} now could make two writable primaries. If the "
                                "site is alive, use the pair's own failover or switchover; to take over anyway "
                                "re-run with --force (it fences {nodes} first)",
    siteloss.Reason.UNFENCEABLE: "PostgreSQL on {nodes} answers but its agent does not, so it cannot be fenced from "
                                 "here: stop PostgreSQL there by hand, then retry",
}


def _promote_follower(cfg: Config, me: str, yes: bool, force: bool) -> None:
    """A warm follower becomes the primary after the pair's site is lost: what could be lost, the pair's
    nodes (fenced where they still serve, with --force), the promotion, the address-change hook."""
    follower = cfg.follower(me)
    assert follower is not None
    view = follower_status(cfg, me, timeout_s=2.0)
    if view is not None:
        click.echo(f"last contact with the pair: {view.site_silent_s:.1f} s ago (term {view.term}, primary "
                   f"{view.primary or 'unknown'})")
        click.echo("what could be lost: " + (f"{view.loss_bytes} bytes of WAL the primary had flushed and {me} "
                                             "had not received at the last contact" if view.loss_bytes is not None
                                             else "unknown (no position heard from the primary)"))
    me_seen = siteloss.FollowerSeen(view.running, view.in_recovery) if view is not None else None
    decision = siteloss.decide(follower.role, me_seen, _pair_seen(cfg), force)
    try:
        if decision.verdict is siteloss.Verdict.FENCE_FIRST:
            api = AgentApi(cfg)
            for n in decision.to_fence:
                click.echo(f"{n} answers: fencing it first (services off, PostgreSQL stopped)")
                api.fence(n)
            # Looked at again, and judged without force: a node still writable after its fence refuses.
            decision = siteloss.decide(follower.role, me_seen, _pair_seen(cfg), force=False)
    except ApiError as e:
        raise OperatorError(f"fencing refused: {e}; not promoting") from None
    if decision.verdict is not siteloss.Verdict.PROMOTE:
        raise OperatorError(_REFUSED[decision.reason].format(me=me, nodes=", ".join(decision.in_the_way)))
    for n in decision.unreachable:
        click.echo(f"{n} answers nowhere: if it is alive behind a broken link, it could still accept writes "
                   "from clients that reach it")
    if not yes and not click.confirm(f"promote {me} now?", default=False):
        raise OperatorError("not confirmed; nothing changed")
    with obs.connect_local(cfg, me) as conn:
        _reserve_pair_slots(cfg, me, conn)
        row = conn.execute("SELECT pg_promote(true, 60)").fetchone()
    if not row or not row[0]:
        raise OperatorError(f"PostgreSQL on {me} did not finish its promotion within 60 s; see its log")
    click.echo(f"  PostgreSQL on {me} promoted")
    try:
        # A follower cloned by hand carries a pair node's pg_hba.conf: the pair's nodes, rebuilt from this one
        # later (`standby rejoin --from`), need its own block.
        with obs.connect_local(cfg, me) as conn:
            changed = pgact.ensure_hba(conn, cfg, me)
        click.echo(f"  pg_hba.conf: the pair's nodes may be rebuilt from {me}" + ("" if changed else " (already)"))
    except (psycopg.Error, pgact.PostgresActionError, OSError) as e:
        click.echo(f"  warning: pg_hba.conf not updated ({e}); the pair's nodes cannot be rebuilt from {me} until "
                   "it lets their private addresses in")
    if argv := hook_argv(cfg, me):
        click.echo(f"  address-change hook: {run_hook(argv)}")
    click.secho(f"{me} is the primary; the pair's nodes must not come back as primaries: rebuild them as "
                f"standbys of {me} (`standby rejoin --node alpha --from {me}`, docs/followers.md, \"The road "
                "back\")", fg="green")
