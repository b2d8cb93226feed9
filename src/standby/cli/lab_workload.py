"""Commands for the sample softswitch workload: the service, the load generator, the checker.

Attached to `standby lab` as `softswitch`, `load`, `verify` and `report`; the lab's own service
commands run the same objects as `python -m standby.cli.lab_workload softswitch ...` (this module
and the workload's, not the whole CLI). Heavy modules are imported inside the commands so that a
health check stays quick to start.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

_FILE = click.Path(dir_okay=False, path_type=Path)
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _dsn_from(dsn_file: Path | None, dsn: str | None) -> str:
    from psycopg.conninfo import conninfo_to_dict

    from standby.lab.softswitch import read_dsn_file

    if (dsn_file is None) == (dsn is None):
        raise click.UsageError("give exactly one of --dsn-file and --dsn")
    if dsn_file is not None:
        try:
            return read_dsn_file(dsn_file)
        except ValueError as e:
            raise click.ClickException(str(e)) from e
    assert dsn is not None
    try:
        has_password = "password" in conninfo_to_dict(dsn)
    except Exception as e:  # malformed: say so without echoing it
        raise click.UsageError("--dsn: not a valid connection string") from e
    if has_password:
        # Command lines are visible to every local user (ps, /proc): passwords go in files.
        raise click.UsageError("--dsn must not contain a password; put the DSN in a file and use --dsn-file")
    return dsn


# --------------------------------------------------------------------------- the service


@click.group("softswitch", context_settings=_CONTEXT)
def softswitch_group() -> None:
    """Run the sample softswitch service (HTTP on :8080, writes calls to PostgreSQL).

    These are the commands a [[services]] entry runs: start, stop, health.
    """


@softswitch_group.command("start")
@click.option("--dsn-file", type=_FILE, required=True, help="File holding the libpq DSN (multi-host allowed).")
@click.option("--listen", default="0.0.0.0:8080", show_default=True, help="HOST:PORT to serve on.")
@click.option("--pidfile", type=_FILE, required=True)
@click.option("--logfile", type=_FILE, required=True)
@click.option("--timeout", "timeout_s", type=float, default=15.0, show_default=True,
              help="Seconds to wait for /health to answer 200.")  # fmt: skip
@click.option("--pool-size", type=int, default=4, show_default=True, help="Database connections for calls.")
@click.option("--call-timeout", "call_timeout_s", type=float, default=1.5, show_default=True,
              help="Per-call deadline inside the service (seconds).")  # fmt: skip
def start_cmd(
    dsn_file: Path, listen: str, pidfile: Path, logfile: Path, timeout_s: float, pool_size: int, call_timeout_s: float
) -> None:
    """Start the service detached; exit 0 only once its /health answers 200.

    If it does not become healthy in time it is stopped again and the exit code is 1.
    """
    from standby.lab import softswitch

    res = softswitch.start(dsn_file, listen, pidfile, logfile, timeout_s, pool_size, call_timeout_s)
    click.echo(f"softswitch: {res.message}", err=not res.ok)
    sys.exit(0 if res.ok else 1)


@softswitch_group.command("stop")
@click.option("--pidfile", type=_FILE, required=True)
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")  # fmt: skip
def stop_cmd(pidfile: Path, timeout_s: float) -> None:
    """Stop the service (SIGTERM, then SIGKILL); succeeds if it is not running."""
    from standby.lab import softswitch

    res = softswitch.stop(pidfile, timeout_s)
    click.echo(f"softswitch: {res.message}", err=not res.ok)
    sys.exit(0 if res.ok else 1)


@softswitch_group.command("health")
@click.option("--url", default="http://127.0.0.1:8080/health", show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=3.0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; the exit code says it all.")
def health_cmd(url: str, timeout_s: float, quiet: bool) -> None:
    """Exit 0 if the service answers 200 (it reaches a writable database), else 1."""
    from standby.lab.health import check_health

    healthy, detail = check_health(url, timeout_s)
    if not quiet:
        click.echo(f"{'healthy' if healthy else 'unhealthy'}: {detail}", err=not healthy)
    sys.exit(0 if healthy else 1)


@softswitch_group.command("serve")
@click.option("--dsn-file", type=_FILE, required=True, help="File holding the libpq DSN (multi-host allowed).")
@click.option("--listen", default="0.0.0.0:8080", show_default=True, help="HOST:PORT to serve on.")
@click.option("--pidfile", type=_FILE, help="Write this process's pid here while it runs.")
@click.option("--pool-size", type=int, default=4, show_default=True)
@click.option("--call-timeout", "call_timeout_s", type=float, default=1.5, show_default=True)
def serve_cmd(dsn_file: Path, listen: str, pidfile: Path | None, pool_size: int, call_timeout_s: float) -> None:
    """Run the service in the foreground until SIGTERM/SIGINT."""
    from standby.lab import softswitch

    dsn = _dsn_from(dsn_file, None)
    try:
        host, port = softswitch.parse_listen(listen)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    cfg = softswitch.ServiceConfig(dsn=dsn, host=host, port=port, pool_size=pool_size, call_timeout_s=call_timeout_s)
    softswitch.serve(cfg, pidfile)


@softswitch_group.command("init-schema")
@click.option("--dsn-file", type=_FILE, help="File holding the DSN.")
@click.option("--dsn", help="A DSN without a password (e.g. a local socket with peer authentication).")
@click.option("--accounts", type=int, default=20, show_default=True)
@click.option("--vendors", type=int, default=5, show_default=True)
def init_schema_cmd(dsn_file: Path | None, dsn: str | None, accounts: int, vendors: int) -> None:
    """Create the tables and seed accounts and vendors (safe to repeat)."""
    import psycopg

    from standby.lab import softswitch

    try:
        softswitch.init_schema(_dsn_from(dsn_file, dsn), accounts, vendors)
    except psycopg.Error as e:
        raise click.ClickException(f"cannot create the schema: {' '.join(str(e).split())}") from e
    click.echo(f"schema ready ({accounts} accounts, {vendors} vendors)")


# --------------------------------------------------------------------------- load and verify


@click.command("load", context_settings=_CONTEXT)
@click.option("--url", required=True, help="Service base URL, e.g. http://192.0.2.100:8080")
@click.option("--rate", type=float, default=50.0, show_default=True, help="Calls per second.")
@click.option("--max", "max_mode", is_flag=True, help="No rate limit: --concurrency workers back to back.")
@click.option("--duration", "duration_s", type=float, help="Seconds to run (default: until SIGTERM/SIGINT).")
@click.option("--concurrency", type=int, default=64, show_default=True, help="Most requests in flight.")
@click.option("--timeout", "timeout_s", type=float, default=2.0, show_default=True, help="Per-request timeout (s).")
@click.option("--out", type=_FILE, required=True, help="JSON-lines history to write.")
@click.option("--summary", "summary_path", type=_FILE, help="Summary JSON (default: OUT.summary.json).")
@click.option("--seed", type=int, help="Seed for the random call parameters.")
@click.option("--accounts", type=int, default=20, show_default=True)
@click.option("--vendors", type=int, default=5, show_default=True)
def load_command(
    url: str, rate: float, max_mode: bool, duration_s: float | None, concurrency: int, timeout_s: float,
    out: Path, summary_path: Path | None, seed: int | None, accounts: int, vendors: int,
) -> None:  # fmt: skip
    """Place calls on the softswitch and record every attempt's outcome.

    Each attempt is one JSON line: call_id, t_send, t_done (monotonic), outcome
    (ack | failed | indeterminate), node, cdr_id, error, status.
    """
    from standby.lab import loadgen

    if rate <= 0 and not max_mode:
        raise click.BadParameter("must be positive (or use --max)", param_hint="--rate")
    if concurrency < 1:
        raise click.BadParameter("must be at least 1", param_hint="--concurrency")
    cfg = loadgen.LoadConfig(
        url=url, rate=None if max_mode else rate, duration_s=duration_s, concurrency=concurrency,
        timeout_s=timeout_s, accounts=accounts, vendors=vendors, seed=seed,
    )  # fmt: skip
    summary = loadgen.run(cfg, out, summary_path)
    click.echo(summary.render())


@click.command("verify", context_settings=_CONTEXT)
@click.option("--history", "history_path", type=_FILE, required=True, help="History written by `load`.")
@click.option("--dsn-file", type=_FILE, required=True, help="DSN of the (final) primary.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verify_command(history_path: Path, dsn_file: Path, as_json: bool) -> None:
    """Check a load history against the database; exit 1 on any violation."""
    import psycopg

    from standby.lab import checker

    try:
        history = checker.read_history(history_path)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot read the history: {e}") from e
    try:
        with psycopg.connect(_dsn_from(dsn_file, None)) as conn:
            db = checker.read_db_state(conn)
    except psycopg.Error as e:
        raise click.ClickException(f"cannot read the database: {' '.join(str(e).split())}") from e
    verdict = checker.check(history, db)
    if as_json:
        doc = {**asdict(verdict), "ok": verdict.ok, "violations": verdict.violations, "ack_rate": verdict.ack_rate}
        click.echo(json.dumps(doc, default=str, indent=2))
    else:
        click.echo(verdict.render())
    sys.exit(0 if verdict.ok else 1)


@click.command("report", context_settings=_CONTEXT)
@click.option("--dsn-file", type=_FILE, required=True,
              help="File holding the DSN to report from (e.g. the lab's report.dsn: the reporting IP).")
@click.option("--loop", "pause_s", type=click.FloatRange(min=0), default=None,
              help="Run again and again, pausing SECONDS between runs (0: back to back), one JSON line per run, "
                   "until SIGTERM/SIGINT.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows of the table to print (single run).")
def report_command(dsn_file: Path, pause_s: float | None, limit: int) -> None:
    """The sample CDR report: revenue and minutes per account per hour."""
    import psycopg

    from standby.lab import report

    dsn = _dsn_from(dsn_file, None)
    if pause_s is None:
        try:
            report.once(dsn, limit)
        except psycopg.Error as e:
            raise click.ClickException(f"the report failed: {' '.join(str(e).split())}") from e
        return
    try:
        report.loop(dsn, pause_s, sys.stdout)
    except KeyboardInterrupt:
        pass


# `python -m standby.cli.lab_workload`: the lab's services start, stop and health-check the softswitch
# through this small group rather than the whole CLI, which an agent's health check would pay for.
workload_group = click.Group("workload", commands=[softswitch_group, load_command, verify_command, report_command],
                             context_settings=_CONTEXT)

if __name__ == "__main__":
    workload_group(prog_name="python -m standby.cli.lab_workload")
