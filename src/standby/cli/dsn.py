"""`standby dsn`: libpq connection strings that find the right node by themselves.

For clients that cannot use a floating address (another subnet, warm mode) or
would rather not depend on one: libpq tries both nodes' public addresses (for reports,
the reporting followers' first) and keeps the first whose role fits. No password is
ever printed; clients take it from their own ~/.pgpass or PGPASSWORD.
"""

from __future__ import annotations

from enum import StrEnum
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import quote

import click

from standby.cli.common import OperatorError, config_option, handle_errors, node_option
from standby.config import Config, Follower, FollowerRole, hosts_in_order, load, resolve_node

# libpq's target_session_attrs for each use.
PURPOSES = {
    # Any standby first (the replica takes the load), else the primary: a
    # report still runs when the standby is down.
    "reporting": "prefer-standby",
    # Only the writable node; a standby is skipped.
    "writes": "read-write",
}


# Every client is told how long a silent server may stay silent. A fence and a switchover end their
# sessions with an error, but a host that crashes or loses its cables cannot: a client waiting for an
# answer sends nothing, and without keepalives it waits for good (CI run 42); one whose own data goes
# unacknowledged waits for the kernel's retransmissions (~15 min) without tcp_user_timeout. About 11 s
# to notice either, far under any call's length, and a few bytes every 2 s on an idle link.
KEEPALIVES = (("keepalives", "1"), ("keepalives_idle", "5"), ("keepalives_interval", "2"),
              ("keepalives_count", "3"), ("tcp_user_timeout", "10000"))


class Format(StrEnum):
    LIBPQ = "libpq"  # keyword=value pairs: psql, psycopg, anything on libpq; per-host ports allowed
    URI = "uri"  # postgresql://h1:p1,h2:p2/db?target_session_attrs=...: libpq URIs (psql, psycopg, pgbouncer)
    # Kamailio's db_postgres: a postgres:// URL with one port after the last host (with a port per
    # host it tries only the first), the libpq options in the module's con_param (it ignores a
    # query string, and a postgresql:// URL names no module). Both nodes share postgres.port.
    KAMAILIO = "kamailio"


class DsnError(OperatorError):
    """A connection string this format cannot express."""


def libpq_dsn(cfg: Config, purpose: str, dbname: str, user: str | None, connect_timeout: int, uri: bool = False,
              fmt: Format = Format.LIBPQ, own: str | None = None, keepalives: bool = True) -> str:
    fmt = Format.URI if uri else fmt
    options = [("target_session_attrs", PURPOSES[purpose]), ("connect_timeout", str(connect_timeout)),
               *(KEEPALIVES if keepalives else ())]
    nodes = hosts_in_order(cfg, purpose, own)
    hosts = [str(cfg.nodes[n].public.ip) for n in nodes]
    ports = [str(cfg.pg(n).port) for n in nodes]
    if purpose == "reporting":
        # Reporting followers take reports off the pair: tried before it (after this node, with --own-first).
        at = 0 if own is None else 1
        hosts[at:at] = [str(reporting_address(f)) for f in reporting_followers(cfg)]
        ports[at:at] = [str(cfg.pg(f.name).port) for f in reporting_followers(cfg)]
    if fmt is Format.KAMAILIO:
        return _kamailio(hosts, ports[0], dbname, user, options)
    if fmt is Format.URI:
        auth = f"{quote(user, safe='')}@" if user else ""
        netloc = ",".join(f"{h}:{p}" for h, p in zip(hosts, ports, strict=True))
        return f"postgresql://{auth}{netloc}/{quote(dbname, safe='')}?" + "&".join(f"{k}={v}" for k, v in options)
    parts = [f"host={','.join(hosts)}", f"port={ports[0] if len(set(ports)) == 1 else ','.join(ports)}",
             f"dbname={_kw(dbname)}"]
    if user:
        parts.append(f"user={_kw(user)}")
    parts += [f"{k}={v}" for k, v in options]
    return " ".join(parts)


def reporting_followers(cfg: Config) -> list[Follower]:
    return [f for f in cfg.followers if f.role is FollowerRole.REPORTING]


def reporting_address(f: Follower) -> IPv4Address:
    """Where reports reach a reporting follower: its reporting IP if it has one, else its public address."""
    return f.reporting_ip.address.ip if f.reporting_ip is not None else f.public.ip


def _kamailio(hosts: list[str], port: str, dbname: str, user: str | None, options: list[tuple[str, str]]) -> str:
    for what, value in (("--dbname", dbname), ("--user", user or "")):
        if value and not all(c.isalnum() or c in "_.-" for c in value):
            raise DsnError(f"{what} {value!r}: Kamailio's db_url takes letters, digits, '_', '.' and '-' only")
    if not user:
        raise DsnError("--user is required for --format kamailio: its db_url names the role")
    return "\n".join([
        "# kamailio.cfg: libpq options go in db_postgres's con_param (a query string in db_url is ignored).",
        "# Password: user:PASSWORD@ in the URL, or ~/.pgpass of the user Kamailio runs as.",
        f'modparam("db_postgres", "con_param", "{";".join(f"{k}={v}" for k, v in options)}")',
        f'#!define DBURL "postgres://{user}@{",".join(hosts)}:{port}/{dbname}"',
    ])


def _kw(value: str) -> str:
    """A keyword=value value, quoted when libpq needs it."""
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@click.command("dsn")
@config_option
@click.option("--for", "purpose", type=click.Choice(sorted(PURPOSES)), required=True,
              help="reporting: a standby if any answers (the reporting followers first), else the primary; writes: "
              "the primary only.")
@click.option("--dbname", required=True, help="The database the client uses.")
@click.option("--user", default=None, help="The role the client logs in as (default: libpq's, the OS user).")
@click.option("--connect-timeout", type=click.IntRange(1, 600), default=2, show_default=True,
              help="Seconds libpq waits for each node before trying the next.")
@click.option("--format", "fmt", type=click.Choice([f.value for f in Format]), default=Format.LIBPQ.value,
              show_default=True, help="libpq: keyword=value (psql, psycopg, most libpq clients); uri: postgresql:// "
              "URI; kamailio: db_postgres's DBURL and con_param lines.")
@click.option("--uri", is_flag=True, help="Same as --format uri.")
@click.option("--keepalives/--no-keepalives", default=True, show_default=True,
              help="TCP keepalives and tcp_user_timeout (about 11 s to notice a host that crashed); leave them out "
              "only for a client that sets its own.")
@click.option("--own-first", is_flag=True,
              help="This node (--node) first: for a client that runs on a node of the pair and has no service IP.")
@node_option
@handle_errors
def command(config_path: Path, purpose: str, dbname: str, user: str | None, connect_timeout: int, fmt: str,
            uri: bool, keepalives: bool, own_first: bool, node: str | None) -> None:
    """Print a connection string for reports or for writes that finds the right node (never a password).

    Services that run on the pair itself are best pointed at the service IP (it is always on the
    node that serves); use --own-first on each node when they cannot be. Clients elsewhere take the
    host list as it is.
    """
    cfg = load(config_path)
    own = resolve_node(cfg, node) if own_first else None
    click.echo(libpq_dsn(cfg, purpose, dbname, user, connect_timeout, uri, Format(fmt), own, keepalives))
