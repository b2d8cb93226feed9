"""A two-server lab on one Linux machine: network namespaces, bridges and real PostgreSQL 15 servers.

Used by the demo, the benchmarks and the integration tests. Needs root.
"""

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
