"""What the shipper does next, given what it observed: a pure function with a reason per rule.

The shell reads a batch of lines, connects to whichever node is writable, inserts the batch in one
transaction and only then moves its durable offset. Every failure leads to a wait and a retry of
the same batch (the unique key makes a second insert harmless); a batch the database refuses is
sent again one record at a time, so the one record it refuses is set aside and the rest go in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from standby.documents import ShipPhase, ShipProblem


class Action(StrEnum):
    READ = "read"  # fill a batch from the spool
    CONNECT = "connect"  # to the writable node (target_session_attrs=read-write over the pair's addresses)
    INSERT = "insert"  # the batch in one transaction, then the offset
    INSERT_EACH = "insert_each"  # one record per transaction: find the one the database refuses
    WAIT = "wait"


class Outcome(StrEnum):
    """What the last action found."""

    NONE = "none"  # nothing done yet
    READ_SOME = "read_some"
    READ_NOTHING = "read_nothing"  # no complete line past the offset
    CONNECTED = "connected"
    CONNECT_FAILED = "connect_failed"
    COMMITTED = "committed"
    LOST = "lost"  # the connection broke, or the node stopped being writable: its commit may or may not count
    REFUSED = "refused"  # the database refused a record of the batch (its data, not the server)
    SERVER_ERROR = "server_error"  # refused for a reason no record causes (permissions, a missing table)
    WAITED = "waited"


class Reason(StrEnum):
    NOTHING_PENDING = "nothing pending: read the spool"
    CAUGHT_UP = "every complete line is shipped: wait for more"
    NO_CONNECTION = "records pending and no connection"
    BATCH_READY = "records pending and a writable node"
    FIND_REFUSED = "the database refused the batch: one record at a time"
    RETRY_LATER = "the last attempt failed: wait, then try the same records again"


@dataclass(frozen=True)
class View:
    last: Outcome
    pending: int  # records read and not yet in the database
    connected: bool
    failures: int  # consecutive failed connects or inserts
    one_by_one: bool  # the pending batch is being sent a record at a time


@dataclass(frozen=True)
class Policy:
    poll_s: float
    retry_max_s: float
    retry_first_s: float = 0.05


@dataclass(frozen=True)
class Step:
    action: Action
    reason: Reason
    wait_s: float = 0.0


_FAILED = (Outcome.CONNECT_FAILED, Outcome.LOST, Outcome.SERVER_ERROR)


def next_step(v: View, p: Policy) -> Step:
    if v.last in _FAILED:
        return Step(Action.WAIT, Reason.RETRY_LATER, backoff(v.failures, p))
    if v.pending == 0:
        if v.last is Outcome.READ_NOTHING:
            return Step(Action.WAIT, Reason.CAUGHT_UP, p.poll_s)
        return Step(Action.READ, Reason.NOTHING_PENDING)
    if not v.connected:
        return Step(Action.CONNECT, Reason.NO_CONNECTION)
    if v.one_by_one or v.last is Outcome.REFUSED:
        return Step(Action.INSERT_EACH, Reason.FIND_REFUSED)
    return Step(Action.INSERT, Reason.BATCH_READY)


def backoff(failures: int, p: Policy) -> float:
    """Doubling from retry_first_s up to retry_max_s: a failover takes about a second, so retry soon."""
    return float(min(p.retry_max_s, p.retry_first_s * 2.0 ** min(max(failures - 1, 0), 30)))


# SQLSTATE classes and codes that a record's own content causes: setting that record aside is right.
_RECORD_CLASSES = ("22", "23")  # data exception, integrity constraint violation
_RECORD_CODES = ("54000", "P0001")  # program limit exceeded (an index entry too big), raised by a trigger
# The server went away or stopped being writable: another node may be the primary now.
_LOST_CLASSES = ("08",)
_LOST_CODES = ("25006", "57P01", "57P02", "57P03")


def classify(sqlstate: str | None) -> Outcome:
    """An error of an insert, by its SQLSTATE (None: no answer from the server at all)."""
    if sqlstate is None or sqlstate[:2] in _LOST_CLASSES or sqlstate in _LOST_CODES:
        return Outcome.LOST
    if sqlstate[:2] in _RECORD_CLASSES or sqlstate in _RECORD_CODES:
        return Outcome.REFUSED
    return Outcome.SERVER_ERROR


def phase(pending: int, backlog_bytes: int, connected: bool, failures: int) -> ShipPhase:
    if pending == 0 and backlog_bytes == 0:
        return ShipPhase.CAUGHT_UP
    if not connected and failures > 0:
        return ShipPhase.NO_PRIMARY
    return ShipPhase.SHIPPING


def problems(ph: ShipPhase, disk_free_bytes: int | None, min_free_bytes: int, save_failed: bool,
             spool_unreadable: bool) -> tuple[ShipProblem, ...]:
    out = []
    if disk_free_bytes is not None and disk_free_bytes < min_free_bytes:
        out.append(ShipProblem.DISK_LOW)
    if save_failed:
        out.append(ShipProblem.NOT_SAVED)
    if spool_unreadable:
        out.append(ShipProblem.SPOOL_UNREADABLE)
    if ph is ShipPhase.NO_PRIMARY:
        out.append(ShipProblem.NO_PRIMARY)
    return tuple(out)
