"""Whether the local primary's WAL disk still completes writes, from the agent's readings of its server.

A disk that hangs (a lost storage path, a controller that stops answering) leaves the server's processes in
uninterruptible waits on their WAL writes, while everything it keeps in memory still answers: the agent's
question, which reads memory only, is answered as ever, and no commit finishes. What tells it: the flush
position stands still while a process waits on a WAL write or sync, reading after reading. An idle primary
has nobody waiting (a record left in a partial page is flushed by no one, and that is no hang); a working
disk moves the flush position between two readings. Pure: the agent keeps one ``WalWatch`` and replaces it
at each reading.
"""

from __future__ import annotations

from dataclasses import dataclass

from standby.model import DbState, LocalPg


@dataclass(frozen=True)
class WalWatch:
    """Since when (monotonic, the agent's clock) the flush position ``flush_lsn`` has stood still with a WAL
    write or sync waited on at every reading; ``since`` None: not standing still, or nobody waiting."""

    flush_lsn: int | None = None
    since: float | None = None

    def after(self, pg: LocalPg, now: float) -> WalWatch:
        if pg.db is not DbState.PRIMARY or pg.flush_lsn is None or not pg.wal_waiting:
            return WalWatch()  # no commit waits on the disk (idle, a standby, down): nothing hangs
        if self.since is not None and pg.flush_lsn == self.flush_lsn:
            return self  # still standing, still waited on
        return WalWatch(pg.flush_lsn, now)  # moved, or first seen waited on: counts from this reading

    def stuck_s(self, now: float) -> float:
        return 0.0 if self.since is None else max(0.0, now - self.since)
