"""The pieces every bootstrap shares (a pair node's, a follower's): its steps, its refusal, moving old data aside."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class Step:
    name: str
    changed: bool
    detail: str = ""


class BootstrapBlocked(Exception):
    """Bootstrap cannot go on; the message says what blocks it and what to do."""


Report = Callable[[Step], None]


def move_aside(data_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = data_dir.with_name(f"{data_dir.name}.replaced-{stamp}")
    data_dir.rename(aside)
    return aside
