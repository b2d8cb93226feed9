#!/usr/bin/env python3
"""What a failover or a switchover costs a real softswitch's accounting: Kamailio on both nodes, SIPp calls.

Each event runs on a fresh lab (standby.lab.sipevent): Kamailio warm on both nodes behind the service IP,
SIPp placing calls at a set rate (each held --hold-ms) through it to a SIPp callee, then alpha's host
crashed or `standby switchover` run while calls are in progress, and every call counted in the new
primary's database. Per event: SIP calls failed (SIPp's count), INVITE accounting records missing, call
ends missing or without their start (the dialog CDR), records twice; and of the calls SIPp completed, those
without their INVITE record or their CDR (a failed call may rightly have none; a completed one went unbilled).

Set-ups: `spool+dmq` (Kamailio writes its accounting to local files that `standby ship` puts into the
primary; dialogs shared over DMQ) and `direct` (Kamailio INSERTs into PostgreSQL through the service
IP, no dialog sharing: the issue's set-up).

    .venv/bin/python bench/softswitch.py [--events 2] [--rates 30 200] [--durabilities sync async]
        [--kinds host_crash switchover] [--setups spool+dmq direct spool direct+dmq] [--ring-ms 2000]

Needs root, PostgreSQL 15, kamailio, kamailio-postgres-modules and sip-tester (`./dev setup`).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchlib
from benchlib import RUN_FAILURES, LabNames, sigterm_as_interrupt
from standby.lab import LabSpec, sip
from standby.lab.sipevent import Event, Load, build, run_event

# The two that matter (both, neither) by default; each alone on request, to tell what each one buys.
SETUPS = {"spool+dmq": sip.Setup(sip.Accounting.SPOOL, dmq=True), "direct": sip.Setup(sip.Accounting.DIRECT, dmq=False),
          "spool": sip.Setup(sip.Accounting.SPOOL, dmq=False), "direct+dmq": sip.Setup(sip.Accounting.DIRECT, dmq=True)}
DEFAULT_SETUPS = ["spool+dmq", "direct"]
COUNTS = ("failed", "invites_missing", "cdrs_missing", "ends_without_start", "duplicates",
          "completed_invites_missing", "completed_cdrs_missing", "answer_lost_with_crash")


@dataclass(frozen=True)
class Params:
    events: int = 1
    rates: list[float] = field(default_factory=lambda: [30.0])
    durabilities: list[str] = field(default_factory=lambda: ["sync"])
    kinds: list[str] = field(default_factory=lambda: ["host_crash", "switchover"])
    setups: list[str] = field(default_factory=lambda: list(DEFAULT_SETUPS))
    seconds: float = 10.0  # of calls per event
    hold_ms: int = 1500
    keep_logs: str | None = None  # a directory for the logs of events with incomplete accounting
    ring_ms: int = 0  # the callee's 180 Ringing before its answer (0: it answers at once)


def one_event(name: str, setup_name: str, durability: str, kind: str, rate: float, p: Params,
              log: benchlib.Log) -> dict[str, Any]:
    setup = SETUPS[setup_name]
    lab = build(LabSpec(name, durability=durability), setup, log, p.ring_ms)
    try:
        r = run_event(lab, setup, Event(kind), Load(rate, int(rate * p.seconds), p.hold_ms), log,
                      Path(p.keep_logs) if p.keep_logs else None)
    finally:
        for node in ("alpha", "beta"):
            try:
                lab.stop_agent(node)
            except RUN_FAILURES:
                pass
        lab.down()
    return {"setup": setup_name, **asdict(r)}


def summarise(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    key = lambda e: (e["setup"], e["durability"], e["event"], e["rate"])  # noqa: E731
    for (setup, durability, kind, rate), group in itertools.groupby(sorted(events, key=key), key=key):
        g = list(group)
        rows.append({"setup": setup, "durability": durability, "event": kind, "rate": rate, "events": len(g),
                     "calls": sum(e["calls"] for e in g),
                     **{c: [e[c] for e in g] for c in COUNTS}})
    return rows


def render(doc: dict[str, Any]) -> str:
    lines = ["", "per event: calls failed / INVITE records missing / call ends missing their start / "
             "of those accounted without a start / records twice / of the completed calls: INVITE records missing, "
             "CDRs missing / calls failed or incomplete because the callee answered the crashed node"]
    for r in doc["summary"]:
        figures = " ".join(f"{c}={r[c]}" for c in COUNTS)
        lines.append(f"  {r['setup']:10} {r['durability']:5} {r['event']:10} {r['rate']:g}/s x{r['events']}: {figures}")
    for f in doc["failures"]:
        lines.append(f"  FAILED {f['setup']} {f['durability']} {f['event']} {f['rate']:g}/s: {f['error']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1, help="events of each kind per combination")
    ap.add_argument("--rates", type=float, nargs="+", default=[30.0])
    ap.add_argument("--durabilities", nargs="+", choices=["sync", "async"], default=["sync"])
    ap.add_argument("--kinds", nargs="+", choices=[e.value for e in Event], default=[e.value for e in Event])
    ap.add_argument("--setups", nargs="+", choices=list(SETUPS), default=DEFAULT_SETUPS)
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of calls per event")
    ap.add_argument("--hold-ms", type=int, default=1500)
    ap.add_argument("--keep-logs", metavar="DIR", help="copy the lab's logs here when an event's accounting is incomplete")
    ap.add_argument("--ring-ms", type=int, default=0,
                    help="the callee rings this long (180 Ringing) before it answers; 0 (default): it answers at once")
    a = ap.parse_args()
    if a.ring_ms < 0:
        ap.error("--ring-ms: a ring time is 0 or more milliseconds")
    p = Params(a.events, a.rates, a.durabilities, a.kinds, a.setups, a.seconds, a.hold_ms, a.keep_logs, a.ring_ms)
    doc, stamp, log = benchlib.begin("softswitch", p, events=[], failures=[])
    t_start = time.monotonic()
    names = LabNames("sbsip")
    combos = list(itertools.product(p.setups, p.durabilities, p.kinds, p.rates, range(p.events)))
    with sigterm_as_interrupt():
        try:
            for setup_name, durability, kind, rate, _ in combos:
                try:
                    doc["events"].append(one_event(names.next(), setup_name, durability, kind, rate, p, log))
                except RUN_FAILURES as e:
                    log(f"{setup_name} {durability} {kind} {rate:g}/s failed: {e}")
                    doc["failures"].append({"setup": setup_name, "durability": durability, "event": kind,
                                            "rate": rate, "error": str(e)})
            doc["complete"] = True
        except KeyboardInterrupt:
            log("interrupted; the events so far are written")
    doc["summary"] = summarise(doc["events"])
    benchlib.end("softswitch", doc, stamp, t_start, render)


if __name__ == "__main__":
    main()
