#!/usr/bin/env python3
"""What reports cost the primary: call throughput while the sample report runs on the standby vs on the primary.

One run builds one lab (sync durability unless --durability async, both agents, the reporting IP on beta), seeds the CDR
table so the report is a real scan, then measures the primary's closed-loop call throughput
(`standby lab load --max`, as bench/replication.py does) in phases:

- none:    no report running;
- standby: the sample report (`standby lab report --loop 0`) back to back through the reporting IP,
           i.e. on beta's replica;
- primary: the same loop against alpha's public address.

standby and primary alternate (--rounds), so slow drift on the machine hits both alike. The
headline is calls/s with the report on the standby divided by calls/s with it on the primary.

A lab runs every "server" on the same cores, so moving a report to beta would free nothing for
alpha. With --pin (the default on 2 or more cores) each node gets its own core, as two servers
would: alpha's namespace (PostgreSQL, the softswitch, its agent) together with the client's
namespace (the load generator) and this script on CPU 0, beta's namespace on CPU 1. Processes
outside the lab are not pinned; their CPU use is recorded per phase ("other").

    .venv/bin/python bench/reporting.py [--seconds 15 --rounds 2 --concurrency 32 --cdrs 300000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

import benchlib
from benchlib import (
    STANDBY,
    BenchError,
    cpu_between,
    cpu_mark,
    fresh_lab,
    load_figures,
    machine_facts,
    process_cpu_s,
    run_load,
    sigterm_as_interrupt,
)
from standby.lab import Lab, LabSpec, netns
from standby.lab.configfile import REPORT_DSN
from standby.lab.errors import LabError
from standby.lab.pair import reporting_holders, start_pair
from standby.lab.topology import ALL_ROLES, PG_PORT

# Which core each namespace gets with --pin: one per "server"; the client sits with alpha.
PIN = {"alpha": 0, "client": 0, "sw": 0, "beta": 1}


@dataclass(frozen=True)
class Params:
    seconds: float
    rounds: int
    concurrency: int
    cdrs: int
    warmup_s: float
    pin: bool
    name: str
    durability: str


def seed_cdrs(lab: Lab, n: int) -> None:
    """CDRs over the past week, so the report groups about 170 hours x 20 accounts."""
    with lab.pg_connect("alpha", dbname="softswitch", autocommit=True) as c:
        c.execute(
            """INSERT INTO cdrs (call_id, account_id, vendor_id, duration_s, price, cost, connect_time)
               SELECT 'seed-' || g, 1 + g %% 20, 1 + g %% 5, d, round(d * 0.0002, 6), round(d * 0.0001, 6),
                      now() - (g %% 604800) * interval '1 second'
               FROM generate_series(1, %s) g, LATERAL (SELECT (5 + (g::bigint * 7919) %% 600)::int AS d) x""", (n,))
        c.execute("VACUUM ANALYZE cdrs")  # hint bits and visibility map set once, not during a phase
        c.execute("CHECKPOINT")


def caught_up(lab: Lab, timeout_s: float = 60.0) -> None:
    with lab.pg_connect("alpha", autocommit=True) as c:
        deadline = time.monotonic() + timeout_s
        while True:
            row = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication "
                            "WHERE application_name = 'beta'").fetchone()
            if row and row[0] is not None and row[0] <= 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"beta did not catch up within {timeout_s:g} s")
            time.sleep(0.1)


def pin(lab: Lab) -> dict[str, list[int]]:
    """Give each node's processes its own core; children forked later (backends) inherit it."""
    done: dict[str, list[int]] = {}
    for role in ALL_ROLES:
        cpu = {PIN[role]}
        for pid in netns.pids(lab.netns(role)):
            try:
                os.sched_setaffinity(pid, cpu)
            except (ProcessLookupError, PermissionError):
                continue
        done[role] = sorted(cpu)
    os.sched_setaffinity(0, {PIN["client"]})  # the load generator is started from here
    return done


def ns_cpu(lab: Lab) -> dict[str, float]:
    """CPU seconds used so far by the processes alive in each namespace."""
    out: dict[str, float] = {}
    for role in ("alpha", "beta", "client"):
        out[role] = sum(t for pid in netns.pids(lab.netns(role)) if (t := process_cpu_s(pid)) is not None)
    return out


def write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def report_runs(log: Path, t_from: float, t_to: float) -> dict[str, Any]:
    """The report loop's JSON lines within the phase: how many, how long, where they ran."""
    runs = []
    for line in log.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if t_from <= d["t"] <= t_to:
            runs.append(d)
    ok = [r for r in runs if r["ok"]]
    secs = sorted(r["seconds"] for r in ok)
    return {
        "runs": len(ok), "errors": len(runs) - len(ok),
        "on_standby": sum(1 for r in ok if r["standby"]), "on_primary": sum(1 for r in ok if not r["standby"]),
        "seconds_p50": secs[len(secs) // 2] if secs else None,
        "calls_summarised": ok[-1]["calls"] if ok else None,
        "error_samples": sorted({r["error"] for r in runs if not r["ok"]})[:3],
    }


def phase(lab: Lab, p: Params, workdir: Path, label: str, report_dsn: Path | None) -> dict[str, Any]:
    caught_up(lab)
    time.sleep(1.0)
    log = lab.spec.role_dir("client") / "log" / f"report-{label}.log"
    if report_dsn is not None:
        lab.spawn("client", [STANDBY, "lab", "report", "--dsn-file", str(report_dsn), "--loop", "0"], f"report-{label}")
        time.sleep(2.0)  # the loop is in its stride before calls are counted
    if p.pin:
        pin(lab)  # the report's client and its backend, started just now, get their core too
    before, nsb, t0 = cpu_mark(lab), ns_cpu(lab), time.time()
    try:
        s = run_load(lab, workdir, label, ["--max", "--concurrency", str(p.concurrency), "--duration", str(p.seconds)])
    finally:
        t1, nsa, after = time.time(), ns_cpu(lab), cpu_mark(lab)
        if report_dsn is not None:
            lab.stop_spawned("client", f"report-{label}")
    wall = t1 - t0
    doc: dict[str, Any] = {
        "load": load_figures(s),
        "cores_by_namespace": {k: max(0.0, nsa[k] - nsb.get(k, 0.0)) / wall for k in nsa},
        "cpu": cpu_between(before, after),
    }
    if report_dsn is not None:
        doc["report"] = report_runs(log, t0, t1)
    return doc


def measure(lab: Lab, p: Params, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log("bootstrap, agents, waiting for the reporting IP on beta")
    start_pair(lab)
    lab.wait_for("the reporting IP on beta", lambda: reporting_holders(lab) == ["beta"], timeout_s=60)
    log(f"seeding {p.cdrs} CDRs")
    seed_cdrs(lab, p.cdrs)
    caught_up(lab, 120)
    pinned = pin(lab) if p.pin else None
    machine = machine_facts(lab, p.name)
    on_standby = lab.spec.secret(REPORT_DSN)
    on_primary = workdir / "report-primary.dsn"
    password = lab.spec.secret("app.password").read_text().strip()
    write_secret(on_primary, f"host={lab.node('alpha').public.ip} port={PG_PORT} dbname=softswitch user=softswitch "
                             f"password={password} connect_timeout=2\n")
    log(f"warm-up: {p.warmup_s:g} s")
    run_load(lab, workdir, "warmup", ["--max", "--concurrency", str(p.concurrency), "--duration", str(p.warmup_s)])
    phases: dict[str, list[dict[str, Any]]] = {"none": [], "standby": [], "primary": []}
    order = ["none"] + [w for r in range(p.rounds) for w in (("standby", "primary") if r % 2 == 0 else ("primary", "standby"))]
    for i, where in enumerate(order):
        log(f"phase {i + 1}/{len(order)}: report on {where}, {p.seconds:g} s")
        dsn = {"none": None, "standby": on_standby, "primary": on_primary}[where]
        phases[where].append(phase(lab, p, workdir, f"{where}-{i}", dsn))
    return {"machine": machine, "pinned": pinned, "order": order, "phases": phases}


def summarise(phases: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    out: dict[str, Any] = {}
    for where, runs in phases.items():
        out[where] = {
            "calls_per_s": mean([r["load"]["calls_per_s"] for r in runs]),
            "call_p99_ms": mean([r["load"]["call_latency_ms"]["p99"] for r in runs]),
            "report_runs_per_s": mean([r["report"]["runs"] / r["load"]["elapsed_s"] for r in runs]) if where != "none" else None,
            "alpha_cores": mean([r["cores_by_namespace"]["alpha"] for r in runs]),
            "beta_cores": mean([r["cores_by_namespace"]["beta"] for r in runs]),
            "other_cores": mean([r["cpu"]["other_cores"] for r in runs]),
        }
    s, p, n = (out[k]["calls_per_s"] for k in ("standby", "primary", "none"))
    out["ratio_standby_to_primary"] = s / p if s and p else None
    out["standby_vs_none"] = s / n if s and n else None
    out["primary_vs_none"] = p / n if p and n else None
    return out


def render(doc: dict[str, Any]) -> str:
    m, p, s = doc["machine"], doc["parameters"], doc["summary"]
    lines = [
        f"standby {m['standby']}, PostgreSQL {m['postgresql']}, {m['cores']} cores ({m['cpu_model']}), "
        f"{'pinned: alpha+client on CPU 0, beta on CPU 1' if doc['pinned'] else 'not pinned'}",
        f"closed loop, {p['concurrency']} concurrent, {p['seconds']:g} s per phase, order {' '.join(doc['order'])}; "
        f"{p['cdrs']} seeded CDRs",
        "",
        f"{'report on':<10} {'calls/s':>8} {'call p99 ms':>12} {'reports/s':>10} {'alpha cores':>12} "
        f"{'beta cores':>11} {'other CPU':>10}",
    ]
    for where in ("none", "standby", "primary"):
        f = s[where]
        rps = "-" if f["report_runs_per_s"] is None else f"{f['report_runs_per_s']:.2f}"
        lines.append(f"{where:<10} {f['calls_per_s']:>8.1f} {f['call_p99_ms']:>12.1f} {rps:>10} "
                     f"{f['alpha_cores']:>12.2f} {f['beta_cores']:>11.2f} {f['other_cores']:>10.2f}")
    reports = [r["report"] for w in ("standby", "primary") for r in doc["phases"][w]]
    lines += [
        "",
        f"calls/s with the report on the standby / on the primary: {s['ratio_standby_to_primary']:.3f}",
        f"vs no report: standby {s['standby_vs_none']:.3f}, primary {s['primary_vs_none']:.3f}",
        "report runs: " + "; ".join(f"{r['runs']} ok ({r['on_standby']} on a standby), {r['errors']} failed, "
                                    f"p50 {r['seconds_p50'] or 0:.3f} s" for r in reports),
    ]
    return "\n".join(lines)




def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each phase (default 15)")
    ap.add_argument("--durability", choices=["sync", "async"], default="sync",
                    help="sync couples the primary's commits to the standby's flush, so a busy standby slows them")
    ap.add_argument("--rounds", type=int, default=2, help="standby/primary pairs, alternating order (default 2)")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-loop workers (default 32)")
    ap.add_argument("--cdrs", type=int, default=300_000, help="CDRs seeded before measuring (default 300000)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unrecorded warm-up load (default 3)")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="leave every process on every core")
    ap.add_argument("--name", default="sbrbench", help="lab name (default sbrbench)")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.rounds < 1 or a.concurrency < 1 or a.cdrs < 0:
        ap.error("need seconds > 0, rounds >= 1, concurrency >= 1, cdrs >= 0")
    pin_ok = a.pin and (os.cpu_count() or 1) >= 2
    return Params(a.seconds, a.rounds, a.concurrency, a.cdrs, a.warmup, pin_ok, a.name, a.durability)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t0 = time.monotonic()
    started = datetime.now(UTC)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    with sigterm_as_interrupt():
        try:
            with fresh_lab(LabSpec(p.name, durability=p.durability), log) as lab, \
                    tempfile.TemporaryDirectory(prefix="standby-bench-") as tmp:
                figures = measure(lab, p, Path(tmp), log)
        except (BenchError, LabError, psycopg.Error) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    doc = {
        "benchmark": "reporting",
        "started_utc": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "machine": figures["machine"],
        "parameters": asdict(p),
        "pinned": figures["pinned"],
        "order": figures["order"],
        "summary": summarise(figures["phases"]),
        "phases": figures["phases"],
    }
    path = benchlib.write_results("reporting", doc, started.strftime("%Y%m%dT%H%M%SZ"))
    print(render(doc))
    print(f"\nwritten to {path} (and {path.with_name('reporting-latest.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
