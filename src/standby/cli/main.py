"""The `standby` command. Thin: parse, call the same functions the agent uses, print."""

from __future__ import annotations

import sys

import click

from standby import __version__
from standby.cli import (
    agent,
    bootstrap,
    check,
    config_cmd,
    demo,
    dsn,
    lab,
    lab_chaos,
    lab_workload,
    promote,
    roadback,
    salvage,
    ship,
    show,
    status,
)
from standby.config import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="standby")
def cli() -> None:
    """Two-server high availability for a PostgreSQL-backed service.

    Every command that acts on a node takes the shared config file
    (--config or STANDBY_CONFIG) and the node's own name (--node or STANDBY_NODE).
    """


cli.add_command(config_cmd.group)
cli.add_command(check.command)
cli.add_command(bootstrap.command)
cli.add_command(status.command)
cli.add_command(lab.group)
cli.add_command(demo.command)
cli.add_command(agent.agent_command)
cli.add_command(agent.fence_command)
cli.add_command(agent.history_command)
cli.add_command(roadback.switchover_command)
cli.add_command(roadback.switchback_command)
cli.add_command(roadback.rejoin_command)
cli.add_command(salvage.group)
cli.add_command(promote.command)
cli.add_command(dsn.command)
cli.add_command(ship.command)
cli.add_command(show.group)
lab.group.add_command(lab_workload.softswitch_group)
lab.group.add_command(lab_workload.load_command)
lab.group.add_command(lab_workload.verify_command)
lab.group.add_command(lab_workload.report_command)
lab.group.add_command(lab_chaos.command)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigError as e:  # raised outside click's own handling
        click.echo(str(e), err=True)
        sys.exit(2)
