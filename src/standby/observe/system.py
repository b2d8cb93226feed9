"""Facts about a node that the pair must agree on or compare (versions, capacity)."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import psutil

from standby import __version__
from standby.config import Config
from standby.observe.postgres import installed_major


@dataclass(frozen=True)
class NodeFacts:
    node: str
    standby_version: str
    pg_major: int
    pg_version: str
    cpus: int
    memory_bytes: int
    hostname: str
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["updated_at"] = self.updated_at.isoformat()
        return d


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
        updated_at=datetime.now(timezone.utc),
    )
