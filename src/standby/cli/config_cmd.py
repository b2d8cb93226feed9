"""`standby config check FILE`: validate a configuration without touching anything."""

from __future__ import annotations

from pathlib import Path

import click

from standby.cli.common import handle_errors
from standby.config import Durability, load
from standby.topology import sync_plan


@click.group("config")
def group() -> None:
    """Work with the configuration file."""


@group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def check(file: Path) -> None:
    """Validate FILE and print a summary; touches nothing."""
    cfg = load(file)
    click.echo(f"{file}: valid")
    click.echo(f"  cluster {cfg.cluster}, mode {cfg.mode.value}, durability {cfg.replication.durability.value}")
    for name, node in cfg.nodes.items():
        pref = " (preferred primary)" if name == cfg.preferred_primary else ""
        click.echo(
            f"  node {name}{pref}: public {node.public.address} on {node.public.interface}, "
            f"private {node.private.address} on {node.private.interface}"
        )
    for sip in cfg.service_ips:
        click.echo(f"  service IP {sip.address} on {sip.interface}")
    for svc in cfg.services:
        click.echo(f"  service {svc.name}: start {' '.join(svc.start)}")
    for f in cfg.followers:
        click.echo(f"  follower {f.name} ({f.role.value}) streams from {f.upstream}: public {f.public.address}, "
                   f"private {f.private.address}" + (f", reporting IP {f.reporting_ip.address}" if f.reporting_ip else ""))
    if cfg.followers or cfg.replication.quorum:
        standby = cfg.peer_of(cfg.preferred_primary)
        click.echo("  " + sync_plan(cfg.topology(), standby, cfg.replication.durability is Durability.SYNC,
                                    cfg.replication.quorum).says)
