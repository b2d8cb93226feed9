"""Load generator: places calls on the softswitch over HTTP and records what each attempt became.

Every attempt is one JSON line, written as soon as it is settled (a killed run keeps its
history up to that point):

    {"call_id", "t_send", "t_done", "outcome", "node", "cdr_id", "error", "status"}

``t_send``/``t_done`` are ``time.monotonic()`` (one clock for every process on the host, so
a test or benchmark can place its own fault times on the same axis). ``node``: on an ack, the
database server the service wrote the call on, as its connection reached it (``inet_server_addr()``,
a node's address): who served it. ``outcome``:

- ``ack``: HTTP 200; the service says the call committed.
- ``failed``: definitely not committed: the connection was never made, or the service
  answered with an explicit refusal (4xx, or 503 without ``commit_unknown``).
- ``indeterminate``: the request may have reached the database and no verdict came back
  (timeout or reset after connecting, 503 with ``commit_unknown``, other 5xx).

Rate mode sends at a fixed rate (never more than ``concurrency`` in flight; a backlog
older than one second is skipped, not burst out later). Max mode runs ``concurrency``
workers back to back, for throughput. SIGTERM/SIGINT: stop sending, settle what is in
flight, write the summary, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import aiohttp

from standby.lab.checker import Attempt, Outcome, longest_ack_gap, read_history

BACKLOG_LIMIT_S = 1.0  # rate mode: older missed send slots are dropped

__all__ = ["Attempt", "LoadConfig", "LoadGenerator", "Outcome", "Summary", "read_history", "run"]


def classify_response(status: int, body: Any) -> tuple[Outcome, str | None]:
    """What an HTTP answer from the softswitch means for the call."""
    if status == 200:
        return Outcome.ACK, None
    err = body.get("error") if isinstance(body, dict) else None
    reason = f"HTTP {status}" + (f": {err}" if err else "")
    if status == 503 and isinstance(body, dict) and body.get("commit_unknown"):
        return Outcome.INDETERMINATE, reason
    if 400 <= status < 500 or status == 503:
        return Outcome.FAILED, reason
    return Outcome.INDETERMINATE, reason  # 500/502/504: nobody vouches either way


def classify_exception(exc: BaseException, connected: bool) -> tuple[Outcome, str]:
    """No answer: only a request that never got a connection is surely not applied."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    return (Outcome.INDETERMINATE if connected else Outcome.FAILED), " ".join(text.split())


@dataclass(frozen=True)
class LoadConfig:
    url: str  # base URL of the service (…:8080) or its /call endpoint
    rate: float | None = 50.0  # calls/s; None = max mode
    duration_s: float | None = None  # None = until SIGTERM/SIGINT (or stop())
    concurrency: int = 64
    timeout_s: float = 2.0
    accounts: int = 20
    vendors: int = 5
    max_call_duration_s: int = 600
    seed: int | None = None
    call_id_prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def call_url(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith("/call") else u + "/call"


@dataclass
class Summary:
    url: str
    mode: str
    rate: float | None
    concurrency: int
    timeout_s: float
    call_id_prefix: str
    started_wall: float  # time.time() at t_start, to place monotonic times on a calendar
    t_start: float
    t_end: float = 0.0
    attempts: int = 0
    ack: int = 0
    failed: int = 0
    indeterminate: int = 0
    skipped_slots: int = 0  # rate mode: sends dropped because the service held every slot
    ack_per_s: float = 0.0
    longest_ack_gap_s: float | None = None
    longest_ack_gap_at: float | None = None  # monotonic time of the ack that ended it
    ack_latency_p50_s: float | None = None
    ack_latency_p99_s: float | None = None

    def render(self) -> str:
        gap = "n/a" if self.longest_ack_gap_s is None else f"{self.longest_ack_gap_s:.3f} s"
        return (
            f"{self.attempts} attempts in {self.t_end - self.t_start:.1f} s: {self.ack} ack, {self.failed} failed, "
            f"{self.indeterminate} indeterminate; {self.ack_per_s:.1f} ack/s; longest ack gap {gap}"
        )


class _Recorder:
    """Writes each settled attempt at once and keeps the numbers for the summary."""

    def __init__(self, out: IO[str], summary: Summary) -> None:
        self._out = out
        self.summary = summary
        self.ack_times: list[float] = []
        self.latencies: list[float] = []

    def add(self, a: Attempt) -> None:
        self._out.write(a.to_json() + "\n")
        self._out.flush()
        s = self.summary
        s.attempts += 1
        if a.outcome is Outcome.ACK:
            s.ack += 1
            self.ack_times.append(a.t_done)
            self.latencies.append(a.t_done - a.t_send)
        elif a.outcome is Outcome.FAILED:
            s.failed += 1
        else:
            s.indeterminate += 1

    def finish(self, t_end: float) -> Summary:
        s = self.summary
        s.t_end = t_end
        span = t_end - s.t_start
        s.ack_per_s = s.ack / span if span > 0 else 0.0
        gap = longest_ack_gap(self.ack_times)
        if gap is not None:
            s.longest_ack_gap_s, s.longest_ack_gap_at = gap.seconds, gap.end
        if self.latencies:
            lat = sorted(self.latencies)
            s.ack_latency_p50_s = lat[len(lat) // 2]
            s.ack_latency_p99_s = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return s


class LoadGenerator:
    def __init__(self, cfg: LoadConfig, out: IO[str]) -> None:
        self.cfg = cfg
        self._rng = random.Random(cfg.seed)
        self._seq = 0
        self._stop = asyncio.Event()
        now = time.monotonic()
        self._rec = _Recorder(
            out,
            Summary(
                url=cfg.call_url, mode="rate" if cfg.rate else "max", rate=cfg.rate, concurrency=cfg.concurrency,
                timeout_s=cfg.timeout_s, call_id_prefix=cfg.call_id_prefix, started_wall=time.time(), t_start=now,
            ),
        )  # fmt: skip

    def stop(self) -> None:
        self._stop.set()

    def _next_payload(self) -> dict[str, Any]:
        self._seq += 1
        return {
            "call_id": f"{self.cfg.call_id_prefix}-{self._seq:09d}",
            "account_id": self._rng.randint(1, self.cfg.accounts),
            "vendor_id": self._rng.randint(1, self.cfg.vendors),
            "duration_s": self._rng.randint(1, self.cfg.max_call_duration_s),
        }

    async def _attempt(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        progress = SimpleNamespace(connected=False)
        t_send = time.monotonic()
        status: int | None = None
        node = cdr_id = None
        try:
            async with session.post(self.cfg.call_url, json=payload, trace_request_ctx=progress) as resp:
                status = resp.status
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
            outcome, error = classify_response(status, body)
            if outcome is Outcome.ACK and isinstance(body, dict):
                node, cdr_id = body.get("node"), body.get("cdr_id")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            outcome, error = classify_exception(e, progress.connected)
        self._rec.add(
            Attempt(payload["call_id"], t_send, time.monotonic(), outcome, node, cdr_id, error, status)
        )

    def _session(self) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()

        async def _connected(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
            if ctx.trace_request_ctx is not None:
                ctx.trace_request_ctx.connected = True

        trace.on_connection_create_end.append(_connected)
        trace.on_connection_reuseconn.append(_connected)
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.cfg.concurrency, force_close=False),
            trace_configs=[trace],
        )

    def _expired(self) -> bool:
        d = self.cfg.duration_s
        return self._stop.is_set() or (d is not None and time.monotonic() - self._rec.summary.t_start >= d)

    async def _sleep_until(self, t: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, t - time.monotonic()))

    async def _run_rate(self, session: aiohttp.ClientSession, rate: float) -> None:
        slots = asyncio.Semaphore(self.cfg.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        next_t = self._rec.summary.t_start
        end = None if self.cfg.duration_s is None else next_t + self.cfg.duration_s

        async def one(payload: dict[str, Any]) -> None:
            try:
                await self._attempt(session, payload)
            finally:
                slots.release()

        while not self._stop.is_set():
            if end is not None and next_t >= end:
                break
            await self._sleep_until(next_t)
            if self._stop.is_set():
                break
            await slots.acquire()
            if self._stop.is_set():
                slots.release()
                break
            now = time.monotonic()
            if now - next_t > BACKLOG_LIMIT_S:
                self._rec.summary.skipped_slots += int((now - next_t) * rate)
                next_t = now
            task = asyncio.create_task(one(self._next_payload()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_t += 1.0 / rate
        if tasks:
            await asyncio.gather(*tasks)

    async def _run_max(self, session: aiohttp.ClientSession) -> None:
        async def worker() -> None:
            while not self._expired():
                await self._attempt(session, self._next_payload())

        await asyncio.gather(*(worker() for _ in range(self.cfg.concurrency)))

    async def run(self) -> Summary:
        async with self._session() as session:
            if self.cfg.rate:
                await self._run_rate(session, self.cfg.rate)
            else:
                await self._run_max(session)
        return self._rec.finish(time.monotonic())


def summary_path_for(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


def run(
    cfg: LoadConfig, out: Path, summary_path: Path | None = None, on_start: Callable[[], None] | None = None
) -> Summary:
    """Run until the duration ends or SIGTERM/SIGINT; write history and summary; return the summary."""

    async def main(f: IO[str]) -> Summary:
        gen = LoadGenerator(cfg, f)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gen.stop)
        if on_start:
            on_start()
        return await gen.run()

    with open(out, "w") as f:
        summary = asyncio.run(main(f))
    (summary_path or summary_path_for(out)).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary

