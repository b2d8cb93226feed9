"""The decision core's safety findings, one test (or a few) per finding.

Each drives the real decide() through a scenario step by step, or runs a
schedule in the simulated world (tests/unit/sim.py) whose invariants raise.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from standby.agent.store import Store
from standby.decide import Policy, State, advertise, decide
from standby.model import ActionKind, DbState, LocalPg, Net, Observation, PeerView, Reason
from tests.unit.sim import World
from tests.unit.test_decide import policies, roles, started

BOTH_UP = {Net.PUBLIC: True, Net.PRIVATE: True}


def pol(**kw: object) -> Policy:
    base: dict[str, object] = dict(hot=True, sync=True, preferred=False, failover_timeout_s=1.0, fence_timeout_s=0.7,
                                   heartbeat_s=0.1, link_timeout_s=5.0, degrade_after_s=0.0, max_lag_bytes=3)
    return Policy(**{**base, **kw})  # type: ignore[arg-type]


def view(db: DbState, term: int = 0, **kw: object) -> PeerView:
    base: dict[str, object] = dict(term=term, db=db, services=False, lsn=100, sync_ok=False, carrier=dict(BOTH_UP),
                                   tiebreaker_ok=True)
    return PeerView(**{**base, **kw})  # type: ignore[arg-type]


def obs(now: float, pg: LocalPg, peer: PeerView | None, heard_at: float | None, gap: float = 0.1,
        **kw: object) -> Observation:
    base: dict[str, object] = dict(carrier=dict(BOTH_UP), tiebreaker_ok=True, services_healthy=None,
                                   service_ip_elsewhere=False, heard_me=None)
    return Observation(now=now, gap=gap, pg=pg, peer=peer, heard={n: heard_at for n in Net},  # type: ignore[arg-type]
                       **{**base, **kw})


def kinds(actions: list) -> list[tuple[ActionKind, Reason]]:
    return [(a.kind, a.reason) for a in actions]


def run_steps(s: State, p: Policy, make: object, start: float, end: float) -> tuple[State, list]:
    """decide() every 100 ms from ``start`` to ``end``; ``make(now)`` builds the observation."""
    seen: list = []
    now = start
    while now <= end + 1e-9:
        s, acts = decide(s, make(now), p)  # type: ignore[operator]
        seen += acts
        now = round(now + 0.1, 3)
    return s, seen


# -- H1: a standby's eligibility does not survive its own stall ----------------------------------


def _eligible_standby(p: Policy, primary: PeerView) -> State:
    s = State(watching_since=0.0)
    standby = LocalPg(DbState.STANDBY, lsn=100, streaming=True, upstream_age_s=0.0)
    s, _ = run_steps(s, p, lambda t: obs(t, standby, primary, t), 0.1, 2.0)
    assert s.eligible
    return s


@pytest.mark.parametrize("sync", [True, False])
def test_h1_standby_thawed_after_a_long_stall_does_not_promote_on_its_old_eligibility(sync: bool) -> None:
    """Paused 120 s: meanwhile the primary stopped waiting for it (sync, degrade_after) or ran ahead (async),
    then died. Its last word is from before the pause: the thawed standby must not promote on it."""
    p = pol(sync=sync, degrade_after_s=4.0)  # its half is longer than the failover timeout
    primary = view(DbState.PRIMARY, sync_ok=True, lsn=100)
    s = _eligible_standby(p, primary)
    lost = LocalPg(DbState.STANDBY, lsn=100, streaming=False)  # no receiver any more
    s, acts = decide(s, obs(122.0, lost, primary, 2.0, gap=120.0), p)
    s, more = run_steps(s, p, lambda t: obs(t, lost, primary, 2.0), 122.1, 130.0)
    assert ActionKind.PROMOTE not in [a.kind for a in acts + more]
    assert not s.eligible


def test_h1_a_fresh_sync_heartbeat_after_the_stall_makes_the_standby_eligible_again() -> None:
    p = pol(sync=True, degrade_after_s=2.0)
    primary = view(DbState.PRIMARY, sync_ok=True, lsn=100)
    s = _eligible_standby(p, primary)
    streaming = LocalPg(DbState.STANDBY, lsn=100, streaming=True, upstream_age_s=0.0)
    s, _ = decide(s, obs(5.0, streaming, primary, 2.0, gap=3.0), p)
    assert not s.eligible  # what the primary said before the stall is stale
    s, _ = decide(s, obs(5.1, streaming, primary, 5.05), p)
    assert s.eligible
    # ... and it still fails over when that primary dies.
    gone = LocalPg(DbState.STANDBY, lsn=100, streaming=False)
    s, acts = run_steps(s, p, lambda t: obs(t, gone, primary, 5.05), 5.2, 7.0)
    assert (ActionKind.PROMOTE, Reason.PEER_DEAD) in kinds(acts)


def test_h1_simulated_standby_frozen_past_degrade_after_does_not_lose_commits() -> None:
    """The seed's scenario in the simulated world: standby paused, primary degrades and acknowledges
    alone, primary dies, standby thaws."""
    w = started(degrade=4.0)
    w.freeze("b")
    w.run(6.0)
    assert w.nodes["a"].state.degraded
    w.crash("a")
    w.thaw("b")
    w.run(5.0)
    assert w.nodes["b"].pg is DbState.STANDBY and w.lost() == []


def test_h1_simulated_async_standby_frozen_then_primary_dies_does_not_promote_past_the_lag_bound() -> None:
    w = started(sync=False)
    w.freeze("b")
    w.run(3.0)  # the primary commits on: b is far past max_lag_bytes now
    w.crash("a")
    w.thaw("b")
    w.run(5.0)
    assert w.nodes["b"].pg is DbState.STANDBY


# -- H4: no promotion while the upstream PostgreSQL is still sending WAL ------------------------


def test_h4_standby_does_not_promote_while_its_wal_receiver_still_hears_the_primary() -> None:
    p = pol(sync=False)
    primary = view(DbState.PRIMARY, lsn=100)
    s = _eligible_standby(p, primary)
    receiving = LocalPg(DbState.STANDBY, lsn=100, streaming=True, upstream_age_s=0.05)
    s, acts = run_steps(s, p, lambda t: obs(t, receiving, primary, 2.0), 2.1, 6.0)
    assert ActionKind.PROMOTE not in [a.kind for a in acts]
    stale = LocalPg(DbState.STANDBY, lsn=100, streaming=False, upstream_age_s=1.5)
    s, acts = decide(s, obs(6.1, stale, primary, 2.0), p)
    assert (ActionKind.PROMOTE, Reason.PEER_DEAD) in kinds(acts)


def test_h4_simulated_primary_agent_killed_with_a_slow_fence_never_two_writers() -> None:
    """Chaos seed 77 in the simulated world (async): the primary's agent dies, its unclean-exit fence
    drops the addresses at once but takes 3 s to stop PostgreSQL, which commits meanwhile."""
    with World(policies(sync=False), seed=1, agent_fence_delay=3.0) as w:
        w.run(2.0)
        w.kill_agent("a")
        w.run(6.0)  # a Violation is raised inside if both are writable at once
        assert w.nodes["a"].pg is DbState.DOWN and roles(w) == ("b", "b")


# -- H5: a node without a database never takes the service role -----------------------------------


def test_h5_fenced_node_does_not_take_services_on_the_peer_letting_go() -> None:
    p = pol()
    s = State(fenced=True, term=1, watching_since=0.0)
    peer = view(DbState.PRIMARY, term=2, releasing_services=True)
    s, acts = decide(s, obs(5.0, LocalPg(DbState.DOWN), peer, 4.95), p)
    assert ActionKind.TAKE_SERVICES not in [a.kind for a in acts]
    assert not s.services


def test_h5_node_whose_server_is_down_does_not_take_services() -> None:
    p = pol()
    s = State(term=1, watching_since=0.0, last_restart_at=4.9)
    peer = view(DbState.STANDBY, term=1, releasing_services=True)
    s, acts = decide(s, obs(5.0, LocalPg(DbState.DOWN), peer, 4.95), p)
    assert ActionKind.TAKE_SERVICES not in [a.kind for a in acts]


def test_h5_stalled_fenced_node_does_not_take_the_service_ips_back() -> None:
    """alpha stalled, fenced and let go of the service IPs; the peer's heartbeat still said it was
    letting go of them (from before): alpha must not take them 0.44 s later."""
    p = pol()
    s = State(term=1, was_primary=True, services=True, watching_since=0.0, sync_established=True)
    primary = LocalPg(DbState.PRIMARY, lsn=100, peer_sync=True, peer_flush_lsn=100)
    peer = view(DbState.STANDBY, term=1, releasing_services=True, eligible=True)
    s, acts = decide(s, obs(10.0, primary, peer, 8.9, gap=1.2), p)
    assert (ActionKind.FENCE, Reason.RESUMED_AFTER_FREEZE) in kinds(acts)
    fencing = LocalPg(DbState.DOWN)
    s, acts = run_steps(s, p, lambda t: obs(t, fencing, peer, t - 0.05), 10.1, 11.0)
    assert ActionKind.TAKE_SERVICES not in [a.kind for a in acts]


def test_h5_fenced_holder_hands_the_service_role_to_a_primary_that_can_serve() -> None:
    p = pol()
    s = State(fenced=True, term=1, services=True, watching_since=0.0)
    peer = view(DbState.PRIMARY, term=2, sync_ok=False)
    s, acts = decide(s, obs(5.0, LocalPg(DbState.DOWN), peer, 4.95), p)
    assert (ActionKind.RELEASE_SERVICES, Reason.SERVICES_TO_PRIMARY) in kinds(acts)
    # ... and the primary takes them once told.
    taker = State(term=2, was_primary=True, watching_since=0.0, degraded=True)
    released = view(DbState.FENCED, term=1, releasing_services=True)
    taker, acts = decide(taker, obs(5.1, LocalPg(DbState.PRIMARY, lsn=200), released, 5.05), p)
    assert ActionKind.TAKE_SERVICES in [a.kind for a in acts]


def test_h5_private_link_down_keeps_services_on_the_fenced_node_that_still_serves_clients() -> None:
    """The designed split (private link lost at the primary: the database moves, the services stay)."""
    p = pol()
    s = State(fenced=True, term=1, services=True, watching_since=0.0)
    peer = view(DbState.PRIMARY, term=2)
    no_private = {Net.PUBLIC: True, Net.PRIVATE: False}
    s, acts = decide(s, obs(5.0, LocalPg(DbState.DOWN), peer, 4.95, carrier=no_private), p)
    assert ActionKind.RELEASE_SERVICES not in [a.kind for a in acts]


# -- M1: maintenance holds back automatic moves, never the safety fences ---------------------------


def _primary_state() -> State:
    return State(term=1, was_primary=True, services=True, watching_since=0.0, peer_could_promote=True)


PRIMARY_PG = LocalPg(DbState.PRIMARY, lsn=100, peer_sync=True, peer_flush_lsn=100)


def test_m1_maintenance_superseded_primary_still_fences() -> None:
    p = pol(suspended=True, preferred=True)
    peer = view(DbState.PRIMARY, term=2, services=True)
    _, acts = decide(_primary_state(), obs(5.0, PRIMARY_PG, peer, 4.95), p)
    assert (ActionKind.FENCE, Reason.SUPERSEDED) in kinds(acts)


def test_m1_maintenance_isolated_primary_still_fences_and_lets_go() -> None:
    p = pol(suspended=True)
    peer = view(DbState.STANDBY, term=1)
    _, acts = decide(_primary_state(), obs(5.0, PRIMARY_PG, peer, 4.0, tiebreaker_ok=False), p)
    assert (ActionKind.FENCE, Reason.ISOLATED) in kinds(acts)
    assert (ActionKind.RELEASE_SERVICES, Reason.ISOLATED) in kinds(acts)


def test_m1_maintenance_stalled_primary_still_fences() -> None:
    p = pol(suspended=True)
    peer = view(DbState.STANDBY, term=1)
    _, acts = decide(_primary_state(), obs(5.0, PRIMARY_PG, peer, 3.9, gap=1.1), p)
    assert (ActionKind.FENCE, Reason.RESUMED_AFTER_FREEZE) in kinds(acts)


def test_m1_maintenance_still_holds_back_promotion_and_restarts() -> None:
    p = pol(suspended=True)
    primary = view(DbState.PRIMARY, sync_ok=True)
    s = replace(_eligible_standby(pol(), primary))
    gone = LocalPg(DbState.STANDBY, lsn=100, streaming=False)
    _, acts = run_steps(s, p, lambda t: obs(t, gone, primary, 2.0), 2.1, 5.0)
    assert acts == []
    _, acts = decide(State(term=1, watching_since=0.0), obs(5.0, LocalPg(DbState.DOWN), primary, 4.95), p)
    assert acts == []


def test_m1_simulated_maintenance_left_on_an_isolated_primary() -> None:
    w = started()
    w.maintenance("a", True)
    w.link("a", Net.PUBLIC, False)
    w.link("a", Net.PRIVATE, False)
    w.run(3.0)
    w.heal()
    w.run(3.0)  # a Violation is raised inside if both are writable at once
    assert w.nodes["a"].state.fenced and roles(w) == ("b", "b")


# -- M2: FENCED is advertised only once the server is observed down -------------------------------


def test_m2_fenced_node_with_its_server_still_running_advertises_fencing() -> None:
    s = State(fenced=True, term=1)
    running = advertise(s, LocalPg(DbState.PRIMARY, lsn=100), dict(BOTH_UP), True, False, True)
    assert running.db is DbState.FENCING and not running.sync_ok
    stopped = advertise(s, LocalPg(DbState.DOWN), dict(BOTH_UP), True, False, True)
    assert stopped.db is DbState.FENCED


def test_m2_standby_promotes_on_fenced_but_not_on_fencing() -> None:
    p = pol()
    primary = view(DbState.PRIMARY, sync_ok=True)
    s = _eligible_standby(p, primary)
    standby = LocalPg(DbState.STANDBY, lsn=100, streaming=True, upstream_age_s=0.0)
    _, acts = decide(s, obs(2.1, standby, view(DbState.FENCING, services=False), 2.05), p)
    assert ActionKind.PROMOTE not in [a.kind for a in acts]
    _, acts = decide(s, obs(2.1, standby, view(DbState.FENCED), 2.05), p)
    assert (ActionKind.PROMOTE, Reason.PEER_RELEASED_DB) in kinds(acts)


def test_m2_simulated_slow_stop_after_a_hand_over_never_two_writers() -> None:
    """async: the primary's replication link is down; it fences itself to hand the database over,
    and its server takes 0.5 s to stop. The standby must wait for the stop before it promotes."""
    pol_ = {n: replace(p, max_lag_bytes=1000) for n, p in policies(sync=False).items()}
    with World(pol_, seed=1, stop_delay=0.5) as w:
        w.run(2.0)
        w.link("a", Net.PRIVATE, False)
        w.run(8.0)  # a Violation is raised inside if both are writable at once
        assert w.nodes["a"].state.fenced and roles(w) == ("b", "a")


# -- M5: one declaration of what is persisted ---------------------------------------------------


def test_m5_resumable_survives_a_store_save_and_load(tmp_path: Path) -> None:
    store = Store(tmp_path, "alpha")
    s = State(term=3, fenced=True, resumable=True, degraded=True, peer_could_promote=False)
    store.save_state(s)
    kept = State(**store.load_state())  # type: ignore[arg-type]
    assert kept.resumable and kept.persisted() == s.persisted()


def test_m5_simulated_agent_restart_keeps_resumable() -> None:
    """A precautionary fence, then the agent restarts: it must still be able to resume (rule 4)."""
    pol_ = policies()
    pol_["b"] = Policy(**{**pol_["b"].__dict__, "hot": False})
    with World(pol_, seed=1) as w:
        w.run(2.0)
        w.kill_pg("a")
        w.run(0.5)
        assert w.nodes["a"].state.fenced and w.nodes["a"].state.resumable
        w.kill_agent("a")
        w.start_agent("a")
        w.run(3.0)
        assert not w.nodes["a"].state.fenced and roles(w) == ("a", "a")


# -- M6: warm mode, a stall does not fence the primary ----------------------------------------------


def test_m6_warm_primary_is_not_fenced_by_its_own_stall() -> None:
    p = pol(hot=False)
    peer = view(DbState.STANDBY, term=1)
    s, acts = decide(_primary_state(), obs(5.0, PRIMARY_PG, peer, 3.7, gap=1.2), p)
    assert ActionKind.FENCE not in [a.kind for a in acts] and not s.fenced


def test_m6_simulated_warm_primary_stalls_and_keeps_serving() -> None:
    w = started(hot=False)
    w.freeze("a")
    w.run(1.5)
    w.thaw("a")
    w.run(2.0)
    assert not w.nodes["a"].state.fenced and roles(w) == ("a", "a")


# -- L1: sync_ok only once the standby has the degraded period's commits ---------------------------


def test_l1_sync_ok_waits_until_the_standby_has_flushed_past_the_restore_point() -> None:
    p = pol(degrade_after_s=2.0)
    s = State(term=1, was_primary=True, degraded=True, services=True, watching_since=0.0)
    peer = view(DbState.STANDBY, term=1)
    behind = LocalPg(DbState.PRIMARY, lsn=1000, peer_sync=True, peer_flush_lsn=900)
    s, acts = decide(s, obs(5.0, behind, peer, 4.95), p)
    assert (ActionKind.SET_SYNC, Reason.RESTORE_SYNC) in kinds(acts)
    still_behind = LocalPg(DbState.PRIMARY, lsn=1010, peer_sync=True, peer_flush_lsn=990)
    s, _ = decide(s, obs(5.1, still_behind, peer, 5.05), p)
    assert not advertise(s, still_behind, dict(BOTH_UP), True, False, True).sync_ok
    caught_up = LocalPg(DbState.PRIMARY, lsn=1020, peer_sync=True, peer_flush_lsn=1000)
    s, _ = decide(s, obs(5.2, caught_up, peer, 5.15), p)
    assert advertise(s, caught_up, dict(BOTH_UP), True, False, True).sync_ok


# -- chaos seed 93 (async, 2026-12-01): both nodes fenced, nobody serving -----------------------------


def test_chaos_seed_93_stalled_new_primary_serves_again_when_the_old_one_came_back_fenced() -> None:
    """The old primary's host crashed, the standby took over (term 3); the old host came back and its
    agent, having been away, fenced it (term 2). Then the new primary's own loop stalled for 0.99 s and
    it fenced itself as a precaution: both nodes fenced, no primary, until an operator came.
    The peer is heard FENCED (its server down) in an older term after our fence: nobody took over and
    nobody can (a fenced node serves again only by rule 4, which needs its peer a standby, or by this
    rule, which needs a newer term of its own), so the precautionary fence is lifted. The same holds
    when the peer is only down in an older term (its restart as primary needs a term no older than
    ours)."""
    p = pol(sync=False)
    primary = LocalPg(DbState.PRIMARY, lsn=500)
    s = State(term=3, was_primary=True, services=True, degraded=True, peer_could_promote=True, watching_since=0.0)
    # During the stall the old primary's agent was starting: its server down, not fenced yet.
    booting = view(DbState.DOWN, term=2, lsn=None, eligible=False)
    s, acts = decide(s, obs(10.0, primary, booting, 9.9, gap=0.99), p)
    assert (ActionKind.FENCE, Reason.RESUMED_AFTER_FREEZE) in kinds(acts) and s.fenced and s.resumable
    old = view(DbState.FENCED, term=2, lsn=None, eligible=False)
    down = LocalPg(DbState.DOWN, lsn=500)
    s, seen = run_steps(s, p, lambda t: obs(t, down, old, t), 10.1, 13.0)
    assert (ActionKind.RESTART_PG, Reason.RESUMED_PEER_OLDER) in kinds(seen)
    assert not s.fenced and s.was_primary and s.term == 3


@pytest.mark.parametrize("peer_term", [3, 4])
def test_chaos_seed_93_a_fenced_peer_in_the_same_or_a_newer_term_keeps_the_fence(peer_term: int) -> None:
    """The other side of the rule: the node of the older term (or an equal one: who promoted last is
    then unknown) stays fenced, so at most one of two fenced nodes lifts its fence."""
    p = pol(sync=False)
    s = State(term=3, fenced=True, resumable=True, was_primary=False, fenced_at=10.0, watching_since=0.0)
    down = LocalPg(DbState.DOWN, lsn=500)
    other = view(DbState.FENCED, term=peer_term, lsn=600, eligible=False)
    s, seen = run_steps(s, p, lambda t: obs(t, down, other, t), 10.1, 20.0)
    assert ActionKind.RESTART_PG not in [a.kind for a in seen] and s.fenced


def test_chaos_seed_93_only_words_heard_after_the_fence_count() -> None:
    """A FENCED word from before our own fence says nothing about what the peer did since."""
    p = pol(sync=False)
    s = State(term=3, fenced=True, resumable=True, fenced_at=10.0, watching_since=0.0)
    down = LocalPg(DbState.DOWN, lsn=500)
    old = view(DbState.FENCED, term=2, lsn=400, eligible=False)
    s, seen = run_steps(s, p, lambda t: obs(t, down, old, 9.9), 10.1, 20.0)  # last heard before the fence
    assert ActionKind.RESTART_PG not in [a.kind for a in seen]


def test_chaos_seed_93_simulated_new_primary_stalls_after_the_old_one_came_back_fenced() -> None:
    with World(policies(sync=False), seed=93) as w:
        w.run(2.0)
        w.crash("a")
        w.run(3.0)
        assert roles(w) == ("b", "b")
        # The old primary's host is back; while its agent starts (it says "down, not fenced") the new
        # primary's loop stalls past the stall limit.
        w.boot("a", startup_s=1.5, liveness_kept=True)
        w.run(0.2)
        w.freeze("b")
        w.run(1.0)
        w.thaw("b")
        w.run(5.0)
        assert w.nodes["a"].state.fenced
        assert roles(w) == ("b", "b")


def test_chaos_seed_93_the_peer_down_in_an_older_term_lets_the_fence_go_too() -> None:
    p = pol(sync=True)
    s = State(term=3, fenced=True, resumable=True, fenced_at=10.0, watching_since=0.0)
    down = LocalPg(DbState.DOWN, lsn=500)
    rebooted = view(DbState.DOWN, term=2, lsn=None, eligible=False)
    s, seen = run_steps(s, p, lambda t: obs(t, down, rebooted, t), 10.1, 13.0)
    assert (ActionKind.RESTART_PG, Reason.RESUMED_PEER_OLDER) in kinds(seen)
    assert not s.degraded  # sync: nothing is acknowledged until a standby has it


@pytest.mark.parametrize("db", [DbState.FENCING, DbState.PRIMARY, DbState.STANDBY])
def test_chaos_seed_93_a_peer_that_may_still_write_or_follow_keeps_the_older_term_rule_off(db: DbState) -> None:
    """FENCING: its server still runs; PRIMARY: rule 3 handles it; STANDBY: rule 4 (a) decides."""
    p = pol(sync=False)
    s = State(term=3, fenced=True, resumable=True, fenced_at=10.0, watching_since=0.0)
    down = LocalPg(DbState.DOWN, lsn=500)
    other = view(db, term=2, lsn=400, eligible=True)
    s, seen = run_steps(s, p, lambda t: obs(t, down, other, t), 10.1, 20.0)
    assert Reason.RESUMED_PEER_OLDER not in [a.reason for a in seen]


# -- chaos seed 104 (sync, degrade_after 8 s, 2026-12-01): a primary that flapped between degraded and sync --


def test_chaos_seed_104_restoring_sync_does_not_degrade_again_before_the_standby_shows_sync() -> None:
    """The new primary ran alone (degraded) while the old one was away; it rejoined and caught up and
    the primary restored sync, then degraded again 150 ms later, for ever: the "standby unsynced since"
    clock still counted from before the restore, and PostgreSQL shows the standby as "sync" only a
    moment after the names are set. The standby never became eligible again: no failover possible."""
    p = pol(sync=True, degrade_after_s=8.0)
    s = State(term=1, was_primary=True, services=True, sync_established=True, watching_since=0.0)
    standby = view(DbState.STANDBY, term=1, lsn=1000)
    away = LocalPg(DbState.PRIMARY, lsn=1000, peer_sync=False, peer_flush_lsn=None)
    s, seen = run_steps(s, p, lambda t: obs(t, away, standby, t), 0.1, 10.0)
    assert [a.reason for a in seen if a.kind is ActionKind.SET_SYNC] == [Reason.DEGRADE]
    back = LocalPg(DbState.PRIMARY, lsn=1000, peer_sync=False, peer_flush_lsn=1000)  # caught up, names not set
    s, seen = run_steps(s, p, lambda t: obs(t, back, standby, t), 10.1, 10.5)  # restored; "sync" not shown yet
    assert [a.reason for a in seen if a.kind is ActionKind.SET_SYNC] == [Reason.RESTORE_SYNC]
    sync_pg = LocalPg(DbState.PRIMARY, lsn=1000, peer_sync=True, peer_flush_lsn=1000)
    s, more = run_steps(s, p, lambda t: obs(t, sync_pg, standby, t), 10.6, 30.0)
    assert [a for a in more if a.kind is ActionKind.SET_SYNC] == []
    assert not s.degraded and s.sync_established


def test_chaos_seed_104_restored_sync_that_never_shows_degrades_after_the_whole_delay_again() -> None:
    """The other side: if the standby is still not "sync" degrade_after_s after the restore, degrade."""
    p = pol(sync=True, degrade_after_s=8.0)
    s = State(term=1, was_primary=True, services=True, degraded=True, watching_since=0.0)
    standby = view(DbState.STANDBY, term=1, lsn=1000)
    async_pg = LocalPg(DbState.PRIMARY, lsn=1000, peer_sync=False, peer_flush_lsn=1000)
    s, seen = run_steps(s, p, lambda t: obs(t, async_pg, standby, t), 0.1, 0.2)
    assert [a.reason for a in seen if a.kind is ActionKind.SET_SYNC] == [Reason.RESTORE_SYNC]
    s, more = run_steps(s, p, lambda t: obs(t, async_pg, standby, t), 0.3, 7.9)
    assert [a for a in more if a.kind is ActionKind.SET_SYNC] == []
    s, more = run_steps(s, p, lambda t: obs(t, async_pg, standby, t), 8.0, 8.6)
    assert [a.reason for a in more if a.kind is ActionKind.SET_SYNC][:1] == [Reason.DEGRADE]


def test_chaos_seed_104_simulated_failover_then_rejoin_settles_in_sync() -> None:
    with World(policies(sync=True, degrade=8.0), seed=104, sync_report_delay=0.3) as w:
        w.run(2.0)
        w.link("b", Net.PRIVATE, False)
        w.run(10.0)  # past degrade_after: the primary stops waiting for b
        assert w.nodes["a"].state.degraded
        w.heal()
        w.run(10.0)
        tail = [line for line in w.log if "set_sync" in line and float(line.split()[0]) > 13.0]
        assert len(tail) <= 1, tail  # restored once, not flapping
        assert not w.nodes["a"].state.degraded and w.nodes["b"].state.eligible
