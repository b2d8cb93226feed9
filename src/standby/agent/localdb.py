"""The agent's one connection to its local PostgreSQL: every read and every statement goes through it.

It owns: the connection (opened on first use, dropped after any error), the observation query
(role, WAL positions, the standby's receiver, the primary's replica), the few statements actions
run (promote, checkpoint, synchronous_standby_names, the peer's and followers' slots, the received position), and starting
and stopping the server (the stop is the fence's escalating stop, act/fence.py).
It may not: decide, run on the event loop (every method blocks: callers run them on the agent's one
PostgreSQL thread; the exceptions are request_stop, a signal that neither waits nor touches the connection,
and fence_stop, which does not touch it either), or open a second connection.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import psycopg

from standby.act import fence
from standby.act import postgres as pgact
from standby.config import Config
from standby.model import DbState, LocalPg, Lsn
from standby.observe import postgres as pgobs

Reading = tuple[LocalPg, str | None] | pgobs.Unanswered  # the server and its synchronous_standby_names
log = logging.getLogger(__name__)
PROMOTE_WAIT_S = 30.0
PROMOTE_POLL_S = 0.005
SLOT_LOOK_S = 60.0


class Database(Protocol):
    """What the agent does with its local server (a fake in unit tests)."""

    @property
    def connected(self) -> bool: ...
    def read(self) -> Reading: ...
    def promote(self) -> None: ...
    def checkpoint(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def fence_stop(self, at_once: bool = False) -> None: ...
    def request_stop(self) -> None: ...
    def set_sync_names(self, value: str) -> None: ...
    def received_lsn(self) -> Lsn | None: ...
    def ensure_peer_slot(self) -> None: ...
    def ensure_follower_slots(self, primary: bool | None) -> None: ...


class LocalDb:
    def __init__(self, cfg: Config, node: str) -> None:
        self.cfg, self.node, self.peer = cfg, node, cfg.peer_of(node)
        self._conn: psycopg.Connection | None = None
        self._slots_made = False  # the follower slots, once per connection (a restored backup may lack them)
        self._slots_looked: tuple[bool, float] | None = None  # role and time of the last look for idle slots
        self._flush_seen: int | None = None  # the previous reading's flush position (OBSERVE_SQL)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _local(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = open_agent_connection(self.cfg, self.node)
        return self._conn

    def _drop(self) -> None:
        close_quietly(self._conn)
        self._conn = None
        self._slots_made = False

    def read(self) -> Reading:
        try:
            reading = read_local(self._local(), self.peer, self._flush_seen)
            self._flush_seen = reading[0].flush_lsn
            return reading
        except psycopg.Error as e:
            self._drop()
            return pgobs.unanswered(e, pgobs.postmaster_running(self.cfg.pg(self.node).data_dir))

    def promote(self) -> None:
        conn = self._local()
        self._reserve_peer_slot(conn)
        # pg_promote(true) looks every 100 ms whether the promotion is over; asking this often hands
        # the writes over as soon as it is (it waits as long, and goes on after it as before).
        conn.execute("SELECT pg_promote(false)")
        deadline = time.monotonic() + PROMOTE_WAIT_S
        while (row := conn.execute("SELECT pg_is_in_recovery()").fetchone()) and row[0]:
            if time.monotonic() >= deadline:
                break
            time.sleep(PROMOTE_POLL_S)
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        conn.execute("SELECT pg_reload_conf()")

    def _reserve_peer_slot(self, conn: psycopg.Connection) -> None:
        """The old primary's slot, made while still in recovery: it holds the WAL from the last restartpoint,
        from before the fork, that a rewind of the old primary replays; made after the promotion it would
        hold only what follows the promotion's checkpoint. A failure here never stops the promotion."""
        try:
            pgact.ensure_slot(conn, self.cfg.slot_name(self.peer))
        except psycopg.Error as e:
            log.warning("could not reserve the replication slot for %s before promoting: %s", self.peer, e)

    def checkpoint(self) -> bool:
        """A CHECKPOINT within the connection's statement timeout; False if it did not finish (the
        checkpointer goes on with it, the next checkpoint writes what is left)."""
        try:
            self._local().execute("CHECKPOINT")
        except psycopg.Error:
            self._drop()
            return False
        return True

    def start(self) -> None:
        pgact.start(self.cfg, self.node, 60)

    def stop(self) -> None:
        """The escalating stop (fast, immediate, then SIGKILL: `standby fence`'s routine) after dropping the
        connection, on the PostgreSQL thread: a switchover's or a rejoin's stop (a fence's is fence_stop)."""
        self._drop()
        fence.stop_postgres(self.cfg, self.node)

    def fence_stop(self, at_once: bool = False) -> None:
        """The same escalating stop without the connection, so that it may run on a thread of its own beside a
        reading that hangs on this one (a backend stuck where its statement timeout cannot reach, a server
        stopped by SIGSTOP: the SIGKILL such a server needs would wait behind the reading otherwise). The next
        reading finds the server gone, drops the connection and reads DOWN. ``at_once``: SIGKILL only."""
        fence.stop_postgres(self.cfg, self.node, at_once=at_once)

    def request_stop(self) -> None:
        """A fence's first move: the fast-shutdown signal, on the caller's thread (no connection used).
        Best effort: the FENCE action's own stop follows and escalates, so a failure here only costs time."""
        try:
            pgact.request_fast_stop(self.cfg, self.node)
        except OSError as e:
            log.warning("could not ask PostgreSQL to stop at once: %s", e)

    def set_sync_names(self, value: str) -> None:
        if self._conn is not None:
            pgact.set_sync_names(self._conn, value)

    def received_lsn(self) -> Lsn | None:
        row = self._local().execute("SELECT pg_last_wal_receive_lsn()::text").fetchone()
        return Lsn.parse(row[0]) if row else None

    def ensure_peer_slot(self) -> None:
        if self._conn is not None:
            pgact.ensure_slot(self._conn, self.cfg.slot_name(self.peer))

    def ensure_follower_slots(self, primary: bool | None) -> None:
        """The followers' slots: the missing ones made (once per connection), and those that pin WAL here for
        nothing released (act.postgres.release_follower_slots), looked at when the role changes and every
        SLOT_LOOK_S (a query a minute, not one per step). ``primary`` None: the role is not known now, and
        which slots are idle depends on it, so none is released."""
        if self._conn is None or not self.cfg.followers:
            return
        try:
            if not self._slots_made:
                if made := pgact.ensure_follower_slots(self._conn, self.cfg, self.node):
                    log.info("replication slots for followers created: %s", ", ".join(made))
                self._slots_made = True
            now = time.monotonic()
            if primary is None:
                return
            if self._slots_looked is None or self._slots_looked[0] != primary \
                    or now - self._slots_looked[1] >= SLOT_LOOK_S:
                if released := pgact.release_follower_slots(self._conn, self.cfg, self.node, primary):
                    log.info("replication slots of followers that stream elsewhere released (they pinned WAL "
                             "here): %s", ", ".join(released))
                self._slots_looked = (primary, now)
        except psycopg.Error as e:  # e.g. max_replication_slots reached: said, tried again next step
            log.warning("could not create or release the followers' replication slots: %s", e)


def open_agent_connection(cfg: Config, node: str) -> psycopg.Connection:
    """An agent's connection to its own server (a pair node's or a follower's)."""
    conn = pgobs.connect_local(cfg, node, application_name=pgobs.AGENT_APPLICATION_NAME)
    # Bounds how long a slow query holds the PostgreSQL thread; a timeout is not a crash.
    conn.execute("SET statement_timeout = '2s'")
    return conn


def close_quietly(conn: psycopg.Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass


# One round trip per observation (the step reads it every heartbeat interval), all of it from one snapshot
# of the server. pg_is_in_recovery() is read once: the primary's columns only where it said primary
# (pg_current_wal_lsn() fails in recovery; a primary never goes back into it), the receiver's only in recovery.
# Whether the flush position is awaited (standby.observe.walstuck) is looked up only when it has not moved
# since the agent's previous reading (``flush_seen``) and WAL waits for it: the sessions are scanned
# only when that CASE branch is taken (an uncorrelated sub-select runs on first use), so a busy primary,
# whose flush moves, and an idle one, which has nothing unflushed, never pay for it. All of it is read from
# memory: a hung disk holds none of it.
OBSERVE_SQL = """
SELECT r.in_recovery, current_setting('synchronous_standby_names'),
       CASE WHEN NOT r.in_recovery THEN pg_current_wal_lsn()::text END,
       rep.sync_state, rep.flush_lsn::text,
       pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
       w.status, extract(epoch FROM clock_timestamp() - w.last_msg_receipt_time)::float8,
       CASE WHEN NOT r.in_recovery THEN pg_current_wal_flush_lsn()::text END,
       CASE WHEN NOT r.in_recovery AND pg_current_wal_flush_lsn() - '0/0'::pg_lsn = %(flush_seen)s
                 AND pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()
            THEN pg_current_wal_insert_lsn() - pg_current_wal_flush_lsn() > current_setting('wal_block_size')::numeric
                 OR EXISTS (SELECT FROM pg_stat_activity
                            WHERE (wait_event_type = 'IO'
                                   AND wait_event IN ('WALWrite', 'WALSync', 'WALInitWrite', 'WALInitSync'))
                               OR (wait_event_type = 'LWLock' AND wait_event = 'WALWrite'))
            ELSE false END
FROM (SELECT pg_is_in_recovery() AS in_recovery) r
LEFT JOIN LATERAL (
    SELECT sync_state, flush_lsn FROM pg_stat_replication
    WHERE application_name = %(peer)s AND state = 'streaming' ORDER BY flush_lsn DESC NULLS LAST LIMIT 1
) rep ON NOT r.in_recovery
LEFT JOIN pg_stat_wal_receiver w ON r.in_recovery
"""


def read_local(conn: psycopg.Connection, peer: str, flush_seen: int | None = None) -> tuple[LocalPg, str | None]:
    """The local server in one round trip; ``flush_seen``: the flush position the previous reading saw."""
    row = conn.execute(OBSERVE_SQL, {"peer": peer, "flush_seen": flush_seen}).fetchone()
    assert row is not None  # the query's one row
    in_recovery, names, lsn, sync_state, flush_text, recv, replay, status, age, own_flush, wal_waiting = row
    if not in_recovery:
        flush, flushed_here = Lsn.parse(flush_text), Lsn.parse(own_flush)
        # "quorum": replication.quorum asked for ANY k; config refuses one that could leave the hot standby
        # without a commit under automatic failover, so there it waits for the standby as "sync" does.
        in_sync = sync_state in ("sync", "quorum")
        return LocalPg(DbState.PRIMARY, lsn=Lsn.parse(lsn).value, peer_sync=in_sync,  # type: ignore[union-attr]
                       peer_flush_lsn=flush.value if flush else None,
                       flush_lsn=flushed_here.value if flushed_here else None, wal_waiting=bool(wal_waiting)), names
    # The age of the upstream's last message is computed by the server, on its own clock.
    pos = Lsn.parse(recv) or Lsn.parse(replay)
    applied = Lsn.parse(replay)
    return LocalPg(DbState.STANDBY, lsn=pos.value if pos else None, replay_lsn=applied.value if applied else None,
                   streaming=status == "streaming", upstream_age_s=float(age) if age is not None else None), names
