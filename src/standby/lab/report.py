"""The sample report: revenue and minutes per account per hour, over every CDR.

It stands for the CDR summaries operators run all day: a full scan of the CDR
table, a join, a grouping and a per-group percentile (a sort), so it costs CPU
in proportion to the table. It reads in one REPEATABLE READ, READ ONLY
transaction, as a report must see one consistent moment; that is also what a
conflict with WAL replay on a standby cancels.

    standby lab report --dsn-file F              # once: the table, then where it ran
    standby lab report --dsn-file F --loop 0     # again and again; one JSON line per run
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal
from typing import Any, TextIO

import psycopg

REPORT_SQL = """
SELECT date_trunc('hour', c.connect_time) AS hour,
       a.id AS account_id,
       a.name AS account,
       count(*) AS calls,
       round(sum(c.duration_s) / 60.0, 2) AS minutes,
       sum(c.price) AS revenue,
       sum(c.cost) AS cost,
       sum(c.price) - sum(c.cost) AS margin,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY c.duration_s) AS p95_duration_s
FROM cdrs c
JOIN accounts a ON a.id = c.account_id
GROUP BY 1, 2, 3
ORDER BY 1, 2
"""
COLUMNS = ("hour", "account_id", "account", "calls", "minutes", "revenue", "cost", "margin", "p95_duration_s")


@dataclass(frozen=True)
class ReportRun:
    rows: int  # (hour, account) groups
    calls: int  # CDRs summarised
    seconds: float
    standby: bool  # ran on a server in recovery
    server: str | None  # the address the server answered on


def run(conn: psycopg.Connection[Any]) -> tuple[ReportRun, list[tuple[Any, ...]]]:
    """One report in one consistent snapshot."""
    t0 = time.monotonic()
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        standby, server = conn.execute("SELECT pg_is_in_recovery(), host(inet_server_addr())").fetchone()  # type: ignore[misc]
        rows = conn.execute(REPORT_SQL).fetchall()
    return ReportRun(len(rows), sum(r[3] for r in rows), time.monotonic() - t0, bool(standby), server), rows


def _cell(v: Any) -> str:
    if isinstance(v, Decimal):
        return f"{v:.2f}"
    if isinstance(v, float):
        return f"{v:.0f}"
    if isinstance(v, date):  # a datetime too
        return v.strftime("%Y-%m-%d %H:00")
    return str(v)


def print_table(rows: list[tuple[Any, ...]], limit: int, out: TextIO) -> None:
    shown = rows[:limit]
    cells = [list(COLUMNS)] + [[_cell(v) for v in r] for r in shown]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    for row in cells:
        out.write("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + "\n")
    if len(rows) > limit:
        out.write(f"... {len(rows) - limit} more rows\n")


def loop(dsn: str, pause_s: float, out: TextIO, stop: Callable[[], bool] = lambda: False,
         connect_timeout_s: float = 2.0) -> None:
    """Run the report again and again, one JSON line each; a lost connection is reopened at the next run.

    Each line says where the run landed (standby or primary), so a caller can
    see the reporting IP move without asking anybody else.
    """
    conn: psycopg.Connection[Any] | None = None
    while not stop():
        t = time.time()
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(dsn, connect_timeout=int(max(1, connect_timeout_s)), autocommit=True)
            result, _ = run(conn)
            line: dict[str, Any] = {"t": t, "ok": True, **asdict(result)}
        except psycopg.Error as e:
            line = {"t": t, "ok": False, "seconds": time.time() - t,
                    "error": (str(e).strip().splitlines() or [type(e).__name__])[0],
                    "sqlstate": getattr(e, "sqlstate", None)}
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    pass
            conn = None
        out.write(json.dumps(line) + "\n")
        out.flush()
        if pause_s > 0:
            time.sleep(pause_s)
        elif not line["ok"]:
            time.sleep(0.2)  # nothing answers: do not spin


def once(dsn: str, limit: int, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> ReportRun:
    with psycopg.connect(dsn, autocommit=True) as conn:
        result, rows = run(conn)
    print_table(rows, limit, out)
    where = "a standby" if result.standby else "the primary"
    err.write(f"{result.rows} rows ({result.calls} calls) in {result.seconds:.3f} s on {where} ({result.server})\n")
    return result
