#!/usr/bin/env python3
"""How long an old primary takes to rejoin: pg_rewind against a full clone, by database size.

For each size and each method, a fresh lab: the pair is built, a filler table on alpha grows the
database to the size, beta replays it all, alpha crashes (power loss) and beta takes over, a few
rows are written on beta (the small divergence), the cables are healed and alpha's agent started,
which fences it. Then alpha's crash recovery is finished (the same isolated single-user recovery
rejoin would run, timed separately so that both methods start from the same cleanly stopped
directory), and `standby rejoin --yes` on alpha is timed.

- rewind: nothing else; rejoin finds the fork and runs pg_rewind.
- clone:  first, every WAL segment of alpha older than the one holding its latest checkpoint is
          deleted, so pg_rewind cannot read back to the last common checkpoint; rejoin's own
          fallback then moves the directory aside and clones beta with pg_basebackup over the
          private network. Same command, same salvage step, same start and streaming check.

This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/rejoin.py [--sizes 100 1000] [--repeat 1] [--methods rewind clone] [--beta-rows 1000]

Needs root (namespaces) and PostgreSQL 15; set it up with `./dev setup`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import benchlib
from benchlib import RUN_FAILURES, LabNames, fresh_lab, other_labs, sigterm_as_interrupt
from standby import __version__
from standby.act import postgres as pgact
from standby.documents import AgentView
from standby.lab import Lab, LabSpec
from standby.lab.errors import LabError
from standby.lab.pair import primaries, start_pair
from standby.lab.topology import LAB_BASE
from standby.model import DbState

NAME_PREFIX = "sbrj"
METHODS = ("rewind", "clone")
ROW_PAD = 960  # characters of padding: with the tuple header, about 1 KiB per row, 8 rows per page
BATCH_ROWS = 10_000  # about 15 MiB (rows and index) a statement: a fine size step, no huge transaction
# "  pg_rewind done                                    1.23 s"
STEP_LINE = re.compile(r"^\s+(?P<name>\S.*?)\s+(?P<s>\d+\.\d\d) s$")
# md5 keeps the padding incompressible enough that TOAST does not shrink it.
FILLER_INSERT = ("INSERT INTO bench_filler SELECT i, repeat(md5(i::text), %s) "
                 "FROM generate_series(%s::bigint, %s::bigint) AS i")
METHOD_LINE = re.compile(r"rejoined by (?P<method>.+?); it streams from")


@dataclass(frozen=True)
class Params:
    sizes_mb: tuple[int, ...]
    methods: tuple[str, ...]
    beta_rows: int
    repeat: int
    durability: str
    timeout_s: float


def fenced_hearing_primary(st: AgentView | None) -> bool:
    return st is not None and st.state.fenced and st.peer_view is not None and st.peer_view.db is DbState.PRIMARY


def streaming_standby(st: AgentView | None) -> bool:
    return st is not None and st.postgres.state is DbState.STANDBY and st.postgres.streaming


def disk_free_mb() -> int:
    return shutil.disk_usage(LAB_BASE).free >> 20


# --------------------------------------------------------------------------- steps of one measurement


def fill(lab: Lab, size_mb: int) -> dict[str, Any]:
    """Grow alpha's softswitch database by a filler table of about ``size_mb`` MiB."""
    target = size_mb << 20
    t0 = time.monotonic()
    with lab.pg_connect("alpha", dbname="softswitch", autocommit=True) as c:
        c.execute("CREATE TABLE bench_filler (id bigint PRIMARY KEY, pad text NOT NULL)")
        next_id = 1
        while (c.execute("SELECT pg_total_relation_size('bench_filler')").fetchone() or [0])[0] < target:
            c.execute(FILLER_INSERT, (ROW_PAD // 32, next_id, next_id + BATCH_ROWS - 1))
            next_id += BATCH_ROWS
        table, db = c.execute(  # type: ignore[misc]
            "SELECT pg_total_relation_size('bench_filler'), pg_database_size('softswitch')").fetchone()
        cluster = (c.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone() or [0])[0]
    return {"fill_s": time.monotonic() - t0, "rows": next_id - 1, "table_mb": table / 2**20,
            "database_mb": db / 2**20, "cluster_mb": int(cluster) / 2**20}


def wait_replayed(lab: Lab, timeout_s: float) -> float:
    """Checkpoint and switch segment on alpha, then wait until beta has replayed up to there.

    The segment switch puts the last common checkpoint in an older segment than the fork, which
    the clone measurement relies on; it is done for both methods so that they start alike.
    """
    t0 = time.monotonic()
    with lab.pg_connect("alpha", autocommit=True) as c:
        c.execute("CHECKPOINT")
        c.execute("SELECT pg_switch_wal()")
        lsn = str((c.execute("SELECT pg_current_wal_lsn()").fetchone() or [""])[0])

    def replayed() -> bool:
        with lab.pg_connect("beta", autocommit=True) as b:
            row = b.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0", (lsn,)).fetchone()
        return bool(row and row[0])

    lab.wait_for(f"beta to replay up to {lsn}", replayed, timeout_s=timeout_s, every_s=0.2)
    return time.monotonic() - t0


def diverge(lab: Lab, beta_rows: int, timeout_s: float) -> dict[str, float]:
    """Crash alpha, let beta take over, write a little on beta, bring alpha back fenced."""
    t0 = time.monotonic()
    lab.crash("alpha")
    lab.wait_for("beta to take over", lambda: primaries(lab) == ["beta"], timeout_s=timeout_s, every_s=0.1)
    failover_s = time.monotonic() - t0
    with lab.pg_connect("beta", dbname="softswitch", autocommit=True) as c:
        c.execute(FILLER_INSERT, (ROW_PAD // 32, -beta_rows, -1))  # negative ids: never clash with alpha's
    lab.heal()
    t1 = time.monotonic()
    lab.start_agent("alpha")
    lab.wait_for("alpha fenced and hearing beta as primary",
                 lambda: fenced_hearing_primary(lab.agent_status("alpha")), timeout_s=timeout_s, every_s=0.1)
    return {"failover_s": failover_s, "alpha_fenced_s": time.monotonic() - t1}


def crash_recovery(lab: Lab) -> float:
    cfg = lab.config()
    if pgact.running_pid(cfg.pg("alpha").data_dir) is not None:
        raise LabError("a server runs on alpha's data directory after the fence; expected it stopped")
    t0 = time.monotonic()
    pgact.ensure_clean_shutdown(cfg, "alpha")
    return time.monotonic() - t0


def remove_old_wal(lab: Lab) -> dict[str, Any]:
    """Delete alpha's segments older than its latest checkpoint's: the common checkpoint's WAL goes."""
    cfg = lab.config()
    keep_from = pgact.control_data(cfg, "alpha")["Latest checkpoint's REDO WAL file"]
    wal = cfg.pg("alpha").data_dir / "pg_wal"
    # Recycled segments carry future names, so "the newest file" is not the current one: compare names.
    old = sorted(p for p in wal.iterdir() if len(p.name) == 24 and p.name < keep_from)
    for seg in old:
        seg.unlink()
    return {"redo_wal_file": keep_from, "segments_removed": len(old), "first_removed": old[0].name if old else None,
            "last_removed": old[-1].name if old else None}


def wal_mb(lab: Lab, node: str) -> float:
    wal = lab.node(node).pgdata / "pg_wal"
    return sum(p.stat().st_size for p in wal.iterdir() if p.is_file()) / 2**20


def parse_rejoin(stdout: str) -> tuple[str | None, list[dict[str, Any]]]:
    m = METHOD_LINE.search(stdout)
    steps = [{"step": s["name"], "s": float(s["s"])} for ln in stdout.splitlines() if (s := STEP_LINE.match(ln))]
    return (m["method"] if m else None), steps


def one_measurement(lab: Lab, size_mb: int, method: str, p: Params, log: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"size_mb": size_mb, "method": method, "loadavg_at_start": list(os.getloadavg()),
                           "other_labs_at_start": other_labs(), "error": None}
    t0 = time.monotonic()
    start_pair(lab)
    rec["pair_ready_s"] = time.monotonic() - t0
    rec["fill"] = fill(lab, size_mb)
    log(f"  filled: {rec['fill']['table_mb']:.0f} MiB table, database {rec['fill']['database_mb']:.0f} MiB "
        f"in {rec['fill']['fill_s']:.1f} s")
    rec["replayed_s"] = wait_replayed(lab, p.timeout_s * 10)
    rec.update(diverge(lab, p.beta_rows, p.timeout_s))
    rec["crash_recovery_s"] = crash_recovery(lab)
    if method == "clone":
        rec["wal_removed"] = remove_old_wal(lab)
    rec["disk_free_mb_before"] = disk_free_mb()
    # pg_rewind copies the source's WAL segments in full, whatever the divergence: record how much there is.
    rec["pg_wal_mb_before"] = {n: wal_mb(lab, n) for n in ("alpha", "beta")}
    rec["loadavg_at_rejoin"] = list(os.getloadavg())
    log(f"  rejoin ({method}) on alpha, load average {rec['loadavg_at_rejoin'][0]:.2f}")
    t1 = time.monotonic()
    res = lab.standby("alpha", "rejoin", "--yes", check=False)
    rec["rejoin_s"] = time.monotonic() - t1
    rec["disk_free_mb_after"] = disk_free_mb()
    rec["returncode"] = res.returncode
    rec["reported_method"], rec["steps"] = parse_rejoin(res.stdout)
    rec["stdout"], rec["stderr"] = res.stdout, res.stderr
    if res.returncode != 0:
        rec["error"] = f"rejoin exited {res.returncode}: {' '.join(res.stderr.split())[-300:]}"
    elif rec["reported_method"] != method:
        rec["error"] = f"rejoin reported {rec['reported_method']!r}, expected {method!r}"
    t2 = time.monotonic()
    try:
        lab.wait_for("alpha streaming as the agent sees it", lambda: streaming_standby(lab.agent_status("alpha")),
                     timeout_s=p.timeout_s, every_s=0.1)
        rec["agent_sees_streaming_after_s"] = time.monotonic() - t2
    except LabError as e:
        rec["error"] = rec["error"] or str(e)
    # The agent's own account of the rejoin (e.g. why pg_rewind failed), which the command does not print.
    hist = lab.standby("alpha", "history", "--json", "--limit", "200", check=False)
    try:
        entries = json.loads(hist.stdout) if hist.returncode == 0 else []
    except ValueError:
        entries = []
    rec["agent_rejoin_events"] = [e for e in entries if e.get("event") in ("rejoin_step", "rejoined")]
    with lab.pg_connect("alpha", dbname="softswitch") as c:
        rec["alpha_rows_after"] = (c.execute("SELECT count(*) FROM bench_filler").fetchone() or [0])[0]
    rec["loadavg_at_end"] = list(os.getloadavg())
    return rec


# --------------------------------------------------------------------------- output


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: each method's rejoin times (runs without an error), their medians and the ratio of medians."""
    out: dict[str, Any] = {}
    for size in dict.fromkeys(r["size_mb"] for r in runs):
        ok = [r for r in runs if r["size_mb"] == size and not r["error"] and r.get("rejoin_s") is not None]
        times = {m: [r["rejoin_s"] for r in ok if r["method"] == m] for m in METHODS}
        rw, cl = median(times["rewind"]), median(times["clone"])
        out[str(size)] = {"rewind_s": rw, "clone_s": cl, "clone_over_rewind": cl / rw if rw and cl else None,
                          "rewind_s_all": times["rewind"], "clone_s_all": times["clone"],
                          "runs_with_error": sum(1 for r in runs if r["size_mb"] == size and r["error"]),
                          "database_mb": median([r["fill"]["database_mb"] for r in ok])}
    return out


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def render(doc: dict[str, Any]) -> str:
    lines = [f"standby {doc['standby']}, {doc['machine']['cores']} cores, load average at start "
             f"{' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_start'])}; "
             f"{doc['parameters']['durability']} pair, {doc['parameters']['beta_rows']} rows written on beta after "
             "the failover; rejoin time = the `standby rejoin --yes` command, crash recovery done before it",
             f"{'size':>6} {'database':>9} {'method':<7} {'rejoin s':>9} {'crash rec s':>11} {'load1':>5}  error"]
    for r in doc["runs"]:
        db = r.get("fill", {}).get("database_mb")
        lines.append(f"{r['size_mb']:>4}MB {_f(db, '.0f'):>6}MiB {r['method']:<7} {_f(r.get('rejoin_s')):>9} "
                     f"{_f(r.get('crash_recovery_s')):>11} {(r.get('loadavg_at_rejoin') or [0])[0]:5.2f}  "
                     f"{r.get('error') or ''}")
    lines.append("")
    for r in doc["runs"]:
        if r.get("steps"):
            lines.append(f"{r['size_mb']} MB, {r['method']} (reported: {r.get('reported_method')}):")
            lines += [f"    {s['step'][:76]:<76} {s['s']:7.2f} s" for s in r["steps"]]
    lines.append("")
    lines.append("median over the runs without an error (all values in brackets):")
    for size, s in doc["summary"].items():
        lines.append(f"{size} MB (database {_f(s['database_mb'], '.0f')} MiB): "
                     f"rewind {_f(s['rewind_s'])} s [{', '.join(_f(v) for v in s['rewind_s_all'])}], "
                     f"clone {_f(s['clone_s'])} s [{', '.join(_f(v) for v in s['clone_s_all'])}], "
                     f"clone/rewind {_f(s['clone_over_rewind'])}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], metavar="MB",
                    help="database sizes in MiB of filler (default 100 1000)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--beta-rows", type=int, default=1000,
                    help="rows (about 1 KiB each) written on beta after the failover (default 1000)")
    ap.add_argument("--repeat", type=int, default=1, help="measurements of each size and method (default 1)")
    ap.add_argument("--durability", choices=("sync", "async"), default="sync")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each state change (default 30)")
    a = ap.parse_args(argv)
    if any(s < 1 for s in a.sizes) or a.beta_rows < 1 or a.repeat < 1 or a.timeout <= 0:
        ap.error("need sizes >= 1, beta-rows >= 1, repeat >= 1, timeout > 0")
    return Params(tuple(dict.fromkeys(a.sizes)), tuple(dict.fromkeys(a.methods)), a.beta_rows, a.repeat,
                  a.durability, a.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t_start = time.monotonic()
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    doc: dict[str, Any] = {
        "benchmark": "rejoin", "started_utc": started.isoformat(timespec="seconds"), "standby": __version__,
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()),
                    "other_labs_at_start": other_labs(), "disk_free_mb_at_start": disk_free_mb()},
        "parameters": asdict(p), "complete": False, "runs": [], "summary": {},
    }
    code = 0
    with sigterm_as_interrupt():
        try:
            # Methods alternate within a size, so a change in the machine's load hits both alike.
            plan = [(size, i, method) for size in p.sizes_mb for i in range(p.repeat) for method in p.methods]
            for n, (size, i, method) in enumerate(plan, 1):
                name = LabNames(NAME_PREFIX).next()
                log(f"{n}/{len(plan)}: {size} MB, {method} (#{i + 1}), on {name}")
                rec: dict[str, Any] = {"size_mb": size, "method": method, "index": i, "lab": name}
                try:
                    with fresh_lab(LabSpec(name, durability=p.durability)) as lab:
                        rec.update(one_measurement(lab, size, method, p, log))
                except RUN_FAILURES as e:  # one broken measurement must not lose the others
                    rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                doc["runs"].append(rec)
                doc["summary"] = summarise(doc["runs"])
                benchlib.write_results("rejoin", doc, stamp)
                log(f"  rejoin {_f(rec.get('rejoin_s'))} s ({rec.get('reported_method')})"
                    + (f"; ERROR {rec['error']}" if rec["error"] else ""))
        except KeyboardInterrupt:
            log("interrupted; results so far are written")
            code = 130
    doc["complete"] = code == 0
    doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
    path = benchlib.write_results("rejoin", doc, stamp)
    print(render(doc))
    print(f"\nwritten to {path} (and {path.with_name('rejoin-latest.json')})")
    return code


if __name__ == "__main__":
    sys.exit(main())
