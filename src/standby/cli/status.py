"""`standby status`: both nodes, the service IPs and what is wrong, for people and scripts."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from standby.cli.common import config_option, handle_errors, json_option, load_node, node_option
from standby.config import Durability
from standby.documents import PAIR_STATUS, AgentSummary, PairStatus
from standby.model import PgRole
from standby.status import assemble, collect


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _agent_cell(ag: AgentSummary | None) -> str:
    if ag is None:
        return "-"
    return (f"term {ag.term}" + (", FENCED" if ag.fenced else "") + (", MAINTENANCE" if ag.suspended else "")
            + (", eligible" if ag.eligible else "") + (", degraded" if ag.degraded else ""))


def render(doc: PairStatus) -> None:
    console = Console(width=max(110, Console().width))
    console.print(f"[bold]cluster {doc.cluster}[/]  mode {doc.mode.value}  durability {doc.durability.value}  "
                  f"seen from {doc.observer} at {doc.observed_at}")
    if doc.durability is Durability.SYNC:  # the server's setting is only a default: any session may lower it
        console.print("note: sync protects commits made with synchronous_commit on (the default); a client or role "
                      "may lower it (SET synchronous_commit = local/off) and its commits then can be lost in a failover")
    t = Table()
    versions_line: list[str] = []
    for col in ("node", "role", "timeline", "current / received / replayed LSN", "lag", "sync", "service IPs", "agent"):
        t.add_column(col, overflow="fold")
    for name, n in doc.nodes.items():
        pg = n.postgres
        role = n.role.value + (" *" if n.preferred_primary else "")
        style = {PgRole.PRIMARY: "bold green", PgRole.STANDBY: "cyan"}.get(n.role, "red")
        lsns = " / ".join(x or "-" for x in (pg.current_lsn, pg.receive_lsn, pg.replay_lsn))
        lag = "-" if pg.lag_bytes is None else f"{_bytes(pg.lag_bytes)}, {pg.lag_seconds or 0:.3f}s"
        pgv = (pg.version or "?").split()[0]
        versions = f"pg {pgv} / standby {n.standby_version or '?'}"
        t.add_row(name, f"[{style}]{role}[/]", str(pg.timeline or "-"), lsns, lag,
                  pg.sync_state.value if pg.sync_state else "-", ", ".join(n.service_ips) or "-", _agent_cell(n.agent))
        versions_line.append(f"{name}: {versions}")
    console.print(t)
    console.print("* preferred primary.  versions: " + "; ".join(versions_line))
    _render_followers(console, doc)
    _render_reporting(console, doc)
    for owner, h in doc.home_addresses.items():
        who = ", ".join(f"{n} (adopted)" if n in doc.nodes and n != owner else n for n in h.holders) or "nobody"
        console.print(f"home address {h.address} ({owner}'s): held by {who}")
    _render_spool(console, doc)
    for w in doc.warnings:
        loud = w.isupper() or w.startswith("DUAL") or "FENCED" in w or "NOT eligible" in w or "MAINTENANCE" in w
        console.print(f"[{'bold red' if loud else 'yellow'}]WARNING: {w}[/]")
    if not doc.warnings:
        console.print("[green]no warnings[/]")


def _render_followers(console: Console, doc: PairStatus) -> None:
    """After the pair: each follower's role, upstream, where it streams from, lag and a DR promotion's loss."""
    if not doc.followers:
        return
    t = Table(title="followers")
    for col in ("follower", "role", "upstream", "streaming from", "received / replayed LSN", "lag", "loss if promoted",
                "state"):
        t.add_column(col, overflow="fold")
    for name, v in doc.followers.items():
        if v is None:
            t.add_row(name, "-", "-", "-", "-", "-", "-", "[red]agent does not answer[/]")
            continue
        lag = "-" if v.lag_bytes is None else f"{_bytes(v.lag_bytes)}, {v.lag_seconds or 0:.3f}s"
        state = "PROMOTED" if v.promoted else v.reason.value.replace("_", " ")
        if v.reporting_ip is not None:
            state += f"; reporting IP {v.reporting_ip} " + ("held" if v.reporting_ip_held else "[yellow]not held[/]")
        t.add_row(name, v.role.value, v.upstream, v.streaming_from or "-",
                  " / ".join(x or "-" for x in (v.received_lsn, v.replay_lsn)), lag,
                  "unknown" if v.loss_bytes is None else _bytes(v.loss_bytes), f"{state}, term {v.term}")
    console.print(t)


def _render_spool(console: Console, doc: PairStatus) -> None:
    """Each node's call-record shipper: backlog and counters (its problems are among the warnings)."""
    for name, n in doc.nodes.items():
        st = n.agent.spool.status if n.agent and n.agent.spool else None
        if st is None:
            continue
        console.print(f"spool {name}: {st.phase.value.replace('_', ' ')}, backlog {_bytes(st.backlog_bytes)} in "
                      f"{st.backlog_files} file(s); {st.shipped} shipped, {st.duplicates} duplicates, "
                      f"{st.rejected} set aside" + (f"; to {st.server}" if st.server else ""))


def _render_reporting(console: Console, doc: PairStatus) -> None:
    rep = doc.reporting
    if rep is None:
        return
    where = ", ".join(rep.holders) or "nobody"
    head = f"reporting IP {rep.address}: held by {where}" if rep.address else "reporting (no floating address)"
    console.print(f"{head}  (fallback {rep.fallback.value}, bound {_bytes(rep.max_lag_bytes)}, "
                  f"hot_standby_feedback {'on' if rep.hot_standby_feedback else 'off'}, "
                  f"max_standby_streaming_delay {rep.max_standby_streaming_delay_ms} ms)")
    for name, n in doc.nodes.items():
        pg = n.postgres
        if pg.state is not PgRole.STANDBY:
            continue
        age = "-" if pg.replay_age_s is None else f"{pg.replay_age_s:.3f}s since the last replayed commit"
        causes = ", ".join(f"{k} {v}" for k, v in (pg.conflicts or {}).items() if v)
        cancelled = "-" if pg.cancelled_queries is None else str(pg.cancelled_queries) + (f" ({causes})" if causes else "")
        console.print(f"  {name}: replay lag {_bytes(pg.lag_bytes)}, {age}"
                      f"{', replay PAUSED' if pg.replay_paused else ''}; queries cancelled by replay: {cancelled}")


@click.command("status")
@config_option
@node_option
@json_option
@click.option("--no-arp", is_flag=True, help="Do not probe the link for other holders of the service IPs.")
@handle_errors
def command(config_path: Path, node: str | None, as_json: bool, no_arp: bool) -> None:
    """Role, PostgreSQL state, timeline, LSNs, lag, sync state and service IPs of both nodes; then the followers."""
    cfg, me = load_node(config_path, node)
    doc = assemble(cfg, collect(cfg, me, probe_arp=not no_arp))
    if as_json:
        click.echo(json.dumps(PAIR_STATUS.encode(doc), indent=2, sort_keys=True))
    else:
        render(doc)
