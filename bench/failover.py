#!/usr/bin/env python3
"""How long a failover interrupts calls, and what it loses: each fault kind x durability, on fresh pairs.

Every run builds a new lab, bootstraps it, starts both agents, waits until the pair is ready,
puts the sample load on the service IP with the dual-primary probe running, injects one fault on
alpha, waits until beta is the only primary and the service IP is where it belongs, keeps the
load going a little longer, then checks every acknowledged call against beta's database.

Fault kinds (all on alpha, the primary):

- host_crash: power loss (cables dead, every process killed);
- pg_crash:   the postmaster SIGKILLed, the host lives on (the service IP stays on alpha, its
              services follow the database to beta over the network);
- isolation:  both of alpha's cables unplugged, alpha alive;
- wal_disk_hang: alpha's WAL file system frozen (fsfreeze; its WAL moved onto one before the agents start):
              every commit waits while the server answers from memory, until the agent's bound
              (timings.wal_flush_stuck_ms, 30 s) hands the database over. Not in the default kinds:
              its first ack is the bound plus the hand-over, and it would stretch every run's settle wait.

Before the runs, one more pair is left idle to measure the agents' resident memory and CPU use.

This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/failover.py [--runs 20] [--quick] [--kinds ...] [--durabilities ...]

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import itertools
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

import benchlib
from benchlib import RUN_FAILURES, LabNames, distribution, fresh_lab, other_labs, sigterm_as_interrupt
from standby import __version__
from standby.config import Timings
from standby.lab import Lab, LabSpec
from standby.lab.checker import longest_ack_gap, read_history
from standby.lab.errors import LabError
from standby.lab.pair import ROLE_CHANGES, LoadRun, holders, primaries, start_pair, under_load, verify

KINDS = ("host_crash", "pg_crash", "isolation")
ALL_KINDS = (*KINDS, "wal_disk_hang")
DURABILITIES = ("sync", "async")
NAME_PREFIX = "sbfo"
CLK_TCK = os.sysconf("SC_CLK_TCK")

Log = Callable[[str], None]


# --------------------------------------------------------------------------- statistics


# --------------------------------------------------------------------------- the agent process


@dataclass(frozen=True)
class ProcMark:
    t: float
    cpu_s: float  # utime + stime
    rss_kb: int
    hwm_kb: int  # peak RSS so far


def proc_mark(pid: int) -> ProcMark | None:
    try:
        # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)
    except (OSError, IndexError):
        return None
    rss, hwm = (int(status.get(k, "0 kB").split()[0]) for k in ("VmRSS", "VmHWM"))
    return ProcMark(time.monotonic(), (int(fields[11]) + int(fields[12])) / CLK_TCK, rss, hwm)


def supervisor_pid(lab: Lab, node: str) -> int | None:
    try:
        return int((lab.spec.role_dir(node) / "procs" / "agent.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def agent_rss_kb(lab: Lab, node: str) -> int | None:
    pid = lab.agent_pid(node)
    mark = proc_mark(pid) if pid is not None else None
    return None if mark is None else mark.rss_kb


def measure_idle(lab: Lab, seconds: float, log: Log) -> dict[str, Any]:
    """RSS and CPU of each agent (and its supervisor) over a window with no load and no fault."""
    time.sleep(2.0)  # past the start-up work of becoming ready
    pids = {(node, who): pid for node in ("alpha", "beta")
            for who, pid in (("agent", lab.agent_pid(node)), ("supervisor", supervisor_pid(lab, node)))
            if pid is not None}
    before = {k: m for k, pid in pids.items() if (m := proc_mark(pid)) is not None}
    log(f"idle pair: sampling agents for {seconds:g} s")
    time.sleep(seconds)
    out: dict[str, Any] = {"seconds": seconds, "loadavg_at_start": list(os.getloadavg())}
    for (node, who), a in before.items():
        b = proc_mark(pids[(node, who)])
        if b is None:
            out.setdefault(node, {})[who] = {"pid": pids[(node, who)], "error": "process gone during the window"}
            continue
        wall = b.t - a.t
        out.setdefault(node, {})[who] = {
            "pid": pids[(node, who)], "rss_kb": b.rss_kb, "peak_rss_kb": b.hwm_kb,
            "cpu_s": b.cpu_s - a.cpu_s, "wall_s": wall, "cpu_percent_of_core": 100 * (b.cpu_s - a.cpu_s) / wall,
        }
    return out


# --------------------------------------------------------------------------- one run


def inject(lab: Lab, kind: str) -> None:
    if kind == "host_crash":
        lab.crash("alpha")
    elif kind == "pg_crash":
        lab.kill_postgres("alpha")
    elif kind == "isolation":
        lab.link("alpha", "public", False)
        lab.link("alpha", "private", False)
    elif kind == "wal_disk_hang":
        if not lab.freeze_wal_disk("alpha"):
            raise LabError("alpha's WAL is not on a disk that can hang")
    else:
        raise ValueError(kind)


# Every kind ends with the service IP on beta: after a PostgreSQL crash alpha fences itself, and a
# fenced node whose replication link is up hands its services to the primary (decide.py,
# Reason.SERVICES_TO_PRIMARY), so calls no longer cross the network to their database.
EXPECTED_HOLDER = "beta"


def _iso_to_epoch(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def timeline(lab: Lab, node: str, t_fault_wall: float) -> list[dict[str, Any]]:
    """The node agent's own record, each entry with its time relative to the fault (wall clocks, one host)."""
    res = lab.standby(node, "history", "--json", "--limit", "1000", check=False)
    try:
        entries = json.loads(res.stdout) if res.returncode == 0 else []
    except ValueError:
        entries = []
    return [{"t_rel_s": round(_iso_to_epoch(e["time"]) - t_fault_wall, 3), **e} for e in entries]


def first_decision(entries: list[dict[str, Any]], action: str) -> float | None:
    return next((e["t_rel_s"] for e in entries
                 if e["event"] == "decision" and e.get("action") == action and e["t_rel_s"] >= 0), None)


@dataclass(frozen=True)
class Params:
    runs: int
    kinds: tuple[str, ...]
    durabilities: tuple[str, ...]
    rate: int
    after_s: float
    settle_timeout_s: float
    idle_s: float


def one_run(lab: Lab, kind: str, p: Params, tmp: Path) -> dict[str, Any]:
    holder = EXPECTED_HOLDER
    rec: dict[str, Any] = {"loadavg_at_start": list(os.getloadavg()), "error": None}
    # Per poll, who answered as primary on its local socket: unlike the probe, this sees an isolated alpha.
    polls: list[tuple[float, list[str]]] = []

    def settled() -> bool:
        now = primaries(lab)
        polls.append((time.monotonic(), now))
        # lab.snapshot() behind holders() is costly: only asked once the database is where it should be.
        return now == ["beta"] and holders(lab) == [holder]

    t0 = time.monotonic()
    start_pair(lab, before_agents=(lambda lb: lb.wal_on_loop_ext4("alpha", 1024)) if kind == "wal_disk_hang" else None)
    phases = rec["phases"] = {"ready_s": time.monotonic() - t0}
    with under_load(lab, tmp, p.rate) as run:
        t_fault_wall = time.time()
        run.t_fault = time.monotonic()
        inject(lab, kind)
        try:
            # A hung disk is judged only after its bound: the settle wait starts after it.
            bound_s = Timings().wal_flush_stuck_ms / 1000 if kind == "wal_disk_hang" else 0.0
            lab.wait_for(f"beta primary and {holder} holding the service IP", settled,
                         timeout_s=p.settle_timeout_s + bound_s, every_s=0.05)
            rec["settled_s"] = time.monotonic() - run.t_fault
        except LabError as e:
            rec["error"] = str(e)
            rec["settled_s"] = None
        time.sleep(p.after_s)
        t_stop = time.monotonic()
    t_fault = run.t_fault
    phases["load_stop_s"] = time.monotonic() - t_stop
    rec["t_fault_utc"] = datetime.fromtimestamp(t_fault_wall, UTC).isoformat(timespec="milliseconds")
    rec.update(load_figures(run, t_fault))
    t1 = time.monotonic()
    try:
        v = verify(lab, run, on="beta")
        rec["verdict"] = {
            "ok": v["ok"], "violations": v["violations"], "calls": v["calls"], "acked": v["acked"],
            "failed": v["failed"], "indeterminate": v["indeterminate"],
            "indeterminate_applied": len(v["indeterminate_applied"]),
            "indeterminate_not_applied": len(v["indeterminate_not_applied"]),
        }
        rec["lost"] = len(v["missing_acked"])
        rec["missing_acked"] = list(v["missing_acked"])
        rec["indeterminate"] = v["indeterminate"]
    except (ValueError, LabError, OSError) as e:
        rec["error"] = rec["error"] or f"verify failed: {e}"
        rec["verdict"], rec["lost"], rec["missing_acked"], rec["indeterminate"] = None, None, [], None
    phases["verify_s"] = time.monotonic() - t1
    probe = run.probe
    ts = [smp.t for smp in probe.samples] if probe else []
    after = [t for t in ts if t >= t_fault]
    # A probe stalled on an unreachable node takes no samples; "no dual sample" then means nothing.
    edges = [t_fault, *after, t_stop]
    rec["probe"] = {
        "samples": len(ts),
        "samples_after_fault": len(after),
        "last_sample_s": ts[-1] - t_fault if ts else None,
        "longest_blind_after_fault_s": max(b - a for a, b in itertools.pairwise(edges)),
        "dual": [{"t_rel_s": round(s.t - t_fault, 3), "writable": list(s.writable)} for s in (probe.dual if probe else [])],
    }
    rec["dual_samples"] = len(rec["probe"]["dual"])
    both = [round(t - t_fault, 3) for t, who in polls if len(who) > 1]
    rec["local_both_writable"] = {"polls": len(both), "first_s": both[0] if both else None,
                                  "last_s": both[-1] if both else None}
    t1 = time.monotonic()
    rec["timeline"] = {n: timeline(lab, n, t_fault_wall) for n in ("beta", "alpha")}
    phases["history_s"] = time.monotonic() - t1
    rec["beta_promote_decided_s"] = first_decision(rec["timeline"]["beta"], "promote")
    # A role change before the fault means the run measured something else (e.g. a stalled agent fencing).
    rec["role_changes_before_fault"] = [
        {"node": n, "t_rel_s": e["t_rel_s"], "action": e["action"], "reason": e.get("reason")}
        for n, entries in rec["timeline"].items() for e in entries
        if e["event"] == "decision" and e.get("action") in ROLE_CHANGES and e["t_rel_s"] < 0]
    rec["beta_agent_rss_kb_after"] = agent_rss_kb(lab, "beta")
    return rec


def load_figures(run: LoadRun, t_fault: float) -> dict[str, Any]:
    attempts = read_history(run.history)
    acks = [a.t_done for a in attempts if a.outcome.value == "ack"]
    gap = longest_ack_gap(acks)
    return {
        # Every kind ends with beta primary: service is restored when beta's database acknowledges.
        "first_ack_s": run.first_ack_after_fault("beta"),
        "acks_after_fault_by": dict(run.acks_after_fault_by()),
        "longest_ack_gap_s": gap.seconds if gap else None,
        "longest_ack_gap_from_s": gap.start - t_fault if gap else None,
        "attempts": len(attempts),
        "acks_before_fault": sum(1 for t in acks if t < t_fault),
        "acks_after_fault": sum(1 for t in acks if t >= t_fault),
    }


# --------------------------------------------------------------------------- output


def summarise(runs: list[dict[str, Any]], p: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in p.kinds:
        for dur in p.durabilities:
            rs = [r for r in runs if r["kind"] == kind and r["durability"] == dur]
            if not rs:
                continue

            def vals(key: str, rs: list[dict[str, Any]] = rs) -> list[float]:
                return [r[key] for r in rs if r.get(key) is not None]

            out[f"{kind}/{dur}"] = {
                "runs": len(rs),
                "runs_with_error": sum(1 for r in rs if r["error"]),
                "runs_failed_over_before_fault": sum(1 for r in rs if r.get("role_changes_before_fault")),
                "no_ack_after_fault": sum(1 for r in rs if r.get("first_ack_s") is None),
                "first_ack_s": distribution(vals("first_ack_s")),
                "longest_ack_gap_s": distribution(vals("longest_ack_gap_s")),
                "settled_s": distribution(vals("settled_s")),
                "beta_promote_decided_s": distribution(vals("beta_promote_decided_s")),
                "lost_total": sum(vals("lost")),
                "runs_with_loss": sum(1 for r in rs if r.get("lost")),
                "indeterminate_total": sum(vals("indeterminate")),
                "dual_samples_total": sum(vals("dual_samples")),
            }
    return out


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"standby {doc['standby']}, {doc['machine']['cores']} cores; {doc['parameters']['rate']} calls/s through "
        f"the service IP; a fresh pair per run",
        "first ack: fault -> first acknowledged call sent after it; gap: longest time between two acks; "
        "seconds, nearest-rank percentiles; early: runs with a role change before the fault",
        f"{'fault':<11} {'dur':<5} {'runs':>4} {'first ack p50':>13} {'p95':>6} {'max':>6} {'gap p50':>8} "
        f"{'max':>6} {'lost':>5} {'indet':>5} {'dual':>5} {'errors':>6} {'early':>5}",
    ]
    for key, s in doc["summary"].items():
        kind, dur = key.split("/")
        fa, gap = s["first_ack_s"], s["longest_ack_gap_s"]
        lines.append(
            f"{kind:<11} {dur:<5} {s['runs']:>4} {_f(fa['p50']):>13} {_f(fa['p95']):>6} {_f(fa['max']):>6} "
            f"{_f(gap['p50']):>8} {_f(gap['max']):>6} {s['lost_total']:>5} {s['indeterminate_total']:>5} "
            f"{s['dual_samples_total']:>5} {s['runs_with_error']:>6} {s['runs_failed_over_before_fault']:>5}"
        )
    idle = doc.get("idle")
    if idle:
        lines += ["", f"agents on an idle healthy pair, {idle['seconds']:g} s window (RSS now / peak; CPU % of one core):"]
        for node in ("alpha", "beta"):
            for who in ("agent", "supervisor"):
                m = idle.get(node, {}).get(who)
                if m is None:
                    continue
                if "error" in m:
                    lines.append(f"  {node:<5} {who:<10} {m['error']}")
                    continue
                lines.append(f"  {node:<5} {who:<10} RSS {m['rss_kb'] / 1024:6.1f} MiB / {m['peak_rss_kb'] / 1024:6.1f} MiB"
                             f"   CPU {m['cpu_percent_of_core']:5.2f} % ({1000 * m['cpu_s'] / m['wall_s']:.1f} ms/s)")
    after = [r["beta_agent_rss_kb_after"] for r in doc["runs"] if r.get("beta_agent_rss_kb_after")]
    if after:
        lines.append(f"  beta's agent after taking over: RSS up to {max(after) / 1024:.1f} MiB over {len(after)} runs")
    return "\n".join(lines)


def render_run(r: dict[str, Any]) -> str:
    return (f"first ack {_f(r.get('first_ack_s'))} s, gap {_f(r.get('longest_ack_gap_s'))} s, "
            f"settled {_f(r.get('settled_s'), '.2f')} s, lost {r.get('lost')}, indet {r.get('indeterminate')}, "
            f"dual {r.get('dual_samples')}" + (f"; ERROR {r['error']}" if r["error"] else "")
            + ("; role change BEFORE the fault" if r.get("role_changes_before_fault") else ""))


def render_timeline(r: dict[str, Any]) -> str:
    lines = []
    for node in ("beta", "alpha"):
        for e in r["timeline"].get(node, []):
            if e["t_rel_s"] < -1:
                continue  # before the fault: bootstrap and start-up
            what = e.get("action") or e["event"]
            lines.append(f"    {e['t_rel_s']:+8.3f}  {node:<5} {what:<18} {e.get('reason', '')}")
    return "\n".join(lines)


def noteworthy(r: dict[str, Any]) -> bool:
    return bool(r["error"] or r.get("dual_samples") or r.get("role_changes_before_fault")
                or (r["durability"] == "sync" and r.get("lost")))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=20, help="runs per fault kind and durability (default 20)")
    ap.add_argument("--quick", action="store_true", help="3 runs each, to try the script out")
    ap.add_argument("--kinds", nargs="+", choices=ALL_KINDS, default=list(KINDS))
    ap.add_argument("--durabilities", nargs="+", choices=DURABILITIES, default=list(DURABILITIES))
    ap.add_argument("--rate", type=int, default=100, help="calls/s through the service IP (default 100)")
    ap.add_argument("--after", type=float, default=3.0, help="seconds of load after the pair settled (default 3)")
    ap.add_argument("--settle-timeout", type=float, default=30.0,
                    help="give up on a run whose pair has not settled after this many seconds (default 30)")
    ap.add_argument("--idle-seconds", type=float, default=20.0,
                    help="window for the agents' idle CPU use; 0 skips the idle pair (default 20)")
    a = ap.parse_args(argv)
    runs = 3 if a.quick else a.runs
    if runs < 1 or a.rate < 1 or a.after < 0 or a.settle_timeout <= 0 or a.idle_seconds < 0:
        ap.error("need runs >= 1, rate >= 1, after >= 0, settle-timeout > 0, idle-seconds >= 0")
    return Params(runs, tuple(dict.fromkeys(a.kinds)), tuple(dict.fromkeys(a.durabilities)), a.rate, a.after,
                  a.settle_timeout, a.idle_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t0 = time.monotonic()
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    names = LabNames(NAME_PREFIX)
    doc: dict[str, Any] = {
        "benchmark": "failover",
        "started_utc": started.isoformat(timespec="seconds"),
        "standby": __version__,
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()), "other_labs_at_start": other_labs()},
        "parameters": asdict(p),
        "complete": False,
        "idle": None,
        "runs": [],
        "summary": {},
    }
    # Round-robin over the combinations, so an interrupted run has figures for each of them.
    plan = [(i, kind, dur) for i in range(p.runs) for dur in p.durabilities for kind in p.kinds]
    code = 0
    with sigterm_as_interrupt():
        try:
            if p.idle_s > 0:
                name = names.next()
                log(f"{name}: idle pair (sync)")
                with fresh_lab(LabSpec(name, durability="sync")) as lab:
                    start_pair(lab)
                    doc["idle"] = measure_idle(lab, p.idle_s, log)
                benchlib.write_results("failover", doc, stamp)
            for n, (i, kind, dur) in enumerate(plan, 1):
                name = names.next()
                log(f"run {n}/{len(plan)}: {kind} {dur} (#{i + 1}) on {name}")
                rec: dict[str, Any] = {"kind": kind, "durability": dur, "index": i, "lab": name}
                t_up = time.monotonic()
                try:
                    with fresh_lab(LabSpec(name, durability=dur)) as lab, \
                            tempfile.TemporaryDirectory(prefix="standby-fo-") as tmp:
                        rec["lab_up_s"] = time.monotonic() - t_up
                        rec.update(one_run(lab, kind, p, Path(tmp)))
                        t_down = time.monotonic()
                    rec["lab_down_s"] = time.monotonic() - t_down
                except RUN_FAILURES as e:  # one broken run must not end a two-hour measurement
                    rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                doc["runs"].append(rec)
                doc["summary"] = summarise(doc["runs"], p)
                benchlib.write_results("failover", doc, stamp)
                log(f"  {render_run(rec)}")
                if noteworthy(rec) and "timeline" in rec:
                    log("  timeline (s from the fault):\n" + render_timeline(rec))
        except KeyboardInterrupt:
            log("interrupted; results so far are written")
            code = 130
    doc["complete"] = code == 0
    doc["elapsed_s"] = round(time.monotonic() - t0, 1)
    path = benchlib.write_results("failover", doc, stamp)
    print(render(doc))
    print(f"\nwritten to {path} (and {path.with_name('failover-latest.json')})")
    return code


if __name__ == "__main__":
    sys.exit(main())
