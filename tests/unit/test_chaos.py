"""The chaos schedule (reproducible from a seed) and the campaign verdict (pure judgement)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from standby.lab.chaos import ALL_KINDS, Kind, Target, faults, parse_kinds
from standby.lab.chaos_verdict import judge


def first(seed: int, n: int = 50, kinds: tuple[Kind, ...] = ALL_KINDS) -> list:
    return list(itertools.islice(faults(seed, kinds), n))


def test_the_same_seed_draws_the_same_faults_and_another_seed_others() -> None:
    assert first(3) == first(3)
    assert first(3) != first(4)
    assert [f.number for f in first(3, 10)] == list(range(1, 11))


def test_every_kind_comes_up_and_each_fault_is_complete() -> None:
    drawn = first(1, 400)
    assert {f.kind for f in drawn} == set(Kind)
    for f in drawn:
        assert f.hold_s > 0 and f.quiet_s > 0
        assert (f.net in ("public", "private")) == (f.kind in (Kind.LINK_DOWN, Kind.LOSS))
        assert (f.percent is not None) == (f.kind is Kind.LOSS)
        assert (f.offset_s is not None) == (f.kind is Kind.CLOCK_JUMP)
        if f.kind is Kind.CLOCK_JUMP:
            assert 60 <= abs(f.offset_s) <= 600  # type: ignore[arg-type]
        if f.kind is Kind.SWITCHOVER:
            assert f.target is Target.PRIMARY


def test_kinds_restrict_the_draw() -> None:
    assert {f.kind for f in first(2, 100, (Kind.CRASH, Kind.FREEZE))} == {Kind.CRASH, Kind.FREEZE}
    with pytest.raises(ValueError):
        next(faults(1, ()))


def test_parse_kinds() -> None:
    assert parse_kinds(None) == ALL_KINDS and parse_kinds("") == ALL_KINDS
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
