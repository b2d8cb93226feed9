"""The decision core, driven through the seed's cases and through random fault schedules."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from standby.config import STOP_BUDGET_MS, Timings
from standby.decide import PgCrashPolicy, Policy
from standby.model import DbState, Net
from tests.unit.sim import Violation, World


def policies(sync: bool = True, degrade: float = 0.0, hot: bool = True,
             pg_crash: PgCrashPolicy = PgCrashPolicy.FAILOVER, failover: float = 1.0) -> dict[str, Policy]:
    base = dict(hot=hot, sync=sync, failover_timeout_s=failover, fence_timeout_s=0.7, heartbeat_s=0.1, link_timeout_s=5.0,
                degrade_after_s=degrade, max_lag_bytes=3, pg_crash=pg_crash, pg_unresponsive_s=2.0,
                wal_stuck_s=2.0)
    return {"a": Policy(preferred=True, **base), "b": Policy(preferred=False, **base)}  # type: ignore[arg-type]


def within_the_timings_rule(stop_s: float, fence_s: float = 0.7, heartbeat_s: float = 0.1) -> float:
    """The shortest failover timeout config.Timings accepts for a server that stops within ``stop_s``
    (at least its budget): the fence timeout, one heartbeat (the two clocks), and the stop."""
    return round(fence_s + heartbeat_s + max(stop_s, STOP_BUDGET_MS / 1000), 3)


def test_sim_finding_two_primaries_when_the_gap_is_shorter_than_a_heartbeat_and_the_stop() -> None:
    """The schedule found above, at the old timings (failover 1.0 s, fence 0.7 s, a 0.3 s stop): the
    partition heals while the fenced server still stops, just as the standby promotes. The timings
    rule (config.Timings) refuses those timings; within it, the same schedule is safe."""
    steps = [("crash", "a", Net.PUBLIC, 0, 0.5), ("boot", "a", Net.PUBLIC, 0, 3.0),
             ("link_down", "a", Net.PUBLIC, 0, 2.0), ("link_down", "a", Net.PRIVATE, 0, 1.0)]

    def play(failover: float) -> None:
        with World(policies(sync=False, failover=failover), seed=0, stop_delay=0.3) as w:
            play_schedule(w, steps)

    with pytest.raises(Violation, match="two writable"):
        play(1.0)
    play(within_the_timings_rule(0.3))
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        Timings(heartbeat_interval_ms=150, fence_timeout_ms=600, failover_timeout_ms=800)  # 200 < 150 + 100
    Timings(heartbeat_interval_ms=150, fence_timeout_ms=450, failover_timeout_ms=750)  # the defaults: 300


def started(**kw: object) -> World:
    w = World(policies(**kw), seed=1)  # type: ignore[arg-type]
    w.run(2.0)
    assert w.nodes["a"].pg is DbState.PRIMARY and w.nodes["b"].streaming
    return w


def roles(w: World) -> tuple[str, str]:
    """(database primary, service IP holder), among nodes that are running."""
    (p,) = [n.name for n in w.primaries() if n.alive and not n.frozen]
    (h,) = [n.name for n in w.nodes.values() if n.holds_ips and n.alive and not n.frozen]
    return p, h


# -- the seed's cases, one by one ---------------------------------------------------


def test_primary_host_dead_everything_moves() -> None:
    w = started()
    w.crash("a")
    w.run(3.0)
    assert roles(w) == ("b", "b")
    assert w.lost() == []
    assert w.nodes["b"].state.term == 1


def test_primary_isolated_fences_itself_and_standby_takes_over() -> None:
    w = started()
    w.link("a", Net.PUBLIC, False)
    w.link("a", Net.PRIVATE, False)
    w.run(3.0)
    assert w.nodes["a"].state.fenced and w.nodes["a"].pg is DbState.DOWN
    assert not w.nodes["a"].holds_ips
    assert roles(w) == ("b", "b")
    w.heal()
    w.run(5.0)
    assert roles(w) == ("b", "b")  # the fenced primary stays down until rejoined
    assert w.lost() == []


def test_public_lost_at_primary_moves_services_only() -> None:
    w = started()
    w.link("a", Net.PUBLIC, False)
    w.run(8.0)
    assert roles(w) == ("a", "b")
    acked = len(w.acked)
    w.run(2.0)
    assert len(w.acked) > acked  # services on b write to a's database over the private network


def test_private_lost_at_primary_moves_database_only() -> None:
    w = started()
    w.link("a", Net.PRIVATE, False)
    w.run(8.0)
    assert roles(w) == ("b", "a")
    assert w.lost() == []
    acked = len(w.acked)
    w.run(2.0)
    assert len(w.acked) > acked  # services on a reach b's database over the public network


def test_short_single_link_outage_changes_nothing() -> None:
    w = started()
    for net in Net:
        w.link("a", net, False)
        w.run(2.0)
        w.link("a", net, True)
        w.run(2.0)
    assert roles(w) == ("a", "a") and w.role_changes == 0


def test_packet_loss_on_one_link_changes_nothing() -> None:
    w = started()
    w.set_loss("a", Net.PRIVATE, 20)
    w.run(30.0)
    w.set_loss("a", Net.PRIVATE, 0)
    w.set_loss("b", Net.PUBLIC, 20)
    w.run(30.0)
    assert roles(w) == ("a", "a") and w.role_changes == 0


def test_standby_dead_primary_keeps_serving_and_sync_commits_wait() -> None:
    w = started()
    w.crash("b")
    acked = len(w.acked)
    w.run(5.0)
    assert roles(w) == ("a", "a")
    assert len(w.acked) == acked  # zero loss: nothing acknowledged without the standby


def test_standby_dead_with_degrade_primary_goes_async() -> None:
    w = started(degrade=2.0)
    w.crash("b")
    acked = len(w.acked)
    w.run(5.0)
    assert roles(w) == ("a", "a") and w.nodes["a"].state.degraded
    assert len(w.acked) > acked


def test_frozen_primary_comes_back_fenced() -> None:
    w = started()
    w.freeze("a")
    w.run(3.0)
    assert roles(w) == ("b", "b")
    w.thaw("a")
    w.run(1.0)
    assert w.nodes["a"].state.fenced and w.nodes["a"].pg is DbState.DOWN
    assert roles(w) == ("b", "b")
    assert w.lost() == []


def test_pg_crash_on_primary_fails_over_to_in_sync_standby() -> None:
    w = started()
    w.kill_pg("a")
    w.run(2.0)
    assert roles(w)[0] == "b"
    assert w.nodes["a"].state.fenced
    assert w.lost() == []


def test_pg_crash_with_restart_policy_restarts_in_place() -> None:
    w = started(pg_crash=PgCrashPolicy.RESTART)
    w.kill_pg("a")
    w.run(2.0)
    assert roles(w) == ("a", "a") and not w.nodes["a"].state.fenced


def test_agent_restarted_mid_failover_converges() -> None:
    w = started()
    w.crash("a")
    w.run(1.2)  # b has decided by now
    w.kill_agent("b")
    w.run(1.0)
    w.start_agent("b")
    w.run(3.0)
    assert roles(w) == ("b", "b")


def test_warm_standby_never_promotes() -> None:
    w = started(hot=False)
    w.crash("a")
    w.run(10.0)
    assert w.primaries() == [] and w.nodes["b"].pg is DbState.STANDBY


def test_rebooted_old_primary_does_not_come_back_writable() -> None:
    w = started()
    w.crash("a")
    w.run(3.0)
    w.boot("a")
    w.run(5.0)
    assert roles(w) == ("b", "b")
    assert w.nodes["a"].pg is DbState.DOWN


def test_flapping_link_bounded_role_changes() -> None:
    w = started()
    for _ in range(15):
        w.link("a", Net.PUBLIC, False)
        w.run(1.0)
        w.link("a", Net.PUBLIC, True)
        w.run(1.0)
    assert w.role_changes == 0


def test_a_persons_forced_promotion_fences_the_primary_for_good() -> None:
    """`standby promote --force` on b while a serves (the random schedules draw it as "manual_failover"): a is
    fenced through its agent and stays down, b serves with the service IPs; in sync nothing acknowledged is
    lost (in async, what had not reached b: the command says so before it asks)."""
    for sync in (True, False):
        w = started(sync=sync)
        w.manual_failover("b")
        assert w.nodes["a"].state.fenced and not w.nodes["a"].state.resumable
        w.run(10.0)
        assert roles(w) == ("b", "b") and w.nodes["a"].pg is DbState.DOWN
        assert w.lost() == [] or not sync


def test_sim_forced_promotion_over_a_precautionary_fence_fences_it_for_good() -> None:
    """Found by the random schedules once they drew a person's forced promotion: a paused, fenced itself as a
    precaution (it may resume when b stays a standby that cannot promote); a person promoted b in the very
    interval a's resumption fell due, and a's last word from b was still "a standby". The command fences a
    through its agent although a's server is down (operations.peer_first); before, it only warned, and a
    started again beside b (here 1.2 s after the thaw)."""
    w = started(sync=False)
    w.link("a", Net.PRIVATE, False)  # b stops streaming: it cannot promote by itself
    w.run(1.0)
    w.freeze("a")
    w.run(3.0)
    w.thaw("a")
    w.link("a", Net.PRIVATE, True)
    w.run(1.2)
    assert w.nodes["a"].state.fenced and w.nodes["a"].state.resumable and w.nodes["a"].pg is DbState.DOWN
    w.manual_failover("b")
    assert w.nodes["a"].state.fenced and not w.nodes["a"].state.resumable
    w.run(5.0)
    assert roles(w) == ("b", "b") and w.nodes["a"].pg is DbState.DOWN


def test_a_forced_promotion_is_refused_while_the_primarys_agent_is_dead() -> None:
    w = started()
    w.kill_agent("a")
    w.nodes["a"].stop_due = None  # its unclean-exit fence has not stopped the server (yet)
    w.nodes["a"].pg = DbState.PRIMARY
    w.manual_failover("b")
    assert w.nodes["b"].pg is DbState.STANDBY  # it could still be writing: the command refuses


# -- random fault schedules ------------------------------------------------------------

FAULTS = ["crash", "boot", "freeze", "thaw", "link_down", "link_up", "loss", "kill_pg", "kill_agent",
          "start_agent", "wait", "long_freeze", "maintenance_on", "maintenance_off", "manual_failover",
          "hang_pg", "unhang_pg", "hang_disk", "unhang_disk"]
NETWORK_FAULTS = {"link_down", "loss"}  # the only way to the one case two servers cannot decide
# A person's forced promotion (`standby promote --force`) takes what the standby has; with degrade_after_s
# that may lack what the primary acknowledged alone, which the command says before it asks.
PERSON_FORCED = {"manual_failover"}

schedule = st.lists(
    st.tuples(st.sampled_from(FAULTS), st.sampled_from(["a", "b"]), st.sampled_from(list(Net)),
              st.integers(0, 100), st.floats(0.1, 4.0)),
    min_size=1, max_size=12,
)


def apply(w: World, fault: str, node: str, net: Net, pct: int) -> None:
    match fault:
        case "long_freeze":  # a paused VM, past degrade_after: thawed after it
            w.freeze(node)
            w.run(max(w.policy[node].degrade_after_s, w.policy[node].failover_timeout_s) + 1.0)
            w.thaw(node)
        case "maintenance_on": w.maintenance(node, True)  # and perhaps left on
        case "maintenance_off": w.maintenance(node, False)
        case "crash": w.crash(node)
        case "boot": w.boot(node)
        case "freeze": w.freeze(node)
        case "thaw": w.thaw(node)
        case "link_down": w.link(node, net, False)
        case "link_up": w.link(node, net, True)
        case "loss": w.set_loss(node, net, pct)
        case "kill_pg": w.kill_pg(node)
        case "kill_agent": w.kill_agent(node)
        case "manual_failover": w.manual_failover(node)
        case "start_agent": w.start_agent(node)
        case "hang_pg": w.hang_pg(node)  # chaos postgres-freeze
        case "unhang_pg": w.unhang_pg(node)
        case "hang_disk": w.hang_disk(node)  # chaos wal-disk-hang
        case "unhang_disk": w.unhang_disk(node)


def play_schedule(w: World, steps: list) -> None:
    """Settle, apply each fault and wait its time, heal everything, and let the world run on."""
    w.run(2.0)
    for fault, node, net, pct, wait in steps:
        apply(w, fault, node, net, pct)
        w.run(wait)
    w.heal()
    w.run(10.0)


@pytest.mark.parametrize("sync,degrade", [(True, 0.0), (True, 3.0), (False, 0.0)])
@settings(max_examples=int(os.environ.get("STANDBY_SIM_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=schedule, seed=st.integers(0, 2**16), stop_delay=st.sampled_from([0.0, 0.3]),
       agent_fence_delay=st.sampled_from([0.0, 0.5, 2.0]), sync_report_delay=st.sampled_from([0.0, 0.3]))
# Found by these schedules (async): a rebooted primary isolated, its fence stopping the server while
# the partition healed and the standby promoted. Kept, and the timings rule it led to (config.Timings:
# the failover timeout exceeds the fence timeout by a heartbeat and the stop) is what the world runs with.
@example(steps=[("crash", "a", Net.PUBLIC, 0, 0.5), ("boot", "a", Net.PUBLIC, 0, 3.0),
                ("link_down", "a", Net.PUBLIC, 0, 2.0), ("link_down", "a", Net.PRIVATE, 0, 1.0)],
         seed=0, stop_delay=0.3, agent_fence_delay=0.0, sync_report_delay=0.0)
# And, within that rule: a primary paused through the failover window, let go in the very tick its
# standby promotes (the pause no decision can prevent; the world excuses the stop that follows).
@example(steps=[("freeze", "a", Net.PUBLIC, 0, 1.0)], seed=0, stop_delay=0.3, agent_fence_delay=0.0,
         sync_report_delay=0.0)
# And a person's forced promotion (drawn since 2026-12-05): the old primary had fenced itself after a long
# pause, as a precaution it may lift; promoted by hand, the standby's last heartbeat before its promotion
# still said "a standby that cannot promote", and the old primary started again beside it. The command now
# fences a node whose agent answers even when its server is down (operations.peer_first).
@example(steps=[("boot", "a", Net.PUBLIC, 0, 1.75), ("link_down", "a", Net.PRIVATE, 0, 1.0),
                ("long_freeze", "a", Net.PUBLIC, 0, 1.125), ("manual_failover", "b", Net.PUBLIC, 0, 1.0)],
         seed=0, stop_delay=0.0, agent_fence_delay=0.0, sync_report_delay=0.0)
def test_random_faults_keep_the_invariants(sync: bool, degrade: float, steps: list, seed: int, stop_delay: float,
                                           agent_fence_delay: float, sync_report_delay: float) -> None:
    """Never two writable primaries, never two holders of the service IPs, terms never go back,
    fenced nodes stay down (all raised inside the world), and in sync mode no acknowledged call is
    ever lost (with degrade: unless the network faults made the case two servers cannot decide).
    Stopping PostgreSQL takes time, after a decided fence and after a killed agent."""
    with World(policies(sync=sync, degrade=degrade, failover=within_the_timings_rule(stop_delay)), seed=seed,
               stop_delay=stop_delay, agent_fence_delay=agent_fence_delay, sync_report_delay=sync_report_delay) as w:
        play_schedule(w, steps)
        assert len(w.primaries()) <= 1, w.log
        if sync and (degrade == 0 or not (NETWORK_FAULTS | PERSON_FORCED) & {f for f, *_ in steps}):
            assert w.lost() == [], w.log


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("hang, unhang, reason", [
    # The simulated chaos postgres-freeze: the server answers nothing.
    ("hang_pg", "unhang_pg", "pg_unresponsive_failover"),
    # The simulated chaos wal-disk-hang (finding: hung disk): the disk completes no write, the server answers
    # every reading.
    ("hang_disk", "unhang_disk", "wal_flush_stuck_failover"),
])
def test_a_primary_that_serves_nobody_past_the_bound_moves_the_database_and_loses_nothing(
        sync: bool, hang: str, unhang: str, reason: str) -> None:
    """The primary serves nobody for 3 s (the bound is 2 s here). Its agent fences it (the stop ends in SIGKILL),
    the standby takes over on FENCED, calls go on there, nothing acknowledged is lost (sync), and the old
    primary, let go, never takes a write again; one that serves again within the bound moves nothing."""
    with World(policies(sync=sync), seed=1) as w:
        w.run(2.0)
        getattr(w, hang)("a")
        w.run(1.5)
        getattr(w, unhang)("a")  # within the bound: a slow moment
        w.run(3.0)
        assert [n.name for n in w.primaries()] == ["a"] and w.role_changes == 0, w.log
        getattr(w, hang)("a")
        w.run(3.0)
        before = len(w.acked)
        w.run(5.0)
        assert [n.name for n in w.primaries()] == ["b"] and len(w.acked) > before, w.log  # calls go on at b
        assert any(reason in line for line in w.log), w.log
        assert w.nodes["a"].state.fenced and w.nodes["a"].pg is DbState.DOWN
        getattr(w, unhang)("a")
        w.run(3.0)
        assert [n.name for n in w.primaries()] == ["b"], w.log
        # Async: what the standby had not received when the server froze, within the lag bound (salvaged at the rejoin).
        assert (w.lost() == [] if sync else len(w.lost()) <= w.policy["b"].max_lag_bytes), w.log


def test_wal_disk_hung_on_the_standby_moves_nothing() -> None:
    """The standby's disk hangs: it stores nothing received, so a sync primary's commits wait (or it degrades);
    the standby's own server is no primary and is never judged by the rule."""
    with World(policies(sync=True), seed=1) as w:
        w.run(2.0)
        w.hang_disk("b")
        w.run(6.0)
        assert [n.name for n in w.primaries()] == ["a"] and not any("wal_flush_stuck" in x for x in w.log), w.log
        w.unhang_disk("b")
        w.run(3.0)
        assert [n.name for n in w.primaries()] == ["a"] and w.lost() == [], w.log


def test_primary_frozen_while_its_standby_restarts_still_fences() -> None:
    """Found by the random schedules: the primary last saw its standby's server down (restarting),
    froze, and the standby was promoted meanwhile; on thawing it must still fence itself."""
    w = World(policies(sync=False), seed=0)
    w.run(2.0)
    w.kill_pg("b")
    w.run(0.25)
    w.freeze("a")
    w.run(1.5)
    assert roles(w) == ("b", "b")
    w.thaw("a")
    w.run(1.0)
    assert w.nodes["a"].state.fenced and w.nodes["a"].pg is DbState.DOWN


def test_primary_frozen_briefly_while_its_old_primary_is_fenced_keeps_serving() -> None:
    """Found by chaos seed 3: a new primary, alone with a fenced peer, was frozen for 0.7 s (0.85 s without a step, past its stall limit). On thawing,
    the peer's silence and the tie-breaker's staleness were its own doing, yet it fenced itself as
    isolated, leaving both nodes fenced. A fenced peer cannot have taken over the database or
    the service IPs meanwhile (it takes them only when told they are free): keep both."""
    w = started()
    w.freeze("a")
    w.run(3.0)
    w.thaw("a")
    w.run(1.0)
    assert w.nodes["a"].state.fenced and roles(w) == ("b", "b")
    w.freeze("b")
    w.run(1.0)  # past the stall limit (0.9 s here, 0.6 s with the defaults)
    w.thaw("b")
    w.run(2.0)
    assert not w.nodes["b"].state.fenced and roles(w) == ("b", "b")
    assert w.lost() == []


def test_primary_fenced_as_a_precaution_resumes_when_the_standby_did_not_take_over() -> None:
    """Found by chaos seed 3 under CPU starvation: the primary stalled and fenced itself while its
    standby was not eligible (here: async, lagging past the bound); the standby rightly did not
    promote, and the pair had no primary at all. Now the primary, hearing a standby that cannot
    promote in no newer term, serves again."""
    w = started(sync=False)
    w.link("b", Net.PRIVATE, False)  # b stops receiving WAL; heartbeats still flow on the public side
    w.run(1.0)
    assert not w.nodes["b"].state.eligible
    w.freeze("a")
    w.run(1.2)  # past the stall limit
    w.thaw("a")
    w.run(0.3)
    assert w.nodes["a"].state.fenced and w.primaries() == []
    w.run(2.0)
    assert not w.nodes["a"].state.fenced and roles(w) == ("a", "a")
    w.heal()
    w.run(2.0)
    assert w.nodes["b"].streaming and w.lost() == [] and roles(w) == ("a", "a")


def test_a_fenced_primary_never_resumes_over_an_eligible_standby() -> None:
    """The standby hears the fence and takes over; the old primary stays fenced until rejoined."""
    w = started()
    w.freeze("a")
    w.run(0.95)  # past the stall limit (0.9 s), short of the failover timeout: b has not promoted
    w.thaw("a")
    w.run(3.0)
    assert w.nodes["a"].state.fenced and roles(w) == ("b", "b") and w.nodes["b"].state.term == 1
    assert w.lost() == []


def test_a_primary_that_handed_over_after_a_crash_resumes_when_the_standby_cannot_promote() -> None:
    """Found by chaos seed 12 (WAL disk full on the primary): the primary's PostgreSQL died and it
    fenced itself to hand over, but the standby could not promote; the pair had no primary at all.
    Here the standby is one that never promotes."""
    pol = policies()
    pol["b"] = Policy(**{**pol["b"].__dict__, "hot": False})
    w = World(pol, seed=1)
    w.run(2.0)
    w.kill_pg("a")
    w.run(0.5)
    assert w.nodes["a"].state.fenced and w.primaries() == []
    w.run(3.0)
    assert not w.nodes["a"].state.fenced and roles(w) == ("a", "a")
    assert w.nodes["b"].streaming and w.lost() == []


def test_rebooted_old_primary_does_not_restart_while_its_standby_is_being_promoted() -> None:
    """Found by the random schedules (async): a crash-looping primary came back just as its standby
    decided to promote; it heard a standby (the promotion not yet done) and restarted as primary.
    A standby in a newer term is being promoted: the old primary must wait."""
    w = World(policies(sync=False), seed=0)
    w.run(2.0)
    for fault, wait in (("crash", 0.25), ("crash", 0.25), ("crash", 0.25), ("boot", 1.0), ("crash", 0.375),
                        ("crash", 0.375)):
        apply(w, fault, "a", Net.PUBLIC, 0)
        w.run(wait)
    w.heal()
    w.run(10.0)
    assert len(w.primaries()) == 1
