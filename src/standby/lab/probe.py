"""The dual-primary probe: every 100 ms, from the client's network, which nodes accept writes?

Each sample asks every node to commit a one-row write, as a client would. A
node counts as *writable* when that commit returns within the probe's
timeout: it took a write and acknowledged it. Two at once, in any sample, is
the one thing a two-server HA system must never show. The sample also
records which nodes are merely *open* (a primary, not read-only): an old
synchronous primary thawed after its standby took over is open for a moment,
but its commits wait for a standby that left, so nothing it takes is ever
acknowledged.

The probe runs in a process of its own (`python -m standby.lab.probe`, raised priority): as a
thread beside the campaign's own work it shared one interpreter lock with it, and under a loaded
machine went blind for over a second (chaos seeds 102 and 103). The parent reads its samples as
JSON lines; the password travels on stdin, never on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import psycopg


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    writable: tuple[str, ...]  # committed the probe's write within the timeout
    open: tuple[str, ...] = ()  # a primary and not read-only (it may still not commit)


@dataclass
class ProbeResult:
    samples: list[Sample] = field(default_factory=list)

    @property
    def dual(self) -> list[Sample]:
        return [s for s in self.samples if len(s.writable) > 1]

    @property
    def dual_open(self) -> list[Sample]:
        return [s for s in self.samples if len(s.open) > 1]

    @property
    def longest_interval(self) -> float:
        ts = [s.t for s in self.samples]
        return max((b - a for a, b in itertools.pairwise(ts)), default=0.0)


class DualPrimaryProbe:
    """Sample in a child process inside the client namespace; `stop()` returns the samples."""

    def __init__(self, client_ns: str, targets: dict[str, str], password: str,
                 interval_s: float = 0.1, timeout_s: float = 0.09) -> None:
        # The timeout keeps samples at most ~100 ms apart even while a node is
        # unreachable; a healthy lab server answers in a few milliseconds.
        self.client_ns, self.targets, self.password = client_ns, targets, password
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.result = ProbeResult()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> DualPrimaryProbe:
        self._proc = subprocess.Popen([sys.executable, "-m", "standby.lab.probe"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"ns": self.client_ns, "targets": self.targets, "password": self.password,
                                           "interval_s": self.interval_s, "timeout_s": self.timeout_s}) + "\n")
        self._proc.stdin.flush()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            d = json.loads(line)
            self.result.samples.append(Sample(d["t"], tuple(d["writable"]), tuple(d["open"])))

    def stop(self) -> ProbeResult:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        return self.result


class _Sampler:
    """The child's side: the sampling loop, one JSON line per sample on stdout."""

    def __init__(self, targets: dict[str, str], password: str, interval_s: float, timeout_s: float) -> None:
        self.targets, self.password = targets, password
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self._stop = threading.Event()

    def run(self) -> None:
        self._loop_thread = threading.get_ident()
        self._tick = time.monotonic()
        threading.Thread(target=self._watchdog, daemon=True).start()
        asyncio.run(self._loop())

    def _watchdog(self) -> None:
        """Say on stderr where the sampling loop is stuck when it misses its interval by far: a blind
        probe is a campaign violation, and the stack is what tells the cause."""
        told = 0.0
        while not self._stop.is_set():
            time.sleep(0.1)
            late = time.monotonic() - self._tick
            if late > 0.5 and self._tick != told:
                told = self._tick
                frame = sys._current_frames().get(self._loop_thread)
                stack = "".join(traceback.format_stack(frame)[-8:]) if frame is not None else "(no frame)\n"
                sys.stderr.write(f"probe: sampling loop {late:.2f} s late, in:\n{stack}")
                sys.stderr.flush()

    async def _loop(self) -> None:
        conns: dict[str, psycopg.AsyncConnection[Any] | None] = {n: None for n in self.targets}
        connecting: dict[str, asyncio.Task[None]] = {}
        # A query that does not answer in time is left to finish (or fail) on its
        # own: cancelling it would make psycopg wait for a dead server.
        asking: dict[str, asyncio.Task[bool]] = {}
        closing: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references

        async def connect(node: str) -> None:
            # In the background: a slow connection must not stretch the sampling interval.
            try:
                conns[node] = await asyncio.wait_for(psycopg.AsyncConnection.connect(
                    host=self.targets[node], port=5432, dbname="softswitch", user="softswitch",
                    password=self.password, autocommit=True, connect_timeout=2, tcp_user_timeout=1000,
                    keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=1), 2.0)
            except (psycopg.Error, OSError, TimeoutError):
                await asyncio.sleep(self.interval_s)

        def drop(node: str) -> None:
            conn, conns[node] = conns[node], None
            if conn is not None:
                task = asyncio.ensure_future(_close_quietly(conn))
                closing.add(task)
                task.add_done_callback(closing.discard)

        opened: dict[str, bool] = {n: False for n in self.targets}

        async def writable(node: str) -> bool:
            conn = conns[node]
            opened[node] = False
            if conn is None or conn.closed or conn.broken:
                conns[node] = None
                if node not in connecting or connecting[node].done():
                    connecting[node] = asyncio.ensure_future(connect(node))
                return False
            if node in asking and not asking[node].done():
                return False  # still waiting for the previous answer: not reachable now

            async def ask() -> bool:
                try:
                    cur = await conn.execute(
                        "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'")
                    row = await cur.fetchone()
                    if not (row and row[0]):
                        return False
                    opened[node] = True
                    await conn.execute(PROBE_WRITE, (node,))
                    return True
                except psycopg.errors.UndefinedTable:
                    await _create_table(conn)
                    return False
                except (psycopg.Error, OSError):
                    drop(node)
                    return False

            asking[node] = task = asyncio.ensure_future(ask())
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
            return bool(done and task.result())

        while not self._stop.is_set():
            t0 = self._tick = time.monotonic()
            answers = await asyncio.gather(*(writable(n) for n in self.targets))
            sys.stdout.write(json.dumps({"t": t0, "writable": [n for n, ok in zip(self.targets, answers, strict=True) if ok],
                                         "open": [n for n in self.targets if opened[n]]}) + "\n")
            sys.stdout.flush()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - t0)))
        for task in [*connecting.values(), *asking.values()]:
            task.cancel()
        for node in self.targets:
            drop(node)
        await asyncio.sleep(0.3)


# One row per node, updated in place: a real commit (waiting for the synchronous
# standby like any other) that leaves nothing to grow.
PROBE_WRITE = ("INSERT INTO standby_probe (node, writes) VALUES (%s, 1) "
               "ON CONFLICT (node) DO UPDATE SET writes = standby_probe.writes + 1")


async def _create_table(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS standby_probe (node text PRIMARY KEY, writes bigint NOT NULL)")
    except psycopg.Error:
        pass  # another session made it, or this node stopped being a primary: the next sample tells


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    # A dropped connection to a frozen or crashed node: nothing to learn from how its close fails.
    with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
        await asyncio.wait_for(conn.close(), 0.2)


def main() -> None:
    from standby.lab import netns

    spec = json.loads(sys.stdin.readline())
    with contextlib.suppress(OSError):  # not root: sample at normal priority
        os.nice(-10)  # an instrument must not starve with the machine it watches
    sampler = _Sampler(spec["targets"], spec["password"], spec["interval_s"], spec["timeout_s"])
    signal.signal(signal.SIGTERM, lambda *_: sampler._stop.set())
    netns.call_in(spec["ns"], sampler.run)


if __name__ == "__main__":
    main()
