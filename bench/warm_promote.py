"""Warm standby: time from `standby promote --yes` to the first acknowledged call on the promoted node.

On a fresh warm lab (beta in another subnet) the primary's host crashes; calls
are already being offered to beta's own address (where clients go once the
address-change hook has told them), and fail until beta is promoted. Prints
and writes, per run, the promote command's own step timings and the time
from the command's start to the first acknowledged call.

    .venv/bin/python bench/warm_promote.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchlib
from benchlib import STANDBY, LabNames, fresh_lab, sigterm_as_interrupt
from standby.documents import AgentView
from standby.lab import LabSpec


def one_run(name: str) -> dict[str, Any]:
    with fresh_lab(LabSpec(name, mode="warm")) as lab:
        lab.bootstrap()
        for node in ("alpha", "beta"):
            lab.start_agent(node)
        lab.wait_for("beta in sync", lambda: eligible(lab.agent_status("beta")), timeout_s=60)
        with tempfile.TemporaryDirectory() as tmp:
            history = Path(tmp) / "calls.jsonl"
            lab.spawn("client", [STANDBY, "lab", "load", "--url", "http://203.0.113.12:8080", "--rate", "100",
                                 "--duration", "600", "--timeout", "1", "--out", str(history)], "load")
            time.sleep(1.0)
            lab.crash("alpha")
            time.sleep(2.0)  # a person notices the alert and decides
            t0 = time.monotonic()
            res = lab.standby("beta", "promote", "--yes", check=False)
            t_cmd = time.monotonic() - t0
            time.sleep(3.0)
            lab.stop_spawned("client", "load")
            acks = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        first = min((a["t_done"] for a in acks if a["outcome"] == "ack" and a["t_done"] >= t0), default=None)
        steps = [line.strip() for line in res.stdout.splitlines() if line.startswith("  ")]
        return {"ok": res.returncode == 0, "command_s": round(t_cmd, 3),
                "first_ack_s": None if first is None else round(first - t0, 3), "steps": steps}


def eligible(st: AgentView | None) -> bool:
    return st is not None and st.state.eligible


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    names = LabNames("sbwp")
    with sigterm_as_interrupt():
        try:
            for i in range(args.runs):
                r = one_run(names.next())
                runs.append(r)
                print(f"run {i + 1}: promote command {r['command_s']} s, first acknowledged call {r['first_ack_s']} s "
                      f"after the command started")
                for s in r["steps"]:
                    print(f"    {s}")
        except KeyboardInterrupt:
            print("interrupted; the runs so far are written")
    firsts = [r["first_ack_s"] for r in runs if r["first_ack_s"] is not None]
    summary = {"runs": len(runs), "failed": sum(not r["ok"] for r in runs),
               "first_ack_p50_s": statistics.median(firsts) if firsts else None,
               "first_ack_max_s": max(firsts) if firsts else None}
    print(f"\n`standby promote --yes` -> first acknowledged call: p50 {summary['first_ack_p50_s']} s, "
          f"max {summary['first_ack_max_s']} s over {len(firsts)} runs (target: under one minute)")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {"bench": "warm_promote", "when": stamp, "cores": os.cpu_count(), "machine": platform.machine(),
           "load_average": os.getloadavg(), "summary": summary, "runs": runs}
    benchlib.write_results("warm-promote", doc, stamp)


if __name__ == "__main__":
    main()
