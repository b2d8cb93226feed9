"""`standby bootstrap`: make this node's half of a streaming pair."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from standby.act.bootsteps import BootstrapBlocked, Step
from standby.act.bootstrap import bootstrap
from standby.act.postgres import PostgresActionError
from standby.cli.common import config_option, handle_errors, load_member, node_option


@click.command("bootstrap")
@config_option
@node_option
@click.option("--restart", is_flag=True, help="Allow restarting the primary's PostgreSQL when a setting needs it.")
@click.option("--replace-data", is_flag=True,
              help="On the standby: move an existing data directory aside and clone over it (never deletes it).")
@handle_errors
def command(config_path: Path, node: str | None, restart: bool, replace_data: bool) -> None:
    """Set up streaming replication; run on the primary first, then on the standby, then on each follower.

    On the primary: replication settings, a SCRAM replication role, pg_hba.conf
    entries for the peer's private address only, a replication slot. On the
    standby: a clone over the private network, started and checked to stream,
    then the configured durability (sync/async) on the primary. On a follower
    ([[followers]]): a clone of the pair's primary, started in recovery, left to
    its agent. Re-running it on a healthy pair changes nothing and says so.
    """
    cfg, me = load_member(config_path, node)
    click.echo(f"bootstrap on {me} (cluster {cfg.cluster}, durability {cfg.replication.durability.value})")

    def show(step: Step) -> None:
        mark = click.style("changed", fg="yellow") if step.changed else click.style("ok", fg="green")
        click.echo(f"  [{mark:>7}] {step.name}: {step.detail}")

    try:
        steps = bootstrap(cfg, me, restart=restart, replace_data=replace_data, report=show)
    except BootstrapBlocked as e:
        click.secho(f"blocked: {e}", fg="red", err=True)
        sys.exit(1)
    except PostgresActionError as e:
        click.secho(f"failed: {e}", fg="red", err=True)
        sys.exit(1)
    if any(s.changed for s in steps):
        click.echo("done: changes made (see above)")
    else:
        click.echo("nothing to do: this node is already set up")
