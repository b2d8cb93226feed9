"""`standby agent`, `standby history` and `standby fence`: the node agent and its records."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from standby.act import fence
from standby.act import postgres as pgact
from standby.agent.node import Agent, RefusedToStart
from standby.agent.priority import raise_priority
from standby.agent.store import Store
from standby.cli.common import OperatorError, config_option, handle_errors, json_option, load_node, node_option
from standby.config import NODE_ENV, Config, load
from standby.documents import HISTORY, DocumentError
from standby.supervisor import exec_supervisor


@click.command("agent")
@config_option
@node_option
@click.option("--respawn", is_flag=True,
              help="Supervise the agent like a service manager: after an unclean death run `standby fence "
                   "--if-unclean`, then start it again (for hosts without systemd, such as the lab).")
@click.option("-v", "--verbose", is_flag=True, help="Log every decision to stderr.")
@handle_errors
def agent_command(config_path: Path, node: str | None, respawn: bool, verbose: bool) -> None:
    """Run the node agent in the foreground (stop it with SIGTERM); for a follower's name, the follower's."""
    whole = load(config_path)
    if (name := node or os.environ.get(NODE_ENV)) is not None and whole.follower(name) is not None:
        if respawn:
            raise OperatorError("--respawn supervises a pair node's agent (it fences after an unclean death); "
                                f"a follower has nothing to fence: run `standby agent --node {name}` under systemd")
        _run_follower(whole, name, verbose)
        return
    cfg, me = load_node(config_path, node)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"%(asctime)s {me} %(levelname)s %(message)s")
    if respawn:
        _supervise(config_path, me, verbose)
        return
    # First, before any thread exists: threads inherit their creator's scheduling.
    raised, how = raise_priority(cfg.timings.realtime_priority)
    logging.getLogger("standby.agent").log(logging.INFO if raised else logging.WARNING, "%s", how)
    try:
        agent = Agent(cfg, me)
    except RefusedToStart as e:
        raise OperatorError(str(e)) from None

    async def main() -> None:
        from standby.agent.stallwatch import StallWatch
        from standby.api import ApiServer

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        # Its own thread and loop: no client can hold up the heartbeats or the decisions.
        api = ApiServer(agent, loop)
        api.start()
        # Its beat is the heartbeat sender's: a loop late past it is a loop whose heartbeats are late. It only
        # logs where the loop was stuck; it looks five times a second (ten cost 0.17 % of a core at rest), so a
        # stall is told once 0.45 s late, as long as the stall the decisions fence a primary for (a step's gap
        # past timings.fence_timeout_ms, 450 by default).
        watch = StallWatch(loop, beat=lambda: agent.link.last_send if agent.link.sending else None,
                           beat_every_s=agent.interval_s, every_s=0.2)
        watch.start()
        try:
            await agent.run()
        finally:
            watch.stop()
            api.stop()

    try:
        asyncio.run(main())
    except RefusedToStart as e:
        # Refusing is clean: this run never acted, so nothing needs fencing.
        agent.store.write_liveness(agent.boot, clean=True)
        raise OperatorError(str(e)) from None


def _run_follower(cfg: Config, name: str, verbose: bool) -> None:
    """A follower's loop and its status API until SIGTERM (docs/followers.md); it never promotes."""
    from standby.agent.follower import FollowerAgent, run
    from standby.agent.followerapi import serving

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    agent = FollowerAgent(cfg, name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with serving(agent):
            await run(agent, stop)

    asyncio.run(main())


def _supervise(config_path: Path, node: str, verbose: bool) -> None:
    common = ["--config", str(config_path), "--node", node]
    exec_supervisor([sys.argv[0], "agent", *common, *(["-v"] if verbose else [])],
                    [sys.argv[0], "fence", "--if-unclean", *common])


@click.command("fence")
@config_option
@node_option
@click.option("--if-unclean", is_flag=True,
              help="Only if the agent died without stopping cleanly (for systemd's ExecStopPost).")
@handle_errors
def fence_command(config_path: Path, node: str | None, if_unclean: bool) -> None:
    """Make this node safe after its agent is gone: drop service IPs, stop services, and stop
    PostgreSQL if the peer could have taken over meanwhile (then it stays fenced until rejoined)."""
    cfg, me = load_node(config_path, node)
    store = Store(cfg.state_dir_for(me), me)
    try:
        fence.fence_node(cfg, me, store, if_unclean, say=click.echo)
    except (pgact.PostgresActionError, OSError) as e:
        raise OperatorError(f"fencing {me} did not finish: {e}") from None


@click.command("history")
@config_option
@node_option
@json_option
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@handle_errors
def history_command(config_path: Path, node: str | None, as_json: bool, limit: int) -> None:
    """The agent's recorded decisions and actions on this node, newest last."""
    cfg, me = load_node(config_path, node)
    records = []
    for line in Store(cfg.state_dir_for(me), me).history(limit):
        try:
            records.append(HISTORY.decode(line))
        except DocumentError:
            continue  # not a record (written by hand, or cut short): the rest still reads
    if as_json:
        click.echo(json.dumps([HISTORY.encode(r) for r in records], indent=2))
        return
    if not records:
        click.echo("no history yet")
    for r in records:
        rest = dict(r.detail)
        what = rest.pop("action", None) or r.event
        why = rest.pop("reason", "")
        detail = rest.pop("detail", "")
        extra = " ".join(f"{k}={v}" for k, v in rest.items())
        stamp = r.time.isoformat(timespec="milliseconds")
        click.echo(f"{stamp}  {r.node:<8} {what:<18} {why:<24} {detail} {extra}".rstrip())

