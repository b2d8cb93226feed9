"""`standby salvage`: review and apply what an old primary alone committed after a failover."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import psycopg

from standby import salvage as sv
from standby.cli.common import OperatorError, config_option, handle_errors, json_option, load_node, node_option
from standby.config import NODE_ENV, load, resolve_node

_CELL_MAX = 32


@click.group("salvage")
def group() -> None:
    """Rows an old primary committed after the fork that the new primary lacks.

    A rejoin writes them into a report (in the old primary's state directory)
    before the old data directory is rewound or replaced. Review it with `show`,
    then `apply` it (on that node: the rows go to the current primary, this node
    or the peer): each source transaction is inserted in one transaction, rows
    whose key already exists are skipped, so applying again is harmless.
    """


def _report_path(file: Path | None, config_path: Path, node: str | None) -> Path:
    if file is not None:
        return file
    cfg = load(config_path)
    name = node or os.environ.get(NODE_ENV)
    # A follower's rejoin keeps its report in the follower's state directory, as a pair node's does.
    me = name if name is not None and cfg.follower(name) is not None else resolve_node(cfg, node)
    directory = sv.reports_dir(cfg, me)
    latest = sv.latest_report(directory)
    if latest is None:
        raise OperatorError(f"no salvage report in {directory}")
    return latest


def _load(path: Path) -> sv.Report:
    try:
        return sv.load_report(path)
    except sv.SalvageError as e:
        raise OperatorError(str(e)) from None


def _cell(value: object) -> str:
    text = "NULL" if value is None else str(value)
    return text if len(text) <= _CELL_MAX else text[: _CELL_MAX - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]


def render(report: sv.Report, path: Path) -> str:
    """The report as a person reads it."""
    c = report.counts()
    doubt = (f"; {len(report.in_doubt)} prepared but never finished (not salvaged): {report.in_doubt}"
             if report.in_doubt else "")
    lines = [
        f"salvage report {path}",
        f"  cluster {report.cluster or '?'}: rows from old primary {report.node or '?'}"
        f"{f' for new primary {report.new_primary}' if report.new_primary else ''}",
        f"  created {report.created_at}; status {report.status.value}"
        f"{f' (applied {report.applied_at})' if report.applied_at else ''}",
        f"  fork at {report.fork_lsn} on timeline {report.old_timeline}; database {report.database}",
        f"  {c['transactions']} transaction(s) committed only on the old primary after the fork"
        f"{f'; {len(report.aborted)} aborted' if report.aborted else ''}{doubt}",
    ]
    if not report.compared:
        lines.append("  not compared with the new primary: rows it already has are skipped when applying")
    for t in report.tables:
        policy = f"key {', '.join(t.key)}"
        if t.renumber:
            policy += f"; renumber {', '.join(t.renumber)} when taken"
        if t.after_insert:
            policy += f"; {len(t.after_insert)} statement(s) after each insert"
        lines += ["", f"table {t.name} ({policy}): {t.found} found, {t.already_present} already on the new primary, "
                      f"{len(t.rows)} to salvage"]
        for stmt in t.after_insert:
            lines.append(f"  after insert: {stmt}")
        if t.rows:
            headers = ["xid", *t.columns]
            rows = [[str(r.xid), *(_cell(r.values.get(col)) for col in t.columns)] for r in t.rows]
            lines += ["  " + ln for ln in _table(headers, rows)]
    for a in report.applies:
        lines += ["", f"applied {a.at}: {a.inserted_total} row(s) inserted in {a.transactions} transaction(s), "
                      f"{a.skipped_total} skipped (already present)"
                      f"{f'; FAILED: {a.error}' if a.error else ''}"]
        for r in a.renumbered:
            key = ", ".join(f"{k}={v}" for k, v in r.key.items())
            lines.append(f"  {r.table} ({key}): {r.column} {r.old} -> {r.new}")
    return "\n".join(lines)


@group.command("show")
@config_option
@node_option
@json_option
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@handle_errors
def show_command(config_path: Path, node: str | None, as_json: bool, file: Path | None) -> None:
    """Print a salvage report (default: this node's latest)."""
    path = _report_path(file, config_path, node)
    report = _load(path)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report, path))


@group.command("apply")
@config_option
@node_option
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def apply_command(config_path: Path, node: str | None, file: Path | None, yes: bool) -> None:
    """Insert a salvage report's rows into the current primary.

    FILE defaults to this node's latest report. Run it where the report is (the
    rejoined old primary): the rows go to this node if it is the primary, else to
    the peer over the private network. Rows already present are skipped, so
    applying again changes nothing.
    """
    path = file or _report_path(None, config_path, node)
    if (name := node or os.environ.get(NODE_ENV)) is not None and load(config_path).follower(name) is not None:
        raise OperatorError(f"{name} is a follower: the pair's servers let it stream WAL, not write the application's "
                            f"rows; copy {path} to the pair's primary and run `standby salvage apply FILE` there")
    cfg, me = load_node(config_path, node)
    report = _load(path)
    try:
        primary = sv.connect_current_primary(cfg, me, report.database)
    except sv.SalvageError as e:
        raise OperatorError(f"{e}; apply it once a primary is up") from None
    where = primary.node if primary.target is sv.ApplyTarget.LOCAL else f"{primary.node} (over the private network)"
    with primary.conn as conn:
        if report.status is sv.ReportStatus.APPLIED:
            click.echo(f"note: this report was applied at {report.applied_at}; applying again only skips "
                       "rows that are present")
        if not yes:
            c = report.counts()
            source = report.node or "the old primary"
            click.echo(f"{c['rows']} row(s) from {c['transactions']} transaction(s) of {source} "
                       f"will be inserted into database {report.database} on {where} (rows already present are skipped).")
            click.confirm("Apply?", abort=True)
        try:
            report, rec = sv.apply_file(conn, path)
        except sv.SalvageError as e:
            hint = ""
            if isinstance(e.__cause__, psycopg.errors.InsufficientPrivilege):
                hint = (f"; {cfg.pg(primary.node).replication_user} may not write on {primary.node}: run "
                        f"`standby bootstrap --node {primary.node}` on {primary.node} (it grants what salvage "
                        "needs), or run this command there")
            raise OperatorError(f"{e} (recorded in {path}){hint}") from None
        except psycopg.Error as e:
            raise OperatorError(f"database error while applying {path} on {primary.node}: {' '.join(str(e).split())}; "
                                "applied transactions stay, a rerun skips them") from None
    click.echo(f"applied {path} on {where}: {rec.inserted_total} row(s) inserted in {rec.transactions} "
               f"transaction(s), {rec.skipped_total} skipped (already present)")
    for t in report.tables:
        click.echo(f"  {t.name}: {rec.inserted.get(t.name, 0)} inserted, {rec.skipped.get(t.name, 0)} skipped")
    for r in rec.renumbered:
        key = ", ".join(f"{k}={v}" for k, v in r.key.items())
        click.echo(f"  renumbered {r.table} ({key}): {r.column} {r.old} -> {r.new}")
