"""What a follower's agent sees: its own PostgreSQL, the pair's agents and its possible upstreams' servers.

It owns: reading the local server (recovery, WAL receiver: status, sender, timeline, positions), asking
each pair agent for its view (GET /status over the private network, short timeouts) and each possible
upstream's PostgreSQL for its timeline and history (replication protocol: IDENTIFY_SYSTEM,
TIMELINE_HISTORY), each member on a thread of its own so a silent node never holds up the follower's
steps or the other members; turning what it saw into follow.PairView values.
Both questions go over connections kept from round to round (one replication connection, one HTTP
keep-alive connection per member), so a round costs a pair node no new backend and no handshake; a
connection is opened again only after a round failed on it.
It may not: decide, act, write anything, or block a step on the network.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import psycopg
from psycopg import pq

from standby.apiclient import StatusSession
from standby.config import Config
from standby.documents import AGENT_VIEW, AgentView
from standby.follow import FollowerPg, PairView
from standby.model import DbState, Lsn
from standby.observe import postgres as pgobs
from standby.topology import KEYWORDS

log = logging.getLogger(__name__)
ANSWER_TIMEOUT_S = 1.0  # an agent or a server slower than this counts as silent for that round
C = TypeVar("C")


@dataclass(frozen=True)
class Upstream:
    """A node's PostgreSQL as a replica connecting to it sees it."""

    timeline: int
    flush_lsn: int | None
    history: tuple[tuple[int, int], ...] = ()  # (timeline, LSN where the next one left it), oldest first


def parse_history(text: str) -> tuple[tuple[int, int], ...]:
    """A timeline history file's lines ``parent<TAB>switch LSN<TAB>reason`` as (timeline, LSN) pairs."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and (lsn := Lsn.parse(parts[1])) is not None:
            out.append((int(parts[0]), lsn.value))
    return tuple(out)


def text(value: object) -> str:
    # A walsender's answers come back untyped for psycopg: bytes, or text.
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(cfg: Config, node: str) -> psycopg.Connection:
    """A replication connection to ``node`` as the replication role (what pg_hba lets a follower do), to be
    kept between rounds: named apart from the WAL streams, with the server's keepalives above."""
    params = {**pgobs.peer_conninfo(cfg, node), "connect_timeout": max(1, int(ANSWER_TIMEOUT_S)),
              "application_name": pgobs.WATCH_APPLICATION_NAME, "options": pgobs.WATCH_SERVER_KEEPALIVES,
              **pgobs.WATCH_CLIENT_KEEPALIVES}
    return psycopg.connect(**params, replication="true", autocommit=True)  # type: ignore[arg-type]


def _wait(fd: int, deadline: float, write: bool = False) -> None:
    left = deadline - time.monotonic()
    ready = select.select([] if write else [fd], [fd] if write else [], [], max(0.0, left))
    if not (ready[0] or ready[1]):
        raise TimeoutError(f"no answer within {ANSWER_TIMEOUT_S:g} s")


def ask(conn: psycopg.Connection, command: str, deadline: float) -> tuple[object, ...] | None:
    """The first row of a replication command's answer, given up at ``deadline`` (time.monotonic()) with
    TimeoutError: on a kept connection, a server that stopped answering (a stalled process, a half-dead
    connection) must make the round silent, not hold it. The connection is unusable after an error."""
    pg = conn.pgconn
    pg.send_query(command.encode())
    while pg.flush():  # what did not fit in the socket's buffer waits for it
        _wait(pg.socket, deadline, write=True)
    last: pq.abc.PGresult | None = None
    while True:
        while pg.is_busy():
            _wait(pg.socket, deadline)
            pg.consume_input()
        res = pg.get_result()
        if res is None:
            break
        last = res
    if last is None or last.status != pq.ExecStatus.TUPLES_OK:
        why = last.error_message.decode(errors="replace").strip() if last is not None else "no result"
        raise psycopg.OperationalError(f"{command}: {why}")
    if last.ntuples == 0:
        return None
    return tuple(last.get_value(0, i) for i in range(last.nfields))


def identify_on(conn: psycopg.Connection, node: str, known: dict[int, tuple[tuple[int, int], ...]],
                deadline: float) -> Upstream:
    """``node``'s timeline, flush position and history over ``conn``, answered by ``deadline``; ``known``:
    histories already read (a timeline's never changes, so TIMELINE_HISTORY is asked once per timeline)."""
    row = ask(conn, "IDENTIFY_SYSTEM", deadline)
    if row is None or row[1] is None:
        raise psycopg.OperationalError(f"{node}: IDENTIFY_SYSTEM answered nothing")
    timeline, pos = int(text(row[1])), Lsn.parse(text(row[2]))
    if timeline > 1 and timeline not in known:
        got = ask(conn, f"TIMELINE_HISTORY {timeline}", deadline)
        known[timeline] = parse_history(text(got[1]) if got else "")
    return Upstream(timeline, pos.value if pos else None, known.get(timeline, ()))


def identify(cfg: Config, node: str, known: dict[int, tuple[tuple[int, int], ...]]) -> Upstream:
    """identify_on over a connection of its own, closed after."""
    with connect(cfg, node) as conn:
        return identify_on(conn, node, known, time.monotonic() + ANSWER_TIMEOUT_S)


def accepts_writes(cfg: Config, node: str) -> bool:
    """Whether ``node``'s server is a primary, asked over a replication connection (all a follower's
    pg_hba line allows); raises psycopg.Error when it does not answer."""
    params = {**pgobs.peer_conninfo(cfg, node), "connect_timeout": max(1, int(ANSWER_TIMEOUT_S))}
    with psycopg.connect(**params, replication="true", autocommit=True) as conn:  # type: ignore[arg-type]
        return writable_on(conn)


def writable_on(conn: psycopg.Connection) -> bool:
    """Whether the server at the other end of a (replication) connection is a primary."""
    return (row := conn.execute("SHOW in_hot_standby").fetchone()) is not None and text(row[0]) == "off"


def pair_view(a: AgentView, u: Upstream | None, heard_at: float) -> PairView:
    """A pair agent's view with its server's timeline (unknown, 0, until its server has answered)."""
    db = a.postgres.state
    lsn = u.flush_lsn if u is not None and db is DbState.PRIMARY and u.flush_lsn is not None else a.postgres.lsn
    return PairView(term=a.state.term, db=db, timeline=u.timeline if u else 0, lsn=lsn, heard_at=heard_at,
                    streaming=a.postgres.streaming, history=u.history if u else ())


class Kept(Generic[C]):
    """One connection kept from round to round: opened when a round needs one, closed after a round that
    failed on it (the next round opens a new one). ``opened`` counts the connections made: what the
    watched node paid in backends or handshakes."""

    def __init__(self, open_: Callable[[], C], close: Callable[[C], None]) -> None:
        self._open, self._close = open_, close
        self._conn: C | None = None
        self.opened = 0

    def get(self) -> C:
        if self._conn is None:
            self._conn = self._open()
            self.opened += 1
        return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._close(conn)
            except Exception as e:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
                log.debug("closing a broken connection: %s", e)


def answered_in_time(asked_at: float, answered_at: float) -> bool:
    """A fresh answer: it came within ANSWER_TIMEOUT_S of the question; a later one counts as silence."""
    return answered_at - asked_at <= ANSWER_TIMEOUT_S


class Watcher:
    """The pair's views and the upstreams' answers, kept fresh by one thread per member."""

    def __init__(self, cfg: Config, node: str, interval_s: float, clock: Callable[[], float]) -> None:
        self.cfg, self.node, self.interval_s, self.clock = cfg, node, interval_s, clock
        f = cfg.follower(node)
        cascade = [f.upstream] if f is not None and f.upstream not in KEYWORDS else []
        self.members = [*cfg.nodes, *cascade]
        self._lock = threading.Lock()
        self._views: dict[str, PairView] = {}
        self._answered: dict[str, float] = {}
        self._upstreams: dict[str, Upstream] = {}
        self._histories: dict[str, dict[int, tuple[tuple[int, int], ...]]] = {m: {} for m in self.members}
        # Each used by its member's thread alone.
        self.servers: dict[str, Kept[psycopg.Connection]] = {
            m: Kept(lambda m=m: connect(cfg, m), lambda c: c.close()) for m in self.members}  # type: ignore[misc]
        self.agents: dict[str, StatusSession[AgentView]] = {
            m: StatusSession(cfg, m, str(cfg.link(m).ip), AGENT_VIEW, ANSWER_TIMEOUT_S) for m in cfg.nodes}
        self._threads: list[threading.Thread] = []

    def snapshot(self) -> tuple[dict[str, PairView], dict[str, float]]:
        with self._lock:
            return dict(self._views), dict(self._answered)

    def poll(self, member: str) -> None:
        """One round for ``member``: its server, then (a pair node) its agent."""
        u = self._ask_server(member)
        now = self.clock()
        with self._lock:
            if u is not None:
                self._answered[member], self._upstreams[member] = now, u
            last = self._upstreams.get(member)  # its timeline does not go back: the last one stands
        if member not in self.cfg.nodes:
            return
        a = self._ask_agent(member)
        if a is not None:
            view = pair_view(a, u or last, self.clock())
            with self._lock:
                self._views[member] = view

    def _ask_server(self, member: str) -> Upstream | None:
        kept = self.servers[member]
        try:
            conn = kept.get()  # a new one within its connect timeout, after a failed round
            return identify_on(conn, member, self._histories[member], time.monotonic() + ANSWER_TIMEOUT_S)
        except (psycopg.Error, OSError) as e:
            log.debug("%s's PostgreSQL does not answer: %s", member, e)
            kept.drop()
            return None

    def _ask_agent(self, member: str) -> AgentView | None:
        session = self.agents[member]
        asked = self.clock()
        a = session.view()
        if a is not None and not answered_in_time(asked, self.clock()):
            log.debug("%s's agent answered late", member)
            session.close()  # slow or half-dead: the next round asks on a new connection
            return None
        return a

    def close(self, member: str) -> None:
        """Close ``member``'s kept connections (its thread, once it stopped)."""
        self.servers[member].drop()
        if member in self.agents:
            self.agents[member].close()

    def start(self, stop: threading.Event) -> None:
        for m in self.members:
            t = threading.Thread(target=self._run, args=(m, stop), name=f"watch-{m}", daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s`` in all) for the threads to end, their connections closed."""
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self, member: str, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.poll(member)
                except Exception:  # a bug in one round must not end the watching
                    log.exception("watching %s", member)
                    self.close(member)  # nor leave a connection in the middle of a question
                stop.wait(self.interval_s)
        finally:
            self.close(member)


# -- the follower's own server -----------------------------------------------------------------------


def read_own(conn: psycopg.Connection, names_by_ip: dict[str, str], last_timeline: int) -> FollowerPg:
    """The local server: in recovery or not, its WAL receiver, its positions."""
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row is None or not row[0]:
        return FollowerPg(running=True, in_recovery=False)
    recv = conn.execute("SELECT status, sender_host, received_tli FROM pg_stat_wal_receiver").fetchone()
    pos = conn.execute("SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text").fetchone()
    received, replayed = (Lsn.parse(pos[0]), Lsn.parse(pos[1])) if pos else (None, None)
    timeline = int(recv[2]) if recv and recv[2] else last_timeline
    if not timeline:
        tli = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
        timeline = int(tli[0]) if tli else 1
    received = received or replayed
    return FollowerPg(running=True, in_recovery=True, streaming=bool(recv and recv[0] == "streaming"),
                      source=names_by_ip.get(str(recv[1])) if recv and recv[1] else None, timeline=timeline,
                      received_lsn=received.value if received else None,
                      replay_lsn=replayed.value if replayed else None)


def replay_age_s(conn: psycopg.Connection) -> float | None:
    """Seconds since the newest transaction replayed here committed on the primary."""
    row = conn.execute("SELECT extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8"
                       ).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


def names_by_ip(cfg: Config) -> dict[str, str]:
    """Every member's private address -> its name: how a WAL receiver's sender_host is told apart."""
    out = {str(n.private.ip): name for name, n in cfg.nodes.items()}
    out.update({str(f.private.ip): f.name for f in cfg.followers})
    return out
