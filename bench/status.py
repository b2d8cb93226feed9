#!/usr/bin/env python3
"""How long `standby status` makes an operator wait: on a healthy pair, and with the peer's host down.

One lab, one pair (sync). `standby status --json` is run on beta, as an operator would in beta's
namespace (a new process each time: the interpreter's start and imports are part of the wait), --runs
times while the pair is healthy, then again after alpha's host crashed (its processes killed and its
cables cut: its server and agent time out rather than refuse). Per phase: the command's wall time
(p50 / max) and how beta saw alpha (a run that saw it wrong is counted, not hidden).

This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/status.py [--runs 10]

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import benchlib
from standby.lab import Lab
from standby.lab.pair import start_pair

NAME_PREFIX = "sbst"


@dataclass(frozen=True)
class Params:
    runs: int


def timed_status(lab: Lab, runs: int) -> dict[str, Any]:
    walls: list[float] = []
    alpha_seen: Counter[str] = Counter()
    for _ in range(runs):
        t0 = time.monotonic()
        res = lab.standby("beta", "status", "--json", check=False)
        walls.append(round(time.monotonic() - t0, 3))
        try:
            alpha_seen[json.loads(res.stdout)["nodes"]["alpha"]["postgres"]["state"]] += 1
        except (ValueError, KeyError, TypeError):
            alpha_seen[f"exit {res.returncode}, no document"] += 1
    return {"wall_s": benchlib.distribution(walls), "runs_s": walls, "alpha_seen_as": dict(alpha_seen)}


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(doc: dict[str, Any]) -> str:
    lines = [f"standby {doc['standby']}, {doc['machine']['cores']} cores, load average at start "
             f"{' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_start'])}",
             f"{'phase':<12} {'runs':>4} {'p50 s':>6} {'max s':>6}  alpha seen as"]
    for phase, r in doc["phases"].items():
        w = r["wall_s"]
        seen = ", ".join(f"{k} x{v}" for k, v in r["alpha_seen_as"].items())
        lines.append(f"{phase:<12} {w['n']:>4} {_f(w['p50']):>6} {_f(w['max']):>6}  {seen}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=10, help="status commands per phase (default 10)")
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    return Params(a.runs)


def measure(lab: Lab, doc: dict[str, Any], log: benchlib.Log, runs: int) -> None:
    start_pair(lab)
    log(f"healthy pair: {runs} runs")
    doc["phases"]["healthy"] = timed_status(lab, runs)
    lab.crash("alpha")
    log(f"alpha's host crashed: {runs} runs")
    doc["phases"]["peer_down"] = timed_status(lab, runs)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    return benchlib.run_on_one_lab("status", p, NAME_PREFIX, lambda lab, doc, log, _save: measure(lab, doc, log, p.runs),
                                   render)


if __name__ == "__main__":
    sys.exit(main())
