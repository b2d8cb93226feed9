"""The dual-primary probe: every 100 ms, from the client's network, which nodes accept writes?

A node counts as writable when it answers within the probe's timeout and is
neither in recovery nor read-only. Two at once, in any sample, is the one
thing a two-server HA system must never show.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from standby.lab import netns


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    writable: tuple[str, ...]


@dataclass
class ProbeResult:
    samples: list[Sample] = field(default_factory=list)

    @property
    def dual(self) -> list[Sample]:
        return [s for s in self.samples if len(s.writable) > 1]

    @property
    def longest_interval(self) -> float:
        ts = [s.t for s in self.samples]
        return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)


class DualPrimaryProbe:
    """Run in a background thread inside the client namespace; `stop()` returns the samples."""

    def __init__(self, client_ns: str, targets: dict[str, str], password: str,
                 interval_s: float = 0.1, timeout_s: float = 0.25) -> None:
        self.client_ns, self.targets, self.password = client_ns, targets, password
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.result = ProbeResult()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DualPrimaryProbe:
        self._thread = threading.Thread(target=netns.call_in, args=(self.client_ns, self._run), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> ProbeResult:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.result

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        conns: dict[str, psycopg.AsyncConnection[Any] | None] = {n: None for n in self.targets}

        async def writable(node: str) -> bool:
            conn = conns[node]
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
                        host=self.targets[node], port=5432, dbname="softswitch", user="softswitch",
                        password=self.password, autocommit=True, connect_timeout=2), self.timeout_s)
                    conns[node] = conn
                cur = await asyncio.wait_for(conn.execute(
                    "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'"),
                    self.timeout_s)
                row = await cur.fetchone()
                return bool(row and row[0])
            except (psycopg.Error, OSError, TimeoutError):
                if conns[node] is not None:
                    try:
                        await asyncio.wait_for(conns[node].close(), 0.1)  # type: ignore[union-attr]
                    except Exception:
                        pass
                conns[node] = None
                return False

        while not self._stop.is_set():
            t0 = time.monotonic()
            answers = await asyncio.gather(*(writable(n) for n in self.targets))
            self.result.samples.append(Sample(t0, tuple(n for n, ok in zip(self.targets, answers) if ok)))
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - t0)))
        for conn in conns.values():
            if conn is not None:
                try:
                    await asyncio.wait_for(conn.close(), 0.2)
                except Exception:
                    pass
