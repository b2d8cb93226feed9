"""Salvage after an async failover, against real PostgreSQL 15 servers.

The scenario: a primary with the sample softswitch schema and an async streaming
standby; the standby falls behind (stopped) while the primary keeps taking calls;
the primary is stopped and the standby promoted; the new primary takes calls too,
one of them a client's retry of a call the old primary had committed. Salvage must
report exactly the old primary's other post-fork calls, apply them with balances
that add up, renumber colliding ids, change nothing when repeated, and leave the old
data directory byte for byte as it was.

Servers listen on unix sockets in a temp dir only (no network namespaces). Needs root
and PostgreSQL; skipped without them, except under CI=true where that fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import tomli_w
from click.testing import CliRunner

from standby import salvage as sv
from standby.cli.salvage import group as salvage_cli
from standby.config import Salvage
from standby.lab import softswitch
from standby.lab.pair import start_pair, under_load, verify
from tests.lab.test_roadback import _diverge_async, _rejoin

pytestmark = pytest.mark.lab

PG_BIN = Path(os.environ.get("STANDBY_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
PORT = 54391  # unix sockets only, each server in its own directory: the port need not be free
DB = "app"
SPEC = Salvage.model_validate(softswitch.salvage_spec(DB))

# =========================================================================== pure parsing

WALDUMP_SAMPLE = """\
rmgr: Transaction len (rec/tot):    405/   405, tx:        724, lsn: 0/015165D0, prev 0/01516588, desc: COMMIT 2026-11-26 11:46:10.615629 UTC; inval msgs: catcache 80 catcache 79 snapshot 2608 relcache 16384
rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/015167A8, prev 0/01516768, desc: COMMIT 2026-11-26 11:46:10.616195 UTC
rmgr: Transaction len (rec/tot):     34/    34, tx:        728, lsn: 0/01516890, prev 0/01516850, desc: ABORT 2026-11-26 11:46:10.626584 UTC
rmgr: Transaction len (rec/tot):     46/    46, tx:        726, lsn: 0/015168B8, prev 0/01516890, desc: COMMIT 2026-11-26 11:46:10.626591 UTC; subxacts: 727 731
rmgr: Transaction len (rec/tot):     34/    34, tx:        729, lsn: 0/01516928, prev 0/015168E8, desc: ABORT 2026-11-26 11:46:10.636577 UTC
rmgr: Transaction len (rec/tot):    242/   242, tx:        730, lsn: 0/01516990, prev 0/01516950, desc: PREPARE gid x1: 2026-11-26 11:46:10.646302 UTC
rmgr: Transaction len (rec/tot):     42/    42, tx:          0, lsn: 0/01516A88, prev 0/01516990, desc: COMMIT_PREPARED 730: 2026-11-26 11:46:10.646760 UTC
rmgr: Transaction len (rec/tot):    242/   242, tx:        740, lsn: 0/01516B00, prev 0/01516A88, desc: PREPARE gid x2: 2026-11-26 11:46:10.656302 UTC
rmgr: Transaction len (rec/tot):     38/    38, tx:        741, lsn: 0/01516B40, prev 0/01516B00, desc: ASSIGNMENT xtop 741: subxacts: 742
rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/01516AB8, prev 0/01516A88, desc: CHECKPOINT_SHUTDOWN redo 0/1516AB8; tli 1; shutdown
"""


def test_parse_waldump_commits_aborts_and_prepared() -> None:
    recs = sv.parse_waldump(WALDUMP_SAMPLE)
    assert [(r.kind.value, r.xid) for r in recs] == [
        ("COMMIT", 724), ("COMMIT", 725), ("ABORT", 728), ("COMMIT", 726), ("ABORT", 729),
        ("PREPARE", 730), ("COMMIT_PREPARED", 730), ("PREPARE", 740),
    ]  # fmt: skip
    assert recs[3].subxids == (727, 731)
    assert recs[0].time == "2026-11-26T11:46:10.615629+00:00"
    assert recs[1].lsn == 0x015167A8
    div = sv.divergence_from_records(recs, fork_lsn=0x01516700, timeline=1)
    assert [c.xid for c in div.commits] == [725, 726, 730]  # 724 lies before the fork
    assert div.xids == [725, 726, 727, 731, 730]
    assert div.top_of()[731] == 726
    assert div.aborted == (728, 729)
    assert div.in_doubt == (740,)


def test_waldump_end_of_wal() -> None:
    end = sv.parse_waldump_end(
        "pg_waldump: error: error in WAL record at 0/1516AB8: invalid record length at 0/1516B30: wanted 24, got 0\n")
    assert end.kind is sv.WalEndKind.RECORD_ERROR and end.last_record_lsn == 0x1516AB8
    assert sv.wal_read_to_end(end, checkpoint_lsn=0x1516AB8, segment_size=16 << 20)
    assert not sv.wal_read_to_end(end, checkpoint_lsn=0x2000000, segment_size=16 << 20)
    none = sv.parse_waldump_end("pg_waldump: error: could not find a valid record after 0/1516B30")
    assert none.kind is sv.WalEndKind.NO_RECORD
    assert sv.wal_read_to_end(none, checkpoint_lsn=0x1516AB8, segment_size=16 << 20)
    gone = sv.parse_waldump_end('pg_waldump: error: could not find file "000000010000000000000003": No such file')
    assert gone.kind is sv.WalEndKind.MISSING_FILE
    assert sv.segment_start("000000010000000100000003", 16 << 20) == (1 << 32) + 3 * (16 << 20)
    assert not sv.wal_read_to_end(gone, checkpoint_lsn=0x3000100, segment_size=16 << 20)  # before the checkpoint
    assert sv.wal_read_to_end(gone, checkpoint_lsn=0x2FFFF00, segment_size=16 << 20)
    assert not sv.wal_read_to_end(sv.parse_waldump_end("pg_waldump: error: out of memory"), 0, 16 << 20)


def test_segment_names() -> None:
    mb16 = 16 * 1024 * 1024
    assert sv.segment_name(11, 0x3D441C0, mb16) == "0000000B0000000000000003"
    assert sv.segment_name(1, (2 << 32) + 5 * mb16 + 7, mb16) == "0000000100000002" + "00000005"
    assert sv.segment_name(2, 0x7FFFFFF, 64 * 1024 * 1024) == "000000020000000000000001"
    for lsn in (0, 1, mb16 - 1, mb16, (7 << 32) + 3 * mb16 + 99):
        assert sv.segment_start(sv.segment_name(1, lsn, mb16), mb16) == lsn - lsn % mb16


def test_fork_point_from_history() -> None:
    history = "1\t0/3000148\tno recovery target specified\n\n2\t0/5A000A0\tno recovery target specified\n"
    assert sv.fork_point(history, 1) == 0x3000148
    assert sv.fork_point(history, 2) == 0x5A000A0
    with pytest.raises(ValueError):
        sv.fork_point(history, 3)
    with pytest.raises(ValueError):
        sv.fork_point("1\tnonsense\n", 1)


def test_compile_statement_placeholders() -> None:
    stmt, names = sv.compile_statement(
        "UPDATE t SET b = b + :delta::numeric, c = ':not' , d = \"x:y\" -- :comment\n"
        "WHERE id = :party_id AND :party = 'a''b:c' AND e LIKE '5%' AND f = $$:q$$ AND g = E'\\':no'")
    assert names == ("delta", "party_id", "party")
    assert stmt == (
        "UPDATE t SET b = b + %(delta)s::numeric, c = ':not' , d = \"x:y\" -- :comment\n"
        "WHERE id = %(party_id)s AND %(party)s = 'a''b:c' AND e LIKE '5%%' AND f = $$:q$$ AND g = E'\\':no'")


def test_report_round_trip(tmp_path: Path) -> None:
    report = sv.Report(
        cluster="c", node="alpha", new_primary="beta", database=DB, old_timeline=1, fork_lsn="0/3000148",
        created_at="2026-11-26T11:00:00Z", compared=True,
        transactions=[sv.SalvageTxn(750, "0/3000200", "2026-11-26T10:59:00+00:00", [751])],
        tables=[sv.TableReport("cdrs", ["call_id"], ["id"], [], ["id", "call_id", "price"], found=2, already_present=1,
                               rows=[sv.RowRecord(750, {"id": 7, "call_id": "c-1", "price": "0.012000"})])],
    )  # fmt: skip
    path = sv.save_report(report, sv.new_report_path(tmp_path / "salvage"))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = sv.load_report(path)
    assert again == report
    d = again.to_dict()
    assert d["status"] == "pending" and d["xids"] == [750] and d["counts"]["rows"] == 1
    assert sv.latest_report(tmp_path / "salvage") == path


# =========================================================================== real servers


def _require_pg() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (runs PostgreSQL as the postgres user)"
    elif not (PG_BIN / "pg_waldump").exists():
        reason = f"PostgreSQL not found in {PG_BIN}"
    else:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            reason = f"no OS user {PG_USER}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _as_pg(*argv: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["runuser", "-u", PG_USER, "--", *argv], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise AssertionError(f"{argv[0]} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


@dataclass
class Server:
    data: Path
    sock: Path
    log: Path

    def start(self) -> None:
        opts = f"-c port={PORT} -c unix_socket_directories='{self.sock}' -c listen_addresses=''"
        _as_pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")

    def running(self) -> bool:
        status = subprocess.run(["runuser", "-u", PG_USER, "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                                 "status"], capture_output=True, timeout=30)
        return status.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            _as_pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def connect(self, dbname: str = DB) -> psycopg.Connection[Any]:
        return psycopg.connect(host=str(self.sock), port=PORT, user="postgres", dbname=dbname, autocommit=True)

    @property
    def dsn(self) -> str:
        return f"host={self.sock} port={PORT} user=postgres dbname={DB}"


def _owned_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir()
    shutil.chown(path, PG_USER, PG_USER)
    path.chmod(mode)
    return path


@pytest.fixture
def base() -> Iterator[Path]:
    """A temp dir whose servers are stopped and which is removed afterwards."""
    _require_pg()
    path = Path(tempfile.mkdtemp(prefix="standby-salvage-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for data in sorted(path.glob("*/PG_VERSION")):
            try:
                Server(data.parent, path, path / "unused.log").stop("immediate")
            except AssertionError:
                pass
        shutil.rmtree(path, ignore_errors=True)


def _server(base: Path, name: str) -> Server:
    s = Server(_owned_dir(base / name), _owned_dir(base / f"sock-{name}"), base / f"{name}.log")
    s.log.touch()
    shutil.chown(s.log, PG_USER, PG_USER)
    return s


def _primary(base: Path, name: str) -> Server:
    """A fresh primary with the softswitch schema in database DB."""
    s = _server(base, name)
    _as_pg(str(PG_BIN / "initdb"), "-D", str(s.data), "-U", "postgres", "--auth-local=trust",
           "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions")
    with open(s.data / "postgresql.conf", "a") as f:
        # wal_log_hints: the old primary must stay rewindable (pg_rewind comes after salvage).
        f.write("\nwal_log_hints = on\nwal_keep_size = '256MB'\nfsync = off\n")
    s.start()
    with s.connect("postgres") as conn:
        conn.execute(f"CREATE DATABASE {DB}")
    with s.connect() as conn:
        softswitch.ensure_schema(conn)
    return s


@pytest.fixture
def pair(base: Path) -> tuple[Path, Server, Server]:
    """An old primary and its async standby, each with a private socket dir."""
    a = _primary(base, "alpha")
    b = _server(base, "beta")
    _as_pg(str(PG_BIN / "pg_basebackup"), "-D", str(b.data), "-R", "-X", "stream", "-c", "fast",
           "-h", str(a.sock), "-p", str(PORT), "-U", "postgres")
    b.start()
    return base, a, b


def _calls(prefix: str, n: int, start: int = 0) -> list[softswitch.CallRequest]:
    return [softswitch.CallRequest(f"{prefix}-{i}", 1 + i % 7, 1 + i % 3, 17 + 13 * i) for i in range(start, start + n)]


def _place(server: Server, calls: list[softswitch.CallRequest]) -> dict[str, int]:
    """call_id -> CDR id, through the softswitch's own call path (one transaction per call)."""

    async def run() -> dict[str, int]:
        pool = softswitch.Pool(server.dsn, size=1, connect_timeout_s=5)
        try:
            return {c.call_id: (await softswitch.place_call(pool, c)).cdr_id for c in calls}
        finally:
            await pool.close()

    return asyncio.run(run())


def _wait_replayed(primary: Server, standby: Server) -> None:
    with primary.connect() as p, standby.connect() as s:
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + 30
        while not s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "standby did not catch up"
            time.sleep(0.05)


def _tree_digest(path: Path) -> dict[str, str]:
    out = {}
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _balances(conn: psycopg.Connection[Any]) -> tuple[dict[tuple[str, int], Decimal], dict[tuple[str, int], Decimal]]:
    """(balances, sums of deltas) per (party, id)."""
    bal = {("account", i): b for i, b in conn.execute("SELECT id, balance FROM accounts")}
    bal |= {("vendor", i): b for i, b in conn.execute("SELECT id, balance FROM vendors")}
    sums = {k: Decimal(0) for k in bal}
    for party, pid, s in conn.execute("SELECT party, party_id, sum(delta) FROM balance_deltas GROUP BY 1, 2"):
        sums[(party, pid)] = s
    return bal, sums


def _expected(calls: list[softswitch.CallRequest]) -> dict[tuple[str, int], Decimal]:
    out: dict[tuple[str, int], Decimal] = Counter()  # type: ignore[assignment]
    for c in calls:
        price, cost = softswitch.rate_call(c.account_id, c.vendor_id, c.duration_s)
        out[("account", c.account_id)] -= price
        out[("vendor", c.vendor_id)] += cost
    return out


def _write_config(base: Path, a: Server, b: Server) -> Path:
    pw = base / "replication.password"
    pw.write_text("not-used\n")
    pw.chmod(0o600)
    cfg = {
        "cluster": "salvage-test",
        "mode": "warm",
        "preferred_primary": "alpha",
        "nodes": {
            name: {
                # Loopback addresses where nothing listens: the peer is never reached over TCP.
                "public": {"address": f"127.0.0.{n}/8", "interface": "lo"},
                "private": {"address": f"127.0.1.{n}/8", "interface": "lo"},
                "postgres": {"data_dir": str(s.data), "socket_dir": str(s.sock), "bin_dir": str(PG_BIN)},
                "state_dir": str(base / f"state-{name}"),
            }
            for name, n, s in (("alpha", 11, a), ("beta", 12, b))
        },
        "postgres": {"port": PORT, "replication_password_file": str(pw)},
        "salvage": softswitch.salvage_spec(DB),
    }
    path = base / "standby.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def test_salvage_after_async_failover(pair: tuple[Path, Server, Server]) -> None:
    base, a, b = pair
    pre, divergent, later = _calls("pre", 5), _calls("div", 35), _calls("new", 3)
    retried = divergent[4]  # committed on alpha, its client got no answer and retried on beta

    _place(a, pre)
    _wait_replayed(a, b)
    b.stop()  # replication stops: everything alpha commits from now on is alpha's alone
    old_ids = _place(a, divergent)
    a.stop()
    b.start()
    _as_pg(str(PG_BIN / "pg_ctl"), "-D", str(b.data), "-w", "-t", "60", "promote")
    new_ids = _place(b, [*later, retried])
    collided = set(old_ids.values()) & set(new_ids.values())
    assert collided, "the scenario must reuse an id alpha gave out after the fork"

    history = (b.data / "pg_wal" / "00000002.history").read_text()
    fork = sv.fork_point(history, 1)
    with b.connect() as conn:
        assert sv.fork_point(sv.read_timeline_history(conn, 2), 1) == fork

    # A fence may leave a standby.signal behind; salvage must still read alpha as the primary it was.
    (a.data / "standby.signal").touch()
    before, entries = _tree_digest(a.data), sorted(os.listdir(base))

    with sv.isolated_server(a.data, PG_BIN) as server:
        assert server.removed_signals == ("standby.signal",)
        with server.connect(DB, "postgres") as conn:
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('listen_addresses', 'default_transaction_read_only', 'archive_mode', 'port')").fetchall())
            assert settings == {"listen_addresses": "", "default_transaction_read_only": "on",
                                "archive_mode": "off", "port": str(server.port)}
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO cdrs (call_id) VALUES ('nope')")
        assert server.copy_dir.parent.parent == a.data.parent
    assert not server.copy_dir.parent.exists()

    with b.connect() as new_primary:
        report = sv.collect(a.data, fork_lsn=fork, old_timeline=1, tables=SPEC.tables, database=DB, bin_dir=PG_BIN,
                            new_primary=new_primary, cluster="salvage-test", node="alpha", new_primary_name="beta")
    assert _tree_digest(a.data) == before, "salvage changed the old data directory"
    assert sorted(os.listdir(base)) == entries, "salvage left files behind"
    (a.data / "standby.signal").unlink()

    # Exactly alpha's post-fork calls that beta lacks: a CDR and two deltas each, grouped by transaction.
    salvaged = {c.call_id for c in divergent} - {retried.call_id}
    cdrs, deltas = report.tables
    assert (cdrs.found, cdrs.already_present, deltas.found, deltas.already_present) == (35, 1, 70, 2)
    assert sorted(r.values["call_id"] for r in cdrs.rows) == sorted(salvaged)
    assert sorted((r.values["call_id"], r.values["party"]) for r in deltas.rows) == sorted(
        (c, p) for c in salvaged for p in ("account", "vendor"))
    assert {r.values["call_id"]: r.values["id"] for r in cdrs.rows} == {c: old_ids[c] for c in salvaged}
    by_xid = Counter(r.xid for t in report.tables for r in t.rows)
    assert len(by_xid) == 34 and set(by_xid.values()) == {3} and set(by_xid) <= set(report.xids)
    assert {r.xid for r in cdrs.rows} == {r.xid for r in deltas.rows}
    assert isinstance(cdrs.rows[0].values["price"], str) and "T" not in str(cdrs.rows[0].values["connect_time"])

    # The operator copies the report to the primary's state dir and applies it there.
    config = _write_config(base, a, b)
    path = sv.save_report(report, sv.new_report_path(base / "state-beta" / "salvage"))
    runner = CliRunner()
    shown = runner.invoke(salvage_cli, ["show", "--config", str(config), "--node", "beta"])
    assert shown.exit_code == 0, shown.output
    assert "34 to salvage" in shown.output and "status pending" in shown.output

    refused = runner.invoke(salvage_cli, ["apply", "--config", str(config), "--node", "alpha", str(path), "--yes"])
    assert refused.exit_code == 1 and "current primary" in refused.output

    applied = runner.invoke(salvage_cli, ["apply", "--config", str(config), "--node", "beta", "--yes"])
    assert applied.exit_code == 0, applied.output
    assert "102 row(s) inserted in 34 transaction(s), 0 skipped" in applied.output
    done = sv.load_report(path)
    assert done.status is sv.ReportStatus.APPLIED and done.applies[-1].inserted == {"cdrs": 34, "balance_deltas": 68}

    with b.connect() as conn:
        got = dict(conn.execute("SELECT call_id, id FROM cdrs").fetchall())
        assert set(got) == {c.call_id for c in [*pre, *divergent, *later]}
        renumbered = {r.key["call_id"]: (r.old, r.new) for r in done.applies[-1].renumbered if r.table == "cdrs"}
        for call_id in salvaged:
            if old_ids[call_id] in collided:
                assert got[call_id] != old_ids[call_id] and renumbered[call_id] == (old_ids[call_id], got[call_id])
        kept = [c for c in salvaged if got[c] == old_ids[c]]
        assert kept, "ids free on the new primary are kept"
        bal, sums = _balances(conn)
        assert bal == sums, "every balance is the sum of its deltas"
        expected = _expected([*pre, *divergent, *later])
        assert all(bal[k] == expected.get(k, 0) for k in bal), "balances as if every call had landed once"

    # Kept ids lie below the new primary's sequence: later calls get fresh ids, no duplicate key.
    assert len(_place(b, _calls("after", 40))) == 40

    with b.connect() as conn:
        snapshot = _balances(conn), conn.execute("SELECT count(*) FROM cdrs").fetchone()
    # A caller's connection outside autocommit works too (and is left as it was).
    with psycopg.connect(b.dsn, autocommit=False) as conn:
        again = sv.apply_report(conn, sv.load_report(path))
        assert again.inserted_total == 0 and again.skipped_total == 102 and again.renumbered == []
        assert not conn.autocommit
    with b.connect() as conn:
        assert (_balances(conn), conn.execute("SELECT count(*) FROM cdrs").fetchone()) == snapshot

    shown = runner.invoke(salvage_cli, ["show", "--json", str(path)])
    assert shown.exit_code == 0 and '"status": "applied"' in shown.output

    # The rejoin hook, unable to reach the new primary over the network, keeps every
    # post-fork row (retried call included); applying that report adds nothing.
    from standby.config import load

    cfg = load(config)
    rejoin_path, rows = sv.salvage_for_rejoin(cfg, "alpha", sv.format_lsn(fork), 1)
    assert rejoin_path is not None and rejoin_path.parent == base / "state-alpha" / "salvage" and rows == 105
    assert _tree_digest(a.data) == {k: v for k, v in before.items() if k != "standby.signal"}
    with b.connect() as conn:
        rec = sv.apply_report(conn, sv.load_report(rejoin_path))
    assert rec.inserted_total == 0 and rec.skipped_total == 105


def test_apply_renumbers_safely_and_resumes_after_a_failure(base: Path) -> None:
    p = _primary(base, "primary")
    _place(p, _calls("x", 3))  # cdrs ids 1..3, deltas 1..6
    with p.connect() as conn:
        conn.execute("DELETE FROM cdrs WHERE id = 3")  # a free id the sequence has passed
    cdr_cols = ["id", "call_id", "account_id", "vendor_id", "duration_s", "price", "cost", "connect_time"]
    delta_cols = ["id", "call_id", "party", "party_id", "delta", "created"]

    def cdr(xid: int, id_: int, call_id: str, account: int) -> sv.RowRecord:
        return sv.RowRecord(xid, dict(zip(cdr_cols, [id_, call_id, account, 1, 60, "0.011000", "0.006500",
                                                     "2026-11-26 10:00:00+00"])))

    def delta(xid: int, id_: int, call_id: str, party: str, amount: str) -> sv.RowRecord:
        return sv.RowRecord(xid, dict(zip(delta_cols, [id_, call_id, party, 1, amount, "2026-11-26 10:00:00+00"])))

    cdrs_t, deltas_t = SPEC.tables
    report = sv.Report(
        cluster="c", node="old", new_primary="primary", database=DB, old_timeline=1, fork_lsn="0/3000000",
        created_at="2026-11-26T10:00:01Z", compared=True,
        transactions=[sv.SalvageTxn(100, "0/3000100", None), sv.SalvageTxn(101, "0/3000200", None),
                      sv.SalvageTxn(102, "0/3000300", None)],
        tables=[
            sv.TableReport(cdrs_t.name, cdrs_t.key, cdrs_t.renumber, cdrs_t.after_insert, cdr_cols,
                           rows=[cdr(100, 3, "s-1", 1), cdr(101, 2, "s-2", 1), cdr(102, 9, "s-3", 999)]),
            sv.TableReport(deltas_t.name, deltas_t.key, deltas_t.renumber, deltas_t.after_insert, delta_cols,
                           rows=[delta(100, 7, "s-1", "account", "-0.011000"), delta(100, 8, "s-1", "vendor", "0.006500"),
                                 delta(101, 5, "s-2", "account", "-0.011000")]),
        ],
    )  # fmt: skip
    path = sv.save_report(report, base / "report.json")
    with p.connect() as conn:
        before = _balances(conn)[0]
        with pytest.raises(sv.SalvageError, match="transaction 102"):
            sv.apply_file(conn, path)  # s-3's account does not exist: its transaction rolls back
        failed = sv.load_report(path)
        assert failed.status is sv.ReportStatus.PENDING and "999" in (failed.applies[-1].error or "")
        assert failed.applies[-1].inserted == {"cdrs": 2, "balance_deltas": 3}
        got = dict(conn.execute("SELECT call_id, id FROM cdrs WHERE call_id LIKE 's-%'").fetchall())
        # 3: free and below the sequence, kept; 2: taken, renumbered; 7 and 8: free but above the
        # sequence (nextval would hand them out again), renumbered; 5: taken, renumbered.
        assert got["s-1"] == 3 and got["s-2"] not in (2, 3)
        ids = dict(conn.execute("SELECT call_id || '/' || party, id FROM balance_deltas WHERE call_id LIKE 's-%'"))
        assert all(i > 6 for i in ids.values()) and len(set(ids.values())) == 3
        bal = _balances(conn)[0]
        assert bal[("account", 1)] == before[("account", 1)] - 2 * Decimal("0.011")  # s-1 and s-2
        assert bal[("vendor", 1)] == before[("vendor", 1)] + Decimal("0.0065")

        # The operator fixes the row; applying again skips what is there and adds the rest.
        fixed = sv.load_report(path)
        fixed.tables[0].rows[2].values["account_id"] = 2
        sv.save_report(fixed, path)
        _, rec = sv.apply_file(conn, path)
        assert rec.inserted == {"cdrs": 1, "balance_deltas": 0} and rec.skipped == {"cdrs": 2, "balance_deltas": 3}
        assert sv.load_report(path).status is sv.ReportStatus.APPLIED
        assert len(_place(p, _calls("y", 10))) == 10  # no id handed out twice


# =========================================================================== M9: apply where the report is


def test_m9_salvage_apply_on_the_rejoined_standby_reaches_the_primary(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The report lives on the rejoined old primary, now a standby: `salvage apply` there puts the rows
    into the new primary over the private network (TLS verify-full in the lab), once."""
    lab = start_pair(lab_factory("async"))
    with under_load(lab, tmp_path) as run:
        _diverge_async(lab)
    lost = set(verify(lab, run, on="beta")["missing_acked"])
    assert lost, "the scenario should have made beta miss acknowledged calls"
    _out, report = _rejoin(lab)
    assert report is not None
    applied = lab.standby("alpha", "salvage", "apply", "--yes", check=False)  # its latest report, where it is
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "on beta (over the private network)" in applied.stdout
    secret = lab.spec.secret("replication.password").read_text().strip()
    assert secret not in applied.stdout + applied.stderr
    verdict = verify(lab, run, on="beta")
    assert verdict["missing_acked"] == [] and not verdict["duplicate_call_ids"]
    assert {c for c, _acked, _now in verdict["ack_id_mismatch"]} <= lost  # only renumbered, as the policy says
    assert [v for v in verdict["violations"] if "another CDR id" not in v] == []
    assert sv.load_report(report).status is sv.ReportStatus.APPLIED  # recorded in the report on alpha
    again = lab.standby("alpha", "salvage", "apply", "--yes", check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 row(s) inserted" in again.stdout
    assert verify(lab, run, on="beta") == verdict  # applying twice changes nothing
