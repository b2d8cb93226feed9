"""Salvage: keep what only the old primary committed after a failover.

After an async (or degraded sync) failover the old primary may hold commits the
new primary never received. Before it is rewound or re-cloned, this module

1. finds the transactions it committed after the fork point, by reading its WAL
   with pg_waldump (the data directory is stopped, the WAL is the record);
2. reads the rows those transactions wrote to the configured precious tables,
   from a temporary, unreachable server started on a COPY of the data directory
   (starting the original would write WAL and a checkpoint a later pg_rewind
   would have to deal with; the copy is thrown away, the original is untouched);
3. drops rows the new primary already has (same natural key);
4. writes the rest into a JSON report that a person reviews and then applies to
   the current primary, one transaction per source transaction, idempotently.

Rows are matched by ``xmin``, which is 32 bits and wraps. That is sound because
the divergence is short (far fewer than 2^31 xids), and the key comparison with
the new primary filters out the one false match wraparound allows: an old frozen
row whose raw xmin happens to equal a recent xid is already on the new primary.

Only inserted rows are salvaged: an UPDATE after the fork of a row the new primary
has shows up as a row with a known key (kept as is), and a DELETE leaves nothing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from standby.config import SalvageTable
from standby.model import Lsn

if TYPE_CHECKING:
    from standby.config import Config

log = logging.getLogger("standby.salvage")

REPORT_FORMAT = 1
# One salvage apply at a time per cluster (any fixed key, distinct from the softswitch's).
_APPLY_LOCK_KEY = 0x5A17A6E0
# Column types whose values go into the report as JSON numbers/booleans; every other
# type travels as PostgreSQL's own text form, which the server parses back exactly.
_NATIVE_TYPES = frozenset({"smallint", "integer", "bigint", "boolean"})
# Output settings that make the text form unambiguous: ISO timestamps in UTC,
# intervals PostgreSQL can read back whatever the reader's IntervalStyle.
_TEXT_SETTINGS = (("DateStyle", "ISO, YMD"), ("TimeZone", "UTC"), ("IntervalStyle", "iso_8601"),
                  ("extra_float_digits", "3"), ("bytea_output", "hex"))

JsonScalar = int | bool | str | None


class SalvageError(Exception):
    """Salvage cannot proceed safely; the message says why and what to do."""


def format_lsn(value: int) -> str:
    return str(Lsn(value))


def parse_lsn(text: str) -> int:
    lsn = Lsn.parse(text.strip())
    if lsn is None:
        raise ValueError(f"not a WAL location: {text!r}")
    return lsn.value


# =========================================================================== WAL


def fork_point(history_text: str, old_timeline: int) -> int:
    """Where a timeline history says ``old_timeline`` ended (the new timeline's fork LSN).

    A ``<tli>.history`` file has one line per ancestor timeline:
    ``parent_tli <tab> switchpoint <tab> reason``; the switchpoint is the first
    WAL position that belongs to the child, so everything the old timeline has
    from there on is divergent.
    """
    for line in history_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"malformed timeline history line: {line!r}")
        try:
            tli, lsn = int(parts[0]), parse_lsn(parts[1])
        except ValueError:
            raise ValueError(f"malformed timeline history line: {line!r}") from None
        if tli == old_timeline:
            return lsn
    raise ValueError(f"timeline {old_timeline} is not an ancestor in this history")


def read_timeline_history(conn: psycopg.Connection[Any], timeline: int) -> str:
    """The ``.history`` file of ``timeline`` from a running server (superuser or pg_read_binary_file)."""
    row = conn.execute("SELECT pg_read_binary_file(%s)", (f"pg_wal/{timeline:08X}.history",)).fetchone()
    if row is None:
        raise SalvageError(f"no history file for timeline {timeline}")
    return bytes(row[0]).decode()


class XactKind(StrEnum):
    COMMIT = "COMMIT"
    ABORT = "ABORT"
    PREPARE = "PREPARE"
    COMMIT_PREPARED = "COMMIT_PREPARED"
    ABORT_PREPARED = "ABORT_PREPARED"


@dataclass(frozen=True)
class XactRecord:
    """One transaction-end record of pg_waldump's output."""

    kind: XactKind
    xid: int  # the transaction it ends (for *_PREPARED: the prepared one, not the record's)
    lsn: int
    time: str | None  # ISO 8601 when pg_waldump printed UTC, else as printed
    subxids: tuple[int, ...] = ()


_RECORD = re.compile(
    r"^rmgr: Transaction\s+len \(rec/tot\):\s*\d+/\s*\d+, tx:\s*(?P<tx>\d+), "
    r"lsn: (?P<lsn>[0-9A-Fa-f]+/[0-9A-Fa-f]+), prev [0-9A-Fa-f]+/[0-9A-Fa-f]+, desc: (?P<kind>[A-Z_]+)(?P<rest>.*)$"
)
_PREPARED_XID = re.compile(r"^\s*(\d+):")
_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) ([^\s;]+)")
_SUBXACTS = re.compile(r";\s*subxacts:((?:\s+\d+)+)")


def _iso_time(rest: str) -> str | None:
    m = _TIME.search(rest)
    if not m:
        return None
    stamp, zone = m.groups()
    if zone in ("UTC", "GMT"):
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC).isoformat()
    return f"{stamp} {zone}"


def parse_waldump(text: str) -> list[XactRecord]:
    """The commit, abort and prepare records in pg_waldump output; other lines are ignored."""
    out: list[XactRecord] = []
    for line in text.splitlines():
        m = _RECORD.match(line.strip())
        if not m or m["kind"] not in XactKind.__members__:
            continue  # ASSIGNMENT, INVALIDATION, other resource managers
        kind = XactKind(m["kind"])
        rest = m["rest"]
        xid = int(m["tx"])
        if kind in (XactKind.COMMIT_PREPARED, XactKind.ABORT_PREPARED):
            # Written by the session running COMMIT PREPARED, so tx is not the prepared xid.
            pm = _PREPARED_XID.match(rest)
            if not pm:
                continue
            xid = int(pm.group(1))
        if xid == 0:
            continue
        sm = _SUBXACTS.search(rest)
        subxids = tuple(int(x) for x in sm.group(1).split()) if sm else ()
        out.append(XactRecord(kind, xid, parse_lsn(m["lsn"]), _iso_time(rest), subxids))
    return out


class WalEndKind(StrEnum):
    RECORD_ERROR = "record_error"  # an invalid record after valid ones: the normal end of WAL
    NO_RECORD = "no_record"  # nothing valid at or after the start
    MISSING_FILE = "missing_file"  # a segment file is not in pg_wal
    OTHER = "other"


@dataclass(frozen=True)
class WalEnd:
    """How pg_waldump stopped; it always stops on an error when reading to the end."""

    kind: WalEndKind
    message: str
    last_record_lsn: int | None = None  # RECORD_ERROR: start of the last valid record
    after_lsn: int | None = None  # NO_RECORD: the position searched from
    missing_segment: str | None = None  # MISSING_FILE


_END_RECORD = re.compile(r"error in WAL record at ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")
_END_NONE = re.compile(r"could not find a valid record after ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")
_END_FILE = re.compile(r'could not find file "([0-9A-Fa-f]{24})"')


def parse_waldump_end(stderr: str) -> WalEnd:
    text = " ".join(stderr.split())
    if m := _END_RECORD.search(text):
        return WalEnd(WalEndKind.RECORD_ERROR, text, last_record_lsn=parse_lsn(m.group(1)))
    if m := _END_NONE.search(text):
        return WalEnd(WalEndKind.NO_RECORD, text, after_lsn=parse_lsn(m.group(1)))
    if m := _END_FILE.search(text):
        return WalEnd(WalEndKind.MISSING_FILE, text, missing_segment=m.group(1).upper())
    return WalEnd(WalEndKind.OTHER, text)


def segment_name(timeline: int, lsn: int, segment_size: int) -> str:
    """The WAL segment file (``TTTTTTTTXXXXXXXXYYYYYYYY``) holding ``lsn`` on ``timeline``."""
    seg, per_xlogid = lsn // segment_size, 0x100000000 // segment_size
    return f"{timeline:08X}{seg // per_xlogid:08X}{seg % per_xlogid:08X}"


def segment_start(segment_name: str, segment_size: int) -> int:
    """First LSN of a WAL segment file (``TTTTTTTTXXXXXXXXYYYYYYYY``)."""
    return (int(segment_name[8:16], 16) << 32) + int(segment_name[16:24], 16) * segment_size


def wal_read_to_end(end: WalEnd, checkpoint_lsn: int, segment_size: int) -> bool:
    """Did pg_waldump read at least through the latest checkpoint record?

    The control file's latest checkpoint lies inside the WAL the server itself would
    replay at its next start, so WAL that ends before it is damaged or missing, and a
    scan stopping there could miss commits.
    """
    if end.kind is WalEndKind.RECORD_ERROR:
        return end.last_record_lsn is not None and end.last_record_lsn >= checkpoint_lsn
    if end.kind is WalEndKind.NO_RECORD:
        return end.after_lsn is not None and end.after_lsn > checkpoint_lsn
    if end.kind is WalEndKind.MISSING_FILE and end.missing_segment:
        return segment_start(end.missing_segment, segment_size) > checkpoint_lsn
    return False


@dataclass(frozen=True)
class Commit:
    xid: int
    lsn: int
    time: str | None
    subxids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Divergence:
    """What the old timeline holds after the fork."""

    fork_lsn: int
    timeline: int
    commits: tuple[Commit, ...]  # in commit order
    aborted: tuple[int, ...] = ()
    in_doubt: tuple[int, ...] = ()  # prepared after the fork, never finished: not salvaged

    @property
    def xids(self) -> list[int]:
        """Every committed xid, subtransactions included (rows carry the subxact's xid as xmin)."""
        return [x for c in self.commits for x in (c.xid, *c.subxids)]

    def top_of(self) -> dict[int, int]:
        return {x: c.xid for c in self.commits for x in (c.xid, *c.subxids)}


def divergence_from_records(records: Sequence[XactRecord], fork_lsn: int, timeline: int) -> Divergence:
    commits: list[Commit] = []
    aborted: list[int] = []
    prepared: dict[int, None] = {}
    for r in records:
        if r.lsn < fork_lsn:
            continue  # shared history; pg_waldump starts at the fork, this is only a guard
        if r.kind in (XactKind.COMMIT, XactKind.COMMIT_PREPARED):
            commits.append(Commit(r.xid, r.lsn, r.time, r.subxids))
            prepared.pop(r.xid, None)
        elif r.kind in (XactKind.ABORT, XactKind.ABORT_PREPARED):
            aborted.append(r.xid)
            prepared.pop(r.xid, None)
        elif r.kind is XactKind.PREPARE:
            prepared[r.xid] = None
    return Divergence(fork_lsn, timeline, tuple(commits), tuple(aborted), tuple(prepared))


def parse_control_data(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, sep, v in (ln.partition(":") for ln in text.splitlines()) if sep}


def read_control_data(data_dir: Path, bin_dir: Path) -> dict[str, str]:
    res = subprocess.run([str(bin_dir / "pg_controldata"), "-D", str(data_dir)], capture_output=True, text=True,
                         timeout=60, env=_tool_env(), check=False)
    if res.returncode != 0:
        raise SalvageError(f"pg_controldata {data_dir} failed: {res.stderr.strip() or res.returncode}")
    return parse_control_data(res.stdout)


def _tool_env() -> dict[str, str]:
    # No PG* variable of the caller may steer a tool elsewhere; UTC for parseable times.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(TZ="UTC", LC_ALL="C")
    return env


def scan_wal(data_dir: Path, fork_lsn: int, timeline: int, bin_dir: Path) -> Divergence:
    """The transactions a stopped data directory committed on ``timeline`` from ``fork_lsn`` on."""
    control = read_control_data(data_dir, bin_dir)
    try:
        ctl_tli = int(control["Latest checkpoint's TimeLineID"])
        checkpoint = parse_lsn(control["Latest checkpoint location"])
        seg_size = int(control["Bytes per WAL segment"])
    except (KeyError, ValueError) as e:
        raise SalvageError(f"cannot read the control data of {data_dir}: {e}") from None
    if ctl_tli != timeline:
        raise SalvageError(f"{data_dir} is on timeline {ctl_tli}, not {timeline}: it is not the old primary "
                           "of this fork (or was already rewound)")
    # The start segment is named: without it pg_waldump takes the segment size from
    # whichever file it finds first, and a crash may leave a zero-filled one ahead.
    res = subprocess.run(
        [str(bin_dir / "pg_waldump"), "--path", str(data_dir / "pg_wal"), "--start", format_lsn(fork_lsn),
         "--timeline", str(timeline), "--rmgr=Transaction", segment_name(timeline, fork_lsn, seg_size)],
        capture_output=True, text=True, timeout=3600, env=_tool_env(), check=False,
    )
    records = parse_waldump(res.stdout)
    if res.returncode != 0:
        end = parse_waldump_end(res.stderr)
        if not wal_read_to_end(end, checkpoint, seg_size):
            raise SalvageError(
                f"the WAL of {data_dir} from the fork point {format_lsn(fork_lsn)} cannot be read to its end "
                f"(latest checkpoint {format_lsn(checkpoint)}): {end.message or res.returncode}; committed rows "
                "may be missed, so salvage stops here")
    return divergence_from_records(records, fork_lsn, timeline)


# =========================================================================== temporary server


def _postmaster_alive(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip().lstrip("-")
        pid = int(first)
    except (FileNotFoundError, ValueError):
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    state = next((ln.split(":", 1)[1].strip() for ln in status.splitlines() if ln.startswith("State:")), "")
    return None if state.startswith("Z") else pid


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _copy_tree(src: Path, dst: Path) -> None:
    # --reflink=auto: near-instant and space-free on filesystems that share blocks.
    res = subprocess.run(["cp", "-a", "--reflink=auto", "-T", str(src), str(dst)], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise SalvageError(f"copying {src} failed: {res.stderr.strip()}")


@dataclass(frozen=True)
class IsolatedServer:
    """A throwaway server on a copy of a data directory, reachable only through a private socket."""

    copy_dir: Path
    socket_dir: Path
    port: int
    removed_signals: tuple[str, ...]

    def connect(self, dbname: str, user: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host=str(self.socket_dir), port=self.port, dbname=dbname, user=user,
                               autocommit=True, connect_timeout=10, application_name="standby-salvage")


def _isolation_settings(copy_dir: Path, socket_dir: Path, hba: Path, port: int) -> dict[str, str]:
    return {
        "data_directory": str(copy_dir),  # a data_directory in the copied config must not lead back
        "listen_addresses": "",  # no TCP at all
        "unix_socket_directories": str(socket_dir),
        "unix_socket_permissions": "0700",
        "port": str(port),
        "hba_file": str(hba),  # local trust only; the socket directory is private
        "external_pid_file": "",  # would overwrite the real server's
        "default_transaction_read_only": "on",
        "archive_mode": "off",  # its WAL must never reach the cluster's archive
        "primary_conninfo": "",
        "primary_slot_name": "",
        "restore_command": "",
        "max_logical_replication_workers": "0",  # subscriptions would connect to publishers
        "shared_preload_libraries": "",  # no extension background workers acting on their own
        "session_preload_libraries": "",
        "local_preload_libraries": "",
        "autovacuum": "off",
        "ssl": "off",
        "logging_collector": "off",
        "log_destination": "stderr",
        "cluster_name": "standby-salvage",
    }


@contextmanager
def isolated_server(data_dir: Path, bin_dir: Path, *, timeout_s: float = 600.0) -> Iterator[IsolatedServer]:
    """Start a copy of the stopped ``data_dir`` as an unreachable, read-only server; remove it afterwards.

    The copy sits next to the original (same filesystem, so a reflink copy is possible),
    and a WAL directory or tablespaces that are symlinks are copied too: otherwise the
    temporary server would write into the original's files.
    """
    data_dir = data_dir.resolve()
    if not (data_dir / "PG_VERSION").exists():
        raise SalvageError(f"{data_dir} holds no PostgreSQL data directory")
    pid = _postmaster_alive(data_dir)
    if pid is not None:
        raise SalvageError(f"a server (pid {pid}) still runs on {data_dir}; salvage reads a stopped old primary")
    st = data_dir.stat()
    uid, gid = st.st_uid, st.st_gid
    if os.geteuid() not in (0, uid):
        raise SalvageError(f"salvage must run as root or as the owner of {data_dir}")
    sources = [data_dir] + [p.resolve() for p in _linked_dirs(data_dir)]
    need = sum(_tree_bytes(p) for p in sources)
    free = shutil.disk_usage(data_dir.parent).free
    if need > free * 0.95:
        raise SalvageError(f"not enough space next to {data_dir} for a temporary copy ({need >> 20} MiB needed, "
                           f"{free >> 20} MiB free)")

    work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.salvage-", dir=data_dir.parent))
    proc: subprocess.Popen[bytes] | None = None
    try:
        os.chown(work, uid, gid)
        os.chmod(work, 0o700)
        copy_dir, socket_dir, hba = work / "pgdata", work / "socket", work / "pg_hba.conf"
        _copy_tree(data_dir, copy_dir)
        for link in _linked_dirs(copy_dir):
            # The copy's link still points at the original's files: give it its own copy
            # (resolved from the original, as a relative link means something else here).
            rel = link.relative_to(copy_dir)
            target = work / "linked" / rel.as_posix().replace("/", "_")
            target.parent.mkdir(exist_ok=True)
            _copy_tree((data_dir / rel).resolve(), target)
            link.unlink()
            link.symlink_to(target)
            os.lchown(link, uid, gid)
        removed = []
        for name in ("postmaster.pid", "standby.signal", "recovery.signal"):
            if (copy_dir / name).exists():
                (copy_dir / name).unlink()
                if name != "postmaster.pid":
                    removed.append(name)  # start as the primary it was, not as anyone's standby
        conf = copy_dir / "postgresql.conf"
        if not conf.exists():  # configuration kept outside the data directory
            conf.write_text("")
            os.chown(conf, uid, gid)
        socket_dir.mkdir(mode=0o700)
        os.chown(socket_dir, uid, gid)
        hba.write_text("local all all trust\n")
        os.chown(hba, uid, gid)
        os.chmod(hba, 0o600)
        port = random.randint(40000, 59999)
        settings = _isolation_settings(copy_dir, socket_dir, hba, port)
        argv = [str(bin_dir / "postgres"), "-D", str(copy_dir)]
        for k, v in settings.items():
            argv += ["-c", f"{k}={v}"]
        logfile = work / "server.log"
        drop = os.geteuid() != uid  # postgres refuses to run as root
        with open(logfile, "wb") as logf:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=str(work),
                env=_tool_env(), start_new_session=True,
                user=uid if drop else None, group=gid if drop else None, extra_groups=[] if drop else None,
            )  # fmt: skip
        _wait_ready(proc, copy_dir, logfile, timeout_s)
        yield IsolatedServer(copy_dir, socket_dir, port, tuple(removed))
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            log.warning("could not remove the temporary copy %s; remove it by hand", work)


def _linked_dirs(data_dir: Path) -> list[Path]:
    """pg_wal and tablespaces when they are symlinks out of the data directory."""
    links = [data_dir / "pg_wal"] if (data_dir / "pg_wal").is_symlink() else []
    tblspc = data_dir / "pg_tblspc"
    if tblspc.is_dir():
        links += sorted(p for p in tblspc.iterdir() if p.is_symlink())
    return links


def _wait_ready(proc: subprocess.Popen[bytes], copy_dir: Path, logfile: Path, timeout_s: float) -> None:
    # Crash recovery of a killed old primary may take a while; "ready" in
    # postmaster.pid is what pg_ctl waits for too.
    def tail() -> str:  # the log goes with the copy, so the error carries its end
        return " | ".join(logfile.read_text(errors="replace").strip().splitlines()[-5:])

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SalvageError(f"the temporary server exited ({proc.returncode}): {tail()}")
        try:
            lines = (copy_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return
        time.sleep(0.1)
    raise SalvageError(f"the temporary server was not ready within {timeout_s:g} s: {tail()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # Fast shutdown first; the copy is discarded, so immediate and kill are fine after.
    for sig, wait_s in ((signal.SIGINT, 60.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


# =========================================================================== rows


def table_ident(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


def _regclass(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("SELECT to_regclass(%s)::oid", (table_ident(name).as_string(conn),)).fetchone()
    if row is None or row[0] is None:
        raise SalvageError(f"table {name} does not exist in database {conn.info.dbname}")
    return int(row[0])


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    generated: bool = False
    identity_always: bool = False

    @property
    def native(self) -> bool:
        return self.type in _NATIVE_TYPES


def table_columns(conn: psycopg.Connection[Any], name: str) -> list[Column]:
    oid = _regclass(conn, name)
    rows = conn.execute(
        """SELECT attname, atttypid::regtype::text, attgenerated <> '', attidentity = 'a'
           FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
        (oid,),
    ).fetchall()
    return [Column(*r) for r in rows]


def _select_list(columns: Sequence[Column]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.Identifier(c.name) if c.native
        else sql.SQL("{}::text AS {}").format(sql.Identifier(c.name), sql.Identifier(c.name))
        for c in columns
    )


@dataclass
class RowRecord:
    xid: int  # top-level transaction: a call's CDR and deltas share it and are applied together
    values: dict[str, JsonScalar]


@dataclass
class TableReport:
    name: str
    key: list[str]
    renumber: list[str]
    after_insert: list[str]
    columns: list[str]
    found: int = 0  # rows the divergent transactions wrote
    already_present: int = 0  # of those, rows the new primary has (same key)
    rows: list[RowRecord] = field(default_factory=list)  # the salvage: the rest


def extract_rows(
    conn: psycopg.Connection[Any], tables: Sequence[SalvageTable], divergence: Divergence
) -> list[TableReport]:
    """Rows of each table written by the divergent transactions (as of the old primary's end)."""
    for name, value in _TEXT_SETTINGS:
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    xids = sorted(set(divergence.xids))
    top = divergence.top_of()
    out = []
    for t in tables:
        cols = [c for c in table_columns(conn, t.name) if not c.generated]
        names = {c.name for c in cols}
        for what, wanted in (("key", t.key), ("renumber", t.renumber)):
            if missing := [c for c in wanted if c not in names]:
                raise SalvageError(f"salvage table {t.name}: {what} column(s) {', '.join(missing)} do not exist")
        rows: list[RowRecord] = []
        if xids:
            q = sql.SQL(
                "SELECT xmin::text::bigint, {} FROM {} WHERE xmin::text::bigint = ANY(%s::bigint[]) ORDER BY ctid"
            ).format(_select_list(cols), table_ident(t.name))
            for r in conn.execute(q, (xids,)).fetchall():
                rows.append(RowRecord(top.get(int(r[0]), int(r[0])), dict(zip([c.name for c in cols], r[1:], strict=True))))
        order = {c.xid: i for i, c in enumerate(divergence.commits)}
        rows.sort(key=lambda r: order.get(r.xid, len(order)))  # stable: physical order within a transaction
        out.append(TableReport(t.name, list(t.key), list(t.renumber), list(t.after_insert), [c.name for c in cols],
                               found=len(rows), rows=rows))
    return out


def _key_clause(key: Sequence[str], values: Mapping[str, JsonScalar]) -> tuple[sql.Composable, list[JsonScalar]]:
    parts: list[sql.Composable] = []
    params: list[JsonScalar] = []
    for k in key:
        if values.get(k) is None:
            parts.append(sql.SQL("{} IS NULL").format(sql.Identifier(k)))
        else:
            parts.append(sql.SQL("{} = %s").format(sql.Identifier(k)))
            params.append(values[k])
    return sql.SQL(" AND ").join(parts), params


def _present(conn: psycopg.Connection[Any], table: str, key: Sequence[str], values: Mapping[str, JsonScalar]) -> bool:
    where, params = _key_clause(key, values)
    q = sql.SQL("SELECT 1 FROM {} WHERE {} LIMIT 1").format(table_ident(table), where)
    return conn.execute(q, params).fetchone() is not None


def drop_present(new_primary: psycopg.Connection[Any], tables: Sequence[TableReport]) -> None:
    """Remove from each table's rows those whose key the new primary already has."""
    with new_primary.transaction():
        for t in tables:
            keep = [r for r in t.rows if not _present(new_primary, t.name, t.key, r.values)]
            t.already_present = len(t.rows) - len(keep)
            t.rows = keep


# =========================================================================== report


class ReportStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"


@dataclass
class SalvageTxn:
    xid: int
    lsn: str
    committed_at: str | None
    subxids: list[int] = field(default_factory=list)


@dataclass
class Renumbered:
    table: str
    key: dict[str, JsonScalar]
    column: str
    old: JsonScalar
    new: JsonScalar


@dataclass
class ApplyRecord:
    at: str
    transactions: int = 0  # source transactions that inserted at least one row
    inserted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # key already present
    renumbered: list[Renumbered] = field(default_factory=list)
    error: str | None = None

    @property
    def inserted_total(self) -> int:
        return sum(self.inserted.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass
class Report:
    cluster: str
    node: str  # the old primary the rows come from
    new_primary: str
    database: str
    old_timeline: int
    fork_lsn: str
    created_at: str
    compared: bool  # rows already on the new primary were left out
    transactions: list[SalvageTxn]
    tables: list[TableReport]
    aborted: list[int] = field(default_factory=list)
    in_doubt: list[int] = field(default_factory=list)
    status: ReportStatus = ReportStatus.PENDING
    applied_at: str | None = None
    applies: list[ApplyRecord] = field(default_factory=list)
    removed_signals: list[str] = field(default_factory=list)

    @property
    def xids(self) -> list[int]:
        return [t.xid for t in self.transactions]

    @property
    def row_count(self) -> int:
        return sum(len(t.rows) for t in self.tables)

    def counts(self) -> dict[str, Any]:
        return {
            "transactions": len(self.transactions),
            "rows": self.row_count,
            "tables": {t.name: {"found": t.found, "already_present": t.already_present, "to_salvage": len(t.rows)}
                       for t in self.tables},
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        d["xids"] = self.xids  # derived, for readers and scripts
        d["counts"] = self.counts()
        return {"format": REPORT_FORMAT, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        if d.get("format") != REPORT_FORMAT:
            raise SalvageError(f"unsupported salvage report format {d.get('format')!r} (expected {REPORT_FORMAT})")
        return cls(
            cluster=d["cluster"], node=d["node"], new_primary=d["new_primary"], database=d["database"],
            old_timeline=int(d["old_timeline"]), fork_lsn=d["fork_lsn"], created_at=d["created_at"],
            compared=bool(d["compared"]),
            transactions=[SalvageTxn(**t) for t in d["transactions"]],
            tables=[TableReport(**{**t, "rows": [RowRecord(**r) for r in t["rows"]]}) for t in d["tables"]],
            aborted=list(d.get("aborted", [])), in_doubt=list(d.get("in_doubt", [])),
            status=ReportStatus(d["status"]), applied_at=d.get("applied_at"),
            applies=[ApplyRecord(**{**a, "renumbered": [Renumbered(**x) for x in a.get("renumbered", [])]})
                     for a in d.get("applies", [])],
            removed_signals=list(d.get("removed_signals", [])),
        )  # fmt: skip


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def save_report(report: Report, path: Path) -> Path:
    """Write atomically, readable by its owner only (CDRs are personal data)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_report(path: Path) -> Report:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SalvageError(f"cannot read salvage report {path}: {e}") from None
    try:
        return Report.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise SalvageError(f"{path} is not a valid salvage report: {e!r}") from None


def reports_dir(cfg: Config, node: str) -> Path:
    return cfg.state_dir_for(node) / "salvage"


def new_report_path(directory: Path, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    path, n = directory / f"{stamp}.json", 1
    while path.exists():
        path, n = directory / f"{stamp}-{n}.json", n + 1
    return path


def latest_report(directory: Path) -> Path | None:
    """The newest report (names are UTC stamps, so they sort by time)."""
    if not directory.is_dir():
        return None
    files = sorted(p for p in directory.glob("*.json") if not p.name.startswith("."))
    return files[-1] if files else None


# =========================================================================== collect


def collect(
    data_dir: Path,
    *,
    fork_lsn: int,
    old_timeline: int,
    tables: Sequence[SalvageTable],
    database: str,
    bin_dir: Path,
    new_primary: psycopg.Connection[Any] | None,
    superuser: str = "postgres",
    cluster: str = "",
    node: str = "",
    new_primary_name: str = "",
    timeout_s: float = 600.0,
) -> Report:
    """Find, extract and compare what the stopped old primary at ``data_dir`` alone committed.

    ``data_dir`` itself is only read. Without ``new_primary`` nothing is left out
    (applying skips present rows anyway), and the report says so.
    """
    div = scan_wal(data_dir, fork_lsn, old_timeline, bin_dir)
    removed: tuple[str, ...] = ()
    if div.commits and tables:
        with isolated_server(data_dir, bin_dir, timeout_s=timeout_s) as server:
            removed = server.removed_signals
            with server.connect(database, superuser) as conn:
                table_reports = extract_rows(conn, tables, div)
    else:
        table_reports = [TableReport(t.name, list(t.key), list(t.renumber), list(t.after_insert), []) for t in tables]
    if new_primary is not None:
        drop_present(new_primary, table_reports)
    return Report(
        cluster=cluster, node=node, new_primary=new_primary_name, database=database,
        old_timeline=old_timeline, fork_lsn=format_lsn(fork_lsn), created_at=_now_iso(),
        compared=new_primary is not None,
        transactions=[SalvageTxn(c.xid, format_lsn(c.lsn), c.time, list(c.subxids)) for c in div.commits],
        tables=table_reports, aborted=list(div.aborted), in_doubt=list(div.in_doubt),
        removed_signals=list(removed),
    )  # fmt: skip


def _connect_new_primary(cfg: Config, peer: str) -> psycopg.Connection[Any] | None:
    from standby.config import ConfigError
    from standby.observe.postgres import peer_conninfo

    for network in ("private", "public"):
        try:
            info = peer_conninfo(cfg, peer, network, dbname=cfg.salvage.database)
            conn = psycopg.connect(**info, autocommit=True)  # type: ignore[arg-type]
        except (psycopg.Error, OSError, ConfigError) as e:
            log.warning("salvage: cannot compare with %s over %s: %s", peer, network, " ".join(str(e).split()))
            continue
        return conn
    return None


def salvage_for_rejoin(cfg: Config, node: str, fork_lsn: str, old_tli: int,
                       source: str | None = None) -> tuple[Path | None, int]:
    """The salvage step of a rejoin: report what ``node`` alone committed after ``fork_lsn``, compared with
    ``source``, the new primary (default: the pair's peer; a follower's is the primary it rejoins).

    Returns (report path, rows to salvage); no report when nothing committed after the fork.
    Raises SalvageError when the divergence cannot be read completely: the rejoin must
    then stop, since rewinding would destroy what was not saved.
    """
    pg = cfg.pg(node)
    peer = source or cfg.peer_of(node)
    new_primary = _connect_new_primary(cfg, peer)
    try:
        report = collect(
            pg.data_dir, fork_lsn=parse_lsn(fork_lsn), old_timeline=old_tli, tables=cfg.salvage.tables,
            database=cfg.salvage.database, bin_dir=pg.bin_dir, new_primary=new_primary, superuser=pg.superuser,
            cluster=cfg.cluster, node=node, new_primary_name=peer,
        )  # fmt: skip
    finally:
        if new_primary is not None:
            new_primary.close()
    if not report.transactions:
        return None, 0
    return save_report(report, new_report_path(reports_dir(cfg, node))), report.row_count


# =========================================================================== apply


def compile_statement(text: str) -> tuple[str, tuple[str, ...]]:
    """Turn ``:column`` placeholders into psycopg ``%(column)s`` parameters.

    Quoted strings and identifiers, comments, dollar quotes and ``::`` casts are left
    alone; a literal ``%`` is escaped. Returns the statement and the names it uses.
    """
    out: list[str] = []
    names: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            escapes = i > 0 and text[i - 1] in "eE"
            j = i + 1
            while j < n:
                if escapes and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == "'":
                    if j + 1 < n and text[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            out.append(text[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif c == '"':
            j = text.find('"', i + 1)
            j = n - 1 if j < 0 else j
            out.append(text[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j].replace("%", "%%"))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(text[i:j].replace("%", "%%"))
            i = j
        elif c == "$" and (m := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])):
            tag = m.group(0)
            j = text.find(tag, i + len(tag))
            j = n if j < 0 else j + len(tag)
            out.append(text[i:j].replace("%", "%%"))
            i = j
        elif text.startswith("::", i):
            out.append("::")
            i += 2
        elif c == ":" and (m := re.match(r":([A-Za-z_][A-Za-z0-9_]*)", text[i:])):
            names.append(m.group(1))
            out.append(f"%({m.group(1)})s")
            i += len(m.group(0))
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out), tuple(dict.fromkeys(names))


def _keep_value(conn: psycopg.Connection[Any], table: str, column: str, value: JsonScalar) -> bool:
    """May a renumber column keep its old value on the new primary?

    Only when the value is free AND, for a sequence-fed column, the sequence is already
    past it: a free value above the sequence would be handed out again by the next
    nextval() and break a live insert later.
    """
    if _present(conn, table, [column], {column: value}):
        return False
    row = conn.execute("SELECT pg_get_serial_sequence(%s, %s)", (table_ident(table).as_string(conn), column)).fetchone()
    seq = row[0] if row else None
    if seq is None:
        return True
    info = conn.execute(
        "SELECT seqincrement > 0 AND NOT seqcycle, pg_sequence_last_value(seqrelid) FROM pg_sequence "
        "WHERE seqrelid = %s::regclass", (seq,)).fetchone()
    if info is None or not info[0]:
        return True  # a descending or cycling sequence: "already past" has no meaning, free is all we know
    last = info[1]
    return isinstance(value, int) and last is not None and value <= last


@dataclass(frozen=True)
class _Target:
    """How the salvage applies to one table on the current primary."""

    report: TableReport
    columns: dict[str, Column]
    statements: tuple[tuple[str, tuple[str, ...]], ...]


def _targets(conn: psycopg.Connection[Any], report: Report) -> list[_Target]:
    """Check every table, column and placeholder before anything is written."""
    out = []
    for t in report.tables:
        cols = {c.name: c for c in table_columns(conn, t.name)}
        if missing := [c for c in t.columns if c not in cols]:
            raise SalvageError(f"table {t.name} on the primary lacks column(s) {', '.join(missing)}")
        stmts = tuple(compile_statement(s) for s in t.after_insert)
        for _sql, names in stmts:
            if unknown := [x for x in names if x not in cols]:
                raise SalvageError(f"after_insert of {t.name} uses :{', :'.join(unknown)}, not columns of the table")
        out.append(_Target(t, cols, stmts))
    return out


def _insert_row(conn: psycopg.Connection[Any], tgt: _Target, row: RowRecord, renumbered: list[Renumbered]) -> None:
    t = tgt.report
    values = {k: v for k, v in row.values.items() if not tgt.columns[k].generated}
    for col in t.renumber:
        if values.get(col) is not None and not _keep_value(conn, t.name, col, values[col]):
            del values[col]  # the column's default (its sequence) picks a new one
    names = list(values)
    overriding = any(tgt.columns[c].identity_always for c in names)
    q = sql.SQL("INSERT INTO {} ({}) {}VALUES ({}) RETURNING {}").format(
        table_ident(t.name),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL("OVERRIDING SYSTEM VALUE " if overriding else ""),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
        _select_list(list(tgt.columns.values())),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        inserted = cur.execute(q, [values[c] for c in names]).fetchone()
        assert inserted is not None
        for col in t.renumber:
            if col not in values and row.values.get(col) is not None:
                key = {k: row.values.get(k) for k in t.key}
                renumbered.append(Renumbered(t.name, key, col, row.values[col], inserted[col]))
        for stmt, params in tgt.statements:
            cur.execute(stmt, {p: inserted[p] for p in params})


def apply_report(conn: psycopg.Connection[Any], report: Report) -> ApplyRecord:
    """Insert the report's rows into the current primary; safe to repeat.

    One transaction per source transaction, tables in configured order (parents
    first); a row whose key is present is skipped, so a second run inserts nothing.
    On success the report (in memory) is marked applied; save it afterwards. On an
    error the failing transaction is rolled back, earlier ones stay (a rerun skips
    them), the error is recorded in the report and SalvageError raised.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise SalvageError("the connection is inside a transaction; apply needs an idle one")
    # Each source transaction must commit on its own, whatever mode the caller's connection is in.
    was_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        return _apply(conn, report)
    finally:
        if not conn.closed and not conn.broken:
            conn.autocommit = was_autocommit


def _apply(conn: psycopg.Connection[Any], report: Report) -> ApplyRecord:
    rec = ApplyRecord(at=_now_iso(), inserted={t.name: 0 for t in report.tables},
                      skipped={t.name: 0 for t in report.tables})
    row = conn.execute("SELECT pg_is_in_recovery(), current_database()").fetchone()
    assert row is not None
    if row[0]:
        raise SalvageError("this server is a standby; apply the salvage on the primary")
    if row[1] != report.database:
        raise SalvageError(f"the report is for database {report.database}, this connection is to {row[1]}")
    locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (_APPLY_LOCK_KEY,)).fetchone()
    if not locked or not locked[0]:
        raise SalvageError("another salvage apply is running on this cluster")
    try:
        targets = _targets(conn, report)
        order = [t.xid for t in report.transactions]
        order += sorted({r.xid for t in report.tables for r in t.rows} - set(order))
        by_xid: dict[int, list[tuple[_Target, RowRecord]]] = {x: [] for x in order}
        for tgt in targets:
            for r in tgt.report.rows:
                by_xid[r.xid].append((tgt, r))
        for xid in order:
            group = by_xid[xid]
            if not group:
                continue
            # Counted apart and merged only once the transaction committed.
            inserted: list[str] = []
            skipped: list[str] = []
            renumbered: list[Renumbered] = []
            try:
                with conn.transaction():
                    for name, value in _TEXT_SETTINGS:
                        conn.execute("SELECT set_config(%s, %s, true)", (name, value))
                    for tgt, r in group:
                        if _present(conn, tgt.report.name, tgt.report.key, r.values):
                            skipped.append(tgt.report.name)
                        else:
                            _insert_row(conn, tgt, r, renumbered)
                            inserted.append(tgt.report.name)
            except psycopg.Error as e:
                rec.error = f"transaction {xid}: {' '.join(str(e).split())}"
                report.applies.append(rec)
                raise SalvageError(f"applying source {rec.error}; earlier transactions are applied, "
                                   "this one was rolled back; fix the cause and apply again") from e
            for name in inserted:
                rec.inserted[name] += 1
            for name in skipped:
                rec.skipped[name] += 1
            rec.renumbered += renumbered
            rec.transactions += bool(inserted)
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_APPLY_LOCK_KEY,))
    report.applies.append(rec)
    report.status = ReportStatus.APPLIED
    report.applied_at = rec.at
    return rec


def apply_file(conn: psycopg.Connection[Any], path: Path) -> tuple[Report, ApplyRecord]:
    """apply_report() on a report file, saving the outcome (also a failed one) into it."""
    report = load_report(path)
    try:
        rec = apply_report(conn, report)
    finally:
        save_report(report, path)
    return report, rec


# =========================================================================== where to apply


def ensure_apply_rights(conn: psycopg.Connection[Any], cfg: Config, node: str) -> list[str]:
    """On the primary: let the replication role write, so `salvage apply` works from the node
    holding the report (the old primary, rejoined as a standby) over the private network.

    The role already reads every row (pg_read_all_data) and streams the whole cluster; its
    logins are limited to the peer's private address by pg_hba.conf. Nothing is granted
    when no table is salvaged.
    """
    user = cfg.pg(node).replication_user
    if not cfg.salvage.tables:
        return []
    row = conn.execute("SELECT pg_has_role(%s, 'pg_write_all_data', 'MEMBER')", (user,)).fetchone()
    if row and row[0]:
        return []
    conn.execute(sql.SQL("GRANT pg_write_all_data TO {}").format(sql.Identifier(user)))
    return [f"granted pg_write_all_data to {user} (salvage apply from the peer)"]


class ApplyTarget(StrEnum):
    LOCAL = "local"  # this node's server, over its unix socket
    PEER = "peer"  # the peer's server, over the private network as the replication role


@dataclass
class PrimaryConnection:
    conn: psycopg.Connection[Any]
    node: str
    target: ApplyTarget


def _in_recovery(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return row is None or bool(row[0])


def connect_current_primary(cfg: Config, me: str, dbname: str) -> PrimaryConnection:
    """A connection to whichever node is the writable primary now: this one, else the peer.

    The peer is reached as rejoin reaches it (the replication role over the private
    network, TLS as configured: verify-full with [tls]). Raises SalvageError naming
    what was tried; error texts come from libpq, which never repeats a password.
    """
    from standby.config import ConfigError
    from standby.observe.postgres import connect_local, peer_conninfo

    if me not in cfg.nodes:
        # The pair's servers let a follower's address stream WAL, not write the application's rows.
        raise SalvageError(f"{me} is a follower: copy the report to the pair's primary and apply it there "
                           "(`standby salvage apply FILE` on that node)")
    peer = cfg.peer_of(me)
    tried: list[str] = []
    try:
        local = connect_local(cfg, me, dbname=dbname)
    except psycopg.OperationalError as e:
        tried.append(f"{me}: not reachable over its socket ({' '.join(str(e).split())})")
    else:
        if not _in_recovery(local):
            return PrimaryConnection(local, me, ApplyTarget.LOCAL)
        local.close()
        tried.append(f"{me}: a standby")
    try:
        info = {**peer_conninfo(cfg, peer, "private", dbname=dbname), "application_name": "standby-salvage"}
        remote = psycopg.connect(**info, autocommit=True)  # type: ignore[arg-type]
    except (psycopg.OperationalError, ConfigError) as e:
        tried.append(f"{peer}: not reachable over the private network ({' '.join(str(e).split())})")
        raise SalvageError("no current primary reachable to apply the salvage to: " + "; ".join(tried)) from None
    if _in_recovery(remote):
        remote.close()
        tried.append(f"{peer}: a standby")
        raise SalvageError("no current primary reachable to apply the salvage to: " + "; ".join(tried))
    return PrimaryConnection(remote, peer, ApplyTarget.PEER)
