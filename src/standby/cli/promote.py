"""`standby promote`: the guided manual failover (the warm standby's only way to become primary)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import click

from standby.apiclient import AgentApi, ApiError, agent_status, replica_lag
from standby.cli.common import OperatorError, config_option, handle_errors, load_node, node_option
from standby.config import Durability
from standby.model import DbState, PgRole
from standby.observe import postgres as obs
from standby.observe import probes


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
    cfg, me = load_node(config_path, node)
    peer = cfg.peer_of(me)
    mine = agent_status(cfg, me, timeout_s=2.0)
    if mine is None:
        raise OperatorError(f"the agent on {me} does not answer; start it first (`standby agent`)")
    if mine.postgres.state is not DbState.STANDBY:
        raise OperatorError(f"{me} is not a standby (PostgreSQL is {mine.postgres.state.value}); nothing to promote")

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

    # All looks at once, and a quick TCP knock first: against a dead host a
    # PostgreSQL connection attempt alone costs seconds.
    links = (cfg.nodes[peer].private.ip, cfg.nodes[peer].public.ip)
    with ThreadPoolExecutor(4) as pool:
        agent_f = pool.submit(agent_status, cfg, peer, 1.0)
        knocks = [pool.submit(probes.tcp_connect, str(ip), cfg.pg(peer).port, 0.5) for ip in links]
        answers = any(k.result() for k in knocks)
        seen = obs.observe_peer(cfg, peer) if answers else obs.PgObservation(
            node=peer, role=PgRole.UNREACHABLE, observed_at=datetime.now(UTC),
            error=f"nothing answers on port {cfg.pg(peer).port} at {', '.join(map(str, links))}")
        peer_agent = agent_f.result()
    alive = seen.role is PgRole.PRIMARY or (peer_agent is not None and peer_agent.postgres.state is DbState.PRIMARY)
    try:
        api = AgentApi(cfg)
        if alive:
            if not force:
                raise OperatorError(
                    f"{peer} is alive and primary: promoting {me} now would make two writable primaries. "
                    "For planned maintenance use `standby switchover`; to take over anyway, re-run with --force "
                    f"(it fences {peer} first)")
            click.echo(f"{peer} is reachable: fencing it first (services off, PostgreSQL stopped)")
            api.fence(peer)
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

