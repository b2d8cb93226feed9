"""`standby ship`: the call-record shipper, a process of its own (etc/standby-ship.service)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from standby.cli.common import OperatorError, config_option, handle_errors, load_node, node_option


@click.command("ship")
@config_option
@node_option
@click.option("--once", is_flag=True, help="Stop once every complete line in the spool is shipped (or set aside).")
@click.option("-v", "--verbose", is_flag=True, help="Log every connection and batch to stderr.")
@handle_errors
def command(config_path: Path, node: str | None, once: bool, verbose: bool) -> None:
    """Ship the call records of this node's spool ([spool]) into the primary, each exactly once.

    Runs until stopped; progress survives restarts, failovers and switchovers. Backlog and
    counters appear in `standby status` and the agent's /metrics.
    """
    from standby.spool.shipper import Shipper  # psycopg and the spool only for this command

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, me = load_node(config_path, node)
    if cfg.spool is None:
        raise OperatorError("no [spool] section in the configuration: nothing to ship (see the README, "
                            "\"Call records that cannot be dropped\")")
    Shipper(cfg, me).run(once=once)
