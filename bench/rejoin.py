#!/usr/bin/env python3
"""How long an old primary takes to rejoin: pg_rewind against a full clone, by database size and divergence.

For each size, one lab with its private link shaped to a real link's rate (1 Gbit/s unless
--link-mbit says otherwise): the pair is built, a filler table on the primary grows the database to
the size, once. Then rounds, the roles alternating: the standby replays everything and makes its
restartpoint (a steady state: the fill packs hours of writes into minutes; --no-restartpoint skips it), the
primary crashes (power loss) and the standby takes over, the new primary writes the round's rows (the
divergence), the cables are healed and the old primary's agent started, which fences it. Then its
crash recovery is finished (the same isolated single-user recovery rejoin would run, timed apart so
that both methods start from the same cleanly stopped directory), and `standby rejoin --yes` on it is
timed, until its agent sees it stream; it is then the standby of the next round.

- rewind: nothing else; rejoin finds the fork and runs pg_rewind.
- clone:  first, every WAL segment of the old primary older than the one holding its latest
          checkpoint is deleted, so pg_rewind cannot read back to the last common checkpoint;
          rejoin's own fallback then moves the directory aside and clones with pg_basebackup over
          the private network. Same command, same salvage step, same start and streaming check.
          Measured at the smallest divergence only (a clone copies the whole database whatever the
          divergence).

Each round also records what the new primary's pg_wal holds (pg_rewind copies all of it) and the
rejoin's own steps. This is a measurement: it prints and records figures and judges none of them.

    .venv/bin/python bench/rejoin.py [--sizes 1024 10240] [--diverge 1000 100000 1000000]
                                     [--methods rewind clone] [--link-mbit 1000] [--repeat 1]

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

import psycopg

import benchlib
from benchlib import RUN_FAILURES, LabNames, fresh_lab, other_labs, sigterm_as_interrupt
from standby import __version__
from standby.act import postgres as pgact
from standby.documents import AgentView
from standby.lab import Lab, LabSpec
from standby.lab.errors import LabError
from standby.lab.pair import primaries, start_pair
from standby.lab.topology import LAB_BASE, PRIVATE_MBIT
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
SEGS_PER_XLOGID = 0x100  # 16 MiB segments


@dataclass(frozen=True)
class Params:
    sizes_mb: tuple[int, ...]
    methods: tuple[str, ...]
    diverge_rows: tuple[int, ...]
    repeat: int
    durability: str
    link_mbit: int
    timeout_s: float
    restartpoint: bool = True  # the standby's restartpoint before each crash (steady state)


def fenced_hearing_primary(st: AgentView | None) -> bool:
    return st is not None and st.state.fenced and st.peer_view is not None and st.peer_view.db is DbState.PRIMARY


def eligible_standby(st: AgentView | None) -> bool:
    """Streaming, and its agent would take over: the next round may crash the primary."""
    return (st is not None and st.postgres.state is DbState.STANDBY and st.postgres.streaming
            and st.state.eligible)


def disk_free_mb() -> int:
    return shutil.disk_usage(LAB_BASE).free >> 20


def other(node: str) -> str:
    return "beta" if node == "alpha" else "alpha"


# --------------------------------------------------------------------------- steps of one measurement


def insert_rows(lab: Lab, node: str, first: int, last: int) -> None:
    with lab.pg_connect(node, dbname="softswitch", autocommit=True) as c:
        for lo in range(first, last + 1, BATCH_ROWS):
            c.execute(FILLER_INSERT, (ROW_PAD // 32, lo, min(lo + BATCH_ROWS - 1, last)))


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


def wait_replayed(lab: Lab, primary: str, timeout_s: float, restartpoint: bool = True) -> float:
    """Checkpoint and switch segment on the primary, then wait until the standby has replayed up to there.

    The segment switch puts the last common checkpoint in an older segment than the fork, which
    the clone measurement relies on; it is done for both methods so that they start alike.
    """
    t0 = time.monotonic()
    with lab.pg_connect(primary, autocommit=True) as c:
        c.execute("CHECKPOINT")
        c.execute("SELECT pg_switch_wal()")
        lsn = str((c.execute("SELECT pg_current_wal_lsn()").fetchone() or [""])[0])

    def replayed() -> bool:
        with lab.pg_connect(other(primary), autocommit=True) as b:
            row = b.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0", (lsn,)).fetchone()
        return bool(row and row[0])

    lab.wait_for(f"{other(primary)} to replay up to {lsn}", replayed, timeout_s=timeout_s, every_s=0.2)
    # The standby's restartpoint at that checkpoint, as its checkpointer makes one every checkpoint_timeout:
    # the fill compressed hours of writes into minutes, and without it the standby's last restartpoint
    # (where the slot it reserves before promoting starts, and so what pg_rewind copies) would still be
    # in the middle of the fill. Set --no-restartpoint to measure that case.
    if restartpoint:
        with lab.pg_connect(other(primary), autocommit=True) as b:
            b.execute("CHECKPOINT")
    return time.monotonic() - t0


def diverge(lab: Lab, old: str, rows: tuple[int, int], timeout_s: float) -> dict[str, float]:
    """Crash ``old``, let its peer take over and write ``rows`` (first, last id) there, bring ``old`` back fenced."""
    new = other(old)
    t0 = time.monotonic()
    lab.crash(old)
    lab.wait_for(f"{new} to take over", lambda: primaries(lab) == [new], timeout_s=timeout_s, every_s=0.1)
    failover_s = time.monotonic() - t0
    t1 = time.monotonic()
    insert_rows(lab, new, *rows)
    written_s = time.monotonic() - t1
    lab.heal()
    t2 = time.monotonic()
    lab.start_agent(old)
    lab.wait_for(f"{old} fenced and hearing {new} as primary",
                 lambda: fenced_hearing_primary(lab.agent_status(old)), timeout_s=timeout_s, every_s=0.1)
    return {"failover_s": failover_s, "diverge_write_s": written_s, "old_fenced_s": time.monotonic() - t2}


def crash_recovery(lab: Lab, node: str) -> float:
    cfg = lab.config()
    if pgact.running_pid(cfg.pg(node).data_dir) is not None:
        raise LabError(f"a server runs on {node}'s data directory after the fence; expected it stopped")
    t0 = time.monotonic()
    pgact.ensure_clean_shutdown(cfg, node)
    return time.monotonic() - t0


def remove_old_wal(lab: Lab, node: str) -> dict[str, Any]:
    """Delete the node's segments older than its latest checkpoint's: the common checkpoint's WAL goes."""
    cfg = lab.config()
    keep_from = pgact.control_data(cfg, node)["Latest checkpoint's REDO WAL file"]
    wal = cfg.pg(node).data_dir / "pg_wal"
    # Recycled segments carry future names, so "the newest file" is not the current one: compare names.
    old = sorted(p for p in wal.iterdir() if len(p.name) == 24 and p.name < keep_from)
    for seg in old:
        seg.unlink()
    return {"redo_wal_file": keep_from, "segments_removed": len(old), "first_removed": old[0].name if old else None,
            "last_removed": old[-1].name if old else None}


def segno(name: str) -> int:
    return int(name[8:16], 16) * SEGS_PER_XLOGID + int(name[16:24], 16)


def source_wal(lab: Lab, node: str) -> dict[str, float]:
    """What ``node``'s pg_wal holds (MiB), by what keeps it: pg_rewind copies every file of it.

    before_redo: older than the latest checkpoint's redo (kept for wal_keep_size or a slot);
    since_redo: from the redo to the current segment (what a restart needs); recycled: segments
    renamed ahead for reuse (old contents under future names).
    """
    with lab.pg_connect(node, autocommit=True) as c:
        current, redo = c.execute(  # type: ignore[misc]
            "SELECT pg_walfile_name(pg_current_wal_lsn()), (pg_control_checkpoint()).redo_wal_file").fetchone()
        files = c.execute("SELECT name, size FROM pg_ls_waldir()").fetchall()
    out = {"before_redo": 0.0, "since_redo": 0.0, "recycled": 0.0, "other": 0.0}
    for name, size in files:
        if len(name) != 24:
            kind = "other"
        elif segno(name) < segno(redo):
            kind = "before_redo"
        elif segno(name) <= segno(current):
            kind = "since_redo"
        else:
            kind = "recycled"
        out[kind] += size / 2**20
    out["total"] = sum(out.values())
    return out


def parse_rejoin(stdout: str) -> tuple[str | None, list[dict[str, Any]]]:
    m = METHOD_LINE.search(stdout)
    steps = [{"step": s["name"], "s": float(s["s"])} for ln in stdout.splitlines() if (s := STEP_LINE.match(ln))]
    return (m["method"] if m else None), steps


def count_rows(lab: Lab, node: str) -> int:
    with lab.pg_connect(node, dbname="softswitch") as c:
        return int((c.execute("SELECT count(*) FROM bench_filler").fetchone() or [0])[0])


def one_round(lab: Lab, old: str, rows: tuple[int, int], method: str, p: Params, log: Any,
              rec: dict[str, Any]) -> None:
    """Crash the primary ``old``, diverge by ``rows`` on its peer, rejoin ``old`` by ``method``; the figures
    go into ``rec`` as they come (a round that fails half-way keeps what it measured)."""
    new = other(old)
    rec.update({"old_primary": old, "loadavg_at_start": list(os.getloadavg()),
                "other_labs_at_start": other_labs(), "error": None})
    rec["replayed_s"] = wait_replayed(lab, old, p.timeout_s * 10, p.restartpoint)
    rec.update(diverge(lab, old, rows, p.timeout_s * 10))
    rec["crash_recovery_s"] = crash_recovery(lab, old)
    if method == "clone":
        rec["wal_removed"] = remove_old_wal(lab, old)
    rec["disk_free_mb_before"] = disk_free_mb()
    rec["source_wal_mb"] = source_wal(lab, new)
    rec["loadavg_at_rejoin"] = list(os.getloadavg())
    log(f"  rejoin ({method}) on {old}, {new}'s pg_wal {rec['source_wal_mb']['total']:.0f} MiB, "
        f"load average {rec['loadavg_at_rejoin'][0]:.2f}")
    t1 = time.monotonic()
    res = lab.standby(old, "rejoin", "--yes", check=False)
    rec["rejoin_s"] = time.monotonic() - t1
    rec["disk_free_mb_after"] = disk_free_mb()
    rec["returncode"] = res.returncode
    rec["reported_method"], rec["steps"] = parse_rejoin(res.stdout)
    rec["stdout"], rec["stderr"] = res.stdout, res.stderr
    if res.returncode != 0:
        rec["error"] = f"rejoin exited {res.returncode}: {' '.join(res.stderr.split())[-300:]}"
    elif rec["reported_method"] != method:
        skipped = [st["step"] for st in rec["steps"] if st["step"].startswith("pg_rewind skipped")]
        if method == "rewind" and skipped:
            rec["rewind_skipped"] = skipped[0]  # the new primary no longer had the rewind's start: measured as is
        else:
            rec["error"] = f"rejoin reported {rec['reported_method']!r}, expected {method!r}"
    t2 = time.monotonic()
    try:
        lab.wait_for(f"{old} streaming and eligible as its agent sees it",
                     lambda: eligible_standby(lab.agent_status(old)), timeout_s=p.timeout_s * 4, every_s=0.1)
        rec["agent_sees_eligible_after_s"] = time.monotonic() - t2
    except LabError as e:
        rec["error"] = rec["error"] or str(e)
    # The agent's own account of the rejoin (e.g. why pg_rewind failed), which the command does not print.
    hist = lab.standby(old, "history", "--json", "--limit", "200", check=False)
    try:
        entries = json.loads(hist.stdout) if hist.returncode == 0 else []
    except ValueError:
        entries = []
    rec["agent_events"] = [e for e in entries if e.get("event") in ("rejoin_step", "rejoined", "decision")][-12:]
    rec["rows_on_new_primary"] = count_rows(lab, new)

    def caught_up() -> bool:
        try:
            return bool(count_rows(lab, old) == rec["rows_on_new_primary"])
        except psycopg.OperationalError as e:  # a server restarting: said, and asked again
            rec.setdefault("count_errors", []).append(" ".join(str(e).split()))
            return False

    lab.wait_for(f"{old} to hold every row of {new}", caught_up, timeout_s=p.timeout_s * 4, every_s=0.5)
    rec["loadavg_at_end"] = list(os.getloadavg())


def plan_rounds(p: Params) -> list[tuple[int, int, str]]:
    """(divergence rows, repeat index, method): rewind at every divergence, a clone at the smallest only."""
    rounds = []
    for i in range(p.repeat):
        for n, rows in enumerate(p.diverge_rows):
            rounds += [(rows, i, m) for m in p.methods if m == "rewind" or n == 0]
    return rounds


def one_size(size_mb: int, p: Params, doc: dict[str, Any], stamp: str, log: Any) -> None:
    """One lab, filled once, then every round of the plan on it (a failed round ends the size)."""
    name = LabNames(NAME_PREFIX).next()
    log(f"{size_mb} MB on {name}, private link {p.link_mbit or 'unlimited'} Mbit/s")
    base: dict[str, Any] = {"size_mb": size_mb, "lab": name}
    try:
        with fresh_lab(LabSpec(name, durability=p.durability, private_mbit=p.link_mbit)) as lab:
            t0 = time.monotonic()
            start_pair(lab)
            base["pair_ready_s"] = time.monotonic() - t0
            base["fill"] = fill(lab, size_mb)
            log(f"  filled: {base['fill']['table_mb']:.0f} MiB table, database {base['fill']['database_mb']:.0f} MiB "
                f"in {base['fill']['fill_s']:.1f} s")
            old, next_id = "alpha", -1  # diverged rows take negative ids: never clash with the filler's
            for rows, i, method in plan_rounds(p):
                rec: dict[str, Any] = {**base, "diverge_rows": rows, "method": method, "index": i}
                log(f"  {rows} rows diverged, {method} (#{i + 1}), {old} the old primary")
                try:
                    one_round(lab, old, (next_id - rows + 1, next_id), method, p, log, rec)
                except RUN_FAILURES as e:
                    rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                next_id -= rows
                doc["runs"].append(rec)
                doc["summary"] = summarise(doc["runs"])
                benchlib.write_results("rejoin", doc, stamp)
                log(f"  rejoin {_f(rec.get('rejoin_s'))} s ({rec.get('reported_method')})"
                    + (f"; ERROR {rec['error']}" if rec["error"] else ""))
                if rec["error"]:
                    return  # the pair's state is unknown: the next round would measure something else
                old = other(old)
    except RUN_FAILURES as e:  # one broken size must not lose the others
        doc["runs"].append({**base, "diverge_rows": None, "method": None,
                            "error": f"{type(e).__name__}: {' '.join(str(e).split())}"})


# --------------------------------------------------------------------------- output


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: the clone's time, and per divergence the rewind's, their medians and clone over rewind."""
    out: dict[str, Any] = {}
    for size in dict.fromkeys(r["size_mb"] for r in runs):
        ok = [r for r in runs if r["size_mb"] == size and not r["error"] and r.get("rejoin_s") is not None]
        clone = median([r["rejoin_s"] for r in ok if r["method"] == "clone"])
        rewinds: dict[str, Any] = {}
        for rows in dict.fromkeys(r["diverge_rows"] for r in ok if r["method"] == "rewind"):
            tried = [r for r in ok if r["method"] == "rewind" and r["diverge_rows"] == rows]
            times = [r["rejoin_s"] for r in tried if r["reported_method"] == "rewind"]
            rw = median(times)
            rewinds[str(rows)] = {"rewind_s": rw, "rewind_s_all": times,
                                  "clone_over_rewind": clone / rw if rw and clone else None,
                                  "cloned_instead_s_all": [r["rejoin_s"] for r in tried if r.get("rewind_skipped")]}
        out[str(size)] = {"clone_s": clone, "clone_s_all": [r["rejoin_s"] for r in ok if r["method"] == "clone"],
                          "rewind_by_diverged_rows": rewinds,
                          "runs_with_error": sum(1 for r in runs if r["size_mb"] == size and r["error"]),
                          "database_mb": median([r["fill"]["database_mb"] for r in ok])}
    return out


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def render(doc: dict[str, Any]) -> str:
    lines = [f"standby {doc['standby']}, {doc['machine']['cores']} cores, load average at start "
             f"{' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_start'])}; "
             f"{doc['parameters']['durability']} pair, private link {doc['parameters']['link_mbit'] or 'unlimited'} "
             "Mbit/s; rejoin time = the `standby rejoin --yes` command, crash recovery done before it",
             f"{'size':>7} {'database':>9} {'diverged':>8} {'method':<7} {'src pg_wal':>10} {'rejoin s':>9} "
             f"{'load1':>5}  error"]
    for r in doc["runs"]:
        db = r.get("fill", {}).get("database_mb")
        wal = (r.get("source_wal_mb") or {}).get("total")
        lines.append(f"{r['size_mb']:>5}MB {_f(db, '.0f'):>6}MiB {r.get('diverge_rows') or '-':>8} "
                     f"{r.get('method') or '-':<7} {_f(wal, '.0f'):>7}MiB {_f(r.get('rejoin_s')):>9} "
                     f"{(r.get('loadavg_at_rejoin') or [0])[0]:5.2f}  {r.get('error') or ''}")
    lines.append("")
    for r in doc["runs"]:
        if r.get("steps"):
            lines.append(f"{r['size_mb']} MB, {r['diverge_rows']} rows, {r['method']} "
                         f"(reported: {r.get('reported_method')}):")
            lines += [f"    {s['s']:7.2f} s  {s['step']}" for s in r["steps"]]
    lines.append("")
    lines.append("median over the runs without an error:")
    for size, s in doc["summary"].items():
        lines.append(f"{size} MB (database {_f(s['database_mb'], '.0f')} MiB): clone {_f(s['clone_s'])} s")
        for rows, rw in s["rewind_by_diverged_rows"].items():
            lines.append(f"    {rows:>8} rows diverged: rewind {_f(rw['rewind_s'])} s, "
                         f"clone/rewind {_f(rw['clone_over_rewind'])}"
                         + (f"; cloned instead (the rewind's start was gone): "
                            f"{', '.join(_f(v) for v in rw['cloned_instead_s_all'])} s"
                            if rw["cloned_instead_s_all"] else ""))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024], metavar="MB",
                    help="database sizes in MiB of filler, one lab each (default 1024)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--diverge", type=int, nargs="+", default=[1000], metavar="ROWS",
                    help="rows (about 1 KiB each) the new primary writes after the failover, a round each "
                         "(default 1000)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of each divergence and method (default 1)")
    ap.add_argument("--durability", choices=("sync", "async"), default="sync")
    ap.add_argument("--link-mbit", type=int, default=PRIVATE_MBIT,
                    help=f"the private link's rate in Mbit/s, 0 for the veth's own speed (default {PRIVATE_MBIT})")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each state change (default 30)")
    ap.add_argument("--no-restartpoint", dest="restartpoint", action="store_false",
                    help="crash without the standby's restartpoint first (its last one then may lie in the fill)")
    a = ap.parse_args(argv)
    if (any(s < 1 for s in a.sizes) or any(r < 1 for r in a.diverge) or a.repeat < 1 or a.timeout <= 0
            or a.link_mbit < 0):
        ap.error("need sizes >= 1, diverge >= 1, repeat >= 1, timeout > 0, link-mbit >= 0")
    return Params(tuple(dict.fromkeys(a.sizes)), tuple(dict.fromkeys(a.methods)), tuple(dict.fromkeys(a.diverge)),
                  a.repeat, a.durability, a.link_mbit, a.timeout, a.restartpoint)


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
            for size in p.sizes_mb:
                one_size(size, p, doc, stamp, log)
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
