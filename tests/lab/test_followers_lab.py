"""Issue 12 on the lab: the pair fails over (host crash) or switches over under the sample load with the warm
follower gamma attached (its own namespace on the pair's subnets, its own server and agent). gamma must end up
streaming from the new primary on its new timeline without a clone (the same system and the same data
directory files), with every acknowledged call once caught up, and no two primaries ever.

How long gamma took to stream again is printed, never asserted (bench/ measures).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from standby.lab import Lab, followers
from standby.lab.pair import LoadRun, primaries, start_pair, under_load
from tests.lab.test_failover import no_loss_no_dual, settle


def _pair_with_gamma(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    return start_pair(lab_factory("sync", followers=("gamma",)))


def _gamma_has_what_the_primary_has(lab: Lab, primary: str, run: LoadRun) -> None:
    """Once gamma replayed the primary's current WAL: the same calls, every acknowledged one among them."""
    followers.wait_replayed(lab, "gamma", primary)
    acked = {a["call_id"] for a in map(json.loads, run.history.read_text().splitlines()) if a["outcome"] == "ack"}
    on_gamma, on_primary = followers.call_ids(lab, "gamma"), followers.call_ids(lab, primary)
    assert acked, "the load had no acknowledged call"
    assert sorted(acked - on_gamma)[:5] == [], "acknowledged calls missing on gamma"
    assert on_gamma == on_primary, f"gamma and {primary} differ: {len(on_gamma ^ on_primary)} calls"


def _gamma_follows_without_a_clone(lab: Lab, new: str, run: LoadRun, before: tuple[int, int]) -> None:
    no_loss_no_dual(lab, run, on=new)
    _gamma_has_what_the_primary_has(lab, new, run)
    assert followers.identity(lab, "gamma") == before, "gamma was cloned again"
    with lab.pg_connect("gamma") as g:
        assert g.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)  # a follower never promotes
    assert primaries(lab) == [new]


def test_i12_gamma_streams_from_the_new_primary_after_a_host_crash_failover(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = _pair_with_gamma(lab_factory)
    before = followers.identity(lab, "gamma")
    with under_load(lab, tmp_path) as run:
        run.t_fault = time.monotonic()
        lab.crash("alpha")
        settle(lab, db="beta", services="beta")
        promoted = time.monotonic() - run.t_fault
        timeline = followers.timeline(lab, "beta")
        assert timeline == 2
        followers.wait_streaming(lab, "gamma", "beta", timeline)
        took = time.monotonic() - run.t_fault
        time.sleep(1.0)
    _gamma_follows_without_a_clone(lab, "beta", run, before)
    print(f"\nhost crash of alpha: beta primary after {promoted:.2f}s, gamma streaming from beta on timeline "
          f"{timeline} {took:.2f}s after the crash, no clone")


def test_i12_gamma_streams_from_the_new_primary_after_a_switchover(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = _pair_with_gamma(lab_factory)
    before = followers.identity(lab, "gamma")
    with under_load(lab, tmp_path) as run:
        run.t_fault = time.monotonic()
        res = lab.standby("alpha", "switchover", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        settle(lab, db="beta", services="beta")
        switched = time.monotonic() - run.t_fault
        timeline = followers.timeline(lab, "beta")
        assert timeline == 2
        followers.wait_streaming(lab, "gamma", "beta", timeline)
        took = time.monotonic() - run.t_fault
        time.sleep(1.0)
    _gamma_follows_without_a_clone(lab, "beta", run, before)
    print(f"\nswitchover alpha -> beta: done after {switched:.2f}s, gamma streaming from beta on timeline "
          f"{timeline} {took:.2f}s after it began, no clone")
