"""The status page's rules, as pure functions: lag in bytes and seconds, what a failover would lose now,
and the newest history entries. The page and the metrics read the agent through these."""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from standby.model import DbState

SAMPLE_WINDOW_S = 600  # the page's lag graph: the last ten minutes


class Exposure(StrEnum):
    """What a failover now would cost in acknowledged commits."""

    NOTHING = "nothing"  # the standby has every acknowledged commit
    UP_TO_LAG = "up_to_lag"  # commits do not wait for the standby: what it lacks (lag_bytes) would be lost
    NO_FAILOVER = "no_failover"  # no standby would take over by itself now
    UNKNOWN = "unknown"  # this node cannot tell (not serving, or no primary heard)


class RiskReason(StrEnum):
    """One per rule of ``failover_risk``."""

    SYNC_STANDBY = "sync_standby"  # sync, and the standby is the primary's synchronous standby
    DEGRADED = "degraded"  # sync, but the primary stopped waiting for its standby
    ASYNC = "async"  # async: commits never wait
    NO_STANDBY = "no_standby"  # the primary hears no standby
    NOT_ELIGIBLE = "not_eligible"  # hot standby that would not promote by itself
    NO_PRIMARY_HEARD = "no_primary_heard"  # a standby that hears no primary
    NOT_SERVING = "not_serving"  # this node's PostgreSQL is down or fenced


@dataclass(frozen=True)
class Risk:
    exposure: Exposure
    reason: RiskReason
    lag_bytes: int | None


@dataclass(frozen=True)
class NodeFacts:
    """What one agent knows of the pair, enough to say what a failover would lose."""

    db: DbState  # FENCED when the agent has fenced this node
    sync: bool  # durability = sync
    hot: bool
    degraded: bool  # primary: commits stop waiting for the standby
    eligible: bool  # standby: it would promote by itself if the primary went away
    peer_sync: bool  # primary: the standby is its synchronous standby; standby: the primary says so
    peer_db: DbState | None  # the peer's state in a fresh heartbeat; None if not heard lately
    lag_bytes: int | None


def lag_bytes(db: DbState, lsn: int | None, peer_flush_lsn: int | None, peer_db: DbState | None,
              peer_lsn: int | None) -> int | None:
    """WAL the standby lacks: the primary's position less the standby's received one (each node reads
    its own server and the peer's last heartbeat)."""
    if db is DbState.STANDBY and peer_db is DbState.PRIMARY and peer_lsn is not None and lsn is not None:
        return max(0, peer_lsn - lsn)
    if db is DbState.PRIMARY and lsn is not None:
        standby_at = peer_flush_lsn if peer_flush_lsn is not None else (peer_lsn if peer_db is DbState.STANDBY else None)
        if standby_at is not None:
            return max(0, lsn - standby_at)
    return None


def failover_risk(f: NodeFacts) -> Risk:
    if f.db is DbState.PRIMARY:
        if f.peer_db is not DbState.STANDBY:
            return Risk(Exposure.NO_FAILOVER, RiskReason.NO_STANDBY, None)
        if f.sync and f.peer_sync and not f.degraded:
            return Risk(Exposure.NOTHING, RiskReason.SYNC_STANDBY, f.lag_bytes)
        return Risk(Exposure.UP_TO_LAG, RiskReason.DEGRADED if f.sync else RiskReason.ASYNC, f.lag_bytes)
    if f.db is DbState.STANDBY:
        if f.peer_db is not DbState.PRIMARY:
            return Risk(Exposure.UNKNOWN, RiskReason.NO_PRIMARY_HEARD, f.lag_bytes)
        if f.hot and not f.eligible:
            return Risk(Exposure.NO_FAILOVER, RiskReason.NOT_ELIGIBLE, f.lag_bytes)
        if f.sync and f.peer_sync:
            return Risk(Exposure.NOTHING, RiskReason.SYNC_STANDBY, f.lag_bytes)
        return Risk(Exposure.UP_TO_LAG, RiskReason.DEGRADED if f.sync else RiskReason.ASYNC, f.lag_bytes)
    return Risk(Exposure.UNKNOWN, RiskReason.NOT_SERVING, None)


@dataclass(frozen=True)
class Sample:
    t: float  # wall clock, seconds since the epoch
    primary_lsn: int | None
    standby_lsn: int | None
    lag_bytes: int | None
    lag_s: float | None


def lag_seconds(history: Iterable[tuple[float, int]], standby_lsn: int | None, primary_lsn: int | None,
                now: float) -> float | None:
    """How long ago the primary was where the standby is now, from (time, primary position) samples,
    oldest first. 0 when caught up; None when unknown or older than every sample."""
    if standby_lsn is None or primary_lsn is None:
        return None
    if standby_lsn >= primary_lsn:
        return 0.0
    last_reached: float | None = None
    for t, lsn in history:
        if lsn <= standby_lsn:
            last_reached = t  # the primary was still at or before the standby's position here
        else:
            break
    return None if last_reached is None else max(0.0, now - last_reached)


class Sampler:
    """The last minutes of the pair's positions, one sample a second, for the page's graph."""

    def __init__(self, window_s: float = SAMPLE_WINDOW_S, every_s: float = 1.0) -> None:
        self.samples: deque[Sample] = deque(maxlen=int(window_s / every_s) + 1)

    def add(self, t: float, primary_lsn: int | None, standby_lsn: int | None, lag: int | None) -> Sample:
        known = [(s.t, s.primary_lsn) for s in self.samples if s.primary_lsn is not None]
        if primary_lsn is not None:
            known.append((t, primary_lsn))
        known = _monotone(known)
        s = Sample(t, primary_lsn, standby_lsn, lag, lag_seconds(known, standby_lsn, primary_lsn, t))
        self.samples.append(s)
        return s


def _monotone(points: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Drop positions that went back (a new primary on another timeline restarts from its own)."""
    out: list[tuple[float, int]] = []
    for t, lsn in points:
        while out and out[-1][1] > lsn:
            out.pop()
        out.append((t, lsn))
    return out


def history_tail(path: Path, limit: int = 200, max_bytes: int = 256 * 1024) -> list[dict[str, Any]]:
    """The newest ``limit`` entries of a history file, oldest first, reading at most ``max_bytes`` of it:
    the file grows for the agent's life, the page needs only its end."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line read is cut
    out: list[dict[str, Any]] = []
    for line in lines[-limit - 1:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # empty, or cut by a crash
        if isinstance(entry, dict):
            out.append(entry)
    return out[-limit:]
