#!/usr/bin/env python3
"""What a standby costs the primary: replication lag at a fixed call rate, and maximum call throughput.

One run builds one lab (network namespaces, a PostgreSQL 15 server per node, the sample
softswitch on alpha, the load generator in the client namespace) and measures, in order:

1. throughput with no standby: alpha bootstrapped alone, so synchronous_standby_names is empty
   and no WAL sender runs;
2. beta cloned by `standby bootstrap` as an async standby: lag at a fixed rate, then throughput;
3. the same standby made synchronous (the setting bootstrap writes for durability = "sync"):
   lag at a fixed rate, then throughput.

Reconfiguring one lab rather than building three keeps the run short and the hardware state
comparable. Every phase starts from a CHECKPOINT with the standby caught up, so none of them
pays for the full-page writes of another.

Lag is the primary's `pg_stat_replication.replay_lag` (see README.md for why this column).
This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/replication.py [--rate 200 --seconds 20 --max-seconds 15 --concurrency 32]

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

import benchlib
from benchlib import (
    SERVICE_URL,
    STANDBY,
    BenchError,
    distribution,
    fresh_lab,
    load_figures,
    machine_facts,
    run_load,
    sigterm_as_interrupt,
)
from standby.act.postgres import set_sync_names, sync_value
from standby.lab import Lab, LabSpec
from standby.lab.errors import LabError

STANDBY_NODE = "beta"


# --------------------------------------------------------------------------- statistics


# --------------------------------------------------------------------------- lag sampling


@dataclass(frozen=True)
class LagSample:
    t: float  # time.monotonic(), the load generator's clock too
    write_ms: float | None  # None: the primary has no current measurement (idle, or not yet)
    flush_ms: float | None
    replay_ms: float | None
    behind_bytes: int | None  # primary's current WAL position minus the standby's replay position
    standby_age_ms: float | None  # on the standby: now() - timestamp of the newest replayed commit


_PRIMARY_LAG_SQL = """
SELECT extract(epoch FROM write_lag) * 1000, extract(epoch FROM flush_lag) * 1000,
       extract(epoch FROM replay_lag) * 1000,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)
FROM pg_stat_replication WHERE application_name = %s
"""
_STANDBY_AGE_SQL = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000"


def _num(v: Any) -> float | None:
    # extract() and pg_wal_lsn_diff() return numeric, which arrives as Decimal.
    return None if v is None else float(v)


class LagSampler:
    """Polls both servers from a thread while the load runs in a subprocess."""

    def __init__(self, lab: Lab, interval_s: float) -> None:
        self._lab = lab
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.samples: list[LagSample] = []
        # Daemon: an interrupted run must not wait for it; the lab's teardown ends its connections.
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def _run(self) -> None:
        try:
            with self._lab.pg_connect("alpha", autocommit=True) as primary, \
                    self._lab.pg_connect(STANDBY_NODE, autocommit=True) as standby:  # fmt: skip
                next_t = time.monotonic()
                while not self._stop.is_set():
                    t = time.monotonic()
                    row = primary.execute(_PRIMARY_LAG_SQL, (STANDBY_NODE,)).fetchone()
                    age = standby.execute(_STANDBY_AGE_SQL).fetchone()
                    w, f, r, behind = row if row else (None, None, None, None)
                    self.samples.append(LagSample(
                        t, _num(w), _num(f), _num(r), None if behind is None else int(behind),
                        _num(age[0]) if age else None,
                    ))  # fmt: skip
                    # A fixed schedule, so a slow query does not stretch the interval for good.
                    next_t += self._interval_s
                    self._stop.wait(max(0.0, next_t - time.monotonic()))
        except (psycopg.Error, OSError, LabError) as e:  # handed to __exit__, which raises it in the run
            self._error = e

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._error is not None and exc[0] is None:
            raise BenchError(f"lag sampling failed: {self._error}") from self._error

    def summarise(self, t_from: float, t_to: float) -> dict[str, Any]:
        """Distributions over [t_from, t_to]; NULL readings are counted, not averaged in."""
        window = [s for s in self.samples if t_from <= s.t <= t_to]

        def col(name: str) -> list[float]:
            return [float(v) for s in window if (v := getattr(s, name)) is not None]

        replay = col("replay_ms")
        nulls = len(window) - len(replay)
        return {
            "samples": len(window),
            # Under steady load a NULL means the standby had replayed all WAL sent in its last two
            # reports (the primary then forgets the old figure): caught up, not unknown.
            "replay_lag_null": nulls,
            "caught_up_share": nulls / len(window) if window else None,
            "replay_lag_ms": distribution(replay),
            "replay_lag_ms_null_as_zero": distribution([0.0] * nulls + replay),
            "write_lag_ms": distribution(col("write_ms")),
            "flush_lag_ms": distribution(col("flush_ms")),
            "behind_bytes": distribution(col("behind_bytes")),
            "standby_replay_age_ms": distribution(col("standby_age_ms")),
        }


# --------------------------------------------------------------------------- the lab


def standby_cmd(lab: Lab, node: str, *args: str) -> None:
    """A `standby` command inside a node, as an operator on that server would run it."""
    res = lab.run(node, [STANDBY, *args, "--config", str(lab.config_path), "--node", node], check=False)
    if res.returncode != 0:
        raise BenchError(f"`standby {' '.join(args)}` on {node} failed: {(res.stderr or res.stdout).strip()}")


def start_softswitch(lab: Lab) -> None:
    # Inside alpha's namespace: the service binds there and its health check asks 127.0.0.1.
    code = ("import sys; from standby.config import load; from standby.act.services import start_all;"
            "r = start_all(load(sys.argv[1]).services, 'alpha'); print(r); sys.exit(0 if all(x.ok for x in r) else 1)")
    res = lab.run("alpha", [sys.executable, "-c", code, str(lab.config_path)], check=False)
    if res.returncode != 0:
        raise BenchError(f"the softswitch did not start: {res.stdout.strip()} {res.stderr.strip()}")


def settle(lab: Lab, with_standby: bool, timeout_s: float = 30.0) -> None:
    """A common starting line: checkpoint done, standby replayed everything, a moment of quiet."""
    with lab.pg_connect("alpha", autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        if with_standby:
            deadline = time.monotonic() + timeout_s
            while True:
                row = conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication"
                    " WHERE application_name = %s", (STANDBY_NODE,),
                ).fetchone()  # fmt: skip
                if row and row[0] is not None and row[0] <= 0:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"{STANDBY_NODE} did not catch up within {timeout_s:g} s")
                time.sleep(0.1)
    time.sleep(1.0)


def set_durability(lab: Lab, sync: bool) -> None:
    """Switch the running standby between sync and async, as bootstrap does, and confirm it."""
    want = "sync" if sync else "async"
    with lab.pg_connect("alpha", autocommit=True) as conn:
        set_sync_names(conn, sync_value(STANDBY_NODE) if sync else "")
        deadline = time.monotonic() + 10
        state = None
        while time.monotonic() < deadline:
            row = conn.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                               (STANDBY_NODE,)).fetchone()
            state = row[0] if row else None
            if state == want:
                return
            time.sleep(0.1)
    raise BenchError(f"{STANDBY_NODE} reports sync_state {state!r}, expected {want!r}")


# --------------------------------------------------------------------------- CPU accounting
#
# The lab shares the machine's cores with whatever else runs there (other labs, test suites).
# Each run records how much CPU went to this lab and how much to everything else, so a figure
# taken on a busy machine can be recognised as such.


@dataclass(frozen=True)
class Params:
    rate: float
    seconds: float
    max_seconds: float
    concurrency: int
    sample_ms: float
    skip_s: float
    warmup_s: float
    name: str


def lag_phase(lab: Lab, p: Params, workdir: Path, label: str) -> dict[str, Any]:
    settle(lab, with_standby=True)
    with LagSampler(lab, p.sample_ms / 1000) as sampler:
        s = run_load(lab, workdir, f"lag-{label}", ["--rate", str(p.rate), "--duration", str(p.seconds)])
    # Skip the start: the primary may still show the last lag it measured before the quiet.
    return {"load": load_figures(s), **sampler.summarise(s["t_start"] + p.skip_s, s["t_end"])}


def max_phase(lab: Lab, p: Params, workdir: Path, label: str, with_standby: bool) -> dict[str, Any]:
    settle(lab, with_standby)
    args = ["--max", "--concurrency", str(p.concurrency), "--duration", str(p.max_seconds)]
    if not with_standby:
        return {"load": load_figures(run_load(lab, workdir, f"max-{label}", args))}
    with LagSampler(lab, p.sample_ms / 1000) as sampler:
        s = run_load(lab, workdir, f"max-{label}", args)
    return {"load": load_figures(s), **sampler.summarise(s["t_start"] + p.skip_s, s["t_end"])}


def measure(lab: Lab, p: Params, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log("bootstrap alpha (primary, no standby yet)")
    standby_cmd(lab, "alpha", "bootstrap", "--restart")
    start_softswitch(lab)
    # Read after bootstrap, which may restart the server with new settings.
    machine = machine_facts(lab, p.name)
    # Opens the service's connections and warms both Python processes; not recorded.
    log(f"warm-up: {p.warmup_s:g} s at max")
    run_load(lab, workdir, "warmup", ["--max", "--concurrency", str(p.concurrency), "--duration", str(p.warmup_s)])

    throughput: dict[str, Any] = {}
    lag: dict[str, Any] = {}
    log(f"throughput, no standby: {p.max_seconds:g} s, {p.concurrency} concurrent")
    throughput["none"] = max_phase(lab, p, workdir, "none", with_standby=False)

    log(f"bootstrap {STANDBY_NODE} (clone, async)")
    standby_cmd(lab, STANDBY_NODE, "bootstrap")
    for mode in ("async", "sync"):
        set_durability(lab, sync=mode == "sync")
        log(f"lag, {mode} standby: {p.rate:g} calls/s for {p.seconds:g} s")
        lag[mode] = lag_phase(lab, p, workdir, mode)
        log(f"throughput, {mode} standby: {p.max_seconds:g} s, {p.concurrency} concurrent")
        throughput[mode] = max_phase(lab, p, workdir, mode, with_standby=True)

    base = throughput["none"]["load"]["calls_per_s"]
    for fig in throughput.values():
        fig["ratio_to_none"] = fig["load"]["calls_per_s"] / base if base else None
    return {"machine": machine, "lag": lag, "throughput": throughput}


# --------------------------------------------------------------------------- facts and output


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _pair(d: dict[str, Any], fmt: str = ".1f") -> str:
    return f"{_f(d['p50'], fmt)} / {_f(d['p99'], fmt)}"


def render(doc: dict[str, Any]) -> str:
    p, m, lag, tp = doc["parameters"], doc["machine"], doc["lag"], doc["throughput"]
    lines = [
        f"standby {m['standby']}, PostgreSQL {m['postgresql']}, {m['cores']} cores ({m['cpu_model']}), "
        f"softswitch pool {m['softswitch_pool_size']}, synchronous_commit={m['postgresql_settings']['synchronous_commit']}",
        "",
        f"Replication lag at {p['rate']:g} calls/s for {p['seconds']:g} s: the primary's replay_lag, sampled every "
        f"{p['sample_ms']:g} ms, first {p['skip_s']:g} s left out.",
        "Lag is over the samples that had a figure; 'caught up' is the share of samples where the primary showed none.",
        f"{'standby':<8} {'calls/s':>8} {'call p50/p99 ms':>16} {'replay lag p50/p99 ms':>22} "
        f"{'behind p50/p99 bytes':>21} {'caught up':>10}",
    ]
    for mode in ("async", "sync"):
        f = lag[mode]
        share = f["caught_up_share"]
        lines.append(
            f"{mode:<8} {f['load']['calls_per_s']:>8.1f} {_pair(f['load']['call_latency_ms']):>16} "
            f"{_pair(f['replay_lag_ms'], '.2f'):>22} {_pair(f['behind_bytes'], '.0f'):>21} "
            f"{_f(None if share is None else 100 * share, '.0f') + ' %':>10}"
        )
    lines += [
        "",
        f"Maximum throughput (closed loop, {p['concurrency']} concurrent, {p['max_seconds']:g} s each)",
        f"{'standby':<8} {'calls/s':>8} {'vs none':>8} {'call p50/p99 ms':>16} {'not acked':>10} "
        f"{'replay lag p99 ms':>18} {'other CPU':>10}",
    ]
    for mode in ("none", "async", "sync"):
        f = tp[mode]
        ld = f["load"]
        p99 = f["replay_lag_ms"]["p99"] if "replay_lag_ms" in f else None
        lines.append(
            f"{mode:<8} {ld['calls_per_s']:>8.1f} {_f(f['ratio_to_none'], '.3f'):>8} "
            f"{_pair(ld['call_latency_ms']):>16} {ld['failed'] + ld['indeterminate']:>10} {_f(p99, '.2f'):>18} "
            f"{ld['cpu']['other_cores']:>6.2f} cores"
        )
    runs = {f"lag {m}": f["load"]["cpu"] for m, f in lag.items()}
    runs |= {f"throughput {m}": f["load"]["cpu"] for m, f in tp.items()}
    busiest = max(runs, key=lambda k: runs[k]["other_cores"])
    lines += [
        "",
        f"CPU outside this lab during the runs: {_mean(r['other_cores'] for r in runs.values()):.2f} cores on average "
        f"(most {runs[busiest]['other_cores']:.2f}, {busiest}); hypervisor steal "
        f"{_mean(r['steal_cores'] for r in runs.values()):.2f}; other labs at start: "
        f"{', '.join(m['other_labs_running']) or 'none'}",
    ]
    return "\n".join(lines)


def _mean(values: Iterable[float]) -> float:
    v = list(values)
    return sum(v) / len(v) if v else 0.0


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=200.0, help="calls/s during the lag runs (default 200)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each lag run (default 20)")
    ap.add_argument("--max-seconds", type=float, default=15.0, help="length of each throughput run (default 15)")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-loop workers in throughput runs (default 32)")
    ap.add_argument("--sample-ms", type=float, default=50.0, help="lag sampling interval (default 50)")
    ap.add_argument("--skip", type=float, default=1.0, help="seconds of each run left out of the lag figures (default 1)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unrecorded warm-up load before the first run (default 3)")
    ap.add_argument("--name", default="sbbench", help="lab name (default sbbench)")
    a = ap.parse_args(argv)
    if a.rate <= 0 or a.seconds <= a.skip or a.max_seconds <= a.skip or a.concurrency < 1 or a.sample_ms <= 0:
        ap.error("need rate > 0, seconds and max-seconds > skip, concurrency >= 1, sample-ms > 0")
    return Params(a.rate, a.seconds, a.max_seconds, a.concurrency, a.sample_ms, a.skip, a.warmup, a.name)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t0 = time.monotonic()
    started = datetime.now(UTC)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    with sigterm_as_interrupt():
        try:
            # Async first: bootstrap then leaves synchronous_standby_names empty, as for no standby.
            with fresh_lab(LabSpec(p.name, durability="async"), log) as lab, \
                    tempfile.TemporaryDirectory(prefix="standby-bench-") as tmp:
                figures = measure(lab, p, Path(tmp), log)
        except (BenchError, LabError, psycopg.Error) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    doc = {
        "benchmark": "replication",
        "started_utc": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "machine": figures["machine"],
        "parameters": {**asdict(p), "url": SERVICE_URL, "lag_source": "pg_stat_replication.replay_lag on the primary"},
        "lag": figures["lag"],
        "throughput": figures["throughput"],
    }
    path = benchlib.write_results("replication", doc, started.strftime("%Y%m%dT%H%M%SZ"))
    print(render(doc))
    print(f"\nwritten to {path} (and {path.with_name('replication-latest.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
