#!/usr/bin/env python3
"""What the agent itself costs a node: memory, CPU, heartbeats and decision steps, idle and under load.

One lab, one pair (sync). For each phase (idle: the pair alone; load: the sample load through the service
IP), per node: the agent's resident memory (VmRSS, sampled every second: mean and max) and its
supervisor's (`agent --respawn`), the agent's CPU as a share of one core, the heartbeats it received per
second (its peer's, both networks), its decision steps per second, and the decision step's own duration
(p50 / p99 / max over the last steps, `standby_decision_step_seconds` from its /metrics); in the JSON
also the CPU split into user and system time, the interpreter's garbage collections per second by
generation (`python_gc_collections_total`), the agent's thread count and the load average at each phase's
start (the machine is shared: compare quiet phases only), and the agent's wake-ups per second (its threads'
voluntary context switches). Beside the agents, for the same windows, the floor: a process that does
nothing but wake an asyncio loop once per heartbeat interval (FLOOR). Before the agents start and after the
load, what the machine charges that hour for work in bursts one interval apart (`calibration`,
benchlib.calibrate): on the virtual machine these ran on, a memory page read after a 200 ms sleep cost
20-30 us against 0.1 us warm, so the agent's CPU there is mostly the pages its work touches, and it moved
by a factor of five between hours with the code unchanged. Compare CPU figures only between runs whose
calibrations agree; the wake-ups do not depend on it.

This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/agent.py [--seconds 40] [--rate 100] [--settle 5] [--heartbeat-ms 200]

`--heartbeat-ms` sets `timings.heartbeat_interval_ms` in the lab's configuration before the agents start
(the other timings keep their defaults, which must accept it); without it the agents run at the default.

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import benchlib
from standby import tls
from standby.apiclient import auth_header
from standby.config import Config, Timings, read_secret
from standby.lab import Lab, netns
from standby.lab.pair import start_pair, under_load

NAME_PREFIX = "sbag"
NODES = ("alpha", "beta")


@dataclass(frozen=True)
class Params:
    seconds: float
    rate: int
    settle_s: float
    heartbeat_ms: int | None = None


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_split_s(pid: int | None) -> tuple[float, float] | None:
    """The agent's user and system CPU seconds so far (where its CPU goes: Python or the kernel's calls)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) / benchlib.CLK_TCK, int(fields[12]) / benchlib.CLK_TCK


def threads(pid: int | None) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task")) if pid is not None else None
    except OSError:
        return None


# A process that does nothing but wake an asyncio loop once per heartbeat interval: what any such process
# costs on this machine at that moment (on this virtual machine, 1-5 % of a core at 200 ms, from hour to hour).
FLOOR = """
import asyncio, sys
async def main(interval):
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval - loop.time() % interval)
asyncio.run(main(float(sys.argv[1])))
"""


@contextlib.contextmanager
def floor_process(interval_s: float) -> Iterator[int]:
    """The floor's process for the length of the block (killed and reaped however the block ends)."""
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, str(interval_s)])
    try:
        time.sleep(1.0)  # its imports are not its cost at rest
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def wakeups(pid: int | None) -> int | None:
    """The agent's threads' voluntary context switches so far: each is a thread that slept and was woken
    (a timer, a packet, a hand-off between threads). Unlike CPU %, which this shared machine's speed moves
    by a factor from hour to hour, the count says how much waking the agent's design asks for."""
    if pid is None:
        return None
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return total


def supervisor_pid(agent_pid: int | None) -> int | None:
    if agent_pid is None:
        return None
    try:
        return int(Path(f"/proc/{agent_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _fetch_metrics(cfg: Config, host: str) -> str:
    headers = {}
    if cfg.api.token_for_status and cfg.api.token_file is not None:
        headers = auth_header(cfg, host, read_secret(cfg.api.token_file, "api.token_file"))
    req = urllib.request.Request(tls.api_url(cfg, host, "/metrics"), headers=headers)
    with urllib.request.urlopen(req, timeout=3.0, context=tls.client_context(cfg)) as r:
        return r.read().decode()  # type: ignore[no-any-return]


def metrics(lab: Lab, node: str) -> dict[str, float]:
    """The few series this measures, from the agent's /metrics (in its namespace, at its public address)."""
    text = netns.call_in(lab.netns(node), _fetch_metrics, lab.config(), str(lab.node(node).public.ip))
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        for series in ("standby_heartbeats_accepted_total", "standby_decisions_total"):
            if name == series:
                out[series] = float(value)
        if name.startswith("standby_decision_step_seconds{"):
            out[name.split('quantile="', 1)[1].split('"', 1)[0]] = float(value)
        if name.startswith("python_gc_collections_total{"):  # the interpreter's collections, by generation
            out["gc" + name.split('generation="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def measure(lab: Lab, seconds: float, floor_pid: int) -> dict[str, Any]:
    pids = {n: lab.agent_pid(n) for n in NODES}
    sups = {n: supervisor_pid(p) for n, p in pids.items()}
    split0 = {n: cpu_split_s(p) for n, p in pids.items()}
    floor0 = cpu_split_s(floor_pid)
    wake0 = {n: wakeups(p) for n, p in pids.items()}
    load = list(os.getloadavg())
    m0 = {n: metrics(lab, n) for n in NODES}
    t0 = time.monotonic()
    rss: dict[str, list[float]] = {n: [] for n in NODES}
    sup_rss: dict[str, list[float]] = {n: [] for n in NODES}
    while time.monotonic() - t0 < seconds:
        for n in NODES:
            if (r := rss_mb(pids[n])) is not None:
                rss[n].append(r)
            if (r := rss_mb(sups[n])) is not None:
                sup_rss[n].append(r)
        time.sleep(1.0)
    wall = time.monotonic() - t0
    floor1 = cpu_split_s(floor_pid)
    floor = _cpu_pct(floor0, floor1, wall)
    out: dict[str, Any] = {}
    for n in NODES:
        pid = pids[n]
        m1, s0, s1, w1 = metrics(lab, n), split0[n], cpu_split_s(pid), wakeups(pid)

        def per_s(series: str, n: str = n, m1: dict[str, float] = m1) -> float | None:
            a, b = m0[n].get(series), m1.get(series)
            return None if a is None or b is None else round((b - a) / wall, 2)

        out[n] = {
            "agent_pid": pids[n], "supervisor_pid": sups[n], "wall_s": round(wall, 1),
            "agent_rss_mb": _mean_max(rss[n]), "supervisor_rss_mb": _mean_max(sup_rss[n]),
            "agent_cpu_pct_of_one_core": _cpu_pct(s0, s1, wall),
            "agent_cpu_user_system_pct": None if s0 is None or s1 is None else
            [round(100 * (s1[i] - s0[i]) / wall, 2) for i in (0, 1)],
            "floor_cpu_pct_of_one_core": floor,  # the same window's bare loop (FLOOR), the same for both nodes
            "agent_threads": threads(pid), "loadavg_at_phase_start": load,
            "agent_wakeups_per_s": None if w1 is None or wake0[n] is None else round((w1 - wake0[n]) / wall, 1),
            "heartbeats_received_per_s": per_s("standby_heartbeats_accepted_total"),
            "decisions_per_s": per_s("standby_decisions_total"),
            "step_ms": {q: round(1000 * m1[q], 2) for q in ("0.5", "0.99", "1") if q in m1},
            "gc_collections_per_s": {g: per_s(f"gc{g}") for g in ("0", "1", "2")},
        }
    return out


def _cpu_pct(before: tuple[float, float] | None, after: tuple[float, float] | None, wall: float) -> float | None:
    """User + system CPU between two ``cpu_split_s`` readings, as a share of one core over ``wall`` seconds."""
    return None if before is None or after is None else round(100 * (sum(after) - sum(before)) / wall, 2)


def _mean_max(values: list[float]) -> dict[str, float | None]:
    return {"mean": round(sum(values) / len(values), 1) if values else None,
            "max": round(max(values), 1) if values else None}


def _f(v: Any) -> str:
    return "-" if v is None else str(v)


def render(doc: dict[str, Any]) -> str:
    lines = [f"standby {doc['standby']}, {doc['machine']['cores']} cores, load average at start "
             f"{' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_start'])}; heartbeat interval "
             f"{doc['heartbeat_interval_ms']} ms; load phase {doc['parameters']['rate']} calls/s",
             benchlib.calibration_line(doc, "one interval"),
             f"{'phase':<6} {'node':<6} {'agent RSS MB':>13} {'superv. MB':>10} {'CPU %core':>9} {'hb/s':>6} "
             f"{'steps/s':>7} {'step p50/p99/max ms':>22} {'user/sys %':>11} {'wake/s':>6} {'floor %':>7} {'load':>5}"]
    for phase, nodes in doc["phases"].items():
        for n, r in nodes.items():
            s = r["step_ms"]
            lines.append(f"{phase:<6} {n:<6} {_f(r['agent_rss_mb']['mean']):>6}/{_f(r['agent_rss_mb']['max']):>6} "
                         f"{_f(r['supervisor_rss_mb']['max']):>10} {_f(r['agent_cpu_pct_of_one_core']):>9} "
                         f"{_f(r['heartbeats_received_per_s']):>6} {_f(r['decisions_per_s']):>7} "
                         f"{_f(s.get('0.5')):>7}/{_f(s.get('0.99')):>7}/{_f(s.get('1')):>6} "
                         f"{'/'.join(map(_f, r.get('agent_cpu_user_system_pct') or ['-'])):>11} "
                         f"{_f(r.get('agent_wakeups_per_s')):>6} {_f(r.get('floor_cpu_pct_of_one_core')):>7} "
                         f"{_f(round(r['loadavg_at_phase_start'][0], 2) if r.get('loadavg_at_phase_start') else None):>5}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each phase (default 40)")
    ap.add_argument("--rate", type=int, default=100, help="calls/s in the load phase (default 100)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before each phase (default 5)")
    ap.add_argument("--heartbeat-ms", type=int, default=None,
                    help="timings.heartbeat_interval_ms for the agents (default: the product's default)")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.rate < 1 or a.settle < 0:
        ap.error("need seconds > 0, rate >= 1, settle >= 0")
    if a.heartbeat_ms is not None:
        try:
            Timings(heartbeat_interval_ms=a.heartbeat_ms)
        except ValidationError as e:
            ap.error(f"--heartbeat-ms {a.heartbeat_ms}: {e.errors()[0]['msg']}")
    return Params(a.seconds, a.rate, a.settle, a.heartbeat_ms)


def set_heartbeat(lab: Lab, ms: int) -> None:
    """Give the lab's configuration (written by `lab up`, read at bootstrap and by each agent) the interval."""
    text = lab.config_path.read_text()
    if "[timings]" in text:
        raise SystemExit(f"{lab.config_path} already has a [timings] table; not measuring on a changed lab")
    lab.config_path.write_text(text + f"\n[timings]\nheartbeat_interval_ms = {ms}\n")
    if lab.config().timings.heartbeat_interval_ms != ms:
        raise SystemExit(f"{lab.config_path}: the interval did not take ({lab.config().timings.heartbeat_interval_ms} ms)")


def measure_phases(lab: Lab, doc: dict[str, Any], log: benchlib.Log, save: Callable[[], None], p: Params) -> None:
    if p.heartbeat_ms is not None:
        set_heartbeat(lab, p.heartbeat_ms)
    doc["heartbeat_interval_ms"] = ms = lab.config().timings.heartbeat_interval_ms
    doc["calibration"] = {"before": benchlib.calibrate(ms / 1000)}
    start_pair(lab)
    with floor_process(ms / 1000) as floor:
        time.sleep(p.settle_s)
        log(f"idle for {p.seconds:g} s")
        doc["phases"]["idle"] = measure(lab, p.seconds, floor)
        save()
        with tempfile.TemporaryDirectory(prefix="standby-ag-") as tmp, under_load(lab, Path(tmp), p.rate):
            time.sleep(p.settle_s)
            log(f"under load for {p.seconds:g} s")
            doc["phases"]["load"] = measure(lab, p.seconds, floor)
    doc["calibration"]["after"] = benchlib.calibrate(ms / 1000)
    log("tearing down")


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    return benchlib.run_on_one_lab("agent", p, NAME_PREFIX, lambda lab, doc, log, save: measure_phases(lab, doc, log, save, p),
                                   render)


if __name__ == "__main__":
    sys.exit(main())
