"""The typed vocabulary shared by observation, decisions, actions and output."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PgRole(StrEnum):
    PRIMARY = "primary"  # running, not in recovery: accepts writes
    STANDBY = "standby"  # running, in recovery
    STOPPED = "stopped"  # data directory present, server not running
    EMPTY = "empty"  # no data directory yet (before a clone)
    UNREACHABLE = "unreachable"  # a remote node we could not reach


class SyncState(StrEnum):
    SYNC = "sync"
    POTENTIAL = "potential"
    QUORUM = "quorum"
    ASYNC = "async"
    NONE = "none"  # not connected as a replica


class Verdict(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, order=True)
class Lsn:
    """A WAL position; ordered and subtractable (bytes)."""

    value: int

    @classmethod
    def parse(cls, text: str | None) -> Lsn | None:
        if not text:
            return None
        hi, lo = text.split("/")
        return cls((int(hi, 16) << 32) | int(lo, 16))

    def __sub__(self, other: Lsn) -> int:
        return self.value - other.value

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class CheckItem:
    """One preflight finding, with a reason a person can act on."""

    node: str
    name: str
    verdict: Verdict
    reason: str
