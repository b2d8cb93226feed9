"""`standby agent`, `standby history` and `standby fence`: the node agent and its records."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from standby.act import addresses, services
from standby.act import postgres as pgact
from standby.agent.node import Agent, RefusedToStart
from standby.agent.priority import raise_priority
from standby.agent.store import Store
from standby.cli.common import OperatorError, config_option, handle_errors, json_option, load_node, node_option
from standby.decide import State, fence_needed
from standby.model import DbState, PgRole
from standby.observe import postgres as pgobs


@click.command("agent")
@config_option
@node_option
@click.option("--respawn", is_flag=True,
              help="Supervise the agent like a service manager: after an unclean death run `standby fence "
                   "--if-unclean`, then start it again (for hosts without systemd, such as the lab).")
@click.option("-v", "--verbose", is_flag=True, help="Log every decision to stderr.")
@handle_errors
def agent_command(config_path: Path, node: str | None, respawn: bool, verbose: bool) -> None:
    """Run the node agent in the foreground (stop it with SIGTERM)."""
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
        from standby.api import ApiServer

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        # Its own thread and loop: no client can hold up the heartbeats or the decisions.
        api = ApiServer(agent, loop)
        api.start()
        try:
            await agent.run()
        finally:
            api.stop()

    try:
        asyncio.run(main())
    except RefusedToStart as e:
        # Refusing is clean: this run never acted, so nothing needs fencing.
        agent.store.write_liveness(agent.boot, clean=True)
        raise OperatorError(str(e)) from None


def _supervise(config_path: Path, node: str, verbose: bool) -> None:
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    argv = [sys.argv[0], "agent", "--config", str(config_path), "--node", node] + (["-v"] if verbose else [])
    while not stopping:
        child = subprocess.Popen(argv)
        code = child.wait()
        subprocess.run([sys.argv[0], "fence", "--if-unclean", "--config", str(config_path), "--node", node])
        if stopping or code == 2:
            break
        time.sleep(0.5)


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
    live = store.read_liveness()
    if if_unclean and (live is None or live.clean):
        click.echo("the agent stopped cleanly: nothing to do")
        return
    for sip in cfg.service_ips:
        if addresses.remove(sip):
            click.echo(f"removed service IP {sip.address}")
    # Nothing keeps the reporting IP's lag in check without an agent.
    floating = cfg.reporting.floating() if cfg.reporting else None
    if floating is not None and addresses.remove(floating):
        click.echo(f"removed reporting IP {floating.address}")
    for r in services.stop_all(cfg.services, me):
        click.echo(f"stopped {r.service}: {r.detail}")
    kept = store.load_state()
    state = State(**kept)  # type: ignore[arg-type]
    seen = pgobs.observe_local(cfg, me)
    db = {PgRole.PRIMARY: DbState.PRIMARY, PgRole.STANDBY: DbState.STANDBY}.get(seen.role, DbState.DOWN)
    if fence_needed(state, db) or not if_unclean and db is DbState.PRIMARY:
        pgact.stop(cfg, me, "fast", timeout_s=10)
        fenced = State(**{**kept, "fenced": True, "was_primary": False})  # type: ignore[arg-type]
        store.save_state(fenced)
        store.record("fenced", reason="agent gone" if if_unclean else "operator", postgres_was=db.value)
        click.echo("PostgreSQL stopped; this node is fenced until it is rejoined")
    store.write_liveness(live.boot if live else 0, clean=True)


@click.command("history")
@config_option
@node_option
@json_option
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@handle_errors
def history_command(config_path: Path, node: str | None, as_json: bool, limit: int) -> None:
    """The agent's recorded decisions and actions on this node, newest last."""
    cfg, me = load_node(config_path, node)
    entries = Store(cfg.state_dir_for(me), me).history(limit)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("no history yet")
    for e in entries:
        what = e.get("action") or e["event"]
        why = e.get("reason", "")
        rest = {k: v for k, v in e.items() if k not in ("time", "node", "event", "action", "reason")}
        detail = rest.pop("detail", "")
        extra = " ".join(f"{k}={v}" for k, v in rest.items())
        click.echo(f"{e['time']}  {e['node']:<8} {what:<18} {why:<24} {detail} {extra}".rstrip())

