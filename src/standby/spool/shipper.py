"""`standby ship`: tail the spool, insert each record into the primary exactly once, say how far it is.

The shell around plan.next_step. Its order of work is what makes "exactly once" hold:

1. read a batch of complete lines after the durable offset; set the malformed ones aside
   (appended to rejected.jsonl, fsynced) before anything else happens to the batch;
2. insert the batch's records in one transaction, ``ON CONFLICT (key) DO NOTHING``; a key already
   there is counted as a duplicate (an earlier run, or a commit whose answer was lost);
3. only after the commit, move the offset (written to a temporary file, fsynced, renamed).

A crash between 2 and 3 sends the batch again after the restart: its keys are there, nothing is
inserted twice. A commit on the old primary is in the new one when the pair replicates in
`sync` (the commit waited for the standby); where it may not be (async, degraded sync), a lost
connection or a restart sends again what was committed in the last spool.resend_window_s.

It runs as a process of its own rather than inside the agent: a spool read, a slow primary or a
full disk must never delay the agent's heartbeats and decisions (whose timing is its safety), and
the agent restarting never stops the shipping (nor the other way round).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from standby import tls
from standby.config import Config, Spool, hosts_in_order, read_secret
from standby.documents import ShipperStatus
from standby.spool import plan
from standby.spool.parse import LineFormat, Record, Rejection, RejectReason, parse_line
from standby.spool.plan import Action, Outcome
from standby.spool.state import (
    FilePosition,
    Progress,
    StateError,
    decode_progress,
    encode_progress,
    encode_status,
    write_atomically,
)

log = logging.getLogger("standby.ship")
HEAD_BYTES = 4096
STATUS_EVERY_S = 1.0
APPLICATION_NAME = "standby-ship"


@dataclass(frozen=True)
class SpoolFile:
    name: str
    path: Path
    dev: int
    ino: int
    size: int


@dataclass
class Batch:
    records: list[tuple[Record, str]] = field(default_factory=list)  # with the file it came from
    rejects: list[dict[str, Any]] = field(default_factory=list)  # malformed lines
    refused: list[dict[str, Any]] = field(default_factory=list)  # records the database refused
    blank: int = 0
    ends: dict[tuple[int, int], FilePosition] = field(default_factory=dict)  # each file's position after it
    rejects_saved: bool = False

    @property
    def lines(self) -> int:
        return len(self.records) + len(self.rejects) + self.blank


def resume_at(known: FilePosition | None, size: int, head_digest: str | None) -> int:
    """Where to read a spool file from: the known offset while it is still the same file, else its start.

    ``head_digest``: SHA-256 of the file's first ``known.head_len`` bytes now. A file shorter than
    the offset was truncated (copytruncate rotation), one whose first bytes changed is a new file
    that reuses an old inode: both are read from their start (lines already shipped come back as
    duplicates, none is skipped).
    """
    if known is None or size < known.offset or head_digest != known.head:
        return 0
    return known.offset


Snapshot = tuple[float, tuple[FilePosition, ...]]  # positions right after a commit, with its wall-clock time


def resume_point(snapshots: list[Snapshot], base: tuple[FilePosition, ...], before: float) -> tuple[FilePosition, ...]:
    """The positions of the newest snapshot taken at or before ``before`` (``base`` when none is that old)."""
    out = base
    for t, files in snapshots:
        if t > before:
            break
        out = files
    return out


def list_spool(path: Path, pattern: str) -> list[SpoolFile]:
    """The spool's regular files in name order (``path`` itself when it is a file)."""
    paths = sorted(p for p in path.glob(pattern)) if path.is_dir() else [path] if path.exists() else []
    out = []
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:  # removed meanwhile
            continue
        if p.is_file():
            # A name that is not UTF-8 goes to the database and the set-aside file readable, never as an error.
            name = p.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            out.append(SpoolFile(name, p, st.st_dev, st.st_ino, st.st_size))
    return out


def _digest(path: Path, length: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()


def conninfo(cfg: Config, node: str) -> dict[str, Any]:
    """The writable node, over the pair's addresses: this node's first (its database is the near one
    after a failover to it), private before public."""
    sp = _spool(cfg)
    order = hosts_in_order(cfg, "writes", own=node)
    hosts = [str(cfg.nodes[n].private.ip) for n in order] + [str(cfg.nodes[n].public.ip) for n in order]
    ports = [str(cfg.pg(n).port) for n in order] * 2
    info: dict[str, Any] = dict(
        host=",".join(hosts), port=",".join(ports), dbname=sp.database, user=sp.user,
        target_session_attrs="read-write", connect_timeout=sp.connect_timeout_s, application_name=APPLICATION_NAME,
        # A host that dies mid-insert is given up within seconds, not after TCP's minutes of retries.
        keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=3, tcp_user_timeout=5000,
        **tls.libpq_params(cfg))
    if sp.password_file is not None:
        info["password"] = read_secret(sp.password_file, "spool.password_file")
    return info


def _spool(cfg: Config) -> Spool:
    if cfg.spool is None:
        raise ValueError("no [spool] section")
    return cfg.spool


def _table(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


class Shipper:
    def __init__(self, cfg: Config, node: str) -> None:
        self.cfg, self.node, self.sp = cfg, node, _spool(cfg)
        self.fmt = LineFormat.of(self.sp)
        self.spool_path = self.sp.path_for(node)
        self.state_dir = cfg.spool_state_dir(node)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.progress_path = self.state_dir / "progress.json"
        self.rejects_path = self.state_dir / "rejected.jsonl"
        self.status_path = cfg.spool_status_file(node)
        self.policy = plan.Policy(poll_s=self.sp.poll_interval_ms / 1000, retry_max_s=self.sp.retry_max_ms / 1000)
        self.progress = self._load_progress()
        # The resend window (async, degraded sync): commits of its last seconds may be lost in a failover.
        self.window = cfg.spool_resend_window_s()
        self.base, self.snapshots = self.progress.files, list[Snapshot]()
        self.last_commit: float | None = None
        self.connected_once = False
        self.handled = {(f.dev, f.ino): f.offset for f in self.progress.handled}
        self.conn: psycopg.Connection[Any] | None = None
        self.server: str | None = None
        self.batch = Batch()
        self.last = Outcome.NONE
        self.failures = 0
        self.one_by_one = False
        self.last_error: str | None = None
        self.save_failed = False
        self.unreadable = False
        self.stopping = False
        self._status_at = 0.0
        self._table_ready = False

    # -- the loop --------------------------------------------------------------------

    def run(self, once: bool = False) -> None:
        """Ship until stopped (SIGTERM/SIGINT), or with ``once`` until every complete line is shipped."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop())
        try:
            while not self.stopping:
                step = self.step()
                if once and step.reason is plan.Reason.CAUGHT_UP:
                    break
        finally:
            self._write_status(force=True)
            self._disconnect()

    def _stop(self) -> None:
        self.stopping = True

    def step(self) -> plan.Step:
        pending = len(self.batch.records)
        s = plan.next_step(plan.View(self.last, pending, self.conn is not None, self.failures, self.one_by_one),
                           self.policy)
        if s.action is Action.READ:
            self.last = self._read()
        elif s.action is Action.CONNECT:
            self.last = self._connect()
        elif s.action is Action.INSERT:
            self.last = self._insert(each=False)
        elif s.action is Action.INSERT_EACH:
            self.one_by_one = True
            self.last = self._insert(each=True)
        else:
            self._write_status()
            self._sleep(s.wait_s)
            self.last = Outcome.WAITED
        if self.last in (Outcome.CONNECT_FAILED, Outcome.LOST, Outcome.SERVER_ERROR):
            self.failures += 1
        elif self.last in (Outcome.CONNECTED, Outcome.COMMITTED):
            self.failures = 0
        self._write_status()
        return s

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    # -- reading ---------------------------------------------------------------------

    def _read(self) -> Outcome:
        batch = Batch()
        known = {(f.dev, f.ino): f for f in self.progress.files}
        try:
            files = list_spool(self.spool_path, self.sp.pattern)
            for sf in files:
                if batch.lines >= self.sp.batch_size:
                    break
                self._read_file(sf, known.get((sf.dev, sf.ino)), batch)
        except OSError as e:
            self._problem(f"cannot read the spool {self.spool_path}: {e.strerror or e}", unreadable=True)
            return Outcome.READ_NOTHING
        self.unreadable = False
        self.batch = batch
        if not batch.lines:
            if batch.ends:  # a new empty file, or one truncated to nothing: remember it once
                self._commit(0, 0)
            return Outcome.READ_NOTHING
        if not batch.records:
            return self._commit(0, 0)  # only rejects or blank lines: nothing for the database
        return Outcome.READ_SOME

    def _read_file(self, sf: SpoolFile, known: FilePosition | None, batch: Batch) -> None:
        head = _digest(sf.path, known.head_len) if known is not None and sf.size >= known.offset else None
        start = resume_at(known, sf.size, head)
        if known is not None and start == 0 and known.offset > 0:
            log.warning("%s was truncated or replaced: reading it from its start", sf.path)
            self.handled.pop((sf.dev, sf.ino), None)
        pos = replace(known, name=sf.name) if known is not None and start else FilePosition(
            sf.name, sf.dev, sf.ino, 0, 0, 0, "")
        limit = self.fmt.max_line_bytes
        with open(sf.path, "rb") as f:
            f.seek(start)
            while batch.lines < self.sp.batch_size:
                raw = f.readline(limit + 1)
                length = len(raw)
                while length > limit and not raw.endswith(b"\n"):  # too long: find its end, keep its start
                    more = f.readline(limit + 1)
                    if not more:
                        break
                    length += len(more)
                    if more.endswith(b"\n"):
                        raw = raw[: limit + 1] + b"\n"
                if not raw.endswith(b"\n"):
                    break  # the end, or a line still being written: it waits for its newline
                outcome = parse_line(raw[:-1], self.fmt)
                again = pos.offset < self.handled.get((sf.dev, sf.ino), 0)  # sent again: set aside before
                if isinstance(outcome, Record):
                    batch.records.append((outcome, sf.name))
                elif again:
                    pass
                elif outcome.reason is RejectReason.BLANK:
                    batch.blank += 1
                else:
                    batch.rejects.append(self._reject_entry(sf.name, pos.lines + 1, pos.offset, raw[:-1], outcome))
                pos = replace(pos, offset=pos.offset + length, lines=pos.lines + 1)
        if known is None or pos.offset != known.offset:
            n = min(pos.offset, HEAD_BYTES)
            batch.ends[(sf.dev, sf.ino)] = replace(pos, head_len=n, head=_digest(sf.path, n))

    def _reject_entry(self, name: str, lineno: int | None, offset: int | None, raw: bytes, r: Rejection
                      ) -> dict[str, Any]:
        return {"at": datetime.now(UTC).isoformat(timespec="seconds"), "node": self.node, "file": name,
                "line": lineno, "offset": offset, "reason": r.reason.value, "detail": r.detail,
                "text": raw[: self.fmt.max_line_bytes].decode("utf-8", "backslashreplace"),
                "base64": base64.b64encode(raw[: self.fmt.max_line_bytes]).decode()}

    # -- the database ----------------------------------------------------------------

    def _connect(self) -> Outcome:
        try:
            info = conninfo(self.cfg, self.node)
            conn = psycopg.connect(**info, autocommit=True)  # each transaction() is then a real BEGIN/COMMIT
        except psycopg.Error as e:
            return self._failed(Outcome.CONNECT_FAILED, f"no writable node answers: {_first_line(e)}")
        except Exception as e:  # noqa: BLE001 - a secret file made unreadable: report and retry, never die
            return self._failed(Outcome.CONNECT_FAILED, f"cannot connect: {_first_line(e)}")
        self.conn = conn
        self.server = f"{conn.info.host}:{conn.info.port}"
        log.info("shipping to %s", self.server)
        if self.window and self.connected_once and self.last_commit is not None:
            self._rewind(self.last_commit - self.window)
        self.connected_once = True
        return Outcome.CONNECTED

    def _rewind(self, before: float) -> None:
        """Read again from the positions as of ``before``: what was committed since may be lost with the old
        primary (the new one's keys tell which records are there already)."""
        for f in self.progress.files:
            self.handled[(f.dev, f.ino)] = max(self.handled.get((f.dev, f.ino), 0), f.offset)
        back = resume_point(self.snapshots, self.base, before)
        self.snapshots = [sn for sn in self.snapshots if sn[0] <= before]
        self.progress = replace(self.progress, files=back)
        self.batch, self.one_by_one = Batch(), False
        log.info("connection lost: sending again what was committed after %s", time.strftime(
            "%H:%M:%S", time.localtime(before)))

    def _ensure_table(self, conn: psycopg.Connection[Any]) -> None:
        if self._table_ready or not self.sp.create_table:
            return
        with conn.transaction():
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, record jsonb NOT NULL, node text NOT NULL, "
                "source text NOT NULL, shipped_at timestamptz NOT NULL DEFAULT now())").format(_table(self.sp.table)))
        self._table_ready = True

    def _insert(self, each: bool) -> Outcome:
        assert self.conn is not None
        if not self._set_aside_malformed():
            return Outcome.SERVER_ERROR
        query = sql.SQL(
            "INSERT INTO {} (key, record, node, source) SELECT k, r::jsonb, %s, s "
            "FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(k, r, s) "
            "ON CONFLICT (key) DO NOTHING RETURNING key").format(_table(self.sp.table))
        records = self.batch.records
        inserted, refused = 0, []
        try:
            self._ensure_table(self.conn)
            for group in ([r] for r in records) if each else [records]:
                try:
                    with self.conn.transaction():
                        cur = self.conn.execute(query, (self.node, [r.key for r, _ in group],
                                                        [r.text for r, _ in group], [src for _, src in group]))
                        inserted += len(cur.fetchall())
                except psycopg.Error as e:
                    outcome = plan.classify(getattr(e, "sqlstate", None))
                    if outcome is not Outcome.REFUSED or not each:
                        return self._db_error(outcome, e)
                    rec, src = group[0]
                    log.warning("the database refused record %s from %s: %s", rec.key, src, _first_line(e))
                    refused.append(self._refused_entry(rec, src, e))
        except psycopg.Error as e:
            return self._db_error(plan.classify(getattr(e, "sqlstate", None)), e)
        self.batch.refused = refused
        return self._commit(inserted, len(records) - inserted - len(refused))

    def _refused_entry(self, rec: Record, src: str, e: psycopg.Error) -> dict[str, Any]:
        r = Rejection(RejectReason.REFUSED_BY_DATABASE, f"{getattr(e, 'sqlstate', None)}: {_first_line(e)}")
        entry = self._reject_entry(src, None, None, rec.text.encode(), r)
        entry["key"] = rec.key
        return entry

    def _db_error(self, outcome: Outcome, e: psycopg.Error) -> Outcome:
        if outcome is Outcome.LOST or self.conn is None or self.conn.closed or self.conn.broken:
            self._disconnect()
            outcome = Outcome.LOST
        return self._failed(outcome, f"{getattr(e, 'sqlstate', None) or 'connection'}: {_first_line(e)}")

    def _failed(self, outcome: Outcome, why: str) -> Outcome:
        if why != self.last_error:
            log.warning("%s", why)
        self.last_error = why
        return outcome

    def _disconnect(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn, self.server = None, None

    # -- progress ----------------------------------------------------------------------

    def _save(self, entries: list[dict[str, Any]]) -> bool:
        """Append set-aside lines to rejected.jsonl, durably; False (and the disk alert) when it cannot."""
        if not entries:
            return True
        try:
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in entries).encode()
            fd = os.open(self.rejects_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            size = os.fstat(fd).st_size
            try:
                view, done = memoryview(data), 0
                while done < len(data):
                    done += os.write(fd, view[done:])
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # no half line for the next append to follow
                raise
            finally:
                os.close(fd)
        except OSError as e:
            self._problem(f"cannot set lines aside in {self.rejects_path}: {e.strerror or e}", save=True)
            return False
        return True

    def _set_aside_malformed(self) -> bool:
        """Save the batch's malformed lines, count them and note how far lines are handled (saved at once):
        a restart before the batch's commit sends its records again but sets none of these aside twice."""
        b = self.batch
        if not b.rejects:
            return True
        if not self._save(b.rejects):
            return False
        self.progress = replace(self.progress, rejected=self.progress.rejected + len(b.rejects))
        for k, f in b.ends.items():
            self.handled[k] = max(self.handled.get(k, 0), f.offset)
        b.rejects = []
        self._save_progress()
        return True

    def _commit(self, inserted: int, duplicates: int) -> Outcome:
        """The batch's records are in the database: set aside what must be, then move the offsets."""
        if not self._set_aside_malformed():
            self.batch = Batch()
            return Outcome.SERVER_ERROR
        b = self.batch
        if not self._save(b.refused):
            # Nothing moves: the batch is read and sent again (its records then count as duplicates).
            self.batch = Batch()
            return Outcome.SERVER_ERROR
        ends = {(f.dev, f.ino): f for f in self.progress.files}
        ends.update(b.ends)
        present = {(f.dev, f.ino) for f in list_spool(self.spool_path, self.sp.pattern)}
        self.handled = {k: off for k, off in self.handled.items() if k in present}
        p = self.progress
        self.progress = Progress(
            files=tuple(f for k, f in ends.items() if k in present), shipped=p.shipped + inserted,
            duplicates=p.duplicates + duplicates, rejected=p.rejected + len(b.refused),
            blank=p.blank + b.blank)
        self.batch, self.one_by_one = Batch(), False
        self._snapshot(sent=bool(inserted or duplicates or b.refused))
        self._save_progress()
        return Outcome.COMMITTED

    def _snapshot(self, sent: bool) -> None:
        """Remember the positions after a commit; ``sent``: the database took part (its commit may be lost)."""
        if not self.window:
            return
        now = time.time()
        if sent:
            self.last_commit = now
        self.snapshots.append((now, self.progress.files))
        if self.last_commit is not None:
            # Older than the window before the last commit: only the newest such one is ever resumed from.
            while len(self.snapshots) > 1 and self.snapshots[1][0] <= self.last_commit - self.window:
                self.base = self.snapshots.pop(0)[1]

    def _save_progress(self) -> None:
        try:
            saved = replace(self.progress, handled=self._handled_positions())
            if self.window:  # a restart sends the window again (all since the start, before this run's first commit)
                before = -1.0 if self.last_commit is None else self.last_commit - self.window
                saved = replace(saved, files=resume_point(self.snapshots, self.base, before))
            write_atomically(self.progress_path, encode_progress(saved))
        except OSError as e:
            # Shipping goes on from memory; after a restart the unsaved stretch is sent again (duplicates).
            self._problem(f"cannot save progress in {self.progress_path}: {e.strerror or e}", save=True)
            return
        if self.save_failed:
            log.info("progress saved again")
        self.save_failed = False

    def _handled_positions(self) -> tuple[FilePosition, ...]:
        out = {(f.dev, f.ino): f for f in self.progress.files}
        for (dev, ino), off in self.handled.items():
            f = out.get((dev, ino))
            if f is None or off > f.offset:  # only dev, ino and offset count here
                out[(dev, ino)] = FilePosition("", dev, ino, off, 0, 0, "") if f is None else replace(f, offset=off)
        return tuple(out.values())

    def _load_progress(self) -> Progress:
        try:
            return decode_progress(self.progress_path.read_bytes())
        except FileNotFoundError:
            return Progress()
        except (OSError, StateError) as e:
            # Read from the start: every record comes again and counts as a duplicate; none is lost.
            log.error("cannot use %s (%s): shipping the spool from its start", self.progress_path, e)
            return Progress()

    def _problem(self, why: str, save: bool = False, unreadable: bool = False) -> None:
        if why != self.last_error:
            log.error("%s", why)
        self.last_error = why
        self.save_failed = self.save_failed or save
        self.unreadable = self.unreadable or unreadable

    # -- status --------------------------------------------------------------------------

    def backlog(self) -> tuple[int, int]:
        """Bytes and files in the spool not yet shipped or set aside."""
        known = {(f.dev, f.ino): f.offset for f in self.progress.files}
        total = files = 0
        for sf in list_spool(self.spool_path, self.sp.pattern):
            left = max(0, sf.size - known.get((sf.dev, sf.ino), 0))
            if left:
                total, files = total + left, files + 1
        return total, files

    def disk_free(self) -> int | None:
        where = self.spool_path if self.spool_path.is_dir() else self.spool_path.parent
        try:
            st = os.statvfs(where)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def status(self) -> ShipperStatus:
        try:
            backlog, files = self.backlog()
        except OSError:
            backlog, files = 0, 0
        pending = len(self.batch.records)
        ph = plan.phase(pending, backlog, self.conn is not None, self.failures)
        free = self.disk_free()
        p = self.progress
        return ShipperStatus(
            node=self.node, pid=os.getpid(), updated_at=time.time(), phase=ph, backlog_bytes=backlog,
            backlog_files=files, shipped=p.shipped, duplicates=p.duplicates, rejected=p.rejected, blank=p.blank,
            rejects_file=str(self.rejects_path), server=self.server, disk_free_bytes=free,
            last_error=self.last_error if self.failures or self.save_failed or self.unreadable else None,
            problems=plan.problems(ph, free, self.sp.min_free_mb * 1024 * 1024, self.save_failed, self.unreadable))

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < STATUS_EVERY_S:
            return
        self._status_at = now
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.status_path, encode_status(self.status()), mode=0o644)
        except OSError as e:
            log.warning("cannot write the status %s: %s", self.status_path, e.strerror or e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
