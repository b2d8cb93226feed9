"""The road back on the lab: switchover, rejoin of a failed primary, switchback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from standby import salvage as sv
from standby.act import postgres as pgact
from standby.lab import Lab, netns
from standby.lab.pair import LoadRun, agent_state, holders, primaries, start_pair, under_load, verify, wait_ready


@pytest.fixture
def pair(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    return start_pair(lab_factory("sync"))


def streaming_standby(lab: Lab, node: str) -> bool:
    st = agent_state(lab, node)
    return bool(st) and st["postgres"]["state"] == "standby" and st["postgres"]["streaming"]


def test_switchover_back_and_forth_under_load_loses_nothing(pair: Lab, tmp_path: Path) -> None:
    with under_load(pair, tmp_path) as run:
        for i in range(10):
            new, old = ("beta", "alpha") if i % 2 == 0 else ("alpha", "beta")
            res = pair.standby(old, "switchover", check=False)
            assert res.returncode == 0, res.stdout + res.stderr
            assert primaries(pair) == [new] and holders(pair) == [new]
            pair.wait_for(f"{old} streaming from {new}", lambda: streaming_standby(pair, old), timeout_s=20)
            time.sleep(0.5)
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert verdict["acked"] > 0 and run.probe is not None and run.probe.dual == []
    # Back where it started, with sync restored.
    pair.wait_for("beta in sync again", lambda: agent_state(pair, "beta")["state"]["eligible"], timeout_s=20)


def _walreceiver(lab: Lab, node: str) -> int:
    """The pid of ``node``'s WAL receiver (PostgreSQL names its processes in their command line)."""
    for pid in netns.pids(lab.netns(node)):
        title = netns.cmdline(pid)
        if title.startswith(b"postgres:") and b" walreceiver" in title:  # after a cluster_name, if one is set
            return pid
    raise AssertionError(f"{node} has no WAL receiver")


def test_switchover_that_cannot_complete_aborts_and_loses_nothing(pair: Lab, tmp_path: Path) -> None:
    # The refusal under test is the abort, not the precondition: beta streaming again after the module's
    # previous test (CI run 36 met "beta is not a streaming standby" on a slow machine).
    wait_ready(pair)
    with under_load(pair, tmp_path) as run:
        # beta still believes it streams, but no WAL reaches it any more: its WAL receiver is stuck (stopped).
        # Not by cutting beta's private link: the receiver's connection times out within a second or so, and
        # the switchover, its command still starting, then found beta not streaming and refused at its
        # precondition (CI runs 36 and 37, the same message after the wait above).
        receiver = _walreceiver(pair, "beta")
        os.kill(receiver, signal.SIGSTOP)
        try:
            res = pair.standby("alpha", "switchover", "--timeout", "3", check=False)
        finally:
            os.kill(receiver, signal.SIGCONT)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "aborted, nothing lost" in res.stderr and "alpha serves again" in res.stderr
        assert primaries(pair) == ["alpha"] and holders(pair) == ["alpha"]
        time.sleep(2.0)
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert agent_state(pair, "beta")["postgres"]["state"] == "standby"
    assert agent_state(pair, "alpha")["suspended"] is False and agent_state(pair, "beta")["suspended"] is False


def _pg_control(lab: Lab, node: str) -> str:
    return hashlib.sha256((lab.node(node).pgdata / "global" / "pg_control").read_bytes()).hexdigest()


def test_rejoin_refused_when_unsafe_and_nothing_changes(pair: Lab) -> None:
    # On the live primary: refused, it still accepts writes.
    res = pair.standby("alpha", "rejoin", "--yes", check=False)
    assert res.returncode == 1 and "writable primary" in res.stderr
    # On a standby streaming from the primary: nothing to rejoin, said as such, and nothing changed.
    before = pgact.running_pid(pair.node("beta").pgdata)
    res = pair.standby("beta", "rejoin", "--yes", check=False)
    assert res.returncode == 0 and "nothing to rejoin: beta already streams from alpha" in res.stdout, res
    assert before is not None and pgact.running_pid(pair.node("beta").pgdata) == before, "its server was restarted"
    # After a failover, with the new primary cut off: refused, and the old data untouched.
    pair.crash("alpha")
    pair.wait_for("beta to take over", lambda: primaries(pair) == ["beta"], timeout_s=20)
    pair.heal()
    pair.start_agent("alpha")
    pair.wait_for("alpha's agent to fence it", lambda: agent_state(pair, "alpha").get("state", {}).get("fenced"),
                  timeout_s=20)
    before = _pg_control(pair, "alpha")
    pair.link("beta", "private", False)
    pair.link("beta", "public", False)
    try:
        res = pair.standby("alpha", "rejoin", "--yes", check=False)
    finally:
        pair.heal()
    assert res.returncode == 1 and "unreachable" in res.stderr
    assert _pg_control(pair, "alpha") == before


def test_rejoin_after_failover_then_switchback(pair: Lab, tmp_path: Path) -> None:
    with under_load(pair, tmp_path) as run:
        pair.crash("alpha")
        pair.wait_for("beta to take over", lambda: primaries(pair) == ["beta"] and holders(pair) == ["beta"],
                      timeout_s=20)
        time.sleep(1.0)
        pair.heal()
        pair.start_agent("alpha")
        pair.wait_for("alpha fenced", lambda: agent_state(pair, "alpha").get("state", {}).get("fenced"), timeout_s=20)
        res = pair.standby("alpha", "rejoin", "--yes", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "rejoined by rewind" in res.stdout or "rejoined by none needed" in res.stdout
        pair.wait_for("alpha streaming and in sync", lambda: streaming_standby(pair, "alpha")
                      and agent_state(pair, "alpha")["state"]["eligible"], timeout_s=30)
        res = pair.standby("beta", "switchback", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert primaries(pair) == ["alpha"] and holders(pair) == ["alpha"]
        pair.wait_for("beta streaming from alpha", lambda: streaming_standby(pair, "beta"), timeout_s=20)
        time.sleep(1.0)
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert run.probe is not None and run.probe.dual == []
    again = pair.standby("alpha", "switchback", check=False)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def _diverge_async(lab: Lab, switch_wal_first: bool = False) -> None:
    """Under load, let alpha acknowledge calls beta never receives, then isolate alpha so beta takes over."""
    if switch_wal_first:
        with lab.pg_connect("alpha", autocommit=True) as c:
            c.execute("CHECKPOINT")
            c.execute("SELECT pg_switch_wal()")
        time.sleep(0.5)
    lab.loss("alpha", "private", 100)  # no more WAL to beta; heartbeats still flow on the public side
    time.sleep(3.0)
    lab.link("alpha", "public", False)  # now alpha is isolated: it fences, beta (within its lag bound) promotes
    lab.wait_for("beta to take over", lambda: primaries(lab) == ["beta"] and holders(lab) == ["beta"], timeout_s=20)
    time.sleep(1.0)


def _async_pair_that_lost_calls(lab_factory, tmp_path: Path) -> tuple[Lab, LoadRun, set[str]]:  # type: ignore[no-untyped-def]
    """An async pair whose beta took over without calls alpha had acknowledged."""
    lab = start_pair(lab_factory("async"))
    with under_load(lab, tmp_path) as run:
        _diverge_async(lab)
    lost = set(verify(lab, run, on="beta")["missing_acked"])
    assert lost, "the scenario should have made beta miss acknowledged calls"
    return lab, run, lost


def _heal_until_alpha_fenced_hearing_beta(lab: Lab) -> None:
    lab.heal()
    lab.wait_for("alpha fenced and hearing beta", lambda: (agent_state(lab, "alpha").get("peer_view") or {}).get("db")
                 == "primary" and agent_state(lab, "alpha")["state"]["fenced"], timeout_s=20)


def _rejoin(lab: Lab) -> tuple[str, Path | None]:
    _heal_until_alpha_fenced_hearing_beta(lab)
    res = lab.standby("alpha", "rejoin", "--yes", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    found = [line for line in res.stdout.splitlines() if line.startswith("salvage: ")]
    report = Path(found[0].split(" are in ")[1].split(";")[0]) if found else None
    return res.stdout, report


def test_async_failover_salvage_brings_back_every_lost_call(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab, run, lost = _async_pair_that_lost_calls(lab_factory, tmp_path)
    out, report = _rejoin(lab)
    assert "rejoined by rewind" in out and report is not None
    listed = lab.standby("alpha", "salvage", "show", "--json", str(report))
    doc = json.loads(listed.stdout)
    cdrs = next(t for t in doc["tables"] if t["name"] == "cdrs")
    salvaged = {r["values"]["call_id"] for r in cdrs["rows"]}
    assert lost <= salvaged  # every acknowledged call beta never got
    # Anything more is a call alpha committed whose answer never reached the client (cut mid-call):
    # committed on the old primary, so salvaged too, but never acknowledged.
    acked = {c["call_id"] for c in map(json.loads, run.history.read_text().splitlines()) if c["outcome"] == "ack"}
    assert not (salvaged - lost) & acked
    applied = lab.standby("beta", "salvage", "apply", "--yes", str(report), check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    verdict = verify(lab, run, on="beta")
    assert verdict["missing_acked"] == [] and not verdict["duplicate_call_ids"]
    # The stated conflict policy: a salvaged CDR whose id was reused after the fork gets a new id
    # and keeps its call id. Nothing else may differ (balances included).
    renumbered = {c for c, _acked, _now in verdict["ack_id_mismatch"]}
    assert renumbered <= lost
    assert [v for v in verdict["violations"] if "another CDR id" not in v] == []
    again = lab.standby("beta", "salvage", "apply", "--yes", str(report), check=False)
    assert again.returncode == 0
    assert verify(lab, run, on="beta") == verdict  # applying twice changes nothing


def test_rejoin_falls_back_to_a_clone_when_the_wal_is_gone(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = start_pair(lab_factory("async"))
    with under_load(lab, tmp_path) as run:
        _diverge_async(lab, switch_wal_first=True)
    wal = lab.node("alpha").pgdata / "pg_wal"
    ctl = lab.run("alpha", ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_controldata",
                            str(lab.node("alpha").pgdata)]).stdout
    redo = next(line.split(":", 1)[1].strip() for line in ctl.splitlines() if line.startswith("Latest checkpoint's REDO WAL file"))
    # Everything before the last checkpoint's segment goes (as if recycled): the WAL back to the
    # common checkpoint that pg_rewind needs is gone; the server itself still has what it needs.
    for seg in wal.iterdir():
        if len(seg.name) == 24 and seg.name[8:] < redo[8:]:
            seg.unlink()
    out, report = _rejoin(lab)
    assert "rejoined by clone" in out and "pg_rewind impossible" in out
    assert report is not None and report.exists()  # the divergent calls were saved before the clone
    assert "kept at" in out  # and the old directory is kept until they are dealt with
    verdict = verify(lab, run, on="beta")
    assert not verdict["duplicate_call_ids"]


def test_i13_rejoin_clones_when_the_new_primary_removed_the_wal_a_rewind_starts_from(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """A rewound directory replays from the last common checkpoint's redo, with WAL from the new primary
    only. When the new primary has written more than it keeps (wal_keep_size; an automatic failover makes
    no slot for the old primary), that WAL is gone: a rewind would leave a directory that never streams,
    and every later rejoin would resume it. The rejoin clones instead, and nothing is lost."""
    # The slot for the old primary is given up past max_slot_wal_keep_size, like a standby gone for long.
    lab, rows = _failover_then_write_past_wal_keep_size(lab_factory, "max_slot_wal_keep_size_mb = 64\n")
    out = _rejoin_and_check_rows(lab, rows)
    assert "rejoined by clone" in out and "no longer has WAL segment" in out, out


def test_i13_a_failover_keeps_for_the_rejoin_the_wal_from_before_the_fork(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """The new primary reserves the old primary's slot before it promotes: the WAL from its last
    restartpoint on (before the fork) stays until the old primary rejoins, however much is written in
    between, so the rejoin rewinds past wal_keep_size."""
    lab, rows = _failover_then_write_past_wal_keep_size(lab_factory, "")
    with lab.pg_connect("beta", autocommit=True) as c:
        tli = int(str((c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone() or [""])[0])[:8], 16)
        history = (c.execute("SELECT pg_read_file(%s)", (f"pg_wal/{tli:08X}.history",)).fetchone() or [""])[0]
        fork = sv.format_lsn(sv.fork_point(str(history), tli - 1))
        held = c.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, restart_lsn) > 0 FROM pg_replication_slots "
                         "WHERE slot_name = 'standby_alpha'", (fork,)).fetchone()
    assert held is not None and held[0], f"no slot for alpha on beta holding WAL from before the fork {fork}"
    out = _rejoin_and_check_rows(lab, rows)
    assert "rejoined by rewind" in out, out


def _failover_then_write_past_wal_keep_size(lab_factory, postgres_extra: str) -> tuple[Lab, int]:  # type: ignore[no-untyped-def]
    """A sync pair with wal_keep_size 32 MB; alpha crashes, beta takes over and writes about 150 MB of WAL."""
    lab = lab_factory("sync")
    text = lab.config_path.read_text()
    lab.config_path.write_text(text.replace("[postgres]\n", "[postgres]\nwal_keep_size_mb = 32\n" + postgres_extra, 1))
    start_pair(lab)
    with lab.pg_connect("alpha", dbname="softswitch", autocommit=True) as c:
        c.execute("CREATE TABLE bulk (id bigint PRIMARY KEY, pad text NOT NULL)")
        c.execute("CHECKPOINT")
    lab.crash("alpha")
    lab.wait_for("beta to take over", lambda: primaries(lab) == ["beta"], timeout_s=20)
    with lab.pg_connect("beta", dbname="softswitch", autocommit=True) as c:
        for lo in range(0, 120_000, 20_000):  # about 25 MB of WAL each, past wal_keep_size several times
            c.execute("INSERT INTO bulk SELECT g, repeat(md5(g::text), 30) FROM generate_series(%s::bigint, %s::bigint) g",
                      (lo, lo + 19_999))
            c.execute("SELECT pg_switch_wal()")
        c.execute("CHECKPOINT")
        rows = int((c.execute("SELECT count(*) FROM bulk").fetchone() or [0])[0])
    lab.start_agent("alpha")
    return lab, rows


def _rejoin_and_check_rows(lab: Lab, rows: int) -> str:
    """Rejoin alpha; it streams and replays every row beta has, and one written after the rejoin."""
    _heal_until_alpha_fenced_hearing_beta(lab)
    res = lab.standby("alpha", "rejoin", "--yes", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    lab.wait_for("alpha streaming", lambda: streaming_standby(lab, "alpha"), timeout_s=30)
    with lab.pg_connect("beta", dbname="softswitch", autocommit=True) as c:
        c.execute("INSERT INTO bulk VALUES (-1, 'after the rejoin')")
    with lab.pg_connect("alpha", dbname="softswitch", autocommit=True) as a:
        replayed = lambda: (a.execute("SELECT count(*) FROM bulk").fetchone() or [0])[0] == rows + 1  # noqa: E731
        lab.wait_for("alpha to replay every row of beta's", replayed, timeout_s=30)
    return res.stdout


# A rejoin that stops after pg_rewind (here: the write of the standby's settings refused, as libfaketime
# once made it) leaves a directory that only WAL from the new primary can make consistent.
_HALF_REJOIN = """
import sys
from standby import config
from standby.act import postgres as act, rejoin as rj
from standby.salvage import salvage_for_rejoin

def refused(*args, **kwargs):
    raise act.PostgresActionError("writing standby.pgpass as postgres failed")

cfg = config.load(sys.argv[1])
rj.act.configure_as_standby = refused
try:
    rj.rejoin(cfg, rj.Rejoining.peer(cfg, "alpha"), state_dir=cfg.state_dir_for("alpha"), salvage=salvage_for_rejoin)
except act.PostgresActionError as e:
    print("stopped:", e)
    sys.exit(3)
"""


def test_chaos_seed_103_rejoin_resumes_after_a_rewind_that_never_started(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import sys

    lab, run, _lost = _async_pair_that_lost_calls(lab_factory, tmp_path)
    _heal_until_alpha_fenced_hearing_beta(lab)
    pid_file = lab.node("alpha").pgdata / "postmaster.pid"
    lab.wait_for("alpha's fence to stop its server", lambda: not pid_file.exists(), timeout_s=30)
    half = lab.run("alpha", [sys.executable, "-c", _HALF_REJOIN, str(lab.config_path)], check=False)
    assert half.returncode == 3, half.stdout + half.stderr
    assert (lab.node("alpha").pgdata / "backup_label").exists()  # rewound, never started
    # The operator (or the campaign) tries again: it resumes, and the salvage of the first try comes out.
    res = lab.standby("alpha", "rejoin", "--yes", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # The rows only alpha had, found by the first try, come out now (recovering the rewound directory
    # alone instead found "nothing to rewind", and they were never offered again).
    found = [line for line in res.stdout.splitlines() if line.startswith("salvage: ")]
    assert found, res.stdout
    assert "resuming" in res.stdout
    report = found[0].split(" are in ")[1].split(";")[0]
    lab.wait_for("alpha streaming", lambda: streaming_standby(lab, "alpha"), timeout_s=30)
    applied = lab.standby("beta", "salvage", "apply", "--yes", report, check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    verdict = verify(lab, run, on="beta")
    assert verdict["missing_acked"] == [] and not verdict["duplicate_call_ids"]
    # The standby replays the new primary's history, not one of its own.
    with lab.pg_connect("beta", autocommit=True) as c:
        c.execute("CREATE TABLE after_rejoin (x int)")
        c.execute("INSERT INTO after_rejoin VALUES (1)")
    lab.wait_for("alpha replays beta's new writes", lambda: _count(lab, "alpha", "after_rejoin") == 1, timeout_s=20)


def _count(lab: Lab, node: str, table: str) -> int | None:
    try:
        with lab.pg_connect(node, autocommit=True) as c:
            row = c.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(row[0]) if row else None
    except Exception:  # noqa: BLE001 - not replayed yet: the wait asks again
        return None
