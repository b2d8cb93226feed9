#!/usr/bin/env python3
"""Followers and the pair: how long the warm follower gamma takes to stream from the new primary after a
failover, and (--cost) what followers cost the primary.

Failover (the default): every run builds a new lab with gamma attached (cloned from alpha, its follower agent
running), starts the pair, puts the sample load on the service IP, crashes alpha's host, and measures from
the crash until beta is the only primary and until gamma's WAL receiver streams from beta on beta's new
timeline; then that gamma was not cloned again (the same system identifier and data directory files) and
holds every call beta holds.

Cost (--cost): one lab per configuration, no follower, gamma, gamma and delta, each streaming from the
primary (upstream = "primary") or cascaded from the hot standby (upstream = "standby", measured once the
followers stream from beta). At a fixed call rate: alpha's PostgreSQL CPU per call (its server alone, as
bench/replication.py measures it), the bytes alpha sends on its public and private links per call, beta's
likewise, and the WAL per call. alpha's and beta's servers are pinned to different cores unless --no-pin.

This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/followers.py [--runs 5]
    .venv/bin/python bench/followers.py --cost [--seconds 30] [--configs none direct-1 ...]

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
from benchlib import RUN_FAILURES, LabNames, distribution, fresh_lab, percentile, run_load, sigterm_as_interrupt
from standby.agent.followerobs import names_by_ip
from standby.lab import Lab, LabSpec, followers
from standby.lab.errors import LabError
from standby.lab.pair import primaries, start_pair, under_load, verify
from standby.lab.topology import PRIVATE_IF, PUBLIC_IF
from standby.observe.postgres import WATCH_APPLICATION_NAME

NAME_PREFIX = "sbfl"
COST_PREFIX = "sbflc"
# One run of a series: given its lab's name and the log, its figures.
Measure = Callable[[str, benchlib.Log], dict[str, Any]]


@dataclass(frozen=True)
class Params:
    runs: int
    rate: int
    timeout_s: float
    cost: bool = False
    seconds: float = 30.0
    configs: tuple[str, ...] = ()
    pin: bool = True
    warmup_s: float = 3.0


def _identity(lab: Lab) -> tuple[int, int] | None:
    try:
        return followers.identity(lab, "gamma")
    except (LabError, OSError):
        return None


def _same_calls(lab: Lab) -> bool:
    """Once gamma replayed beta's current WAL: the same calls on both."""
    followers.wait_replayed(lab, "gamma", "beta")
    return followers.call_ids(lab, "beta") == followers.call_ids(lab, "gamma")


def one_run(lab: Lab, p: Params, tmp: Path) -> dict[str, Any]:
    rec: dict[str, Any] = {"loadavg_at_start": list(os.getloadavg()), "error": None}
    start_pair(lab)
    before = _identity(lab)
    with under_load(lab, tmp, p.rate) as run:
        t0 = run.t_fault = time.monotonic()
        lab.crash("alpha")
        try:
            lab.wait_for("beta the only primary", lambda: primaries(lab) == ["beta"], timeout_s=p.timeout_s,
                         every_s=0.05)
            rec["promoted_s"] = time.monotonic() - t0
            tli = rec["timeline"] = followers.timeline(lab, "beta")
            followers.wait_streaming(lab, "gamma", "beta", tli, p.timeout_s)
            rec["gamma_streaming_s"] = time.monotonic() - t0
        except LabError as e:
            rec["error"] = str(e)
        time.sleep(1.0)
    v = verify(lab, run, on="beta")
    rec["lost"], rec["dual_samples"] = len(v["missing_acked"]), len(run.probe.dual) if run.probe else None
    rec["cloned_again"] = _identity(lab) != before
    rec["same_calls"] = rec["error"] is None and _same_calls(lab)
    return rec


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def vals(key: str) -> list[float]:
        return [r[key] for r in runs if r.get(key) is not None]

    return {"runs": len(runs), "runs_with_error": sum(1 for r in runs if r["error"]),
            "promoted_s": distribution(vals("promoted_s")), "gamma_streaming_s": distribution(vals("gamma_streaming_s")),
            "cloned_again": sum(1 for r in runs if r.get("cloned_again")),
            "calls_differ": sum(1 for r in runs if r.get("same_calls") is False),
            "lost_total": sum(vals("lost")), "dual_samples_total": sum(vals("dual_samples"))}


def render(doc: dict[str, Any]) -> str:
    s = doc["summary"]

    def f(d: dict[str, Any]) -> str:
        return "-" if d["p50"] is None else f"p50 {d['p50']:.2f} s, max {d['max']:.2f} s"

    return (f"host crash of alpha with gamma attached, {s['runs']} runs ({s['runs_with_error']} with an error), "
            f"{doc['parameters']['rate']} calls/s\n"
            f"  beta the only primary:              {f(s['promoted_s'])}\n"
            f"  gamma streaming from beta (new tl): {f(s['gamma_streaming_s'])}\n"
            f"  gamma cloned again: {s['cloned_again']}, calls differing from beta: {s['calls_differ']}, "
            f"acknowledged calls lost: {s['lost_total']}, dual-primary samples: {s['dual_samples_total']}")


# --------------------------------------------------------------------------- cost (--cost)


@dataclass(frozen=True)
class CostConfig:
    name: str
    followers: tuple[str, ...]
    upstream: str  # the lab's follower_upstream


COST_CONFIGS: dict[str, CostConfig] = {c.name: c for c in (
    CostConfig("none", (), "primary"),
    CostConfig("direct-1", ("gamma",), "primary"),
    CostConfig("direct-2", ("gamma", "delta"), "primary"),
    CostConfig("cascaded-1", ("gamma",), "standby"),
    CostConfig("cascaded-2", ("gamma", "delta"), "standby"),
)}
# Where each server runs when pinned (as bench/replication.py); followers, agents, softswitch, load unpinned.
PIN = {"alpha": 0, "beta": 1}
LINKS = (PUBLIC_IF, PRIVATE_IF)


def _links(lab: Lab, node: str) -> dict[str, benchlib.LinkBytes]:
    return {d: v for d, v in benchlib.link_bytes(lab, node).items() if d in LINKS}


def _senders(lab: Lab, node: str) -> list[str]:
    """The WAL senders that stream from a pair node now, by the name their receiver gives (not the follower
    agents' kept connections: _watchers)."""
    with lab.pg_connect(node, autocommit=True) as c:
        return sorted(r[0] for r in c.execute("SELECT application_name FROM pg_stat_replication WHERE "
                                              "application_name <> %s", (WATCH_APPLICATION_NAME,)).fetchall())


def _watchers(lab: Lab, node: str) -> dict[str, list[int]]:
    """The follower agents' kept replication connections to a pair node: per follower, its WAL senders' pids
    (the same pids before and after the measurement: no connection was made during it)."""
    names = names_by_ip(lab.config())
    out: dict[str, list[int]] = {}
    with lab.pg_connect(node, autocommit=True) as c:
        for addr, pid in c.execute("SELECT host(client_addr), pid FROM pg_stat_replication WHERE application_name = %s "
                                   "ORDER BY pid", (WATCH_APPLICATION_NAME,)).fetchall():
            out.setdefault(names.get(str(addr), str(addr)), []).append(int(pid))
    return out


def _settle(lab: Lab, cfg: CostConfig) -> None:
    """A common starting line: a checkpoint, beta and every follower replayed it, a moment of quiet."""
    with lab.pg_connect("alpha", autocommit=True) as c:
        c.execute("CHECKPOINT")
    for node in ("beta", *cfg.followers):
        followers.wait_replayed(lab, node, "alpha")
    time.sleep(1.0)


def cost_run(lab: Lab, cfg: CostConfig, p: Params, tmp: Path, cgroup: benchlib.ServerCgroup | None,
             log: benchlib.Log) -> dict[str, Any]:
    rec: dict[str, Any] = {"loadavg_at_start": list(os.getloadavg())}
    start_pair(lab)  # followers streaming from their upstream: alpha, or beta when cascaded
    meter = benchlib.ServerMeter(lab, "alpha", cgroup)
    meter.mark()  # alpha's server into its cgroup
    if p.pin:
        rec["pinned"] = {n: {"cpu": cpu, "pids": benchlib.pin_server(lab, n, cpu)} for n, cpu in PIN.items()}
    run_load(lab, tmp, "warmup", ["--rate", str(p.rate), "--duration", str(p.warmup_s)])
    _settle(lab, cfg)
    rec["senders_before"] = {n: _senders(lab, n) for n in ("alpha", "beta")}
    rec["watchers_before"] = {n: _watchers(lab, n) for n in ("alpha", "beta")}
    log(f"  {cfg.name}: {p.rate} calls/s for {p.seconds:g} s; WAL senders {rec['senders_before']}")
    lsn0, m0, a0, b0 = benchlib.wal_lsn(lab), meter.mark(), _links(lab, "alpha"), _links(lab, "beta")
    s = run_load(lab, tmp, "cost", ["--rate", str(p.rate), "--duration", str(p.seconds)])
    m1, a1, b1, lsn1 = meter.mark(), _links(lab, "alpha"), _links(lab, "beta"), benchlib.wal_lsn(lab)
    rec["senders_after"] = {n: _senders(lab, n) for n in ("alpha", "beta")}
    rec["watchers_after"] = {n: _watchers(lab, n) for n in ("alpha", "beta")}
    if cfg.followers:
        log(f"    the follower agents' kept replication connections (WAL sender pids) before {rec['watchers_before']}, "
            f"after {rec['watchers_after']}")
    rec["followers_streaming_from"] = {f: (r.source if (r := followers.receiver(lab, f)) and r.streaming else None)
                                       for f in cfg.followers}
    calls = int(s["ack"])
    cpu = benchlib.server_cpu_between(m0, m1)
    alpha_tx, beta_tx = benchlib.tx_between(a0, a1), benchlib.tx_between(b0, b1)
    ms = benchlib.per_call(cpu["cpu_s"], calls)
    rec |= {
        "load": benchlib.load_figures(s),
        "commit_latency_ms": benchlib.history_latency_ms(tmp / "cost.jsonl"),
        "primary_cpu": cpu,
        "primary_cpu_ms_per_call": None if ms is None else ms * 1000,
        "alpha_tx_bytes": {d: a1[d].tx - a0[d].tx for d in a0.keys() & a1.keys()},
        "alpha_tx_bytes_per_call": benchlib.per_call(alpha_tx, calls),
        "beta_tx_bytes": {d: b1[d].tx - b0[d].tx for d in b0.keys() & b1.keys()},
        "beta_tx_bytes_per_call": benchlib.per_call(beta_tx, calls),
        "wal_bytes_per_call": benchlib.per_call(lsn1 - lsn0, calls),
    }
    return rec


def cost_summary(all_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration (the median over its runs without an error), and each beside no follower."""
    runs = [r for r in all_runs if not r.get("error")]
    def med(cfg: str, key: str) -> float | None:
        return percentile([v for r in runs if r["config"] == cfg and (v := r.get(key)) is not None], 0.5)

    keys = ("primary_cpu_ms_per_call", "alpha_tx_bytes_per_call", "beta_tx_bytes_per_call", "wal_bytes_per_call")
    out: dict[str, Any] = {}
    for cfg in dict.fromkeys(r["config"] for r in runs):
        figs = {k: med(cfg, k) for k in keys}
        out[cfg] = {"runs": sum(1 for r in runs if r["config"] == cfg),
                    "errors": sum(1 for r in all_runs if r["config"] == cfg and r.get("error")), **figs,
                    "cpu_per_call_ratio_to_none": benchlib.ratio(figs["primary_cpu_ms_per_call"],
                                                                 med("none", "primary_cpu_ms_per_call")),
                    "alpha_tx_per_call_ratio_to_none": benchlib.ratio(figs["alpha_tx_bytes_per_call"],
                                                                      med("none", "alpha_tx_bytes_per_call"))}
    return out


def render_cost(doc: dict[str, Any]) -> str:
    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    p = doc["parameters"]
    lines = [f"followers' cost to the primary at {p['rate']} calls/s, {p['seconds']:g} s per configuration; "
             f"load average at start {' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_start'])}; "
             f"{'servers pinned: alpha CPU 0, beta CPU 1' if p['pin'] else 'nothing pinned'}; alpha's CPU from "
             f"{', '.join(sorted({r['cpu_source'] for r in doc['runs'] if 'cpu_source' in r})) or '-'}",
             f"{'config':<11} {'calls/s':>8} {'alpha CPU ms/call':>18} {'vs none':>8} {'alpha tx B/call':>16} "
             f"{'vs none':>8} {'beta tx B/call':>15} {'WAL B/call':>11} {'latency p50/p99 ms':>19}"]
    for r in doc["runs"]:
        if r.get("error"):
            lines.append(f"{r['config']:<11} error: {r['error']}")
            continue
        s = doc["summary"][r["config"]]
        lat = r["commit_latency_ms"]
        lines.append(
            f"{r['config']:<11} {r['load']['calls_per_s']:>8.1f} {f(r['primary_cpu_ms_per_call'], '.3f'):>18} "
            f"{f(s['cpu_per_call_ratio_to_none'], '.3f'):>8} {f(r['alpha_tx_bytes_per_call'], '.0f'):>16} "
            f"{f(s['alpha_tx_per_call_ratio_to_none'], '.3f'):>8} {f(r['beta_tx_bytes_per_call'], '.0f'):>15} "
            f"{f(r['wal_bytes_per_call'], '.0f'):>11} {f(lat['p50'], '.2f') + ' / ' + f(lat['p99'], '.2f'):>19}")
    return "\n".join(lines)


def cost_measure(cfg: CostConfig, p: Params) -> Measure:
    def measure(name: str, log: benchlib.Log) -> dict[str, Any]:
        cgroup = benchlib.open_server_cgroup(f"{name}-alpha", log)
        try:
            spec = LabSpec(name, followers=cfg.followers, follower_upstream=cfg.upstream)
            with fresh_lab(spec) as lab, tempfile.TemporaryDirectory(prefix="standby-flc-") as tmp:
                return {"cpu_source": "cgroup" if cgroup else "tree", **cost_run(lab, cfg, p, Path(tmp), cgroup, log)}
        finally:
            if cgroup is not None:  # after the lab: its server's processes are gone
                cgroup.__exit__(None, None, None)
    return measure


def cost_brief(r: dict[str, Any]) -> str:
    return (f"alpha CPU {r.get('primary_cpu_ms_per_call')} ms/call, alpha tx {r.get('alpha_tx_bytes_per_call')} B/call, "
            f"beta tx {r.get('beta_tx_bytes_per_call')} B/call, error {r.get('error')}")


def series(kind: str, p: Params, prefix: str, runs: Sequence[tuple[str, dict[str, Any], Measure]],
           summarise: Callable[[list[dict[str, Any]]], dict[str, Any]], render: Callable[[dict[str, Any]], str],
           brief: Callable[[dict[str, Any]], str] = str) -> int:
    """Each run on a fresh lab of its own, the results rewritten after every run; a broken run is recorded
    and the series goes on."""
    t_start = time.monotonic()
    doc, stamp, log = benchlib.begin(kind, p, runs=[], summary={})
    names, code = LabNames(prefix), 0
    with sigterm_as_interrupt():
        try:
            for label, first, measure in runs:
                name = names.next()
                log(f"{label} on {name}")
                rec: dict[str, Any] = {**first, "lab": name}
                try:
                    rec.update(measure(name, log))
                except RUN_FAILURES as e:  # one broken run must not end the series
                    rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                doc["runs"].append(rec)
                doc["summary"] = summarise(doc["runs"])
                benchlib.write_results(kind, doc, stamp)
                log(f"  {brief(rec)}")
        except KeyboardInterrupt:
            log("interrupted; results so far are written")
            code = 130
    doc["complete"] = code == 0
    benchlib.end(kind, doc, stamp, t_start, render)
    return code


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=5, help="failovers, each on a fresh lab (default 5)")
    ap.add_argument("--rate", type=int, default=100, help="calls/s through the service IP (default 100)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on a run after this many seconds (default 60)")
    ap.add_argument("--cost", action="store_true", help="measure what followers cost the primary instead")
    ap.add_argument("--seconds", type=float, default=30.0, help="--cost: length of each measurement (default 30)")
    ap.add_argument("--configs", nargs="+", choices=list(COST_CONFIGS), default=list(COST_CONFIGS),
                    help="--cost: the configurations, each on a fresh lab (default: all)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="--cost: leave alpha's and beta's servers on every core (default: CPU 0 and CPU 1)")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.rate < 1 or a.timeout <= 0 or a.seconds <= 0:
        ap.error("need runs >= 1, rate >= 1, timeout > 0, seconds > 0")
    return Params(a.runs, a.rate, a.timeout, a.cost, a.seconds, tuple(a.configs), a.pin and (os.cpu_count() or 1) >= 2)


def failover_measure(p: Params) -> Measure:
    def measure(name: str, _log: benchlib.Log) -> dict[str, Any]:
        with fresh_lab(LabSpec(name, followers=("gamma",))) as lab, tempfile.TemporaryDirectory(prefix="standby-fl-") as tmp:
            return one_run(lab, p, Path(tmp))
    return measure


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    if p.cost:
        runs = [(c, {"config": c, "followers": list(COST_CONFIGS[c].followers), "upstream": COST_CONFIGS[c].upstream,
                     "error": None}, cost_measure(COST_CONFIGS[c], p)) for c in p.configs]
        return series("followers-cost", p, COST_PREFIX, runs, cost_summary, render_cost, cost_brief)
    return series("followers", p, NAME_PREFIX, [(f"run {i + 1}/{p.runs}", {}, failover_measure(p)) for i in range(p.runs)],
                  summarise, render)


if __name__ == "__main__":
    raise SystemExit(main())
