"""`standby show systemd`: this node's systemd units, from the configuration and this installation."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath

import click

import standby
from standby import units
from standby.cli.common import OperatorError, config_option, handle_errors, load_node, node_option


@click.group("show")
def group() -> None:
    """Print what this node needs from elsewhere (its systemd units)."""


@group.command("systemd")
@config_option
@node_option
@click.option("--unit", "unit_text", default=units.UnitName.AGENT.value, show_default=True,
              help=f"Which unit: {units.UnitName.AGENT.value} (the agent) or {units.UnitName.SHIPPER.value} "
                   "(the call-record shipper, with [spool]).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the unit to this file (replaced in one step, and only if the unit could be made) "
                   "instead of printing it, e.g. /etc/systemd/system/standby.service.")
@handle_errors
def systemd(config_path: Path, node: str | None, unit_text: str, output: Path | None) -> None:
    """Print this node's unit file for systemd (or write it with --output).

    It runs this installation's `standby` with this configuration and node, and lets the agent write
    only the directories the configuration names (state_dir, PostgreSQL's). Reads nothing but the
    configuration; writes nothing but --output.
    """
    cfg, me = load_node(config_path, node)
    try:
        unit = units.parse_unit_name(unit_text)
        text = units.render(cfg, me, PurePosixPath(os.path.abspath(config_path)), _installation(), unit)
    except units.UnitError as e:
        raise OperatorError(str(e)) from None
    if output is None:
        click.echo(text, nl=False)
    else:
        _replace(output, text)
        click.echo(f"wrote {output}; then: systemctl daemon-reload && systemctl enable --now {unit.value}", err=True)
    if unit is units.UnitName.AGENT and cfg.spool is not None:
        click.echo(f"note: [spool] is configured: print the shipper's unit too with `standby show systemd --unit "
                   f"{units.UnitName.SHIPPER.value} > /etc/systemd/system/{units.UnitName.SHIPPER.file}`", err=True)


def _installation() -> units.Install:
    """The `standby` command running now (or else the one on PATH) and where its code is loaded from."""
    argv0 = Path(sys.argv[0])
    exe = str(argv0) if argv0.name == "standby" and argv0.is_file() else shutil.which("standby")
    if exe is None:
        raise OperatorError("cannot tell where the `standby` command is installed: run this through the installed "
                            "command (e.g. /opt/standby/bin/standby show systemd), or put it on PATH")
    package = Path(standby.__file__).resolve().parent.parent
    return units.Install(exe=PurePosixPath(os.path.realpath(exe)),
                         roots=(PurePosixPath(os.path.realpath(sys.prefix)), PurePosixPath(package)))


def _replace(path: Path, text: str) -> None:
    """``path`` holds ``text``, or (on any failure) whatever it held before: never half a unit."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise OperatorError(f"cannot write into {path.parent}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise OperatorError(f"cannot write {path}: {e.strerror}") from None
