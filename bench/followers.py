#!/usr/bin/env python3
"""How long the warm follower gamma takes to stream from the pair's new primary after a failover.

Every run builds a new lab with gamma attached (cloned from alpha, its follower agent running), starts the
pair, puts the sample load on the service IP, crashes alpha's host, and measures from the crash until beta
is the only primary and until gamma's WAL receiver streams from beta on beta's new timeline; then that gamma
was not cloned again (the same system identifier and data directory files) and holds every call beta holds.

This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/followers.py [--runs 5]

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
from benchlib import RUN_FAILURES, LabNames, distribution, fresh_lab, sigterm_as_interrupt
from standby.lab import Lab, LabSpec, followers
from standby.lab.errors import LabError
from standby.lab.pair import primaries, start_pair, under_load, verify

NAME_PREFIX = "sbfl"


@dataclass(frozen=True)
class Params:
    runs: int
    rate: int
    timeout_s: float


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


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=5, help="failovers, each on a fresh lab (default 5)")
    ap.add_argument("--rate", type=int, default=100, help="calls/s through the service IP (default 100)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on a run after this many seconds (default 60)")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.rate < 1 or a.timeout <= 0:
        ap.error("need runs >= 1, rate >= 1, timeout > 0")
    return Params(a.runs, a.rate, a.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t_start = time.monotonic()
    doc, stamp, log = benchlib.begin("followers", p, runs=[], summary={})
    names, code = LabNames(NAME_PREFIX), 0
    with sigterm_as_interrupt():
        try:
            for i in range(p.runs):
                name = names.next()
                log(f"run {i + 1}/{p.runs} on {name}")
                rec: dict[str, Any] = {"lab": name}
                try:
                    with fresh_lab(LabSpec(name, followers=("gamma",))) as lab, \
                            tempfile.TemporaryDirectory(prefix="standby-fl-") as tmp:
                        rec.update(one_run(lab, p, Path(tmp)))
                except RUN_FAILURES as e:  # one broken run must not end the series
                    rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                doc["runs"].append(rec)
                doc["summary"] = summarise(doc["runs"])
                benchlib.write_results("followers", doc, stamp)
                log(f"  {rec}")
        except KeyboardInterrupt:
            log("interrupted; results so far are written")
            code = 130
    doc["complete"] = code == 0
    benchlib.end("followers", doc, stamp, t_start, render)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
