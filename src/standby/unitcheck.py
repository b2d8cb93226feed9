"""`standby check`: the systemd units the configuration names exist. A service started with
``systemctl start kamailio`` whose unit systemd does not know would fail only at the first take-over;
a cluster's ``postgresql@15-main.service`` is how the agent starts its server.

``named`` and ``items`` are pure; ``load_states`` asks systemd (read-only).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from standby.config import Config
from standby.layout import ClusterRef
from standby.model import CheckItem, Verdict

# systemctl verbs whose arguments after the options are unit names.
_UNIT_VERBS = {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "is-active", "status",
               "is-failed", "kill"}


def _units_in(argv: list[str]) -> list[str]:
    if not argv or Path(argv[0]).name != "systemctl":
        return []
    args = [a for a in argv[1:] if not a.startswith("-")]
    return args[1:] if args and args[0] in _UNIT_VERBS else []


def systemd_booted() -> bool:
    return Path("/run/systemd/system").is_dir()  # sd_booted(3)


def named(cfg: Config, node: str, booted: bool) -> dict[str, str]:
    """Unit name -> the configuration key that names it, for ``node``; a cluster's own unit only where
    systemd runs (elsewhere the agent starts the cluster with pg_ctlcluster)."""
    out: dict[str, str] = {}
    for i, svc in enumerate(cfg.services):
        for which in ("start", "stop", "health"):
            for unit in _units_in(svc.argv(which, node) or []):
                out.setdefault(unit, f"services[{i}].{which} ({svc.name})")
    cluster = cfg.pg(node).cluster
    if cluster is not None and booted:
        out.setdefault(ClusterRef.parse(cluster).unit, "postgres.cluster")
    return out


def load_states(units: list[str]) -> dict[str, str | None]:
    """Each unit's LoadState as systemd says it ("loaded", "not-found", "masked", ...); None where systemd
    could not be asked (not running here, no systemctl)."""
    out: dict[str, str | None] = {}
    for unit in units:
        try:
            res = subprocess.run(["systemctl", "show", "--property=LoadState", "--value", "--", unit],
                                 capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            out[unit] = None
            continue
        out[unit] = (res.stdout.strip() or None) if res.returncode == 0 else None
    return out


def items(node: str, units: dict[str, str], states: dict[str, str | None]) -> list[CheckItem]:
    """A check item per named unit: known, unknown to systemd (the fix named), or not asked."""
    out = []
    for unit, key in units.items():
        state = states.get(unit)
        name = f"unit {unit}"
        if state == "loaded":
            out.append(CheckItem(node, name, Verdict.PASS, f"systemd knows it ({key})"))
        elif state == "not-found":
            out.append(CheckItem(node, name, Verdict.FAIL,
                                 f"{key} names {unit}, which systemd does not know: install the package that provides "
                                 f"it, or correct the name in the configuration (`systemctl list-unit-files` lists "
                                 f"the units there are)"))
        elif state == "masked":
            out.append(CheckItem(node, name, Verdict.FAIL,
                                 f"{key} names {unit}, which is masked and cannot start: `systemctl unmask {unit}`"))
        elif state is None:
            out.append(CheckItem(node, name, Verdict.WARN,
                                 f"{key} names {unit}, but systemd could not be asked here (is it running?)"))
        else:
            out.append(CheckItem(node, name, Verdict.WARN, f"{key} names {unit}, whose LoadState is {state}"))
    return out
