"""The proxies operators put in front, the distribution's programs on the lab's client network, each run
from its example file in etc/ with only paths changed:

- HAProxy (etc/haproxy.cfg.example) checks each agent's API over TLS against the lab's CA: writes follow
  `GET /primary`, reads `GET /replica?lag=...`. A writer through it across a host crash of the primary
  loses no acknowledged write, and HAProxy's own stats, sampled about every 100 ms, never show both
  servers UP in the write backend. Reads land on the standby, and leave it while its replay is held
  beyond the bound.
- PgBouncer (etc/pgbouncer.ini.example) pools to the service IP: a writer through it across a host crash
  loses no acknowledged write and carries on after an error on its in-flight transaction.
- A hostile client on the /ui/ page and /metrics (huge request heads, sent fast or held) moves nothing:
  the agents keep deciding, nobody fences or takes over; and a frozen peer never holds the page up.

What the client saw (the gap, the errors) is printed, never asserted: tests do not assert timings.
Each test skips, saying why, only when its package cannot be installed.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from standby.lab import Lab, netns
from standby.lab.pair import agent_state, start_pair
from standby.lab.topology import APP_DB, APP_ROLE, PG_OS_USER, SERVICE_IP
from tests.lab.netwatch import Background
from tests.packages import need

if TYPE_CHECKING:
    from tests.lab.conftest import LabFactory

ROOT = Path(__file__).parents[2]
HAPROXY_EXAMPLE = ROOT / "etc" / "haproxy.cfg.example"
PGBOUNCER_EXAMPLE = ROOT / "etc" / "pgbouncer.ini.example"
ALPHA, BETA = "192.0.2.11", "192.0.2.12"
WRITES_PORT, READS_PORT, PGBOUNCER_PORT = 5000, 5001, 6432  # as the examples bind them
READ_LAG_BOUND = 16 * 1024 * 1024  # the example's /replica?lag=
ACKS_AROUND_FAULT = 20  # acknowledged writes wanted before the crash, and after it
RECOVERY_S = 60.0  # only bounds a failing test


# -- shared: the examples as run, a writer, the work directory ---------------------------------


def from_example(example: Path, changes: dict[str, str]) -> str:
    """The example's text with ``changes`` made; each must be there, so the test runs the file as shipped."""
    text = example.read_text()
    for old, new in changes.items():
        assert old in text, f"{example.name} no longer holds {old!r}; the test runs the example as it is"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def workdir(owner: str = "root") -> Iterator[Path]:
    """A private directory for a proxy's files (owned by the user it runs as), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="standby-proxies-"))
    try:
        shutil.chown(d, owner, owner)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def spawned(lab: Lab, name: str, argv: list[str]) -> Iterator[None]:
    """``argv`` running in the client namespace (its output in the lab's client log), stopped afterwards."""
    lab.spawn("client", argv, name)
    try:
        yield
    finally:
        lab.stop_spawned("client", name)


def app_password(lab: Lab) -> str:
    return lab.spec.secret("app.password").read_text().strip()


def create_table(lab: Lab) -> None:
    with lab.pg_connect("alpha", APP_DB, autocommit=True) as c:
        c.execute("CREATE TABLE proxy_writes (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        c.execute(f"ALTER TABLE proxy_writes OWNER TO {APP_ROLE}")


@dataclass(frozen=True)
class Attempt:
    id: int
    t_send: float
    t_done: float
    server: str | None  # the address PostgreSQL saw the commit arrive on; None: not acknowledged
    timeline: int = 0  # the committing server's: a promoted standby's is its old primary's + 1
    error: str | None = None


@dataclass
class Writer(Background):
    """One client in the client namespace: a row per transaction (BEGIN, INSERT, COMMIT), acknowledged
    when COMMIT returns; after any error it drops its connection and opens a new one."""

    lab: Lab
    dsn: str
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._start("writer", self.lab.netns("client"))

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        n = 0
        while not self.stop.is_set():
            n += 1
            t = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, connect_timeout=2, tcp_user_timeout=3000, keepalives=1,
                                           keepalives_idle=1, keepalives_interval=1, keepalives_count=2)
                row = conn.execute("INSERT INTO proxy_writes (id) VALUES (%s) RETURNING host(inet_server_addr()), "
                                   "pg_walfile_name(pg_current_wal_lsn())", (n,)).fetchone()
                conn.commit()
                assert row is not None
                self.attempts.append(Attempt(n, t, time.monotonic(), row[0], int(row[1][:8], 16)))
            except psycopg.Error as e:
                self.attempts.append(Attempt(n, t, time.monotonic(), None,
                                             error=f"{type(e).__name__}: {' '.join(str(e).split())}"))
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.05)
            time.sleep(0.01)
        if conn is not None:
            conn.close()

    def acked(self, server: str | None = None, after_timeline: int = 0) -> list[Attempt]:
        """Acknowledged writes (by ``server``; committed on a timeline after ``after_timeline``)."""
        return [a for a in list(self.attempts)
                if a.server is not None and (server is None or a.server == server) and a.timeline > after_timeline]

    def report(self) -> str:
        """The gap between the old primary's last acknowledged write and the new one's first, and the
        errors the client got meanwhile, in order of first sight."""
        acks = self.acked()
        old = min((a.timeline for a in acks), default=0)
        last = max((a.t_done for a in acks if a.timeline == old), default=None)
        first = min((a.t_done for a in acks if a.timeline > old), default=None)
        errors: dict[str, int] = {}
        for a in self.attempts:
            if a.error is not None:
                errors[a.error] = errors.get(a.error, 0) + 1
        gap = "no acknowledged write on one side of the failover" if last is None or first is None else \
            f"{first - last:.2f} s from the old primary's last acknowledged write to the new one's first"
        lines = [f"{len(acks)} of {len(self.attempts)} writes acknowledged; {gap}",
                 *(f"  {count} x {text}" for text, count in errors.items())]
        return "\n".join(lines)


def lost_writes(lab: Lab, on: str, writer: Writer) -> list[int]:
    """Acknowledged ids that ``on`` (the primary now) does not have."""
    with lab.pg_connect(on, APP_DB) as c:
        present = {r[0] for r in c.execute("SELECT id FROM proxy_writes")}
    return sorted(a.id for a in writer.acked() if a.id not in present)


def wait_for_acks(lab: Lab, writer: Writer, what: str, server: str | None = None, after_timeline: int = 0) -> int:
    """Wait for ACKS_AROUND_FAULT such writes; the timeline of the last one."""
    lab.wait_for(f"{ACKS_AROUND_FAULT} writes acknowledged {what}",
                 lambda: len(writer.acked(server, after_timeline)) >= ACKS_AROUND_FAULT, timeout_s=RECOVERY_S)
    return writer.acked(server, after_timeline)[-1].timeline


def wait_listening(lab: Lab, port: int) -> None:
    """Until something accepts connections on the client namespace's ``port`` (a proxy started)."""

    def accepts() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    lab.wait_for(f"a listener on the client's port {port}", lambda: netns.call_in(lab.netns("client"), accepts),
                 timeout_s=30)


# -- HAProxy -------------------------------------------------------------------------------------


class HAProxy:
    def __init__(self, d: Path) -> None:
        self.socket = d / "admin.sock"

    def stat(self) -> dict[tuple[str, str], str]:
        """Each server's status by (backend, server), as `show stat` on the stats socket says it."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        rows = csv.DictReader(lines[1:], fieldnames=lines[0][2:].split(","))
        return {(r["pxname"], r["svname"]): r["status"] for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}

    def up(self, backend: str) -> set[str]:
        # "UP 1/2" is a server going down: still UP, still sent connections.
        try:
            return {sv for (px, sv), status in self.stat().items() if px == backend and status.startswith("UP")}
        except OSError:
            return set()


@dataclass
class Sampler(Background):
    """The write backend's UP servers, sampled about every 100 ms from HAProxy's stats socket."""

    haproxy: HAProxy
    samples: list[tuple[float, frozenset[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._start("haproxy-stats")

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.samples.append((time.monotonic(), frozenset(self.haproxy.up("writes"))))

    def report(self, fault_at: float) -> str:
        ts = [t for t, _ in self.samples]
        widest = max((b - a for a, b in itertools.pairwise(ts)), default=0.0)
        none_from = next((t for t, up in self.samples if t > fault_at and "alpha" not in up), None)
        beta_from = next((t for t, up in self.samples if t > fault_at and "beta" in up), None)
        lines = [f"{len(self.samples)} samples of HAProxy's write backend, at most {widest * 1000:.0f} ms apart"]
        if none_from is not None and beta_from is not None:
            lines.append(f"alpha DOWN {none_from - fault_at:.2f} s after the crash, beta UP {beta_from - fault_at:.2f} s "
                         f"after it: {beta_from - none_from:.2f} s with no server for writes")
        return "\n".join(lines)


def _read_server(lab: Lab, port: int, password: str) -> tuple[bool, str] | str:
    """(in recovery, server address) of a session through HAProxy's read frontend, or why none."""

    def go() -> tuple[bool, str] | str:
        try:
            with psycopg.connect(host="127.0.0.1", port=port, dbname=APP_DB, user=APP_ROLE, password=password,
                                 connect_timeout=2) as c:
                row = c.execute("SELECT pg_is_in_recovery(), host(inet_server_addr())").fetchone()
                assert row is not None
                return bool(row[0]), str(row[1])
        except psycopg.Error as e:
            return f"{type(e).__name__}: {' '.join(str(e).split())}"

    return netns.call_in(lab.netns("client"), go)


def test_haproxy_routes_writes_to_the_primary_across_a_crash_never_to_two_and_reads_to_a_standby_in_bound(
        lab_factory: LabFactory) -> None:
    binary = need("haproxy", "haproxy")
    lab = start_pair(lab_factory())
    cfg = lab.config()
    assert cfg.tls is not None  # the lab always runs its API over TLS: HAProxy checks it that way
    create_table(lab)
    password = app_password(lab)
    with workdir() as d:
        conf = d / "haproxy.cfg"
        conf.write_text(from_example(HAPROXY_EXAMPLE, {"/etc/standby/tls/ca.crt": str(cfg.tls.ca_file),
                                                      "/run/haproxy/admin.sock": str(d / "admin.sock")}))
        check = lab.run("client", [binary, "-c", "-f", str(conf)], check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        haproxy = HAProxy(d)
        with spawned(lab, "haproxy", [binary, "-db", "-f", str(conf)]):
            lab.wait_for("HAProxy: alpha alone UP for writes, beta alone for reads",
                         lambda: haproxy.up("writes") == {"alpha"} and haproxy.up("reads") == {"beta"}, timeout_s=30)

            # Reads land on the standby, every session.
            seen = [_read_server(lab, READS_PORT, password) for _ in range(5)]
            assert seen == [(True, BETA)] * 5, seen

            # Replay held on beta while alpha writes more than the bound: beta still streams (and would
            # still be promotable), but what a read there sees is old, so HAProxy must take it out.
            with lab.pg_connect("beta") as c:
                c.execute("SELECT pg_wal_replay_pause()")
            try:
                with lab.pg_connect("alpha", APP_DB, autocommit=True) as c:
                    c.execute("CREATE TABLE proxy_bulk AS SELECT g, repeat('x', 1000) AS pad "
                              "FROM generate_series(1, %s) AS g", (2 * READ_LAG_BOUND // 1000,))
                lab.wait_for("beta out of the read backend (replay behind the bound)",
                             lambda: haproxy.up("reads") == set(), timeout_s=30)
                held = _read_server(lab, READS_PORT, password)
                assert isinstance(held, str), f"a read was served by a standby beyond the bound: {held}"
            finally:
                with lab.pg_connect("beta") as c:
                    c.execute("SELECT pg_wal_replay_resume()")
            lab.wait_for("beta back in the read backend", lambda: haproxy.up("reads") == {"beta"}, timeout_s=30)
            assert _read_server(lab, READS_PORT, password) == (True, BETA)

            # Writes across a host crash of the primary.
            dsn = (f"host=127.0.0.1 port={WRITES_PORT} dbname={APP_DB} user={APP_ROLE} password={password}")
            with Sampler(haproxy) as sampler, Writer(lab, dsn) as writer:
                old = wait_for_acks(lab, writer, "on alpha through HAProxy", server=ALPHA)
                crash_at = time.monotonic()
                lab.crash("alpha")
                wait_for_acks(lab, writer, "on beta through HAProxy after the crash", server=BETA, after_timeline=old)
            print(f"\nHAProxy across alpha's crash:\n{writer.report()}\n{sampler.report(crash_at)}")
            both = [t - crash_at for t, up in sampler.samples if len(up) > 1]
            assert both == [], f"HAProxy had both servers UP for writes at {both} s from the crash"
            assert any(t > crash_at and up == {"beta"} for t, up in sampler.samples)
            assert writer.acked(server=BETA) and all(a.t_send > crash_at for a in writer.acked(server=BETA))
            assert lost_writes(lab, "beta", writer) == []


# -- PgBouncer -----------------------------------------------------------------------------------


def test_pgbouncer_on_the_service_ip_carries_a_writer_across_a_crash_losing_nothing(lab_factory: LabFactory) -> None:
    binary = need("pgbouncer", "pgbouncer")
    lab = start_pair(lab_factory())
    cfg = lab.config()
    assert cfg.tls is not None
    create_table(lab)
    with lab.pg_connect("alpha") as c:
        row = c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (APP_ROLE,)).fetchone()
    assert row is not None and str(row[0]).startswith("SCRAM-SHA-256$")
    password = app_password(lab)
    with workdir(PG_OS_USER) as d:
        userlist = d / "userlist.txt"
        userlist.write_text(f'"{APP_ROLE}" "{row[0]}"\n')
        ini = d / "pgbouncer.ini"
        ini.write_text(from_example(PGBOUNCER_EXAMPLE, {
            "/etc/pgbouncer/userlist.txt": str(userlist), "/etc/standby/tls/ca.crt": str(cfg.tls.ca_file),
            "/var/run/postgresql": str(d), "/var/log/postgresql": str(d)}))
        for f in (userlist, ini):
            f.chmod(0o600)
            shutil.chown(f, PG_OS_USER, PG_OS_USER)
        assert f"host={SERVICE_IP.split('/')[0]} " in ini.read_text()
        # PgBouncer refuses to run as root: -u drops to the PostgreSQL OS user, as Debian's unit runs it.
        with spawned(lab, "pgbouncer", [binary, "-u", PG_OS_USER, str(ini)]):
            wait_listening(lab, PGBOUNCER_PORT)
            dsn = f"host=127.0.0.1 port={PGBOUNCER_PORT} dbname={APP_DB} user={APP_ROLE} password={password}"
            try:
                with Writer(lab, dsn) as writer:
                    old = wait_for_acks(lab, writer, "through PgBouncer")
                    lab.crash("alpha")
                    wait_for_acks(lab, writer, "through PgBouncer on the new primary", after_timeline=old)
            finally:
                log = (d / "pgbouncer.log").read_text(errors="replace") if (d / "pgbouncer.log").exists() else ""
        pool = [line.split(" ", 3)[-1] for line in log.splitlines() if any(
            w in line for w in ("closing because", "server conn crashed", "login failed", "connect failed"))]
        print(f"\nPgBouncer across alpha's crash:\n{writer.report()}\nwhat the pool logged about its "
              "server connections:\n  " + "\n  ".join(pool[-12:]))
        assert lost_writes(lab, "beta", writer) == []
        # Every write after the new primary's first went in: the client carried on, the pool handed it
        # no connection to the old primary again.
        first = min(a.t_send for a in writer.acked(after_timeline=old))
        later = [a for a in writer.attempts if a.t_send > first]
        assert later and all(a.server is not None for a in later), [a.error for a in later if a.error][:5]


# -- hostile clients on the page and /metrics; a frozen peer ----------------------------------


HEAD_LINE = b"X-Hostile: " + b"h" * 8000 + b"\r\n"  # under aiohttp's line limit: each one is parsed
HOSTILE_PATHS = (b"/ui/pair.json", b"/metrics", b"/ui/")
FLOOD_S = 20.0


@dataclass
class Hostile:
    """Threads in the client namespace sending request heads of about 1 MB to an agent's page and /metrics
    over TLS: half of them complete (the server parses it all, then answers or refuses), half of them
    never ended (held until the server cuts them off). Each thread starts over when its connection ends."""

    lab: Lab
    target: str
    port: int
    threads: int = 24
    stop: threading.Event = field(default_factory=threading.Event)
    sent_mb: float = 0.0
    connections: int = 0
    answers: dict[str, int] = field(default_factory=dict)

    def run(self, seconds: float) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # an outsider: no CA
        workers = [threading.Thread(target=netns.call_in, args=(self.lab.netns("client"), self._one, i, ctx),
                                    daemon=True) for i in range(self.threads)]
        for w in workers:
            w.start()
        time.sleep(seconds)
        self.stop.set()
        for w in workers:
            w.join(15)

    def _one(self, i: int, ctx: ssl.SSLContext) -> None:
        path = HOSTILE_PATHS[i % len(HOSTILE_PATHS)]
        complete = i % 2 == 0
        head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + HEAD_LINE * 120 + (b"\r\n" if complete else b"")
        while not self.stop.is_set():
            try:
                with socket.create_connection((self.target, self.port), timeout=2) as raw, \
                        ctx.wrap_socket(raw) as s:
                    self.connections += 1
                    s.settimeout(1)
                    s.sendall(head)
                    self.sent_mb += len(head) / 1e6
                    while not self.stop.is_set():  # wait for the answer or the cut-off
                        try:
                            reply = s.recv(4096)
                        except TimeoutError:
                            continue
                        if reply.startswith(b"HTTP/"):
                            key = reply.split(b" ", 2)[1].decode()
                            self.answers[key] = self.answers.get(key, 0) + 1
                        if not reply or complete:
                            break
            except (OSError, ssl.SSLError):
                self.stop.wait(0.05)


def _decisions_since(lab: Lab, node: str, since: str) -> list[dict[str, Any]]:
    res = lab.standby(node, "history", "--json", "--limit", "1000", check=False)
    entries = json.loads(res.stdout) if res.returncode == 0 else []
    return [e for e in entries if e["event"] in ("decision", "agent_started", "agent_stopped") and e["time"] > since]


def _decision_steps(lab: Lab, node: str) -> float:
    """The agent's count of decision steps, from its /metrics on its own loopback address (a local
    client, never turned away however many others hold connections)."""
    cfg = lab.config()
    assert cfg.tls is not None
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
    ctx.check_hostname = False  # the certificate names the node's addresses, not 127.0.0.1

    def get() -> str:
        with urllib.request.urlopen(f"https://127.0.0.1:{cfg.api.port}/metrics", timeout=5, context=ctx) as r:
            return str(r.read().decode())

    text = netns.call_in(lab.netns(node), get)
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("standby_decisions_total ")))


# Alone (tests/gate.py): as the connection flood in test_findings_surface.py, a load made on purpose.
@pytest.mark.alone
def test_hostile_client_on_the_page_and_metrics_moves_nothing_and_a_frozen_peer_never_holds_the_page(
        lab_factory: LabFactory) -> None:
    lab = start_pair(lab_factory())
    cfg = lab.config()
    assert cfg.tls is not None
    nodes = ("alpha", "beta")
    pids = {n: lab.agent_pid(n) for n in nodes}
    since = datetime.now(UTC).isoformat(timespec="milliseconds")
    hostile = [Hostile(lab, ip, cfg.api.port) for ip in (ALPHA, BETA)]
    floods = [threading.Thread(target=h.run, args=(FLOOD_S,), daemon=True) for h in hostile]
    steps = [{n: _decision_steps(lab, n) for n in nodes}]
    start = time.monotonic()
    for f in floods:
        f.start()
    time.sleep(FLOOD_S / 2)
    steps.append({n: _decision_steps(lab, n) for n in nodes})  # half-way: both agents have decided meanwhile
    for f in floods:
        f.join(FLOOD_S + 30)
    steps.append({n: _decision_steps(lab, n) for n in nodes})
    took = time.monotonic() - start
    for h in hostile:
        print(f"\nhostile client on {h.target}: {h.connections} connections, {h.sent_mb:.0f} MB of request heads, "
              f"answers {h.answers}")
    interval_ms = cfg.timings.heartbeat_interval_ms
    for n in nodes:
        print(f"{n}: {steps[2][n] - steps[0][n]:.0f} decision steps in the {took:.0f} s of the flood "
              f"(one per {interval_ms} ms interval would be {took * 1000 / interval_ms:.0f})")
        assert steps[0][n] < steps[1][n] < steps[2][n], f"{n}'s agent stopped deciding under the hostile client: {steps}"
    assert all(h.connections > 0 for h in hostile)
    # Nothing moved: no decision, no restart, alpha still serving, beta still eligible. A step held up past
    # the stall limit would have fenced alpha (the peer could have taken over): it did not.
    assert _decisions_since(lab, "alpha", since) == [] and _decisions_since(lab, "beta", since) == []
    assert {n: lab.agent_pid(n) for n in pids} == pids
    a, b = agent_state(lab, "alpha"), agent_state(lab, "beta")
    assert a["postgres"]["state"] == "primary" and a["state"]["services"] and not a["state"]["fenced"]
    assert b["postgres"]["state"] == "standby" and b["state"]["eligible"]

    # The page on alpha while beta is frozen (no packet either way, its API's connections hang): every
    # request answered before one attempt on the peer could have timed out, and beta shown unreachable.
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
    url = f"https://{ALPHA}:{cfg.api.port}/ui/pair.json"

    def page() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=1.0, context=ctx) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    lab.freeze("beta")
    try:
        answered = []
        deadline = time.monotonic() + RECOVERY_S
        while time.monotonic() < deadline:
            try:
                doc = netns.call_in(lab.netns("client"), page)
            except (urllib.error.URLError, TimeoutError) as e:
                pytest.fail(f"the page on alpha was held up by its frozen peer: {e}")
            answered.append(doc["peer"]["reachable"])
            if doc["peer"]["reachable"] is False:
                break
            time.sleep(0.2)
        assert answered and answered[-1] is False, answered
        assert doc["here"]["node"] == "alpha"
    finally:
        lab.heal()
    lab.wait_for("beta heard by alpha again", lambda: (agent_state(lab, "alpha").get("peer_view") or {})
                 .get("db") == "standby", timeout_s=RECOVERY_S)

