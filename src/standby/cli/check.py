"""`standby check`: preflight of the pair, node by node; reads only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from standby.cli.common import config_option, handle_errors, json_option, load_node, node_option
from standby.model import Verdict
from standby.preflight import evaluate, gather

_STYLE = {Verdict.PASS: "green", Verdict.WARN: "yellow", Verdict.FAIL: "bold red"}


@click.command("check")
@config_option
@node_option
@json_option
@handle_errors
def command(config_path: Path, node: str | None, as_json: bool) -> None:
    """Preflight: addresses, versions, capacity, networks, rewind readiness.

    Safe to run at any time: it only reads. Exits 1 if any check fails.
    """
    cfg, me = load_node(config_path, node)
    items = evaluate(cfg, gather(cfg, me))
    failed = any(i.verdict is Verdict.FAIL for i in items)
    if as_json:
        click.echo(json.dumps({"node": me, "ok": not failed, "checks": [
            {"node": i.node, "check": i.name, "verdict": i.verdict.value, "reason": i.reason} for i in items]}, indent=2))
    else:
        table = Table(title=f"standby check: cluster {cfg.cluster}, seen from {me}")
        for col in ("node", "check", "result", "reason"):
            table.add_column(col, overflow="fold")
        for i in items:
            table.add_row(i.node, i.name, f"[{_STYLE[i.verdict]}]{i.verdict.value.upper()}[/]", i.reason)
        Console(width=max(100, Console().width)).print(table)
    sys.exit(1 if failed else 0)
