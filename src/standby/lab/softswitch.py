"""A sample softswitch: per call, one transaction writes a CDR, two balance deltas and two balances.

It exists to be failed over. The HTTP answer is the acknowledgement: 200 only after COMMIT
returned, 503 otherwise, with ``commit_unknown`` set when the COMMIT itself was in flight
when the database went away (the call may or may not be in the database). A repeated
call_id that already committed answers 200 with the existing CDR id, so clients may retry.

It reaches PostgreSQL through a libpq multi-host DSN with ``target_session_attrs=read-write``
and so follows whichever node is primary; every connection that sees an error it cannot
vouch for is dropped and reopened on next use.

Lifecycle (argument lists, no shell; the DSN holds a password, so it is only read from a file):
    standby lab softswitch start --dsn-file F --listen 0.0.0.0:8080 --pidfile P --logfile L
    standby lab softswitch stop --pidfile P
    standby lab softswitch health --url http://127.0.0.1:8080/health
    standby lab softswitch serve --dsn-file F --listen 0.0.0.0:8080
    standby lab softswitch init-schema --dsn-file F

(the lab's service entries run the same commands as ``CLI``, without loading the whole CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web

from standby.lab.health import check_health
from standby.lab.topology import APP_DB

log = logging.getLogger("standby.softswitch")

# The softswitch's commands as a process runs them: `standby lab softswitch`, loading only the
# workload's commands (a process boundary: the lab never imports the CLI).
CLI = (sys.executable, "-m", "standby.cli.lab_workload", "softswitch")
DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_ACCOUNTS = 20
DEFAULT_VENDORS = 5
MONEY_QUANTUM = Decimal("0.000001")  # numeric(18,6)

# --------------------------------------------------------------------------- schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id      int PRIMARY KEY,
    name    text NOT NULL,
    balance numeric(18,6) NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS vendors (
    id      int PRIMARY KEY,
    name    text NOT NULL,
    balance numeric(18,6) NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cdrs (
    id           bigserial PRIMARY KEY,
    call_id      text UNIQUE NOT NULL,
    account_id   int REFERENCES accounts(id),
    vendor_id    int REFERENCES vendors(id),
    duration_s   int,
    price        numeric(18,6),
    cost         numeric(18,6),
    connect_time timestamptz DEFAULT now()
);
CREATE TABLE IF NOT EXISTS balance_deltas (
    id       bigserial PRIMARY KEY,
    call_id  text NOT NULL,
    party    text CHECK (party IN ('account', 'vendor')),
    party_id int,
    delta    numeric(18,6),
    created  timestamptz DEFAULT now(),
    UNIQUE (call_id, party)
);
"""

# Any fixed key: serialises concurrent ensure_schema() calls, since CREATE TABLE IF NOT EXISTS
# run concurrently can still fail on the catalog's unique indexes.
_SCHEMA_LOCK_KEY = 0x5F0F7C4A11


def ensure_schema(
    conn: psycopg.Connection[Any], accounts: int = DEFAULT_ACCOUNTS, vendors: int = DEFAULT_VENDORS
) -> None:
    """Create the tables and seed accounts 1..accounts and vendors 1..vendors; safe to repeat."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        conn.execute(_SCHEMA)  # several statements, no parameters
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO accounts (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                [(i, f"account-{i}") for i in range(1, accounts + 1)],
            )
            cur.executemany(
                "INSERT INTO vendors (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                [(i, f"vendor-{i}") for i in range(1, vendors + 1)],
            )


def salvage_spec(database: str = APP_DB) -> dict[str, Any]:
    """The config's ``[salvage]`` section for this schema (see standby.salvage).

    A CDR is identified by its call id, a delta by (call id, party); both serial ids are
    renumbered when taken. A salvaged delta is applied to its party's balance as a delta,
    so balances stay the sum of their deltas whatever the new primary did meanwhile.
    """
    return {
        "database": database,
        "tables": [
            {"name": "cdrs", "key": ["call_id"], "renumber": ["id"]},
            {
                "name": "balance_deltas",
                "key": ["call_id", "party"],
                "renumber": ["id"],
                "after_insert": [
                    "UPDATE accounts SET balance = balance + :delta WHERE id = :party_id AND :party = 'account'",
                    "UPDATE vendors SET balance = balance + :delta WHERE id = :party_id AND :party = 'vendor'",
                ],
            },
        ],
    }


SALVAGE = salvage_spec()


def rate_call(account_id: int, vendor_id: int, duration_s: int) -> tuple[Decimal, Decimal]:
    """(price the account pays, cost the vendor earns): per-minute tariffs that differ by party."""
    price_per_min = Decimal("0.0100") + Decimal("0.0010") * (account_id % 10)
    cost_per_min = Decimal("0.0060") + Decimal("0.0005") * (vendor_id % 5)
    minutes = Decimal(duration_s) / 60
    return (price_per_min * minutes).quantize(MONEY_QUANTUM), (cost_per_min * minutes).quantize(MONEY_QUANTUM)


# --------------------------------------------------------------------------- connections


@dataclass
class _Slot:
    conn: psycopg.AsyncConnection[Any] | None = None
    node: str = ""


class Pool:
    """A fixed number of lazily (re)opened connections; a suspect connection is thrown away."""

    def __init__(self, dsn: str, size: int, connect_timeout_s: float) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._free: asyncio.Queue[_Slot] = asyncio.Queue()
        for _ in range(size):
            self._free.put_nowait(_Slot())
        self._last_event = ""

    def _note(self, event: str) -> None:
        # Log changes, not every failed call: an outage at 200 calls/s would flood the log.
        if event != self._last_event:
            self._last_event = event
            log.log(logging.WARNING if event.startswith("cannot") else logging.INFO, event)

    async def _open(self, slot: _Slot) -> None:
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self._dsn, autocommit=True), self._connect_timeout_s
            )
        except (psycopg.Error, OSError, TimeoutError) as e:
            self._note(f"cannot connect to the database: {_one_line(e) or type(e).__name__}")
            raise
        slot.conn = conn
        # inet_server_addr() is NULL over a unix socket; then the host libpq chose will do.
        cur = await conn.execute("SELECT host(inet_server_addr())")
        row = await cur.fetchone()
        slot.node = row[0] if row and row[0] else conn.info.host
        self._note(f"connected to the database at {slot.node}")

    async def discard(self, slot: _Slot) -> None:
        """Close a slot's connection; the next session() reopens it."""
        await self._drop(slot)

    @staticmethod
    async def _drop(slot: _Slot) -> None:
        if slot.conn is not None:
            with contextlib.suppress(Exception):
                await slot.conn.close()
        slot.conn = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[_Slot]:
        slot = await self._free.get()
        try:
            if slot.conn is None or slot.conn.closed or slot.conn.broken:
                await self._drop(slot)
                await self._open(slot)
            yield slot
        except BaseException as e:  # includes cancellation by a timeout
            keep = (
                isinstance(e, (psycopg.IntegrityError, psycopg.DataError))
                and slot.conn is not None
                and not slot.conn.broken
                and slot.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            )
            if not keep:
                await self._drop(slot)
            raise
        finally:
            self._free.put_nowait(slot)

    async def close(self) -> None:
        while not self._free.empty():
            await self._drop(self._free.get_nowait())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class CallRequest:
    call_id: str
    account_id: int
    vendor_id: int
    duration_s: int

    @classmethod
    def parse(cls, body: Any) -> CallRequest:
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        call_id = body.get("call_id")
        if not isinstance(call_id, str) or not call_id or len(call_id) > 200:
            raise ValueError("call_id: expected a non-empty string (at most 200 characters)")
        ints: dict[str, int] = {}
        for key in ("account_id", "vendor_id", "duration_s"):
            v = body.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**31:
                raise ValueError(f"{key}: expected a non-negative integer")
            ints[key] = v
        return cls(call_id=call_id, **ints)


class Phase(enum.Enum):
    CONNECT = "connect"
    WRITE = "write"  # an error here rolls the transaction back: definitely not committed
    COMMIT = "commit"  # COMMIT sent, no answer: the call may or may not be committed


class CallError(Exception):
    def __init__(self, status: int, reason: str, commit_unknown: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.commit_unknown = status, reason, commit_unknown


@dataclass(frozen=True)
class CallResult:
    cdr_id: int
    node: str
    replayed: bool  # the call_id had already committed; nothing new was written


@dataclass
class Progress:
    """Where a call stands, so a failure or timeout can be classified after the fact."""

    phase: Phase = Phase.CONNECT


async def _write_call(conn: psycopg.AsyncConnection[Any], req: CallRequest) -> int | None:
    """The call's writes inside an open transaction; None if the call_id already exists."""
    price, cost = rate_call(req.account_id, req.vendor_id, req.duration_s)
    cur = await conn.execute(
        "INSERT INTO cdrs (call_id, account_id, vendor_id, duration_s, price, cost)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (call_id) DO NOTHING RETURNING id",
        (req.call_id, req.account_id, req.vendor_id, req.duration_s, price, cost),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    await conn.execute(
        "INSERT INTO balance_deltas (call_id, party, party_id, delta)"
        " VALUES (%s, 'account', %s, %s), (%s, 'vendor', %s, %s)",
        (req.call_id, req.account_id, -price, req.call_id, req.vendor_id, cost),
    )
    # Always account before vendor: one lock order, so concurrent calls cannot deadlock.
    await conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (price, req.account_id))
    await conn.execute("UPDATE vendors SET balance = balance + %s WHERE id = %s", (cost, req.vendor_id))
    return int(row[0])


async def place_call(pool: Pool, req: CallRequest, progress: Progress | None = None) -> CallResult:
    """Write the call in one transaction; return only once COMMIT has returned."""
    progress = progress or Progress()
    async with pool.session() as slot:
        conn = slot.conn
        assert conn is not None
        progress.phase = Phase.WRITE
        await conn.execute("BEGIN")
        try:
            cdr_id = await _write_call(conn, req)
        except (psycopg.IntegrityError, psycopg.DataError):
            await conn.execute("ROLLBACK")  # a bad request, not a bad connection: keep it
            raise
        if cdr_id is None:
            # Committed by an earlier attempt (perhaps one our INSERT waited for): a fresh
            # statement sees it under READ COMMITTED.
            cur = await conn.execute("SELECT id FROM cdrs WHERE call_id = %s", (req.call_id,))
            existing = await cur.fetchone()
            try:
                await conn.execute("ROLLBACK")
            except psycopg.Error:
                # The answer is already known; only this connection is lost.
                await pool.discard(slot)
            if existing is None:  # the conflicting row was deleted meanwhile; let the client retry
                raise CallError(503, "call_id conflict, retry")
            return CallResult(cdr_id=existing[0], node=slot.node, replayed=True)
        progress.phase = Phase.COMMIT
        await conn.execute("COMMIT")
        return CallResult(cdr_id=cdr_id, node=slot.node, replayed=False)


async def handle_call_request(pool: Pool, req: CallRequest, timeout_s: float) -> CallResult:
    """place_call() with a deadline and every failure turned into a CallError."""
    progress = Progress()
    try:
        return await asyncio.wait_for(place_call(pool, req, progress), timeout_s)
    except CallError:
        raise
    except psycopg.errors.ForeignKeyViolation as e:
        raise CallError(422, f"unknown account or vendor: {_one_line(e)}") from e
    except TimeoutError as e:
        unknown = progress.phase is Phase.COMMIT
        raise CallError(503, f"database did not answer within {timeout_s:g} s", unknown) from e
    except (psycopg.Error, OSError) as e:
        unknown = progress.phase is Phase.COMMIT
        raise CallError(503, f"database error: {_one_line(e) or type(e).__name__}", unknown) from e


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class ServiceConfig:
    dsn: str
    host: str = "0.0.0.0"
    port: int = 8080
    pool_size: int = 4
    # Below the load generator's 2 s: a call that cannot finish gets a definite 503 before the
    # client gives up, and only a call caught in COMMIT stays indeterminate.
    call_timeout_s: float = 1.5
    health_timeout_s: float = 2.5
    connect_timeout_s: float = 3.0


_POOL = web.AppKey("pool", Pool)
_HEALTH_POOL = web.AppKey("health_pool", Pool)
_CONFIG = web.AppKey("config", ServiceConfig)


async def _post_call(request: web.Request) -> web.Response:
    try:
        req = CallRequest.parse(await request.json())
    except (ValueError, json.JSONDecodeError) as e:
        return web.json_response({"error": f"bad request: {e}"}, status=400)
    cfg = request.app[_CONFIG]
    try:
        res = await handle_call_request(request.app[_POOL], req, cfg.call_timeout_s)
    except CallError as e:
        return web.json_response(
            {"call_id": req.call_id, "error": e.reason, "commit_unknown": e.commit_unknown}, status=e.status
        )
    return web.json_response(
        {"call_id": req.call_id, "cdr_id": res.cdr_id, "node": res.node, "replayed": res.replayed}
    )


async def _check_writable(pool: Pool) -> str:
    # A fresh connection for every check. A kept one still leads to the server it was opened to:
    # after a take-over that is the old primary, whose host may be gone without a reset, so the
    # query hung until the check's timeout and the service read as unhealthy for a few seconds
    # after every failover. A new connection asks libpq's host list for the writable server now.
    async with pool.session() as slot:
        try:
            assert slot.conn is not None
            cur = await slot.conn.execute("SELECT pg_is_in_recovery()")
            row = await cur.fetchone()
            if row is None or row[0]:
                raise CallError(503, f"database at {slot.node} is read-only (in recovery)")
            return slot.node
        finally:
            await pool.discard(slot)


async def _get_health(request: web.Request) -> web.Response:
    cfg = request.app[_CONFIG]
    try:
        node = await asyncio.wait_for(_check_writable(request.app[_HEALTH_POOL]), cfg.health_timeout_s)
    except CallError as e:
        return web.json_response({"status": "unavailable", "error": e.reason}, status=503)
    except TimeoutError:
        return web.json_response({"status": "unavailable", "error": "database did not answer in time"}, status=503)
    except (psycopg.Error, OSError) as e:
        return web.json_response({"status": "unavailable", "error": _one_line(e) or type(e).__name__}, status=503)
    return web.json_response({"status": "ok", "node": node})


def make_app(cfg: ServiceConfig) -> web.Application:
    app = web.Application()
    app[_CONFIG] = cfg
    app[_POOL] = Pool(cfg.dsn, cfg.pool_size, cfg.connect_timeout_s)
    # Its own connection: health must answer even when every call connection is busy.
    app[_HEALTH_POOL] = Pool(cfg.dsn, 1, cfg.connect_timeout_s)
    app.router.add_post("/call", _post_call)
    app.router.add_get("/health", _get_health)

    async def _close(app: web.Application) -> None:
        await app[_POOL].close()
        await app[_HEALTH_POOL].close()

    app.on_cleanup.append(_close)
    return app


async def run_service(cfg: ServiceConfig) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests and close."""
    runner = web.AppRunner(make_app(cfg), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
    await site.start()
    log.info("softswitch listening on %s:%d", cfg.host, cfg.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()


# --------------------------------------------------------------------------- lifecycle


def read_dsn_file(path: Path) -> str:
    """The DSN, stripped; errors name the file, never its content."""
    try:
        dsn = path.read_text().strip()
    except OSError as e:
        raise ValueError(f"cannot read the DSN file {path}: {e.strerror}") from e
    if not dsn:
        raise ValueError(f"the DSN file {path} is empty")
    return dsn


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def health_url_for(listen: str) -> str:
    host, port = parse_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/health"


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_ours(pid: int) -> bool:
    # A stale pidfile may name a recycled pid: only signal a softswitch process.
    try:
        return b"\0softswitch\0serve\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def running_pid(pidfile: Path) -> int | None:
    pid = _read_pid(pidfile)
    return pid if pid is not None and _alive(pid) and _is_ours(pid) else None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


def start(
    dsn_file: Path,
    listen: str,
    pidfile: Path,
    logfile: Path,
    timeout_s: float = 15.0,
    pool_size: int = 4,
    call_timeout_s: float = 1.5,
) -> Outcome:
    """Start `serve` detached (own session) and wait until its /health answers 200.

    On timeout the child is stopped again: a service that never became healthy is not left
    half-running. Already running and healthy: success, nothing started.
    """
    try:
        read_dsn_file(dsn_file)
        url = health_url_for(listen)
    except ValueError as e:
        return Outcome(False, str(e))
    pid = running_pid(pidfile)
    if pid is not None:
        healthy, detail = _wait_healthy(url, timeout_s, lambda: _alive(pid))
        return Outcome(healthy, f"already running (pid {pid}){'' if healthy else ', unhealthy: ' + detail}")
    cmd = [
        *CLI, "serve",
        "--dsn-file", str(dsn_file.resolve()), "--listen", listen, "--pidfile", str(pidfile.resolve()),
        "--pool-size", str(pool_size), "--call-timeout", str(call_timeout_s),
    ]  # fmt: skip
    logfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as logf:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd="/",
        )  # fmt: skip
    pidfile.write_text(f"{proc.pid}\n")
    healthy, detail = _wait_healthy(url, timeout_s, lambda: proc.poll() is None)
    if healthy:
        return Outcome(True, f"started (pid {proc.pid}), healthy at {url}")
    if proc.poll() is not None:
        with contextlib.suppress(OSError):
            pidfile.unlink()
        return Outcome(False, f"exited with code {proc.returncode} while starting; see {logfile}")
    stop(pidfile)
    proc.wait()
    return Outcome(False, f"not healthy within {timeout_s:g} s ({detail}); stopped again; see {logfile}")


def _wait_healthy(url: str, timeout_s: float, still_running: Any) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout_s
    detail = "no answer"
    while time.monotonic() < deadline and still_running():
        healthy, detail = check_health(url, timeout_s=min(3.0, max(0.5, deadline - time.monotonic())))
        if healthy:
            return True, detail
        time.sleep(0.1)
    return False, detail


def stop(pidfile: Path, timeout_s: float = 10.0) -> Outcome:
    """SIGTERM, wait, SIGKILL if needed. Not running is success (idempotent)."""
    pid = running_pid(pidfile)
    if pid is None:
        with contextlib.suppress(OSError):
            pidfile.unlink()
        return Outcome(True, "not running")
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            with contextlib.suppress(OSError):
                if _read_pid(pidfile) == pid:
                    pidfile.unlink()
            return Outcome(True, f"stopped (pid {pid}{', killed' if sig == signal.SIGKILL else ''})")
    return Outcome(False, f"pid {pid} survived SIGKILL")


def serve(cfg: ServiceConfig, pidfile: Path | None = None) -> None:
    """Foreground service; the pidfile (if any) names this process while it runs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if pidfile is not None:
        pidfile.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(run_service(cfg))
    finally:
        if pidfile is not None and _read_pid(pidfile) == os.getpid():
            with contextlib.suppress(OSError):
                pidfile.unlink()


def init_schema(dsn: str, accounts: int = DEFAULT_ACCOUNTS, vendors: int = DEFAULT_VENDORS) -> None:
    with psycopg.connect(dsn) as conn:
        ensure_schema(conn, accounts, vendors)

