"""A two-server lab on one Linux machine: network namespaces, bridges and real PostgreSQL 15 servers.

Used by the demo, the benchmarks and the integration tests. Needs root.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from standby.lab.errors import CommandFailed, LabError, LabExists, LabMissing, PrerequisiteMissing
    from standby.lab.lab import Lab, check_prerequisites, exists
    from standby.lab.topology import (
        DEFAULT_NAME,
        GATEWAY,
        LAB_BASE,
        NAME_ENV,
        SERVICE_IP,
        LabSpec,
        Net,
        NodeLayout,
        Role,
    )

# Where each name lives, imported on first use: a service's health command (standby.lab.health) runs
# once a second and must not pay for the whole lab (aiohttp, psycopg, pydantic) by importing a sibling.
_HOME = {
    **dict.fromkeys(("CommandFailed", "LabError", "LabExists", "LabMissing", "PrerequisiteMissing"), "standby.lab.errors"),
    **dict.fromkeys(("Lab", "check_prerequisites", "exists"), "standby.lab.lab"),
    **dict.fromkeys(("DEFAULT_NAME", "GATEWAY", "LAB_BASE", "NAME_ENV", "SERVICE_IP", "LabSpec", "Net", "NodeLayout",
                     "Role"), "standby.lab.topology"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'standby.lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_NAME",
    "GATEWAY",
    "LAB_BASE",
    "NAME_ENV",
    "SERVICE_IP",
    "CommandFailed",
    "Lab",
    "LabError",
    "LabExists",
    "LabMissing",
    "LabSpec",
    "Net",
    "NodeLayout",
    "PrerequisiteMissing",
    "Role",
    "check_prerequisites",
    "exists",
]
