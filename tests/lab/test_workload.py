"""The softswitch workload end to end: real PostgreSQL, real service, real HTTP load.

Each test gets a throwaway PostgreSQL cluster (initdb in a temp dir, run as user postgres,
TCP on a free 127.0.0.1 port, unix socket in the temp dir), always stopped and removed.
Needs root and PostgreSQL; skipped without them, except under CI=true where that fails.
Assertions are about behaviour; the deadlines below only bound waiting.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from standby.lab import checker

pytestmark = pytest.mark.lab

PG_BIN = Path(os.environ.get("STANDBY_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
PY = sys.executable


def _require_lab() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (runs PostgreSQL as the postgres user)"
    elif not (PG_BIN / "initdb").exists():
        reason = f"PostgreSQL not found in {PG_BIN}"
    else:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            reason = f"no OS user {PG_USER}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def process_running(pid: int) -> bool:
    """True unless gone or a zombie (init reaps the detached service only eventually)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- PostgreSQL fixture


@dataclass
class PgCluster:
    """A throwaway PostgreSQL cluster owned by the postgres OS user."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _as_pg(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", PG_USER, "--", *map(str, argv)], check=check, capture_output=True, text=True, cwd="/"
        )

    def init(self) -> None:
        self._as_pg(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C")  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\n"  # survives a killed server (the page cache does), not a host crash
                "max_connections = 50\n"
            )

    def start(self) -> None:
        r = self._as_pg(PG_BIN / "pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log, check=False)
        if r.returncode != 0:
            raise AssertionError(f"pg_ctl start failed: {r.stderr}\n{self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._as_pg(PG_BIN / "pg_ctl", "stop", "-w", "-m", mode, "-D", self.data, check=False)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        if self.data.exists():
            self.stop("immediate")
            pid = self.postmaster_pid()
            if pid is not None:  # pg_ctl could not stop it: do not leave it behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.root} port={self.port} user=postgres dbname={dbname}"


@pytest.fixture
def pg() -> Iterator[PgCluster]:
    _require_lab()
    root = Path(tempfile.mkdtemp(prefix="standby-test-pg-"))
    pw = pwd.getpwnam(PG_USER)
    os.chown(root, pw.pw_uid, pw.pw_gid)
    cluster = PgCluster(root=root, port=free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# --------------------------------------------------------------------------- service fixture


def run_cli(module: str, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@dataclass
class Service:
    url: str
    listen: str
    dsn_file: Path
    pidfile: Path
    logfile: Path
    dsn: str
    password: str

    def start(self) -> subprocess.CompletedProcess[str]:
        return run_cli("standby.cli.lab_workload", "softswitch", "start", "--dsn-file", self.dsn_file, "--listen", self.listen,
                       "--pidfile", self.pidfile, "--logfile", self.logfile, "--timeout", "20",
                       # Generous: these tests are about correctness, and the host may be busy.
                       "--call-timeout", "5")  # fmt: skip

    def stop(self) -> subprocess.CompletedProcess[str]:
        return run_cli("standby.cli.lab_workload", "softswitch", "stop", "--pidfile", self.pidfile)

    def health(self) -> subprocess.CompletedProcess[str]:
        return run_cli("standby.cli.lab_workload", "softswitch", "health", "--url", self.url + "/health")


@pytest.fixture
def service(pg: PgCluster, tmp_path: Path) -> Iterator[Service]:
    password = secrets.token_urlsafe(16)
    with psycopg.connect(pg.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE softswitch LOGIN PASSWORD '{password}'")
        conn.execute("CREATE DATABASE softswitch OWNER softswitch")
    # A dead first host: the service must walk the list to the live one, as after a failover.
    dsn = (
        f"host=127.0.0.1,127.0.0.1 port={free_port()},{pg.port} dbname=softswitch user=softswitch "
        f"password={password} target_session_attrs=read-write connect_timeout=1 tcp_user_timeout=1000 "
        "keepalives=1 keepalives_idle=1 keepalives_interval=1 keepalives_count=3"
    )
    dsn_file = tmp_path / "softswitch.dsn"
    dsn_file.write_text(dsn + "\n")
    dsn_file.chmod(0o600)
    r = run_cli("standby.cli.lab_workload", "softswitch", "init-schema", "--dsn-file", dsn_file)
    assert r.returncode == 0, r.stderr
    port = free_port()
    svc = Service(
        url=f"http://127.0.0.1:{port}", listen=f"127.0.0.1:{port}", dsn_file=dsn_file,
        pidfile=tmp_path / "softswitch.pid", logfile=tmp_path / "softswitch.log", dsn=dsn, password=password,
    )  # fmt: skip
    try:
        r = svc.start()
        assert r.returncode == 0, r.stdout + r.stderr + svc.logfile.read_text()
        yield svc
    finally:
        svc.stop()


def post_call(url: str, call_id: str, account_id: int = 1, vendor_id: int = 1, duration_s: int = 60) -> tuple[int, Any]:
    body = json.dumps(
        {"call_id": call_id, "account_id": account_id, "vendor_id": vendor_id, "duration_s": duration_s}
    ).encode()
    req = urllib.request.Request(url + "/call", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def db_state(svc: Service) -> checker.DbState:
    with psycopg.connect(svc.dsn) as conn:
        return checker.read_db_state(conn)


def history_records(path: Path) -> list[checker.Attempt]:
    return checker.read_history(path) if path.exists() else []


def start_load(svc: Service, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "standby.cli.lab_workload", "load", "--url", svc.url, "--out", str(out), "--seed", "7", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish_load(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the load generator (if still running); it must settle, write and exit 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    return out


# --------------------------------------------------------------------------- tests


def test_every_acknowledged_call_is_in_the_database_once(service: Service, tmp_path: Path) -> None:
    out = tmp_path / "history.jsonl"
    proc = start_load(service, out, "--rate", "100", "--duration", "3", "--concurrency", "16", "--timeout", "10")
    try:
        proc.wait(timeout=60)
    finally:
        finish_load(proc)
    history = checker.read_history(out)
    verdict = checker.check(history, db_state(service))
    assert verdict.ok, verdict.render()
    assert verdict.acked > 0 and verdict.acked == verdict.calls  # a healthy database refuses nothing
    assert all(a.node == "127.0.0.1" for a in history)
    summary = json.loads((tmp_path / "history.jsonl.summary.json").read_text())
    assert summary["ack"] == verdict.acked and summary["attempts"] == len(history)

    # The same verdict from the command line; a lost acknowledged call makes it fail.
    r = run_cli("standby.cli.lab_workload", "load", "--help")
    assert r.returncode == 0 and "--concurrency" in r.stdout
    verify = [sys.executable, "-c", "from standby.cli.lab_workload import verify_command; verify_command()",
              "--history", str(out), "--dsn-file", str(service.dsn_file)]  # fmt: skip
    r = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: OK" in r.stdout
    assert service.password not in r.stdout + r.stderr
    with psycopg.connect(service.dsn) as conn:
        conn.execute("DELETE FROM balance_deltas WHERE call_id = %s", (history[0].call_id,))
        conn.execute("DELETE FROM cdrs WHERE call_id = %s", (history[0].call_id,))
    r = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert history[0].call_id in r.stdout and "acknowledged but missing" in r.stdout


def test_database_outage_mid_load_loses_no_acknowledged_call(
    pg: PgCluster, service: Service, tmp_path: Path
) -> None:
    out = tmp_path / "history.jsonl"
    proc = start_load(service, out, "--rate", "100", "--concurrency", "32")
    try:
        wait_for("acks before the outage", lambda: sum(a.outcome == "ack" for a in history_records(out)) >= 30)
        t_down = time.monotonic()
        pg.stop("immediate")
        t_stopped = time.monotonic()
        wait_for(
            "refusals during the outage",
            lambda: sum(a.outcome == "failed" and a.t_send > t_down for a in history_records(out)) >= 10,
        )
        assert service.health().returncode == 1
        t_up = time.monotonic()
        pg.start()
        wait_for(
            "acks after the restart",
            lambda: sum(a.outcome == "ack" and a.t_send > t_up for a in history_records(out)) >= 30,
        )
        assert service.health().returncode == 0
    finally:
        finish_load(proc)
    history = checker.read_history(out)
    verdict = checker.check(history, db_state(service))
    assert verdict.ok, verdict.render()
    assert verdict.failed > 0
    acks = [a for a in history if a.outcome == "ack"]
    # Nothing sent while the database was down was acknowledged...
    assert not [a for a in acks if t_stopped < a.t_send < t_up]
    # ...and the longest gap is the outage: from the last ack before the restart to the first after.
    gap = verdict.longest_gap
    assert gap is not None, verdict.render()
    assert gap.start == max(a.t_done for a in acks if a.t_done < t_up), verdict.render()
    assert gap.end == min(a.t_done for a in acks if a.t_done >= t_up), verdict.render()
    assert "longest gap between acks" in verdict.render()
    summary = json.loads((tmp_path / "history.jsonl.summary.json").read_text())
    assert summary["failed"] == verdict.failed and summary["longest_ack_gap_s"] >= gap.seconds - 1e-9


def test_retried_call_id_is_not_duplicated(service: Service) -> None:
    status, first = post_call(service.url, "retry-1", account_id=3, vendor_id=2, duration_s=90)
    assert status == 200 and first["replayed"] is False
    status, again = post_call(service.url, "retry-1", account_id=3, vendor_id=2, duration_s=90)
    assert status == 200 and again["cdr_id"] == first["cdr_id"] and again["replayed"] is True

    # Racing retries of a new call: one commit, every answer names the same CDR.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_call(service.url, "retry-2"), range(8)))
    assert {s for s, _ in answers} == {200}
    assert len({b["cdr_id"] for _, b in answers}) == 1

    db = db_state(service)
    assert sorted(c.call_id for c in db.cdrs) == ["retry-1", "retry-2"]
    assert len(db.deltas) == 4
    history = [
        checker.Attempt(c, 0.0, 1.0, checker.Outcome.ACK, cdr_id=b["cdr_id"])
        for c, b in (("retry-1", first), *(("retry-2", b) for _, b in answers))
    ]
    verdict = checker.check(history, db)
    assert verdict.ok, verdict.render()


def test_refuses_to_acknowledge_while_the_database_is_down(pg: PgCluster, service: Service) -> None:
    pg.stop("immediate")
    status, body = post_call(service.url, "while-down-1")
    assert status == 503
    assert body["commit_unknown"] is False and body["error"]
    assert service.health().returncode == 1
    assert service.password not in service.logfile.read_text()

    pg.start()
    wait_for("the service to see the database again", lambda: service.health().returncode == 0)
    status, body = post_call(service.url, "after-restart-1")
    assert status == 200
    calls = {c.call_id for c in db_state(service).cdrs}
    assert "while-down-1" not in calls and "after-restart-1" in calls


def test_bad_requests_are_refused_and_never_written(service: Service) -> None:
    status, body = post_call(service.url, "unknown-account", account_id=999)
    assert status == 422
    status, _ = post_call(service.url, "")
    assert status == 400
    assert post_call(service.url, "fine")[0] == 200  # the pool survived both
    assert {c.call_id for c in db_state(service).cdrs} == {"fine"}


def test_lifecycle_commands(pg: PgCluster, service: Service) -> None:
    pid = int(service.pidfile.read_text())
    r = service.start()  # already running and healthy: success, nothing new
    assert r.returncode == 0 and "already running" in r.stdout
    assert int(service.pidfile.read_text()) == pid

    assert service.stop().returncode == 0
    assert not service.pidfile.exists() and not process_running(pid)
    assert service.stop().returncode == 0  # idempotent
    assert service.health().returncode == 1

    # Without a database it must not claim success, nor leave a process behind.
    pg.stop("fast")
    r = run_cli("standby.cli.lab_workload", "softswitch", "start", "--dsn-file", service.dsn_file, "--listen", service.listen,
                "--pidfile", service.pidfile, "--logfile", service.logfile, "--timeout", "3")  # fmt: skip
    assert r.returncode == 1 and "not healthy" in r.stderr
    assert not service.pidfile.exists()
    assert service.password not in r.stdout + r.stderr + service.logfile.read_text()

    pg.start()
    r = service.start()
    assert r.returncode == 0, r.stderr
    assert service.health().returncode == 0


def test_a_commit_left_in_doubt_is_reported_as_such_and_resolved_by_retry(pg: PgCluster, service: Service) -> None:
    from standby.lab.loadgen import classify_response

    # A synchronous standby that never comes: COMMIT is written locally, then waits.
    with psycopg.connect(pg.superuser_dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        conn.execute("SELECT pg_reload_conf()")
    status, body = post_call(service.url, "in-doubt-1", account_id=5)
    assert status == 503 and body["commit_unknown"] is True, body
    outcome, _ = classify_response(status, body)
    assert outcome is checker.Outcome.INDETERMINATE

    with psycopg.connect(pg.superuser_dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        conn.execute("SELECT pg_reload_conf()")
    wait_for("the commit to be released", lambda: any(c.call_id == "in-doubt-1" for c in db_state(service).cdrs))
    verdict = checker.check([checker.Attempt("in-doubt-1", 0.0, 1.0, outcome)], db_state(service))
    assert verdict.ok and verdict.indeterminate_applied == ("in-doubt-1",), verdict.render()

    status, body = post_call(service.url, "in-doubt-1", account_id=5)  # the client's retry settles it
    assert status == 200 and body["replayed"] is True
    assert [c.call_id for c in db_state(service).cdrs] == ["in-doubt-1"]
