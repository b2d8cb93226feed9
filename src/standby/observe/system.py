"""Facts about a node that the pair must agree on or compare (versions, capacity)."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime

import psutil

from standby import __version__
from standby.config import Config
from standby.documents import NodeFacts
from standby.observe.postgres import installed_major

__all__ = ["NodeFacts", "local_facts"]


def local_facts(cfg: Config, node: str) -> NodeFacts:
    major, full = installed_major(cfg.pg(node).bin_dir)
    return NodeFacts(
        node=node,
        standby_version=__version__,
        pg_major=major,
        pg_version=full,
        cpus=len(os.sched_getaffinity(0)),
        memory_bytes=psutil.virtual_memory().total,
        hostname=socket.gethostname(),
        updated_at=datetime.now(UTC),
    )
