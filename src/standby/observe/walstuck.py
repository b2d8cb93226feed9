"""Whether the local primary's WAL disk still completes writes, from the agent's readings of its server.

A disk that hangs (a lost storage path, a controller that stops answering) leaves the server's processes in
uninterruptible waits on their WAL writes, while everything it keeps in memory still answers: the agent's
question, which reads memory only, is answered as ever, and no commit finishes. What tells it, reading after
reading: the flush position stands still while the server waits for it to move, that is a process waits on
a WAL write or sync (or on the lock of the process doing one), or more than a page of WAL is written and not
flushed (the WAL writer flushes whole pages within its delay; an idle primary leaves at most a partial page,
which nobody flushes and nobody waits for). A working disk moves the flush position between two readings.

Only time the readings cover counts: from the first reading of a run that stood still to the latest one. A
reading that is late or fails says nothing of the disk, and one that fails starts the count again (the
agent's own question is answered from memory on a hung disk; a server too busy to answer it is no hung disk).
Pure: the agent keeps one ``WalWatch`` and replaces it at each reading.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from standby.model import DbState, LocalPg


@dataclass(frozen=True)
class WalWatch:
    """The run of readings that saw the flush position ``flush_lsn`` stand still while awaited: the first
    one's time (``since``) and the latest one's (``last``), on the agent's monotonic clock; None: no such run."""

    flush_lsn: int | None = None
    since: float | None = None
    last: float | None = None

    def after(self, pg: LocalPg, now: float) -> WalWatch:
        if pg.db is not DbState.PRIMARY or pg.flush_lsn is None or not pg.wal_waiting:
            return WalWatch()  # nothing waits on the disk (idle, a standby, down): nothing hangs
        if self.since is not None and pg.flush_lsn == self.flush_lsn:
            return replace(self, last=now)  # still standing, still awaited
        return WalWatch(pg.flush_lsn, now, now)  # moved, or first seen awaited: counts from this reading

    def stuck_s(self) -> float:
        return 0.0 if self.since is None or self.last is None else self.last - self.since
