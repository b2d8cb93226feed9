"""What a follower's agent sees: its own PostgreSQL, the pair's agents and its possible upstreams' servers.

It owns: reading the local server (recovery, WAL receiver: status, sender, timeline, positions), asking
each pair agent for its view (GET /status over the private network, short timeouts) and each possible
upstream's PostgreSQL for its timeline and history (replication protocol: IDENTIFY_SYSTEM,
TIMELINE_HISTORY), each member on a thread of its own so a silent node never holds up the follower's
steps or the other members; turning what it saw into follow.PairView values.
It may not: decide, act, write anything, or block a step on the network.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from standby.apiclient import agent_status
from standby.config import Config
from standby.documents import AgentView
from standby.follow import FollowerPg, PairView
from standby.model import DbState, Lsn
from standby.observe import postgres as pgobs
from standby.topology import KEYWORDS

log = logging.getLogger(__name__)
ANSWER_TIMEOUT_S = 1.0  # an agent or a server slower than this counts as silent for that round


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


def _text(value: object) -> str:
    # A walsender's answers come back untyped for psycopg: bytes, or text.
    return value.decode() if isinstance(value, bytes) else str(value)


def identify(cfg: Config, node: str, known: dict[int, tuple[tuple[int, int], ...]]) -> Upstream:
    """``node``'s timeline, flush position and history, over a replication connection as the replication
    role (what pg_hba lets a follower do); ``known``: histories already read (a timeline's never changes)."""
    params = {**pgobs.peer_conninfo(cfg, node), "connect_timeout": max(1, int(ANSWER_TIMEOUT_S))}
    with psycopg.connect(**params, replication="true", autocommit=True) as conn:  # type: ignore[arg-type]
        row = conn.execute("IDENTIFY_SYSTEM").fetchone()
        if row is None:
            raise psycopg.OperationalError(f"{node}: IDENTIFY_SYSTEM answered nothing")
        timeline, pos = int(_text(row[1])), Lsn.parse(_text(row[2]))
        if timeline > 1 and timeline not in known:
            got = conn.execute(f"TIMELINE_HISTORY {timeline}").fetchone()
            known[timeline] = parse_history(_text(got[1]) if got else "")
    return Upstream(timeline, pos.value if pos else None, known.get(timeline, ()))


def accepts_writes(cfg: Config, node: str) -> bool:
    """Whether ``node``'s server is a primary, asked over a replication connection (all a follower's
    pg_hba line allows); raises psycopg.Error when it does not answer."""
    params = {**pgobs.peer_conninfo(cfg, node), "connect_timeout": max(1, int(ANSWER_TIMEOUT_S))}
    with psycopg.connect(**params, replication="true", autocommit=True) as conn:  # type: ignore[arg-type]
        row = conn.execute("SHOW in_hot_standby").fetchone()
    return row is not None and _text(row[0]) == "off"


def pair_view(a: AgentView, u: Upstream | None, heard_at: float) -> PairView:
    """A pair agent's view with its server's timeline (unknown, 0, until its server has answered)."""
    db = a.postgres.state
    lsn = u.flush_lsn if u is not None and db is DbState.PRIMARY and u.flush_lsn is not None else a.postgres.lsn
    return PairView(term=a.state.term, db=db, timeline=u.timeline if u else 0, lsn=lsn, heard_at=heard_at,
                    streaming=a.postgres.streaming, history=u.history if u else ())


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
        self._threads: list[threading.Thread] = []

    def snapshot(self) -> tuple[dict[str, PairView], dict[str, float]]:
        with self._lock:
            return dict(self._views), dict(self._answered)

    def poll(self, member: str) -> None:
        """One round for ``member``: its server, then (a pair node) its agent."""
        try:
            u: Upstream | None = identify(self.cfg, member, self._histories[member])
        except (psycopg.Error, OSError) as e:
            log.debug("%s's PostgreSQL does not answer: %s", member, e)
            u = None
        now = self.clock()
        with self._lock:
            if u is not None:
                self._answered[member], self._upstreams[member] = now, u
            last = self._upstreams.get(member)  # its timeline does not go back: the last one stands
        if member not in self.cfg.nodes:
            return
        a = agent_status(self.cfg, member, timeout_s=ANSWER_TIMEOUT_S, via=(str(self.cfg.link(member).ip),))
        if a is not None:
            view = pair_view(a, u or last, self.clock())
            with self._lock:
                self._views[member] = view

    def start(self, stop: threading.Event) -> None:
        for m in self.members:
            t = threading.Thread(target=self._run, args=(m, stop), name=f"watch-{m}", daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, member: str, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll(member)
            except Exception:  # a bug in one round must not end the watching
                log.exception("watching %s", member)
            stop.wait(self.interval_s)


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
