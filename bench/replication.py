#!/usr/bin/env python3
"""What a standby costs the primary: its CPU, its WAL and its commit latency at a fixed call rate.

One run builds one lab (network namespaces, a PostgreSQL 15 server per node, the sample softswitch on
alpha, the load generator in the client namespace) and puts the same fixed call rate, well under what
the lab can carry, on it in three phases:

1. none: alpha bootstrapped alone, so synchronous_standby_names is empty and no WAL sender runs;
2. async: beta cloned by `standby bootstrap`, streaming asynchronously;
3. sync: the same standby made synchronous (the setting bootstrap writes for durability = "sync");
4. none again ("none_after"): the standby made async and its server stopped, so no WAL sender runs.

The phases run in that order on one growing set of tables, and what a call costs the backends drifts along
it (0.67 → 0.81 ms from first to third phase in one run). The last phase measures that drift: the ratios are
taken against the mean of the two phases without a standby, which bracket the ones with it.

Per phase: alpha's PostgreSQL CPU seconds per acknowledged call (its server alone, in a cgroup v2 of its
own where the machine allows, else its process tree; see benchlib), WAL bytes per call, the call latency
the load generator saw (p50/p99 from its per-call history) and the replication lag as the primary reports
it. By default alpha's server and beta's server are pinned to different cores, so that the standby does
not take its CPU from the primary's. Reconfiguring one lab rather than building three keeps the servers
comparable; every phase starts after a VACUUM ANALYZE and a CHECKPOINT, with the standby caught up.

Before the lab and after it, what the machine charged that hour for a burst of work one call apart
(`calibration`, benchlib.calibrate with a sleep of 1/rate): on a virtual machine that charges for pages
touched after a sleep, a WAL sender woken for each commit pays it on every call.

This is a measurement: it prints and records figures and judges none of them (the goal is printed beside).

    .venv/bin/python bench/replication.py [--rate 100 --seconds 30] [--no-pin] [--max-seconds 15]

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from standby.lab import Lab, LabSpec, pgnode
from standby.lab.errors import LabError
from standby.lab.topology import APP_DB

STANDBY_NODE = "beta"


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
    """Polls both servers from a thread while the load runs in a subprocess. Without a standby it still
    asks the primary, so that every phase puts the same monitoring queries on it."""

    def __init__(self, lab: Lab, interval_s: float, with_standby: bool = True) -> None:
        self._lab = lab
        self._interval_s = interval_s
        self._with_standby = with_standby
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.samples: list[LagSample] = []
        # Daemon: an interrupted run must not wait for it; the lab's teardown ends its connections.
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def _run(self) -> None:
        try:
            with self._lab.pg_connect("alpha", autocommit=True) as primary, \
                    (self._lab.pg_connect(STANDBY_NODE, autocommit=True) if self._with_standby
                     else contextlib.nullcontext()) as standby:  # fmt: skip
                next_t = time.monotonic()
                while not self._stop.is_set():
                    t = time.monotonic()
                    row = primary.execute(_PRIMARY_LAG_SQL, (STANDBY_NODE,)).fetchone()
                    age = standby.execute(_STANDBY_AGE_SQL).fetchone() if standby is not None else None
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
    """A common starting line: the service's tables vacuumed (so that autovacuum, which the last phase's rows
    would otherwise set off, does not run inside the next one), checkpoint done, standby replayed
    everything, a moment of quiet."""
    with lab.pg_connect("alpha", dbname=APP_DB, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
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


def wait_no_wal_sender(lab: Lab, timeout_s: float = 10.0) -> None:
    with lab.pg_connect("alpha", autocommit=True) as conn:
        deadline = time.monotonic() + timeout_s
        while conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone() != (0,):
            if time.monotonic() > deadline:
                raise BenchError(f"alpha still has a WAL sender {timeout_s:g} s after {STANDBY_NODE}'s server stopped")
            time.sleep(0.1)


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Params:
    rate: float
    seconds: float
    max_seconds: float  # 0: no closed-loop throughput runs
    concurrency: int
    sample_ms: float
    skip_s: float
    warmup_s: float
    pin: bool
    name: str


# Where each server runs with --pin; everything else (softswitch, load generator, this script) is left to
# the scheduler on both cores.
PIN = {"alpha": 0, STANDBY_NODE: 1}
# The goal the figures are printed beside (never asserted): what a sync standby may add to the primary.
GOAL = {"sync_cpu_per_call_ratio_max": 1.15, "sync_latency_p50_added_ms_max": 1.0}


def cost_phase(lab: Lab, p: Params, workdir: Path, label: str, meter: benchlib.ServerMeter,
               with_standby: bool) -> dict[str, Any]:
    """The fixed rate for --seconds: what alpha's server spent, the WAL it wrote, the latency and the lag."""
    settle(lab, with_standby)
    with LagSampler(lab, p.sample_ms / 1000, with_standby) as sampler:
        lsn0 = benchlib.wal_lsn(lab)
        m0 = meter.mark()
        s = run_load(lab, workdir, f"cost-{label}", ["--rate", str(p.rate), "--duration", str(p.seconds)])
        m1 = meter.mark()
        lsn1 = benchlib.wal_lsn(lab)
    calls = int(s["ack"])
    cpu = benchlib.server_cpu_between(m0, m1)
    out: dict[str, Any] = {
        "load": load_figures(s),
        "commit_latency_ms": benchlib.history_latency_ms(workdir / f"cost-{label}.jsonl"),
        "primary_cpu": {**cpu, "cores": cpu["cpu_s"] / cpu["wall_s"] if cpu["cpu_s"] is not None else None},
        "primary_cpu_ms_per_call": None if (c := benchlib.per_call(cpu["cpu_s"], calls)) is None else c * 1000,
        # Where a standby's cost lands: the WAL sender's own CPU beside the backends' (from each process's
        # /proc stat, 10 ms ticks; the cgroup figure above stays the total).
        "primary_cpu_ms_per_call_by_process": None if (kinds := benchlib.cpu_by_process(m0, m1)) is None else {
            k: v * 1000 / calls for k, v in sorted(kinds.items()) if calls},
        "wal_bytes": lsn1 - lsn0,
        "wal_bytes_per_call": benchlib.per_call(lsn1 - lsn0, calls),
    }
    if with_standby:
        # Skip the start: the primary may still show the last lag it measured before the quiet.
        out |= sampler.summarise(s["t_start"] + p.skip_s, s["t_end"])
    return out


def max_phase(lab: Lab, p: Params, workdir: Path, label: str, with_standby: bool) -> dict[str, Any]:
    settle(lab, with_standby)
    args = ["--max", "--concurrency", str(p.concurrency), "--duration", str(p.max_seconds)]
    return {"load": load_figures(run_load(lab, workdir, f"max-{label}", args))}


def against_goal(cost: dict[str, Any]) -> dict[str, Any]:
    """Each standby phase beside no standby (the mean of the phases before and after, where both ran): CPU per
    call as a ratio, latency p50 as ms added; also beside the first phase alone, as runs before the last phase
    was added reported it."""
    nones = [cost[k] for k in ("none", "none_after") if k in cost]

    def base(get: Callable[[dict[str, Any]], float | None]) -> float | None:
        vals = [get(f) for f in nones]
        return None if any(v is None for v in vals) else sum(v for v in vals if v is not None) / len(vals)

    cpu_base = base(lambda f: f["primary_cpu_ms_per_call"])
    wal_base = base(lambda f: f["wal_bytes_per_call"])
    p50_base = base(lambda f: f["commit_latency_ms"]["p50"])
    out: dict[str, Any] = {**GOAL, "base": "mean of none and none_after" if len(nones) == 2 else "none"}
    for mode in ("async", "sync"):
        f = cost[mode]
        out[f"{mode}_cpu_per_call_ratio"] = benchlib.ratio(f["primary_cpu_ms_per_call"], cpu_base)
        out[f"{mode}_cpu_per_call_ratio_to_first_none"] = benchlib.ratio(
            f["primary_cpu_ms_per_call"], cost["none"]["primary_cpu_ms_per_call"])
        out[f"{mode}_wal_per_call_ratio"] = benchlib.ratio(f["wal_bytes_per_call"], wal_base)
        p50 = f["commit_latency_ms"]["p50"]
        out[f"{mode}_latency_p50_added_ms"] = None if p50 is None or p50_base is None else p50 - p50_base
    return out


def measure(lab: Lab, p: Params, workdir: Path, cgroup: benchlib.ServerCgroup | None,
            log: Callable[[str], None]) -> dict[str, Any]:
    log("bootstrap alpha (primary, no standby yet)")
    standby_cmd(lab, "alpha", "bootstrap", "--restart")
    start_softswitch(lab)
    # Read after bootstrap, which may restart the server with new settings.
    machine = machine_facts(lab, p.name)
    meter = benchlib.ServerMeter(lab, "alpha", cgroup)
    meter.mark()  # moves the running server into its cgroup; its backends follow it there
    pinned: dict[str, Any] = {}
    if p.pin:
        pinned["alpha"] = {"cpu": PIN["alpha"], "pids": benchlib.pin_server(lab, "alpha", PIN["alpha"])}
    # Opens the service's connections and warms both Python processes; not recorded.
    log(f"warm-up: {p.warmup_s:g} s at {p.rate:g} calls/s")
    run_load(lab, workdir, "warmup", ["--rate", str(p.rate), "--duration", str(p.warmup_s)])

    cost: dict[str, Any] = {}
    throughput: dict[str, Any] = {}
    log(f"no standby: {p.rate:g} calls/s for {p.seconds:g} s")
    cost["none"] = cost_phase(lab, p, workdir, "none", meter, with_standby=False)
    if p.max_seconds:
        log(f"throughput, no standby: {p.max_seconds:g} s, {p.concurrency} concurrent")
        throughput["none"] = max_phase(lab, p, workdir, "none", with_standby=False)

    log(f"bootstrap {STANDBY_NODE} (clone, async)")
    standby_cmd(lab, STANDBY_NODE, "bootstrap")
    if p.pin:
        # alpha again: its WAL sender is new, and it inherited the postmaster's core unless alpha restarted.
        pinned = {n: {"cpu": cpu, "pids": benchlib.pin_server(lab, n, cpu)} for n, cpu in PIN.items()}
    for mode in ("async", "sync"):
        set_durability(lab, sync=mode == "sync")
        log(f"{mode} standby: {p.rate:g} calls/s for {p.seconds:g} s")
        cost[mode] = cost_phase(lab, p, workdir, mode, meter, with_standby=True)
        if p.max_seconds:
            log(f"throughput, {mode} standby: {p.max_seconds:g} s, {p.concurrency} concurrent")
            throughput[mode] = max_phase(lab, p, workdir, mode, with_standby=True)
    log(f"no standby again ({STANDBY_NODE}'s server stopped): {p.rate:g} calls/s for {p.seconds:g} s")
    set_durability(lab, sync=False)
    pgnode.stop(lab.node(STANDBY_NODE))
    wait_no_wal_sender(lab)
    cost["none_after"] = cost_phase(lab, p, workdir, "none_after", meter, with_standby=False)
    if throughput:
        base = throughput["none"]["load"]["calls_per_s"]
        for fig in throughput.values():
            fig["ratio_to_none"] = fig["load"]["calls_per_s"] / base if base else None
    return {"machine": machine, "pinned": pinned or None, "cost": cost, "against_goal": against_goal(cost),
            "throughput": throughput or None}


# --------------------------------------------------------------------------- output


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _pair(d: dict[str, Any], fmt: str = ".1f") -> str:
    return f"{_f(d['p50'], fmt)} / {_f(d['p99'], fmt)}"


def render(doc: dict[str, Any]) -> str:
    p, m, cost, g = doc["parameters"], doc["machine"], doc["cost"], doc["against_goal"]
    pinned = doc["pinned"]
    where = (", ".join(f"{n}'s server on CPU {v['cpu']}" for n, v in pinned.items()) + "; the rest unpinned"
             if pinned else "nothing pinned")
    lines = [
        f"standby {m['standby']}, PostgreSQL {m['postgresql']}, {m['cores']} cores ({m['cpu_model']}), "
        f"synchronous_commit={m['postgresql_settings']['synchronous_commit']}, load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        f"{p['rate']:g} calls/s for {p['seconds']:g} s per phase; {where}; primary CPU from "
        f"{doc['parameters']['cpu_source']}",
        "",
        f"{'standby':<10} {'calls/s':>8} {'alpha CPU ms/call':>18} {'alpha cores':>12} {'WAL B/call':>11} "
        f"{'latency p50/p99 ms':>19} {'replay lag p50/p99 ms':>22} {'other CPU':>10}",
    ]
    for mode in [m for m in ("none", "async", "sync", "none_after") if m in cost]:
        f = cost[mode]
        lag = _pair(f["replay_lag_ms"], ".2f") if "replay_lag_ms" in f else "-"
        lines.append(
            f"{mode:<10} {f['load']['calls_per_s']:>8.1f} {_f(f['primary_cpu_ms_per_call'], '.3f'):>18} "
            f"{_f(f['primary_cpu']['cores'], '.3f'):>12} {_f(f['wal_bytes_per_call'], '.0f'):>11} "
            f"{_pair(f['commit_latency_ms'], '.2f'):>19} {lag:>22} {f['load']['cpu']['other_cores']:>6.2f} cores"
        )
    lines += ["", "alpha CPU ms/call by process (from /proc, 10 ms ticks):"]
    for mode in [m for m in ("none", "async", "sync", "none_after") if m in cost]:
        by = cost[mode].get("primary_cpu_ms_per_call_by_process")
        lines.append(f"  {mode:<10} " + ("-" if not by else ", ".join(f"{k} {v:.3f}" for k, v in by.items() if v)))
    lines += [
        "",
        f"against {g.get('base', 'none')}:",
        f"sync vs none: CPU per call x{_f(g['sync_cpu_per_call_ratio'], '.3f')} (goal <= x{g['sync_cpu_per_call_ratio_max']}; "
        f"x{_f(g.get('sync_cpu_per_call_ratio_to_first_none'), '.3f')} against the first phase alone), "
        f"latency p50 +{_f(g['sync_latency_p50_added_ms'], '.2f')} ms (goal <= {g['sync_latency_p50_added_ms_max']} ms); "
        f"WAL per call x{_f(g['sync_wal_per_call_ratio'], '.3f')}",
        f"async vs none: CPU per call x{_f(g['async_cpu_per_call_ratio'], '.3f')}, "
        f"latency p50 +{_f(g['async_latency_p50_added_ms'], '.2f')} ms",
    ]
    if doc.get("calibration"):
        lines += ["", benchlib.calibration_line(doc, "one call's interval")]
    if doc.get("throughput"):
        tp = doc["throughput"]
        lines += ["", f"Maximum throughput (closed loop, {p['concurrency']} concurrent, {p['max_seconds']:g} s each): "
                  + ", ".join(f"{mode} {tp[mode]['load']['calls_per_s']:.1f} calls/s (x{_f(tp[mode]['ratio_to_none'], '.3f')})"
                              for mode in ("none", "async", "sync"))]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=100.0, help="calls/s in every phase (default 100)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each phase (default 30)")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="also a closed-loop throughput run this long after each phase (default 0: none)")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-loop workers in throughput runs (default 32)")
    ap.add_argument("--sample-ms", type=float, default=100.0, help="lag sampling interval (default 100)")
    ap.add_argument("--skip", type=float, default=1.0, help="seconds of each run left out of the lag figures (default 1)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unrecorded warm-up load before the first phase (default 3)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="leave both servers on every core (default: alpha's on CPU 0, beta's on CPU 1)")
    ap.add_argument("--name", default="sbbench", help="lab name (default sbbench)")
    a = ap.parse_args(argv)
    if a.rate <= 0 or a.seconds <= a.skip or a.max_seconds < 0 or a.concurrency < 1 or a.sample_ms <= 0:
        ap.error("need rate > 0, seconds > skip, max-seconds >= 0, concurrency >= 1, sample-ms > 0")
    pin = a.pin and (os.cpu_count() or 1) >= 2
    return Params(a.rate, a.seconds, a.max_seconds, a.concurrency, a.sample_ms, a.skip, a.warmup, pin, a.name)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t0 = time.monotonic()
    doc, stamp, log = benchlib.begin("replication", p)
    # What this machine charged that hour for a burst of work a call apart (a WAL sender woken per commit).
    doc["calibration"] = {"before": benchlib.calibrate(1 / p.rate)}
    with sigterm_as_interrupt():
        try:
            # Async first: bootstrap then leaves synchronous_standby_names empty, as for no standby.
            with fresh_lab(LabSpec(p.name, durability="async"), log) as lab, \
                    tempfile.TemporaryDirectory(prefix="standby-bench-") as tmp:  # fmt: skip
                cgroup = benchlib.open_server_cgroup(f"{p.name}-alpha", log)
                try:
                    figures = measure(lab, p, Path(tmp), cgroup, log)
                finally:
                    if cgroup is not None:
                        cgroup.__exit__(None, None, None)
        except (BenchError, LabError, psycopg.Error) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    doc["machine"] = {**figures.pop("machine"), **{k: v for k, v in doc["machine"].items() if k not in ("cores",)}}
    doc["parameters"] |= {
        "url": SERVICE_URL, "lag_source": "pg_stat_replication.replay_lag on the primary",
        "cpu_source": (f"a cgroup v2 of alpha's server alone (cpu.stat usage_usec under {cgroup.path})" if cgroup
                       else "alpha's server's process tree (/proc: postmaster with reaped children, live children)"),
    }
    doc.update(figures)
    doc["calibration"]["after"] = benchlib.calibrate(1 / p.rate)
    doc["complete"] = True
    benchlib.end("replication", doc, stamp, t0, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
