"""The pieces every bootstrap shares (a pair node's, a follower's): its steps, its refusal, moving old data aside."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from standby.act import postgres as act
from standby.config import Postgres


@dataclass(frozen=True)
class Step:
    name: str
    changed: bool
    detail: str = ""


class BootstrapBlocked(Exception):
    """Bootstrap cannot go on; the message says what blocks it and what to do."""


Report = Callable[[Step], None]


def refuse_unanswering(pg: Postgres) -> None:
    """A data directory whose server runs but does not answer where the configuration looks for it."""
    if (pid := act.running_pid(pg.data_dir)) is not None:
        raise BootstrapBlocked(f"data directory {pg.data_dir} is in use by PID {pid}, but PostgreSQL does not answer "
                               f"on {pg.socket_dir} port {pg.port}; check postgres.socket_dir/port or stop that server")


def refuse_foreign(data_dir: Path) -> None:
    """Files that are no database: never cloned over."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BootstrapBlocked(f"{data_dir} is not empty but holds no database (no PG_VERSION); empty it or point "
                               "postgres.data_dir elsewhere")


def move_aside(data_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = data_dir.with_name(f"{data_dir.name}.replaced-{stamp}")
    data_dir.rename(aside)
    return aside
