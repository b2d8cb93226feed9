"""The `standby` command. Thin: parse, call the same functions the agent uses, print.

Each command's module is imported only when that command runs (or `--help` lists them all): the
agent, which runs for a node's whole life, holds none of the lab's, the demo's or the status page's
imports, and every short command starts sooner.
"""

from __future__ import annotations

import importlib
import sys

import click

from standby import __version__
from standby.config import ConfigError

# command -> (module under standby.cli, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("config_cmd", "group"), "check": ("check", "command"), "bootstrap": ("bootstrap", "command"),
    "status": ("status", "command"), "lab": ("lab", "group"), "demo": ("demo", "command"),
    "agent": ("agent", "agent_command"), "fence": ("agent", "fence_command"),
    "history": ("agent", "history_command"), "switchover": ("roadback", "switchover_command"),
    "switchback": ("roadback", "switchback_command"), "rejoin": ("roadback", "rejoin_command"),
    "salvage": ("salvage", "group"), "promote": ("promote", "command"), "dsn": ("dsn", "command"),
    "ship": ("ship", "command"), "show": ("show", "group"),
}
# `standby lab ...` commands that live in modules of their own.
LAB_COMMANDS: tuple[tuple[str, str], ...] = (
    ("lab_workload", "softswitch_group"), ("lab_workload", "load_command"), ("lab_workload", "verify_command"),
    ("lab_workload", "report_command"), ("lab_chaos", "command"))


def _load(module: str, attr: str) -> click.Command:
    cmd = getattr(importlib.import_module(f"standby.cli.{module}"), attr)
    assert isinstance(cmd, click.Command)
    return cmd


class LazyGroup(click.Group):
    """A group whose commands are imported when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        cmd = _load(*COMMANDS[cmd_name])
        if cmd_name == "lab" and isinstance(cmd, click.Group):
            for module, attr in LAB_COMMANDS:
                sub = _load(module, attr)
                if sub.name not in cmd.commands:
                    cmd.add_command(sub)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="standby")
def cli() -> None:
    """Two-server high availability for a PostgreSQL-backed service.

    Every command that acts on a node takes the shared config file
    (--config or STANDBY_CONFIG) and the node's own name (--node or STANDBY_NODE).
    """


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigError as e:  # raised outside click's own handling
        click.echo(str(e), err=True)
        sys.exit(2)
