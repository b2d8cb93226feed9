"""The chaos schedule (reproducible from a seed) and the campaign verdict (pure judgement)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from standby.lab import chaos
from standby.lab.chaos import ALL_KINDS, Kind, Target, faults, long_freeze_s, parse_kinds
from standby.lab.chaos_verdict import judge


def first(seed: int, n: int = 50, kinds: tuple[Kind, ...] = ALL_KINDS, long_freeze: float = 1.5,
          followers: tuple[str, ...] = ()) -> list:
    return list(itertools.islice(faults(seed, kinds, long_freeze, followers), n))


def test_the_same_seed_draws_the_same_faults_and_another_seed_others() -> None:
    assert first(3) == first(3)
    assert first(3) != first(4)
    assert [f.number for f in first(3, 10)] == list(range(1, 11))


def test_every_kind_comes_up_and_each_fault_is_complete() -> None:
    drawn = first(1, 400, followers=("gamma", "delta"))
    assert {f.kind for f in drawn} == set(Kind)
    for f in drawn:
        assert f.hold_s > 0 and f.quiet_s > 0
        assert (f.net in ("public", "private")) == (f.kind in (Kind.LINK_DOWN, Kind.LOSS))
        assert (f.percent is not None) == (f.kind in (Kind.LOSS, Kind.WAN_LOSS))
        assert (f.offset_s is not None) == (f.kind is Kind.CLOCK_JUMP)
        if f.kind is Kind.CLOCK_JUMP:
            assert 60 <= abs(f.offset_s) <= 600  # type: ignore[arg-type]
        if f.kind is Kind.SWITCHOVER:
            assert f.target is Target.PRIMARY


NEW_KINDS = (Kind.BUSY_PRIMARY, Kind.STANDBY_LONG_FREEZE, Kind.MAINTENANCE_LEFT_ON, Kind.API_FLOOD,
             Kind.HEARTBEAT_REPLAY, Kind.POSTGRES_FREEZE, Kind.WAL_DISK_HANG)


def test_new_kinds_are_drawn_reproducibly_with_what_each_needs() -> None:
    drawn = first(5, 600, long_freeze=7.5)
    assert drawn == first(5, 600, long_freeze=7.5)
    by_kind = {k: [f for f in drawn if f.kind is k] for k in NEW_KINDS}
    assert all(by_kind.values()), {k.value: len(v) for k, v in by_kind.items()}
    for f in by_kind[Kind.BUSY_PRIMARY]:
        assert f.target is Target.PRIMARY and 3.0 <= f.hold_s <= 4.0
    for f in by_kind[Kind.STANDBY_LONG_FREEZE]:
        assert f.target is Target.STANDBY and f.hold_s > 7.5
    assert {f.target for f in by_kind[Kind.MAINTENANCE_LEFT_ON]} == {Target.PRIMARY, Target.BOTH}
    assert all(f.connections and f.connections >= 50 for f in by_kind[Kind.API_FLOOD])
    assert all(f.connections is None for f in drawn if f.kind is not Kind.API_FLOOD)
    assert "on both nodes" in next(f for f in drawn if f.target is Target.BOTH).describe()


def test_long_freeze_outlasts_degrade_or_twice_the_failover_timeout() -> None:
    assert long_freeze_s(750) == 1.5
    assert long_freeze_s(750, degrade_after_s=6.0) == 6.0
    # The same seed with another bound changes only the long freezes' holds.
    a, b = first(8, 300, long_freeze=1.5), first(8, 300, long_freeze=20.0)
    assert [f.kind for f in a] == [f.kind for f in b]
    assert all(y.hold_s > 20.0 for x, y in zip(a, b) if x.kind is Kind.STANDBY_LONG_FREEZE)


def test_kinds_whose_module_is_missing_are_left_out_of_the_default_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on an installation without the flood module: neither the flood nor the replay (both in it).
    monkeypatch.setattr(chaos.importlib.util, "find_spec",
                        lambda name, *a: None if name == "standby.lab.flood" else object())
    missing = {Kind.API_FLOOD, Kind.HEARTBEAT_REPLAY}
    assert not missing & set(parse_kinds(None))
    assert set(NEW_KINDS) - missing <= set(parse_kinds(None))
    assert not missing & {f.kind for f in first(2, 400, parse_kinds(None))}
    with pytest.raises(ValueError, match="standby.lab.flood"):
        parse_kinds("crash,api-flood")


def test_every_kind_is_drawn_on_this_installation() -> None:
    """A kind gated on a module that does not exist would silently never be drawn (heartbeat-replay was)."""
    assert set(parse_kinds(None)) == set(Kind)


def test_kinds_restrict_the_draw() -> None:
    assert {f.kind for f in first(2, 100, (Kind.CRASH, Kind.FREEZE))} == {Kind.CRASH, Kind.FREEZE}
    with pytest.raises(ValueError):
        next(faults(1, ()))


def test_parse_kinds() -> None:
    assert parse_kinds(None) == chaos.available_kinds() == parse_kinds("")
    assert parse_kinds("crash, wal-disk-full") == (Kind.CRASH, Kind.WAL_DISK_FULL)
    with pytest.raises(ValueError, match="unknown fault kind 'melt'.*crash"):
        parse_kinds("crash,melt")


# -- the verdict ---------------------------------------------------------------------------


def events(converge: list[float], final: bool = True, stuck: int | None = None) -> list[dict]:
    out: list[dict] = []
    for i, c in enumerate(converge, 1):
        out += [{"event": "fault", "kind": "crash", "t": 10.0 * i, "number": i},
                {"event": "converged", "after_s": c, "t": 10.0 * i + c, "number": i}]
    if stuck is not None:
        out.append({"event": "not_converged", "number": stuck, "t": 999.0})
    out.append({"event": "final", "converged": final, "t": 1000.0})
    return out


PROBE = [{"t": 0.1 * i, "writable": ["alpha"]} for i in range(100)]
REPLICAS = {"converged": True, "primary": "alpha", "standby": "beta", "caught_up": True,
            "tables": {"alpha": {"cdrs": [3, "x"]}, "beta": {"cdrs": [3, "x"]}}}
CALLS = {"acked": 300, "failed": 2, "missing_acked": [], "violations": [],
         "indeterminate_applied": ["c1"], "indeterminate_not_applied": []}


def test_a_clean_run_is_ok_and_says_so() -> None:
    v = judge(events([2.5, 7.0]), PROBE, REPLICAS, CALLS, 60, seed=3)
    assert v.ok and v.violations == []
    assert v.faults == {"crash": 2} and v.converge_s == [2.5, 7.0] and v.acked == 300
    text = v.render()
    assert "chaos verdict: OK" in text and "longest 7.00 s" in text and "seed 3" in text
    assert len(text.splitlines()) <= 24  # one screen


@pytest.mark.parametrize("change,expected", [
    ({"probe": [*PROBE, {"t": 10.05, "writable": ["alpha", "beta"]}]}, "1 probe samples with two writable nodes"),
    ({"probe": [{"t": 0.0, "writable": []}, {"t": 2.0, "writable": []}]}, "probe was blind for 2.00 s"),
    ({"calls": {**CALLS, "missing_acked": ["c9"], "violations": ["1 acknowledged calls missing from the database"]}},
     "1 acknowledged calls missing"),
    ({"events": events([3.0], stuck=2)}, "did not converge within 60 s after fault #2"),
    ({"events": events([3.0], final=False)}, "did not converge within 60 s at the end"),
    ({"replicas": {**REPLICAS, "tables": {"alpha": {"cdrs": [3, "x"]}, "beta": {"cdrs": [2, "y"]}}}},
     "cdrs: primary [3, 'x'] vs standby [2, 'y']"),
    ({"replicas": {**REPLICAS, "caught_up": False}}, "had not replayed"),
    ({"calls": {}}, "the call checker gave no verdict"),
])
def test_each_violation_is_found(change: dict, expected: str) -> None:
    args = {"events": events([1.0]), "probe": PROBE, "replicas": REPLICAS, "calls": CALLS, **change}
    v = judge(args["events"], args["probe"], args["replicas"], args["calls"], 60)
    assert not v.ok
    assert any(expected in x for x in v.violations), v.violations
    assert "VIOLATIONS" in v.render()


def test_replicas_never_compared_when_the_pair_did_not_converge() -> None:
    v = judge(events([1.0], final=False), PROBE, {"converged": False}, CALLS, 60)
    assert v.replicas_identical is None and "not compared" in v.render()


def test_the_cli_prints_the_same_schedule_for_the_same_seed() -> None:
    standby = str(Path(sys.executable).with_name("standby"))

    def plan(seed: int) -> str:
        return subprocess.run([standby, "lab", "chaos", "--dry-run", "8", "--seed", str(seed)],
                              capture_output=True, text=True, check=True).stdout

    assert plan(3) == plan(3) != plan(4)
    assert len(plan(3).splitlines()) == 8


# -- M9: salvaged calls in the verdict -----------------------------------------------------

SALVAGE_EVENTS = [
    {"event": "operator", "node": "alpha", "command": "rejoin --yes", "ok": True, "t": 20.0},
    {"event": "operator", "node": "alpha", "command": "salvage apply --yes /r.json", "ok": True, "t": 21.0},
    {"event": "salvage_applied", "node": "alpha", "calls": ["c7", "c8", "c9"], "renumbered": {"c8": 912}, "t": 21.1},
]


def test_m9_a_salvaged_call_counts_once_and_the_verdict_names_it() -> None:
    # c8's CDR id was taken on the new primary after the fork: salvage gave it 912, as its policy says.
    calls = {**CALLS, "ack_id_mismatch": [["c8", 40, 912]],
             "violations": ["1 acknowledged calls present under another CDR id"]}
    v = judge([*events([1.0]), *SALVAGE_EVENTS], PROBE, REPLICAS, calls, 60, acked_calls={"c1", "c7", "c8"})
    assert v.ok, v.violations
    assert list(v.salvaged_acked) == ["c7", "c8"] and v.salvage_renumbered == 1  # c9 was never acknowledged
    assert "acknowledged calls back by salvage: 2 (1 under a new CDR id): c7, c8" in v.render()
    assert v.to_dict()["salvaged_acked"] == ["c7", "c8"]


@pytest.mark.parametrize("calls,expected", [
    # Moved to an id the salvage did not give it: still a violation.
    ({**CALLS, "ack_id_mismatch": [["c8", 40, 913], ["c3", 5, 6]],
      "violations": ["2 acknowledged calls present under another CDR id"]},
     "2 acknowledged calls present under another CDR id"),
    # A salvaged call present twice is caught by the checker and stays a violation.
    ({**CALLS, "duplicate_call_ids": {"c7": 2}, "violations": ["1 call_ids with more than one CDR"]},
     "1 call_ids with more than one CDR"),
    ({**CALLS, "missing_acked": ["c7"], "violations": ["1 acknowledged calls missing from the database"]},
     "1 acknowledged calls missing"),
])
def test_m9_salvage_explains_only_its_own_renumbering(calls: dict, expected: str) -> None:
    v = judge([*events([1.0]), *SALVAGE_EVENTS], PROBE, REPLICAS, calls, 60, acked_calls={"c7", "c8"})
    assert not v.ok and any(expected in x for x in v.violations), v.violations


def test_m9_a_salvage_that_was_never_applied_is_a_violation() -> None:
    failed = [{"event": "operator", "node": "beta", "command": "salvage apply --yes /r.json", "ok": False, "t": 21.0,
               "output": ["error: beta is a standby"]}]
    v = judge([*events([1.0]), *failed], PROBE, REPLICAS, CALLS, 60)
    assert not v.ok and "salvage apply failed on beta: error: beta is a standby" in v.violations


def test_m9_the_campaign_reads_which_calls_a_salvage_brought_back() -> None:
    from standby import salvage as sv
    from standby.lab.campaign import salvage_summary

    cdrs = sv.TableReport("cdrs", ["call_id"], ["id"], [], ["id", "call_id"],
                          rows=[sv.RowRecord(7, {"id": 40, "call_id": "c8"}), sv.RowRecord(8, {"id": 41, "call_id": "c9"})])
    deltas = sv.TableReport("balance_deltas", ["call_id", "party"], ["id"], [], ["id", "call_id", "party"],
                            rows=[sv.RowRecord(7, {"id": 90, "call_id": "c8", "party": "account"})])
    first = sv.ApplyRecord(at="t1", renumbered=[sv.Renumbered("cdrs", {"call_id": "c8"}, "id", 40, 912),
                                                sv.Renumbered("balance_deltas", {"call_id": "c8", "party": "account"},
                                                              "id", 90, 950)])
    report = sv.Report("lab", "alpha", "beta", "softswitch", 1, "0/3000000", "t0", True, [], [cdrs, deltas],
                       applies=[first, sv.ApplyRecord(at="t2")])  # the second apply skipped everything
    assert salvage_summary(report) == (["c8", "c9"], {"c8": 912})


@pytest.mark.parametrize("kind, bound_s, key, seed, past_by_s", [
    (Kind.POSTGRES_FREEZE, chaos.UNRESPONSIVE_S, "postgres_unresponsive_ms", 11, 5.0),
    (Kind.WAL_DISK_HANG, chaos.WAL_STUCK_S, "wal_flush_stuck_ms", 12, 12.0),
])
def test_holds_are_mostly_short_of_the_hand_over_and_sometimes_past_it(
        kind: Kind, bound_s: float, key: str, seed: int, past_by_s: float) -> None:
    """A server frozen or a disk hung for a moment must move nothing; past the bound, the database is handed over."""
    from standby.config import Timings

    assert bound_s * 1000 == getattr(Timings(), key)
    holds = [f.hold_s for f in first(seed, 2000) if f.kind is kind]
    long = [h for h in holds if h > bound_s]
    assert len(holds) > 40 and 0 < len(long) < len(holds) / 2, (len(holds), len(long))
    assert all(h <= bound_s + past_by_s for h in long) and all(h <= 8.0 for h in holds if h not in long)


def test_postgres_freeze_stops_the_server_and_its_children_and_the_heal_runs_them_again() -> None:
    """The postgres-freeze fault on real processes: a parent that forks (as a postmaster does) and its children
    are all stopped, then all run again."""
    from standby.lab import faults as labfaults

    parent = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        proc = psutil.Process(parent.pid)
        deadline = time.monotonic() + 5
        while len(proc.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        family = {parent.pid, *(c.pid for c in proc.children())}
        assert len(family) == 3
        stopped = labfaults.freeze_server(parent.pid)
        assert set(stopped) == family and stopped[0] == parent.pid  # the parent first: it forks nothing meanwhile
        assert {psutil.Process(p).status() for p in family} == {psutil.STATUS_STOPPED}
        assert labfaults.stop_pids(stopped, signal.SIGCONT) == stopped
        assert psutil.STATUS_STOPPED not in {psutil.Process(p).status() for p in family}
        assert labfaults.freeze_server(999_999_999) == []  # no such server: nothing stopped, no error
    finally:
        for c in psutil.Process(parent.pid).children():
            c.kill()
        parent.kill()
        parent.wait(10)
