"""What a node sees of a PostgreSQL server: role, timeline, WAL positions, replicas.

The local server is read over its unix socket as the superuser; the peer's
over the network as the replication role (a member of pg_monitor), because
that is the one credential both nodes share.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import psycopg
import psycopg.rows
from psycopg import sql
from psycopg.conninfo import make_conninfo

from standby import tls
from standby.config import Config, read_secret
from standby.documents import NODE_FACTS, DocumentError, NodeFacts
from standby.model import Lsn, PgRole, SyncState

CONNECT_TIMEOUT_S = 2
# The agent's own connection, so that its backend can be told from everyone else's.
AGENT_APPLICATION_NAME = "standby-agent"
# The kept replication connections of a follower agent (IDENTIFY_SYSTEM between rounds) and of a pair primary
# asking the warm followers (agent/superseded.DrWatch): each holds a WAL sender that streams nothing, listed in
# pg_stat_replication in state "startup"; not a replica.
WATCH_APPLICATION_NAME = "standby-watch"
# Set on the server's side of a kept replication connection: a watcher that vanished (its host gone, the
# link cut) leaves a WAL sender that waits for its next command and would hold the slot for as long as TCP
# does not notice (hours); with these, the server closes it within about 15 s.
WATCH_SERVER_KEEPALIVES = ("-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
                           "-c tcp_user_timeout=10000")
# And on this side: a question sent into a link that went down fails within two seconds (the next round opens a
# new connection, whose connect_timeout is one) instead of waiting for TCP's retransmissions, which after a long
# cut come seconds to minutes apart. Two, not more: after a WAN comes back, the time to the first answer is how
# long a pair node may still act without knowing a DR node was promoted meanwhile (findings DR-split, DR-window).
WATCH_CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                           "tcp_user_timeout": 2000}


@dataclass(frozen=True)
class ReplicaInfo:
    """One row of the primary's pg_stat_replication."""

    application_name: str
    client_addr: str | None
    state: str
    sync_state: SyncState
    sent_lsn: Lsn | None
    flush_lsn: Lsn | None
    replay_lsn: Lsn | None
    replay_lag_s: float | None


@dataclass(frozen=True)
class PgObservation:
    node: str
    role: PgRole
    observed_at: datetime
    via: str = ""  # how it was reached: "socket" or an address
    version: str | None = None
    version_num: int | None = None
    timeline: int | None = None
    current_lsn: Lsn | None = None  # primary only
    receive_lsn: Lsn | None = None  # standby only
    replay_lsn: Lsn | None = None  # standby only
    receiver_status: str | None = None  # standby's WAL receiver: "streaming", ...
    upstream: str | None = None  # standby's primary, as it connects to it
    replicas: tuple[ReplicaInfo, ...] = field(default_factory=tuple)
    wal_log_hints: bool | None = None
    data_checksums: bool | None = None
    synchronous_standby_names: str | None = None
    error: str | None = None
    # Standby only, for reports read there:
    replay_age_s: float | None = None  # since the newest replayed commit was made on the primary
    replay_paused: bool | None = None
    conflicts: dict[str, int] | None = None  # queries cancelled by WAL replay since the stats reset, by cause

    @property
    def major(self) -> int | None:
        return None if self.version_num is None else self.version_num // 10000

    @property
    def rewindable(self) -> bool | None:
        if self.wal_log_hints is None and self.data_checksums is None:
            return None
        return bool(self.wal_log_hints or self.data_checksums)


def local_conninfo(cfg: Config, node: str, dbname: str | None = None,
                   application_name: str = "standby") -> dict[str, object]:
    pg = cfg.pg(node)
    return dict(
        host=str(pg.socket_dir),
        port=pg.port,
        user=pg.superuser,
        dbname=dbname or pg.database,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name=application_name,
    )


def peer_params(cfg: Config, node: str, network: str = "private") -> dict[str, object]:
    """Where and as whom to reach ``node``'s PostgreSQL as the replication role, TLS included.

    Every connection to a peer (psycopg, primary_conninfo, pg_basebackup,
    pg_rewind) starts from this, so none can skip certificate checks.
    """
    pg = cfg.pg(node)
    link = cfg.link(node, network)  # a pair node or a follower (a cascade streams from one)
    return dict(host=str(link.ip), port=pg.port, user=pg.replication_user, **tls.libpq_params(cfg))


def peer_dsn(cfg: Config, node: str, **extra: object) -> str:
    """``peer_params`` as a libpq connection string (password from a passfile), for the server's tools."""
    return make_conninfo(**peer_params(cfg, node), **extra)  # type: ignore[arg-type]


def peer_conninfo(cfg: Config, node: str, network: str = "private", dbname: str | None = None) -> dict[str, object]:
    """Connection to ``node`` as the replication role over one of its networks."""
    pg = cfg.pg(node)
    return dict(
        **peer_params(cfg, node, network),
        password=read_secret(pg.replication_password_file, "postgres.replication_password_file"),
        dbname=dbname or pg.database,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name="standby",
    )


def connect_local(cfg: Config, node: str, autocommit: bool = True, dbname: str | None = None,
                  application_name: str = "standby") -> psycopg.Connection:
    return psycopg.connect(**local_conninfo(cfg, node, dbname, application_name),  # type: ignore[arg-type]
                           autocommit=autocommit)


class Unanswered(StrEnum):
    """Why the local server did not answer; only NOT_RUNNING means it is down."""

    NOT_RUNNING = "postmaster not running"
    TIMEOUT = "query timed out"
    TOO_MANY_CLIENTS = "too many clients"
    STARTING_OR_STOPPING = "starting up or shutting down"
    REFUSED = "refused"  # another error the server gave (a password it refused, say): it answers
    NO_ANSWER = "no answer"  # nothing from the server: a timeout of the connection, a reset, a hang

    @property
    def down(self) -> bool:
        return self is Unanswered.NOT_RUNNING


def unanswered(e: psycopg.Error, postmaster_alive: bool) -> Unanswered:
    """A failed query or connection, told apart: a busy or slow server is still there (its last
    observation stands); only a server whose postmaster is gone is down."""
    if not postmaster_alive:
        return Unanswered.NOT_RUNNING
    sqlstate = getattr(e, "sqlstate", None)
    if isinstance(e, psycopg.errors.QueryCanceled) or sqlstate == "57014":
        return Unanswered.TIMEOUT
    if sqlstate == "53300" or "too many clients" in str(e) or "remaining connection slots" in str(e):
        return Unanswered.TOO_MANY_CLIENTS
    if sqlstate == "57P03" or "is starting up" in str(e) or "is shutting down" in str(e):
        return Unanswered.STARTING_OR_STOPPING
    return Unanswered.NO_ANSWER if sqlstate is None else Unanswered.REFUSED


def postmaster_running(data_dir: Path) -> bool:
    """Is the postmaster named in ``data_dir``/postmaster.pid alive (and a postgres process, not one killed that
    waits on a hung disk to end: kill_pending)?"""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip())
    except (FileNotFoundError, ValueError):
        return False
    except OSError:
        return True  # cannot look (e.g. no descriptor left): that is no evidence of a crash
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        # /proc/PID/stat is "PID (COMM) STATE ...". A zombie is a postmaster that died and was not
        # reaped yet: an init that reaps orphans once a second kept a crashed server "running" 1-2 s.
        # A stale file whose PID now belongs to another program is no server either.
        comm, rest = Path(f"/proc/{pid}/stat").read_text().split("(", 1)[1].rsplit(")", 1)
    except FileNotFoundError:
        return False
    except (OSError, ValueError, IndexError):
        return True
    return comm.startswith("postgres") and rest.split()[0] not in ("Z", "X") and not kill_pending(pid)


_SIGKILL_BIT = 1 << (9 - 1)  # /proc/PID/status's pending masks: bit N-1 for signal N (SIGKILL is 9)


def kill_pending(pid: int) -> bool:
    """Has the process a SIGKILL it has not acted on yet? Only one in an uninterruptible wait (state D: a write
    to a hung disk) holds one: it never runs another instruction of its own, and ends the moment its kernel call
    returns. A postmaster so killed accepts no connection and starts no process: it counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")):
            try:
                if int(line.split()[1], 16) & _SIGKILL_BIT:
                    return True
            except (IndexError, ValueError):
                continue
    return False


def connect_peer(cfg: Config, node: str, network: str = "private") -> psycopg.Connection:
    return psycopg.connect(**peer_conninfo(cfg, node, network), autocommit=True)  # type: ignore[arg-type]


def installed_major(bin_dir: Path) -> tuple[int, str]:
    """Major version and full version string of the binaries in ``bin_dir``."""
    exe = bin_dir / "postgres"
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    except FileNotFoundError:
        raise RuntimeError(f"{exe} not found: check postgres.bin_dir") from None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"{exe} --version failed: {e}") from None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(\.\d+)?", out)
    if not m:
        raise RuntimeError(f"cannot read a PostgreSQL version from {exe} --version: {out.strip()!r}")
    return int(m.group(1)), m.group(0).split()[-1]


def data_dir_state(data_dir: Path) -> PgRole:
    """What a stopped server's data directory holds (EMPTY when there is nothing to lose)."""
    return PgRole.STOPPED if (data_dir / "PG_VERSION").exists() else PgRole.EMPTY


def _now() -> datetime:
    return datetime.now(UTC)


_SETTINGS = """
SELECT pg_is_in_recovery(), current_setting('server_version'), current_setting('server_version_num')::int,
       current_setting('wal_log_hints') = 'on', current_setting('data_checksums') = 'on',
       current_setting('synchronous_standby_names')
"""


def read(conn: psycopg.Connection, node: str, via: str) -> PgObservation:
    """One consistent look at a running server."""
    with conn.cursor() as cur:
        in_recovery, version, version_num, hints, checksums, sync_names = cur.execute(_SETTINGS).fetchone()  # type: ignore[misc]
        if not in_recovery:
            lsn, wal_file = cur.execute("SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())").fetchone()  # type: ignore[misc]
            rows = cur.execute(
                """SELECT application_name, host(client_addr), state, sync_state, sent_lsn::text,
                          flush_lsn::text, replay_lsn::text, extract(epoch FROM replay_lag)::float8
                   FROM pg_stat_replication WHERE application_name <> %s ORDER BY application_name""",
                (WATCH_APPLICATION_NAME,)).fetchall()
            replicas = tuple(
                ReplicaInfo(
                    application_name=r[0],
                    client_addr=r[1],
                    state=r[2] or "",
                    sync_state=SyncState(r[3]) if r[3] in SyncState._value2member_map_ else SyncState.NONE,
                    sent_lsn=Lsn.parse(r[4]),
                    flush_lsn=Lsn.parse(r[5]),
                    replay_lsn=Lsn.parse(r[6]),
                    replay_lag_s=r[7],
                )
                for r in rows
            )
            return PgObservation(
                node=node, role=PgRole.PRIMARY, observed_at=_now(), via=via, version=version,
                version_num=version_num, timeline=int(wal_file[:8], 16), current_lsn=Lsn.parse(lsn),
                replicas=replicas, wal_log_hints=hints, data_checksums=checksums,
                synchronous_standby_names=sync_names,
            )
        recv, replay = cur.execute("SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text").fetchone()  # type: ignore[misc]
        wr = cur.execute("SELECT status, received_tli, sender_host FROM pg_stat_wal_receiver").fetchone()
        tli = wr[1] if wr and wr[1] else cur.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]  # type: ignore[index]
        age, paused = cur.execute(_REPLAY_SQL).fetchone()  # type: ignore[misc]
        conflicts = cur.execute(_CONFLICTS_SQL).fetchone()
        return PgObservation(
            node=node, role=PgRole.STANDBY, observed_at=_now(), via=via, version=version,
            version_num=version_num, timeline=tli, receive_lsn=Lsn.parse(recv), replay_lsn=Lsn.parse(replay),
            receiver_status=wr[0] if wr else None, upstream=wr[2] if wr else None,
            wal_log_hints=hints, data_checksums=checksums, synchronous_standby_names=sync_names,
            replay_age_s=age, replay_paused=paused,
            conflicts=dict(zip(_CONFLICT_CAUSES, (int(v) for v in conflicts), strict=True)) if conflicts else None,
        )


_REPLAY_SQL = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, pg_is_wal_replay_paused()"
_CONFLICT_CAUSES = ("snapshot", "lock", "bufferpin", "deadlock", "tablespace")
# Summed over every database: a report may run in any of them.
_CONFLICTS_SQL = ("SELECT " + ", ".join(f"coalesce(sum(confl_{c}), 0)" for c in _CONFLICT_CAUSES)
                  + " FROM pg_stat_database_conflicts")


def observe_local(cfg: Config, node: str) -> PgObservation:
    pg = cfg.pg(node)
    try:
        with connect_local(cfg, node) as conn:
            return read(conn, node, "socket")
    except psycopg.OperationalError as e:
        return PgObservation(node=node, role=data_dir_state(pg.data_dir), observed_at=_now(), via="socket",
                             error=_first_line(e))


def observe_peer(cfg: Config, node: str) -> PgObservation:
    """The peer's server as read over the private network, else over the public one. Both are asked at
    once: with the peer's host down each ends in its connect timeout, and in a row they cost two. (The
    price: with only the public network down, the private answer waits for the public timeout.)"""

    def over(network: str) -> PgObservation:
        with connect_peer(cfg, node, network) as conn:
            link = cfg.link(node, network)  # a pair node or a follower (a rebuild reads its source)
            return read(conn, node, str(link.ip))

    errors = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for network, asked in [(n, pool.submit(over, n)) for n in ("private", "public")]:
            try:
                return asked.result()
            except psycopg.OperationalError as e:
                errors.append(f"{network}: {_first_line(e)}")
    return PgObservation(node=node, role=PgRole.UNREACHABLE, observed_at=_now(), error="; ".join(errors))


# -- node facts: a replicated table each node writes its own row in (see act.postgres.write_facts) --

FACTS_SCHEMA = "standby"


def read_node_facts(conn: psycopg.Connection) -> dict[str, NodeFacts]:
    """Every node's facts in the table, by node; a row that is not valid facts is left out."""
    row = conn.execute("SELECT to_regclass(%s)", (f"{FACTS_SCHEMA}.node_facts",)).fetchone()
    if row is None or row[0] is None:
        return {}
    out: dict[str, NodeFacts] = {}
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        for r in cur.execute(sql.SQL("SELECT * FROM {}.node_facts").format(sql.Identifier(FACTS_SCHEMA))):
            try:
                facts = NODE_FACTS.decode(r)
            except DocumentError:
                continue
            out[facts.node] = facts
    return out


def pair_facts(cfg: Config, node: str, seen: Mapping[str, PgObservation]) -> dict[str, NodeFacts]:
    """The node facts of the pair, read from this node's server or, failing that, the peer's (the
    table is replicated: either has both rows); only servers ``seen`` running are asked."""
    for name in (node, cfg.peer_of(node)):
        if seen[name].role not in (PgRole.PRIMARY, PgRole.STANDBY):
            continue
        try:
            with connect_local(cfg, name) if name == node else connect_peer(cfg, name) as conn:
                facts = read_node_facts(conn)
        except psycopg.Error:
            continue
        if facts:
            return facts
    return {}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
