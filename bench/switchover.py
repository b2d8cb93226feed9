#!/usr/bin/env python3
"""What a planned switchover costs the calls: many switchovers back and forth on one pair under load.

One lab, one pair (sync), the sample load on the service IP with the dual-primary probe running.
Each switchover is `standby switchover` run on the current primary; after it the script waits until
the old primary streams from the new one (and until it is eligible again, i.e. sync is restored), then
the next switchover goes the other way. At the end the checker judges every call against the final
primary.

Per switchover: the longest gap between consecutive acknowledged calls around it, the command's wall
time and its own step timings, and how long the old primary took to stream and to be eligible again.

This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/switchover.py [--count 20] [--rate 100] [--window 1.0]

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib
from benchlib import LabNames, begin, distribution, fresh_lab, sigterm_as_interrupt
from standby.lab import Lab, LabSpec
from standby.lab.checker import read_history
from standby.lab.errors import LabError
from standby.lab.pair import STANDBY, LoadRun, holders, primaries, start_pair, under_load, verify
from standby.model import DbState

NAME_PREFIX = "sbso"
# "  bob: services released, shut down at 0/3000028        123.4 ms"
STEP_LINE = re.compile(r"^\s*(?P<name>\S.*?)\s+(?P<ms>\d+\.\d) ms$")


@dataclass(frozen=True)
class Params:
    count: int
    rate: int
    window_s: float
    settle_timeout_s: float
    pause_s: float
    durability: str


def streaming_standby(lab: Lab, node: str) -> bool:
    st = lab.agent_status(node)
    return st is not None and st.postgres.state is DbState.STANDBY and st.postgres.streaming


def eligible(lab: Lab, node: str) -> bool:
    st = lab.agent_status(node)
    return st is not None and st.state.eligible


def parse_steps(stdout: str, old: str, new: str) -> list[dict[str, Any]]:
    steps = []
    for line in stdout.splitlines():
        m = STEP_LINE.match(line)
        if m is None:
            continue
        raw = m["name"]
        # A label that is the same on every switchover, so the steps can be aggregated by name.
        label = re.sub(r"\b[0-9A-F]+/[0-9A-F]+\b", "LSN", raw)
        label = re.sub(r"\(term \d+\)", "(term N)", label)
        label = re.sub(rf"\b{old}\b", "OLD", re.sub(rf"\b{new}\b", "NEW", label))
        steps.append({"step": label, "text": raw, "ms": float(m["ms"])})
    return steps


def gap_around(acks: list[float], t0: float, t1: float, window_s: float) -> dict[str, float | None]:
    """Longest interval between consecutive acks over [t0 - window, t1 + window], edges included.

    The last ack before the window and the first after it take part, so an interruption that runs
    past the window is measured whole rather than cut at its edge.
    """
    lo, hi = t0 - window_s, t1 + window_s
    before = [t for t in acks if t < lo]
    inside = [t for t in acks if lo <= t <= hi]
    after = [t for t in acks if t > hi]
    pts = ([before[-1]] if before else []) + inside + ([after[0]] if after else [])
    if len(pts) < 2:
        return {"gap_s": None, "gap_from_s": None}
    a, b = max(itertools.pairwise(pts), key=lambda p: p[1] - p[0])
    return {"gap_s": b - a, "gap_from_s": a - t0}


def one_switchover(lab: Lab, p: Params) -> dict[str, Any]:
    now = primaries(lab)
    if len(now) != 1:
        raise LabError(f"expected one primary before the switchover, found {now}")
    old = now[0]
    new = "beta" if old == "alpha" else "alpha"
    rec: dict[str, Any] = {"old": old, "new": new, "loadavg": list(os.getloadavg()), "error": None}
    errors: list[str] = []
    t0 = time.monotonic()
    res = lab.standby(old, "switchover", check=False)
    t1 = time.monotonic()
    rec.update(t0=t0, t1=t1, command_s=t1 - t0, returncode=res.returncode, steps=parse_steps(res.stdout, old, new))
    if res.returncode != 0:
        errors.append(f"switchover exited {res.returncode}")
        rec["stdout"], rec["stderr"] = res.stdout, res.stderr
    rec["primaries_after"] = primaries(lab)
    rec["holders_after"] = holders(lab)
    expected = [new] if res.returncode == 0 else [old]
    if rec["primaries_after"] != expected or rec["holders_after"] != expected:
        errors.append(f"primaries {rec['primaries_after']}, holders {rec['holders_after']}")
    # After a completed switchover the old primary must stream; after an aborted one, the standby.
    standby_node = old if rec["primaries_after"] == [new] else new
    try:
        lab.wait_for(f"{standby_node} streaming", lambda: streaming_standby(lab, standby_node),
                     timeout_s=p.settle_timeout_s, every_s=0.05)
        rec["streaming_after_s"] = time.monotonic() - t1
        # The next switchover goes the other way; sync restored first makes every one start alike.
        lab.wait_for(f"{standby_node} eligible", lambda: eligible(lab, standby_node),
                     timeout_s=p.settle_timeout_s, every_s=0.05)
        rec["eligible_after_s"] = time.monotonic() - t1
    except LabError as e:
        errors.append(str(e))
        rec.setdefault("streaming_after_s", None)
        rec["eligible_after_s"] = None
    rec["error"] = "; ".join(errors) or None
    # Spaced out so that the windows of two switchovers never overlap.
    time.sleep(max(p.pause_s, 2 * p.window_s))
    return rec


def history(lab: Lab, node: str) -> list[dict[str, Any]]:
    res = lab.standby(node, "history", "--json", "--limit", "1000", check=False)
    try:
        return json.loads(res.stdout) if res.returncode == 0 else []
    except ValueError:
        return []


def analyse(run: LoadRun, switchovers: list[dict[str, Any]], p: Params) -> dict[str, int]:
    attempts = read_history(run.history)
    acks = sorted(a.t_done for a in attempts if a.outcome.value == "ack")
    probe_dual = [s.t for s in run.probe.dual] if run.probe else []
    for rec in switchovers:
        if "command_s" not in rec:
            continue
        t0, t1, w = rec["t0"], rec["t1"], p.window_s
        rec.update(gap_around(acks, t0, t1, w))
        missed = [a for a in attempts if a.outcome.value != "ack" and t0 - w <= a.t_send <= t1 + w]
        rec["not_acked_sent_in_window"] = len(missed)
        # What the client saw instead of an ack: outcome and the first words of the error.
        rec["not_acked_kinds"] = dict(Counter(f"{a.outcome.value}: {a.status or ''} {(a.error or '')[:60]}".strip()
                                              for a in missed))
        rec["dual_samples_in_window"] = sum(1 for t in probe_dual if t0 - w <= t <= t1 + w)
    windows = [(r["t0"] - p.window_s, r["t1"] + p.window_s) for r in switchovers if "command_s" in r]
    not_acked = [a for a in attempts if a.outcome.value != "ack"]
    return {"attempts": len(attempts), "attempts_not_acked": len(not_acked),
            "attempts_not_acked_outside_windows": sum(1 for a in not_acked
                                                      if not any(lo <= a.t_send <= hi for lo, hi in windows))}


# The write pause, phase by phase: (phase, from, to), each instant below on the host's monotonic clock.
# The agents' instants come from their history (a step's end); the acks from the load history.
PHASES = (("last ack -> write pause", "last_ack", "paused"),
          ("write pause -> old primary stopped", "paused", "stopped"),
          ("stopped -> standby caught up", "stopped", "caught_up"),
          ("caught up -> promoted", "caught_up", "promoted"),
          ("promoted -> service IP moved", "promoted", "ip_moved"),
          ("service IP moved -> first ack", "ip_moved", "first_ack"))
# Which step's end is which instant: the pause begins where the checkpoint taken while serving ends.
STEP_INSTANTS = {"checkpoint while serving": "paused", "PostgreSQL stopped": "stopped",
                 "received past": "caught_up", "PostgreSQL promoted": "promoted", "service IPs moved": "ip_moved"}


def agent_instants(events: list[dict[str, Any]], event: str, t0: float, t1: float) -> dict[str, float]:
    """The instants of the one ``event`` whose steps ended within [t0, t1]."""
    out: dict[str, float] = {}
    for e in events:
        steps = e.get("steps") if e.get("event") == event else None
        if not isinstance(steps, list) or not steps or not all(isinstance(s, list) and len(s) == 3 for s in steps):
            continue
        if not t0 <= steps[-1][2] <= t1:
            continue
        for name, _s, end in steps:
            for prefix, instant in STEP_INSTANTS.items():
                if str(name).startswith(prefix):
                    out[instant] = float(end)
    return out


def gap_phases(rec: dict[str, Any], hist: dict[str, list[dict[str, Any]]], acks: list[float]) -> dict[str, Any]:
    """Where the write pause of one switchover went, from the last ack before it to the first after."""
    t0, t1 = rec["t0"], rec["t1"]
    at = {**agent_instants(hist.get(rec["old"], []), "switchover_demoted", t0, t1),
          **agent_instants(hist.get(rec["new"], []), "switchover_promoted", t0, t1)}
    if "ip_moved" not in at or "paused" not in at:
        return {}
    # The first ack the new primary gave, and the last the old one gave before it.
    after = [t for t in acks if t > at["ip_moved"]]
    before = [t for t in acks if t <= at["ip_moved"]]
    if after:
        at["first_ack"] = after[0]
    if before:
        at["last_ack"] = before[-1]
    return {name: round(1000 * (at[b] - at[a]), 1) for name, a, b in PHASES if a in at and b in at}


def judge(lab: Lab, run: LoadRun, on: str) -> dict[str, Any]:
    """The checker's verdict, or what it said when it gave none (verify() itself drops its stderr)."""
    try:
        v = verify(lab, run, on=on)
    except ValueError as e:
        res = lab.run(on, [STANDBY, "lab", "verify", "--json", "--history", str(run.history),
                           "--dsn-file", str(lab.spec.secret("app.dsn"))], check=False)
        return {"error": f"no verdict from the checker on {on} ({e})", "returncode": res.returncode,
                "stdout": res.stdout[-2000:], "stderr": res.stderr[-4000:]}
    out = {k: v[k] for k in ("ok", "violations", "calls", "acked", "failed", "indeterminate")}
    out["lost"] = len(v["missing_acked"])
    out["missing_acked"] = list(v["missing_acked"])
    return out


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    done = [r for r in doc["switchovers"] if "command_s" in r]

    def vals(key: str, rs: list[dict[str, Any]] = done) -> list[float]:
        return [r[key] for r in rs if r.get(key) is not None]

    steps: dict[str, list[float]] = {}
    for r in done:
        for s in r["steps"]:
            steps.setdefault(s["step"], []).append(s["ms"])
    ok = [r for r in done if not r["error"]]
    return {
        "switchovers": len(done), "with_error": sum(1 for r in done if r["error"]),
        "gap_s": distribution(vals("gap_s")), "command_s": distribution(vals("command_s")),
        "gap_s_ok_only": distribution(vals("gap_s", ok)),
        "streaming_after_s": distribution(vals("streaming_after_s")),
        "eligible_after_s": distribution(vals("eligible_after_s")),
        "steps_ms": {k: distribution(v) for k, v in steps.items()},
        "gap_phases_ms": {name: distribution([r["gap_phases_ms"][name] for r in done
                                              if name in r.get("gap_phases_ms", {})]) for name, _, _ in PHASES},
        "by_direction": {d: {"gap_s": distribution(vals("gap_s", [r for r in done if r["new"] == d])),
                             "command_s": distribution(vals("command_s", [r for r in done if r["new"] == d]))}
                         for d in ("alpha", "beta")},
    }


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def render(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    lines = [f"standby {doc['standby']}, {doc['machine']['cores']} cores, load average at start "
             f"{' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_start'])}; "
             f"{doc['parameters']['rate']} calls/s through the service IP; one {doc['parameters']['durability']} pair",
             f"{'#':>3} {'to':<5} {'gap s':>7} {'cmd s':>7} {'stream s':>8} {'elig s':>7} {'unacked':>7} "
             f"{'load1':>5}  error"]
    for i, r in enumerate(doc["switchovers"], 1):
        lines.append(f"{i:>3} {r.get('new', '-'):<5} {_f(r.get('gap_s')):>7} {_f(r.get('command_s')):>7} "
                     f"{_f(r.get('streaming_after_s'), '.2f'):>8} {_f(r.get('eligible_after_s'), '.2f'):>7} "
                     f"{r.get('not_acked_sent_in_window', '-'):>7} "
                     f"{r['loadavg'][0] if r.get('loadavg') else 0:5.2f}  {r.get('error') or ''}")
    if not s:
        return "\n".join(lines)
    g, c = s["gap_s"], s["command_s"]
    lines += ["", f"switchovers: {s['switchovers']}, with an error: {s['with_error']}",
              f"longest ack gap around a switchover: p50 {_f(g['p50'])} s, max {_f(g['max'])} s",
              f"switchover command duration:        p50 {_f(c['p50'])} s, max {_f(c['max'])} s",
              "command steps (ms, p50 / max):"]
    for name, d in s["steps_ms"].items():
        lines.append(f"  {name:<60} {_f(d['p50'], '.1f'):>8} / {_f(d['max'], '.1f'):>8}")
    lines.append("the write pause, phase by phase (ms, p50 / max; from the agents' histories and the acks):")
    for name, d in s.get("gap_phases_ms", {}).items():
        lines.append(f"  {name:<60} {_f(d['p50'], '.1f'):>8} / {_f(d['max'], '.1f'):>8}")
    v = doc.get("verdict")
    if v:
        lines.append(f"checker: ok={v['ok']}, calls {v['calls']}, acked {v['acked']}, lost {v['lost']}, "
                     f"failed {v['failed']}, indeterminate {v['indeterminate']}, dual-primary samples "
                     f"{doc['probe']['dual_samples']} (probe samples {doc['probe']['samples']}), "
                     f"violations {len(v['violations'])}")
    a = doc.get("attempts")
    if a:
        lines.append(f"attempts: {a['attempts']}, not acknowledged {a['attempts_not_acked']} "
                     f"(sent outside every switchover window: {a['attempts_not_acked_outside_windows']})")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=20, help="switchovers, alternating direction (default 20)")
    ap.add_argument("--rate", type=int, default=100, help="calls/s through the service IP (default 100)")
    ap.add_argument("--window", type=float, default=1.0,
                    help="seconds before and after the command over which the ack gap is taken (default 1)")
    ap.add_argument("--settle-timeout", type=float, default=30.0,
                    help="seconds to wait for the old primary to stream and be eligible (default 30)")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between switchovers (at least 2 x window)")
    ap.add_argument("--durability", choices=("sync", "async"), default="sync")
    a = ap.parse_args(argv)
    if a.count < 1 or a.rate < 1 or a.window <= 0 or a.settle_timeout <= 0 or a.pause < 0:
        ap.error("need count >= 1, rate >= 1, window > 0, settle-timeout > 0, pause >= 0")
    return Params(a.count, a.rate, a.window, a.settle_timeout, a.pause, a.durability)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t_start = time.monotonic()
    doc, stamp, log = begin("switchover", p, switchovers=[], summary={})
    code = 0
    name = LabNames(NAME_PREFIX).next()
    doc["lab"] = name
    with sigterm_as_interrupt():
        try:
            with fresh_lab(LabSpec(name, durability=p.durability)) as lab, \
                    tempfile.TemporaryDirectory(prefix="standby-so-") as tmp:
                log(f"{name}: pair up")
                start_pair(lab)
                t_wall0 = time.time()
                with under_load(lab, Path(tmp), p.rate) as run:
                    for i in range(p.count):
                        try:
                            rec = one_switchover(lab, p)
                        except (LabError, OSError, ValueError) as e:
                            rec = {"error": f"{type(e).__name__}: {e}", "loadavg": list(os.getloadavg())}
                        doc["switchovers"].append(rec)
                        log(f"switchover {i + 1}/{p.count} -> {rec.get('new')}: command {_f(rec.get('command_s'))} s, "
                            f"streaming after {_f(rec.get('streaming_after_s'), '.2f')} s"
                            + (f"; ERROR {rec['error']}" if rec["error"] else ""))
                        benchlib.write_results("switchover", doc, stamp)
                    time.sleep(1.0)
                doc["attempts"] = analyse(run, doc["switchovers"], p)
                final = primaries(lab)
                doc["final_primary"] = final
                checked = judge(lab, run, final[0] if final else "alpha")
                if "error" in checked:
                    doc["verify_error"] = checked
                    # The call history goes with the lab's temporary directory: keep it to judge by hand.
                    kept = benchlib.RESULTS_DIR / f"switchover-{stamp}-calls.jsonl"
                    shutil.copyfile(run.history, kept)
                    doc["verify_error"]["history_kept_at"] = str(kept)
                    log(f"checker failed: {checked['error']}; call history kept at {kept}")
                else:
                    doc["verdict"] = checked
                probe = run.probe
                doc["probe"] = {"samples": len(probe.samples) if probe else 0,
                                "dual_samples": len(probe.dual) if probe else 0,
                                "dual": [list(s.writable) for s in probe.dual] if probe else []}
                # Wall-clock agent history from just before the first switchover, for anomalies.
                doc["history"] = {n: [e for e in history(lab, n)
                                      if datetime.fromisoformat(e["time"]).timestamp() >= t_wall0 - 5]
                                  for n in ("alpha", "beta")}
                acks = sorted(a.t_done for a in read_history(run.history) if a.outcome.value == "ack")
                for r in doc["switchovers"]:
                    if "t0" in r and "old" in r:
                        r["gap_phases_ms"] = gap_phases(r, doc["history"], acks)
                doc["summary"] = summarise(doc)
                benchlib.write_results("switchover", doc, stamp)
                log("tearing down")
        except KeyboardInterrupt:
            log("interrupted; results so far are written")
            code = 130
    for r in doc["switchovers"]:
        # Monotonic stamps mean nothing outside this process; relative figures stay.
        r.pop("t0", None), r.pop("t1", None)
    doc["summary"] = summarise(doc) if doc["switchovers"] else {}
    doc["complete"] = code == 0 and "verdict" in doc
    if "verify_error" in doc:
        code = code or 1
    benchlib.end("switchover", doc, stamp, t_start, render)
    return code


if __name__ == "__main__":
    sys.exit(main())
