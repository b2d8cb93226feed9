"""The chaos campaign with followers: their fault kinds in the schedule (pure) and in the verdict."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

from standby.lab.chaos import ALL_KINDS, FOLLOWER_KINDS, WAN_KINDS, Kind, Target, drawable, faults
from standby.lab.chaos_verdict import judge

PAIR_KINDS = tuple(k for k in ALL_KINDS if k not in FOLLOWER_KINDS | WAN_KINDS)


def first(seed: int, n: int, followers: tuple[str, ...] = (), kinds: tuple[Kind, ...] = ALL_KINDS) -> list:
    return list(itertools.islice(faults(seed, kinds, 1.5, followers), n))


# The pair's kinds before postgres-freeze (2026-12-05): a campaign of an earlier seed is drawn again, fault for
# fault, with these as --kinds (a kind added to the draw changes every seed's sequence from its first fault).
BEFORE_POSTGRES_FREEZE = tuple(k for k in PAIR_KINDS if k not in (Kind.POSTGRES_FREEZE, Kind.WAL_DISK_HANG))


def test_a_pair_only_lab_draws_the_sequence_it_drew_before_followers_existed() -> None:
    # Seed 7's first faults as the schedule drew them before the follower kinds were added.
    assert [f.describe() for f in first(7, 12, kinds=BEFORE_POSTGRES_FREEZE)] == [
        "#1 isolate on the primary for 1.1 s",
        "#2 crash on the primary for 0.3 s",
        "#3 kill-postgres on the primary for 1.0 s",
        "#4 isolate on the standby for 7.2 s",
        "#5 kill-postgres on the primary for 1.0 s",
        "#6 wall clock -121 s on the primary for 5.0 s",
        "#7 50% loss on private on the standby for 0.6 s",
        "#8 isolate on the primary for 0.7 s",
        "#9 80% loss on public on the standby for 0.8 s",
        "#10 kill-postgres on the standby for 6.2 s",
        "#11 80% loss on private on the standby for 2.4 s",
        "#12 heartbeat-replay on the standby for 2.1 s",
    ]
    assert [f.describe() for f in first(7, 3)] == [  # and with every kind, as campaigns draw it now
        "#1 isolate on the primary for 1.1 s", "#2 crash on the primary for 0.3 s",
        "#3 wal-disk-full on the primary for 1.0 s"]  # wal-disk-hang in the draw since 2026-12-05
    # Asking for the follower kinds changes nothing where there is no follower.
    for seed in (1, 7, 361):
        assert first(seed, 300) == first(seed, 300, kinds=PAIR_KINDS)
        assert not {f.kind for f in first(seed, 300)} & (FOLLOWER_KINDS | WAN_KINDS)


def test_follower_kinds_name_a_follower_of_the_lab_and_wan_kinds_need_one_in_the_other_site() -> None:
    both = first(3, 600, ("gamma", "delta"))
    assert both == first(3, 600, ("delta", "gamma"))  # the order the followers were given in does not matter
    assert {f.kind for f in both} >= FOLLOWER_KINDS | WAN_KINDS
    on_followers = [f for f in both if f.kind in FOLLOWER_KINDS]
    assert {f.follower for f in on_followers} == {"gamma", "delta"}
    assert all(f.target is Target.FOLLOWER for f in on_followers)
    assert all(f.follower is None for f in both if f.kind not in FOLLOWER_KINDS)
    wan = [f for f in both if f.kind in WAN_KINDS]
    assert all(f.target is Target.WAN and f.follower is None for f in wan)
    assert all(f.percent in (10, 30, 50, 80) for f in wan if f.kind is Kind.WAN_LOSS)
    assert all(f.percent is None for f in wan if f.kind is Kind.WAN_DOWN)
    # delta stands on the pair's subnets: no WAN to cut.
    reporting = first(3, 600, ("delta",))
    assert not {f.kind for f in reporting} & WAN_KINDS
    assert {f.follower for f in reporting if f.kind in FOLLOWER_KINDS} == {"delta"}
    assert not drawable(Kind.WAN_DOWN, ("delta",)) and drawable(Kind.WAN_LOSS, ("gamma",))


def test_descriptions_say_which_follower_or_the_wan() -> None:
    drawn = first(3, 600, ("gamma",))
    crash = next(f for f in drawn if f.kind is Kind.FOLLOWER_CRASH)
    assert crash.describe().startswith(f"#{crash.number} follower-crash on follower gamma for ")
    loss = next(f for f in drawn if f.kind is Kind.WAN_LOSS)
    assert f"{loss.percent}% loss on the WAN link" in loss.describe()
    assert crash.to_dict()["follower"] == "gamma" and crash.to_dict()["target"] == "follower"


def test_the_cli_refuses_follower_kinds_without_a_follower_and_draws_them_with_one() -> None:
    standby = str(Path(sys.executable).with_name("standby"))

    def plan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([standby, "lab", "chaos", "--dry-run", "6", "--seed", "3", *args],
                              capture_output=True, text=True, check=False)

    refused = plan("--kinds", "crash,wan-down", "--follower", "delta")
    assert refused.returncode == 2 and "wan-down" in refused.stderr and "--follower" in refused.stderr
    drawn = plan("--kinds", "follower-freeze,wan-loss", "--follower", "gamma")
    assert drawn.returncode == 0, drawn.stderr
    lines = drawn.stdout.splitlines()
    assert len(lines) == 6 and all("on follower gamma" in x or "on the WAN link" in x for x in lines)
    assert plan().stdout == plan("--kinds", ",".join(k.value for k in PAIR_KINDS)).stdout


# -- the verdict ---------------------------------------------------------------------------

EVENTS = [{"event": "fault", "kind": "follower-crash", "t": 10.0, "number": 1},
          {"event": "converged", "after_s": 4.0, "t": 14.0, "number": 1},
          {"event": "final", "converged": True, "t": 100.0}]
PROBE = [{"t": 0.1 * i, "writable": ["alpha"]} for i in range(100)]
CALLS = {"acked": 300, "failed": 0, "missing_acked": [], "violations": [],
         "indeterminate_applied": [], "indeterminate_not_applied": []}
SAME = {"cdrs": [3, "x"]}


def replicas(**gamma: object) -> dict:
    return {"converged": True, "primary": "alpha", "standby": "beta", "caught_up": True,
            "tables": {"alpha": SAME, "beta": SAME},
            "followers": {"gamma": {"caught_up": True, "tables": SAME, "missing_acked": [], **gamma},
                          "delta": {"caught_up": True, "tables": SAME, "missing_acked": []}}}


def verdict(probe: list | None = None, reps: dict | None = None):  # type: ignore[no-untyped-def]
    return judge(EVENTS, probe or PROBE, reps or replicas(), CALLS, 60, seed=7, followers=("gamma", "delta"))


def test_a_clean_run_with_followers_is_ok_and_names_them() -> None:
    v = verdict()
    assert v.ok, v.violations
    assert v.to_dict()["followers"] == ["gamma", "delta"]
    assert v.to_dict()["follower_missing_acked"] == {"gamma": 0, "delta": 0}
    assert "followers: gamma, delta" in v.render() and "standby and followers identical" in v.render()


def test_a_follower_taking_a_write_is_a_violation_even_alone() -> None:
    # The pair's primary unreachable in that sample: only the follower wrote, still never allowed.
    v = verdict(probe=[*PROBE, {"t": 10.05, "writable": ["gamma"]}])
    assert not v.ok and v.dual_samples == 0
    assert "1 probe samples with a follower writable" in v.violations


def test_a_follower_behind_different_or_missing_calls_is_a_violation() -> None:
    lagging = verdict(reps=replicas(caught_up=False))
    assert "follower gamma had not replayed" in " ".join(lagging.violations)
    differs = verdict(reps=replicas(tables={"cdrs": [2, "y"]}))
    assert "cdrs: primary [3, 'x'] vs follower gamma [2, 'y']" in " ".join(differs.violations)
    missing = verdict(reps=replicas(missing_acked=["c1", "c2"]))
    assert "2 acknowledged calls missing from follower gamma" in missing.violations


def test_a_follower_that_does_not_converge_is_named() -> None:
    stuck = [*EVENTS[:2], {"event": "not_converged", "number": 2, "t": 80.0, "followers_behind": ["gamma"]},
             {"event": "final", "converged": False, "t": 100.0, "followers_behind": ["gamma"]}]
    v = judge(stuck, PROBE, {"converged": False}, CALLS, 60, followers=("gamma", "delta"))
    assert ("the pair did not converge within 60 s after fault #2 (followers not streaming on the primary's "
            "timeline: gamma)") in v.violations
    assert any(x.endswith("at the end (followers not streaming on the primary's timeline: gamma)") for x in v.violations)
