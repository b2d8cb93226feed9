"""Reports on the standby: the reporting IP follows the in-bound standby and leaves it by policy.

The lab's [reporting] (standby.lab.configfile.REPORTING): 192.0.2.101 on pub0,
fallback "withdraw", bound 4 MiB, hot_standby_feedback on, replay waits 2 s for
a conflicting query. Behaviour only; bench/reporting.py measures.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC
from typing import Any

import psycopg
import pytest

from standby.act.postgres import log_path as pg_log_path
from standby.lab import Lab, netns
from standby.lab.configfile import REPORT_DSN
from standby.lab.pair import STANDBY, agent_state, reporting_holders, start_pair
from standby.lab.softswitch import read_dsn_file


def reporting_pair(lab: Lab, fallback: str = "withdraw") -> Lab:
    if fallback != "withdraw":
        # Both agents read the same file: change it before either starts.
        text = lab.config_path.read_text()
        lab.config_path.write_text(text.replace('fallback = "withdraw"', f'fallback = "{fallback}"'))
        assert lab.config().reporting is not None and lab.config().reporting.fallback.value == fallback
    start_pair(lab)
    lab.wait_for("beta to hold the reporting IP", lambda: reporting_holders(lab) == ["beta"], timeout_s=30)
    return lab


@pytest.fixture
def pair(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    return reporting_pair(lab_factory("sync"))


def client_connect(lab: Lab, dsn: str, **kw: Any) -> psycopg.Connection[Any]:
    """A connection made from the client's namespace (the socket stays there)."""
    return netns.call_in(lab.netns("client"), lambda: psycopg.connect(dsn, autocommit=True, **kw))  # type: ignore[no-any-return]


def report_dsn(lab: Lab) -> str:
    return read_dsn_file(lab.spec.secret(REPORT_DSN))


def lands_on(lab: Lab, dsn: str) -> str:
    """'standby' or 'primary': where a new connection through ``dsn`` lands."""
    with client_connect(lab, dsn) as c:
        return "standby" if c.execute("SELECT pg_is_in_recovery()").fetchone()[0] else "primary"  # type: ignore[index]


def reporting_events(lab: Lab, node: str, since: str = "") -> list[dict[str, Any]]:
    res = lab.standby(node, "history", "--json", "--limit", "1000", check=False)
    entries = json.loads(res.stdout) if res.returncode == 0 else []
    return [e for e in entries if e["event"] == "reporting" and e["time"] > since]


def now_iso() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")  # as the history records it


def test_reports_land_on_the_standby_and_writes_are_refused(pair: Lab) -> None:
    res = pair.run("client", [STANDBY, "lab", "report", "--dsn-file", str(pair.spec.secret(REPORT_DSN))])
    assert "on a standby (192.0.2.101)" in res.stderr, res.stderr
    with client_connect(pair, report_dsn(pair)) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("INSERT INTO accounts (id, name) VALUES (9999, 'through the reporting IP')")
    # The addresses-free alternative: libpq picks the standby for reports and the primary for writes.
    password = pair.spec.secret("app.password").read_text().strip()
    for purpose, expect in (("reporting", "standby"), ("writes", "primary")):
        out = pair.run("alpha", [STANDBY, "dsn", "--for", purpose, "--dbname", "softswitch", "--user", "softswitch",
                                 "--config", str(pair.config_path)]).stdout.strip()
        assert "password" not in out
        assert lands_on(pair, f"{out} password={password}") == expect
    doc = json.loads(pair.standby("alpha", "status", "--json").stdout)
    assert doc["reporting"]["holders"] == ["beta"] and doc["reporting"]["address"] == "192.0.2.101"
    assert doc["nodes"]["beta"]["postgres"]["cancelled_queries"] == 0


def test_withdrawn_while_the_standby_is_down_then_back(pair: Lab) -> None:
    since = now_iso()
    pair.kill_postgres("beta")
    # Beta's agent lets go, restarts its PostgreSQL, and takes the address back once streaming in bound.
    pair.wait_for("beta to let go of the reporting IP",
                  lambda: any(not e["held"] for e in reporting_events(pair, "beta", since)), timeout_s=30)
    pair.wait_for("beta to hold the reporting IP again", lambda: reporting_holders(pair) == ["beta"], timeout_s=60)
    assert [e["held"] for e in reporting_events(pair, "beta", since)] == [False, True]
    assert reporting_events(pair, "alpha", since) == []  # fallback "withdraw": the primary never took it
    assert lands_on(pair, report_dsn(pair)) == "standby"


def test_moves_to_the_primary_when_the_standby_host_crashes(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = reporting_pair(lab_factory("async"), fallback="primary")
    since = now_iso()
    lab.crash("beta")
    lab.wait_for("alpha to take the reporting IP", lambda: reporting_holders(lab) == ["alpha"], timeout_s=30)
    assert lands_on(lab, report_dsn(lab)) == "primary"
    lab.heal()
    lab.start_agent("beta")  # the host is back: its agent restarts PostgreSQL as a standby
    lab.wait_for("beta to hold the reporting IP again", lambda: reporting_holders(lab) == ["beta"], timeout_s=60)
    assert lands_on(lab, report_dsn(lab)) == "standby"
    # Alpha took it once and gave it back once: beta's return is one hand-over.
    alpha = reporting_events(lab, "alpha", since)
    why = [(e["time"], e["held"], e["reason"]) for e in alpha + reporting_events(lab, "beta", since)]
    assert [e["held"] for e in alpha] == [True, False], why


def test_withdrawn_while_replay_lags_past_the_bound(pair: Lab) -> None:
    with pair.pg_connect("beta", autocommit=True) as beta, \
            pair.pg_connect("alpha", dbname="softswitch", autocommit=True) as alpha:  # fmt: skip
        beta.execute("SELECT pg_wal_replay_pause()")
        try:
            alpha.execute("CREATE TABLE lag_fill (id int, pad text)")
            # About 20 MiB of WAL, five times the lab's bound; commits still return (beta receives, only replay waits).
            alpha.execute("INSERT INTO lag_fill SELECT g, repeat('x', 150) FROM generate_series(1, 100000) g")
            pair.wait_for("the reporting IP to be withdrawn", lambda: reporting_holders(pair) == [], timeout_s=30)
            reason = agent_state(pair, "beta")["reporting"]["reason"]
            assert "over the bound" in reason, reason
            assert agent_state(pair, "alpha")["reporting"]["held"] is False  # withdrawn, not moved
        finally:
            beta.execute("SELECT pg_wal_replay_resume()")
    pair.wait_for("beta to hold the reporting IP again", lambda: reporting_holders(pair) == ["beta"], timeout_s=30)


def _long_report(conn: psycopg.Connection[Any], sleep_s: float, started: threading.Event,
                 out: dict[str, Any]) -> None:
    """One repeatable-read report that reads, sleeps while the primary churns, and reads again."""
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            out["before"] = conn.execute("SELECT sum(v) FROM churn").fetchone()[0]  # type: ignore[index]
            started.set()
            out["after"] = conn.execute("SELECT sum(v) FROM churn, pg_sleep(%s)", (sleep_s,)).fetchone()[0]  # type: ignore[index]
    except psycopg.Error as e:
        out["error"] = e
    finally:
        started.set()


def _churn_during_report(lab: Lab) -> dict[str, Any]:
    """Hold a snapshot on beta (through the reporting IP) while alpha updates and vacuums the rows it reads."""
    out: dict[str, Any] = {}
    started = threading.Event()
    with client_connect(lab, report_dsn(lab)) as conn, \
            lab.pg_connect("alpha", dbname="softswitch", autocommit=True) as alpha:  # fmt: skip
        t = threading.Thread(target=_long_report, args=(conn, 8.0, started, out), daemon=True)
        t.start()
        assert started.wait(10)
        for _ in range(5):
            alpha.execute("UPDATE churn SET v = v + 1")
            # No truncation: its exclusive lock would conflict whatever the feedback setting.
            alpha.execute("VACUUM (TRUNCATE false) churn")
        t.join(30)
    return out


def _conflicts(lab: Lab) -> int:
    # With feedback off, replay may cancel this query too while it removes rows: ask again. It may cancel the
    # new backend's start-up as well, which libpq reports as a failed connection (CI run 22: "FATAL: canceling
    # statement due to conflict with recovery").
    for _ in range(20):
        try:
            with lab.pg_connect("beta", dbname="softswitch") as c:
                return int(c.execute("SELECT confl_snapshot FROM pg_stat_database_conflicts "
                                     "WHERE datname = 'softswitch'").fetchone()[0])  # type: ignore[index]
        except psycopg.errors.SerializationFailure:
            time.sleep(0.5)
        except psycopg.OperationalError as e:
            # A backend that replay ends between its start and its first answer may leave libpq only "server closed
            # the connection unexpectedly" (CI run 93, a busy machine): excused on beta's own log's word alone.
            if "conflict with recovery" not in str(e) and not _replay_ended_a_session(lab):
                raise
            time.sleep(0.5)
    raise AssertionError("the conflict counter could not be read on beta")


def _replay_ended_a_session(lab: Lab) -> bool:
    log = pg_log_path(lab.config(), "beta")
    return log.exists() and "terminating connection due to conflict with recovery" in log.read_text(errors="replace")


def _set_feedback(lab: Lab, on: bool) -> None:
    with lab.pg_connect("beta", autocommit=True) as c:
        c.execute(f"ALTER SYSTEM SET hot_standby_feedback = {'on' if on else 'off'}")
        c.execute("SELECT pg_reload_conf()")
        lab.wait_for("the setting to apply", lambda: c.execute("SHOW hot_standby_feedback").fetchone()
                     == ("on" if on else "off",), timeout_s=10)  # fmt: skip


def test_long_report_not_cancelled_with_feedback(pair: Lab) -> None:
    with pair.pg_connect("alpha", dbname="softswitch", autocommit=True) as alpha:
        alpha.execute("CREATE TABLE churn (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = off)")
        alpha.execute("INSERT INTO churn SELECT g, 0 FROM generate_series(1, 2000) g")
        alpha.execute("GRANT SELECT ON churn TO softswitch")  # the report's role
    pair.wait_for("beta to see the table", lambda: _replayed_rows(pair) == 2000, timeout_s=30)

    out = _churn_during_report(pair)
    assert "error" not in out, out.get("error")
    assert out["before"] == out["after"] == 0  # one consistent snapshot, kept for the whole report
    assert _conflicts(pair) == 0

    # The same with feedback off: replay removes the rows the report reads and
    # cancels it after max_standby_streaming_delay, so the check above can fail.
    _set_feedback(pair, False)
    try:
        out = _churn_during_report(pair)
        assert isinstance(out.get("error"), psycopg.errors.SerializationFailure), out
        assert "conflict with recovery" in str(out["error"])
        assert _conflicts(pair) >= 1
    finally:
        _set_feedback(pair, True)


def _replayed_rows(lab: Lab) -> int | None:
    try:
        with lab.pg_connect("beta", dbname="softswitch") as c:
            return int(c.execute("SELECT count(*) FROM churn").fetchone()[0])  # type: ignore[index]
    except psycopg.Error:
        return None
