#!/usr/bin/env python3
"""What this machine charges a process for work done right after a sleep, by the length of the sleep.

No lab: one process, `benchlib.calibrate` for each sleep (default 1 ms to 1 s): the CPU of reading one byte
in each of 1,000 memory pages already in use right after the sleep and again at once, per page, and of a
hand-off to a worker thread and back after the sleep. On a machine where the first figure is many times
the second, any periodic process (the agent at rest, a WAL sender woken per commit) pays mostly for the
pages it touches, not for its work, and CPU figures of such processes compare only between runs whose
calibrations agree (bench/README.md, "What this machine charges for waking up").

This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/machine.py [--sleeps-ms 1 10 50 200 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import benchlib


@dataclass(frozen=True)
class Params:
    sleeps_ms: tuple[float, ...]
    rounds: int


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sleeps-ms", type=float, nargs="+", default=[1, 10, 50, 200, 1000],
                    help="the sleeps to measure after, in ms (default 1 10 50 200 1000)")
    ap.add_argument("--rounds", type=int, default=20, help="sleeps per figure (default 20)")
    a = ap.parse_args(argv)
    if a.rounds < 1 or any(s <= 0 for s in a.sleeps_ms):
        ap.error("need rounds >= 1 and sleeps > 0")
    return Params(tuple(a.sleeps_ms), a.rounds)


def render(doc: dict[str, Any]) -> str:
    lines = [f"standby {doc['standby']}, {doc['machine']['cores']} cores, load average at start "
             f"{' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_start'])}",
             f"{'after a sleep of':>17} {'a page, us':>11} {'warm, us':>9} {'ratio':>7} {'a thread hand-off, us':>22}"]
    for c in doc["figures"]:
        ratio = c["page_after_sleep_us"] / c["page_warm_us"] if c["page_warm_us"] else float("nan")
        lines.append(f"{1000 * c['sleep_s']:>14g} ms {c['page_after_sleep_us']:>11} {c['page_warm_us']:>9} "
                     f"{ratio:>7.1f} {c['handoff_us']:>22}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t0 = time.monotonic()
    doc, stamp, log = benchlib.begin("machine", p)
    doc["figures"] = []
    for ms in p.sleeps_ms:
        log(f"after {ms:g} ms sleeps, {p.rounds} rounds")
        doc["figures"].append(benchlib.calibrate(ms / 1000, rounds=p.rounds))
    doc["complete"] = True
    benchlib.end("machine", doc, stamp, t0, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
