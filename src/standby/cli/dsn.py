"""`standby dsn`: libpq connection strings that find the right node by themselves.

For clients that cannot use a floating address (another subnet, warm mode) or
would rather not depend on one: libpq tries both nodes' public addresses and
keeps the first whose role fits. No password is ever printed; clients take it
from their own ~/.pgpass or PGPASSWORD.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import click

from standby.cli.common import config_option, handle_errors
from standby.config import Config, load

# libpq's target_session_attrs for each use.
PURPOSES = {
    # Any standby first (the replica takes the load), else the primary: a
    # report still runs when the standby is down.
    "reporting": "prefer-standby",
    # Only the writable node; a standby is skipped.
    "writes": "read-write",
}


def hosts_in_order(cfg: Config, purpose: str) -> list[str]:
    """Both nodes: for writes the preferred primary first, for reports the other one first.

    libpq tries hosts in order; starting with the likely match saves one
    connection attempt (and a connect_timeout if that node is down).
    """
    return sorted(cfg.nodes, key=lambda n: (n == cfg.preferred_primary) == (purpose == "reporting"))


def libpq_dsn(cfg: Config, purpose: str, dbname: str, user: str | None, connect_timeout: int, uri: bool) -> str:
    nodes = hosts_in_order(cfg, purpose)
    hosts = [str(cfg.nodes[n].public.ip) for n in nodes]
    ports = [str(cfg.pg(n).port) for n in nodes]
    attrs = PURPOSES[purpose]
    if uri:
        auth = f"{quote(user, safe='')}@" if user else ""
        netloc = ",".join(f"{h}:{p}" for h, p in zip(hosts, ports, strict=True))
        return (f"postgresql://{auth}{netloc}/{quote(dbname, safe='')}"
                f"?target_session_attrs={attrs}&connect_timeout={connect_timeout}")
    parts = [f"host={','.join(hosts)}", f"port={ports[0] if len(set(ports)) == 1 else ','.join(ports)}",
             f"dbname={_kw(dbname)}"]
    if user:
        parts.append(f"user={_kw(user)}")
    parts += [f"target_session_attrs={attrs}", f"connect_timeout={connect_timeout}"]
    return " ".join(parts)


def _kw(value: str) -> str:
    """A keyword=value value, quoted when libpq needs it."""
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@click.command("dsn")
@config_option
@click.option("--for", "purpose", type=click.Choice(sorted(PURPOSES)), required=True,
              help="reporting: a standby if any answers, else the primary; writes: the primary only.")
@click.option("--dbname", required=True, help="The database the client uses.")
@click.option("--user", default=None, help="The role the client logs in as (default: libpq's, the OS user).")
@click.option("--connect-timeout", type=click.IntRange(1, 600), default=2, show_default=True,
              help="Seconds libpq waits for each node before trying the next.")
@click.option("--uri", is_flag=True, help="Print a postgresql:// URI instead of keyword=value pairs.")
@handle_errors
def command(config_path: Path, purpose: str, dbname: str, user: str | None, connect_timeout: int, uri: bool) -> None:
    """Print a libpq multi-host connection string for reports or for writes (never a password)."""
    click.echo(libpq_dsn(load(config_path), purpose, dbname, user, connect_timeout, uri))
