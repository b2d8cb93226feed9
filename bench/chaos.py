"""Chaos campaigns, several seeds in a row: the figures of `standby lab chaos`, added up.

    .venv/bin/python bench/chaos.py --seeds 11 12 13 --duration 600 [--durability sync] [--degrade-after S]
        [--follower gamma --follower delta]

Each seed is one `standby lab chaos` run on its own fresh lab (named sbchaos); its run
directory is kept under bench/results/chaos-STAMP/seed-N. Prints each seed's verdict and a
total: faults injected by kind, acknowledged and lost calls, dual-primary samples, the longest
time to converge after a heal; writes bench/results/chaos-STAMP.json. Exits 1 if any seed found
a violation (its seed then belongs in tests/lab/test_chaos.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchlib

STANDBY = str(Path(sys.executable).with_name("standby"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--duration", type=float, default=600, help="seconds of faults per seed")
    ap.add_argument("--durability", choices=["sync", "async"], default="sync")
    ap.add_argument("--degrade-after", type=float, default=0, help="sync: replication.degrade_after_s (0 = never)")
    ap.add_argument("--follower", dest="followers", action="append", default=[], choices=["gamma", "delta"],
                    help="add this follower to each seed's lab and campaign (repeatable)")
    ap.add_argument("--name", default="sbchaos", help="lab name (built and removed for each seed)")
    args = ap.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    runs_dir = benchlib.RESULTS_DIR / f"chaos-{stamp}"
    verdicts: list[dict[str, Any]] = []
    loadavg_at_start = list(os.getloadavg())
    started = time.monotonic()
    for seed in args.seeds:
        out = runs_dir / f"seed-{seed}"
        with_followers = f", followers {', '.join(args.followers)}" if args.followers else ""
        print(f"== seed {seed}: {args.duration:g} s of faults ({args.durability}{with_followers})", flush=True)
        res = subprocess.run([STANDBY, "lab", "chaos", "--name", args.name, "--seed", str(seed),
                              "--duration", str(args.duration), "--durability", args.durability,
                              "--degrade-after", str(args.degrade_after), "--out", str(out),
                              *(a for f in args.followers for a in ("--follower", f))], check=False)
        path = out / "verdict.json"
        v = json.loads(path.read_text()) if path.exists() else {"ok": False, "seed": seed,
                                                                "violations": [f"no verdict (exit {res.returncode})"]}
        verdicts.append(v)
    faults: Counter[str] = Counter()
    for v in verdicts:
        faults.update(v.get("faults", {}))
    converge = [c for v in verdicts for c in v.get("converge_s", [])]
    total = {
        "seeds": args.seeds, "durability": args.durability, "degrade_after_s": args.degrade_after,
        "duration_per_seed_s": args.duration, "followers": args.followers,
        "follower_writable_samples": sum(v.get("follower_writable_samples", 0) for v in verdicts),
        "follower_missing_acked": sum(sum(v.get("follower_missing_acked", {}).values()) for v in verdicts),
        "loadavg_at_start": loadavg_at_start, "wall_minutes": round((time.monotonic() - started) / 60, 1),
        "faults": dict(sorted(faults.items())), "faults_total": sum(faults.values()),
        "acked": sum(v.get("acked", 0) for v in verdicts), "lost": sum(v.get("lost", 0) for v in verdicts),
        "salvaged_acked": sum(len(v.get("salvaged_acked", [])) for v in verdicts),
        "indeterminate": sum(v.get("indeterminate_applied", 0) + v.get("indeterminate_not_applied", 0)
                             for v in verdicts),
        "dual_samples": sum(v.get("dual_samples", 0) for v in verdicts),
        "dual_open_samples": sum(v.get("dual_open_samples", 0) for v in verdicts),
        "samples": sum(v.get("samples", 0) for v in verdicts),
        "longest_converge_s": max(converge, default=None),
        "violations": {str(v.get("seed")): v.get("violations", []) for v in verdicts if not v.get("ok")},
    }
    print("\n== total")
    print(f"  {total['faults_total']} faults over {len(args.seeds)} seeds in {total['wall_minutes']} min: "
          + ", ".join(f"{k} {n}" for k, n in total["faults"].items()))
    print(f"  calls: {total['acked']} acknowledged, {total['lost']} lost ({total['salvaged_acked']} back by salvage), "
          f"{total['indeterminate']} indeterminate")
    print(f"  dual-primary samples: {total['dual_samples']} of {total['samples']} "
          f"(both open, one not committing: {total['dual_open_samples']})")
    if args.followers:
        print(f"  followers {', '.join(args.followers)}: samples with one writable {total['follower_writable_samples']}, "
              f"acknowledged calls missing from them {total['follower_missing_acked']}")
    print(f"  longest time to converge after a heal: {total['longest_converge_s']} s")
    print(f"  seeds with violations: {', '.join(total['violations']) or 'none'}")
    path = benchlib.write_results("chaos", {"bench": "chaos", "when": stamp, "total": total, "runs": verdicts}, stamp)
    print(f"results: {path}")
    return 0 if not total["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
