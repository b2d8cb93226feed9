"""Finding DR-split: a running primary serving beside a DR node that a person promoted while the WAN was cut.

The WAN between the sites is cut; the pair's site is alive but cannot be reached from the other site. A person
there, seeing no pair node, promotes the warm follower gamma (`standby promote --node gamma`: the pair's nodes do
not answer, so nothing is fenced). When the WAN comes back, alpha (still the pair's primary) and gamma both
accept writes, each from the clients that reach it, and nothing ever stopped either: the pair asked the warm
followers only while a restart or a resumption was in question. Now a running primary asks them every second
and fences itself for good when one accepts writes (decide.py rule 7); the fence says so in its heartbeats, so
the standby, which would otherwise take the database over from a fenced primary, gives up its claim instead.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from standby import operations as ops
from standby.decide import State, advertise, dr_in_question
from standby.model import ActionKind, DbState, DrSeen, LocalPg, Net, Reason
from tests.unit.sim import World
from tests.unit.test_decide import FAULTS, apply, policies, within_the_timings_rule
from tests.unit.test_findings_core import BOTH_UP, kinds, obs, pol, run_steps, view

PRIMARY = LocalPg(DbState.PRIMARY, lsn=100, peer_sync=True, peer_flush_lsn=100)
STANDBY = LocalPg(DbState.STANDBY, lsn=100, streaming=True)


def _serving_primary() -> State:
    return State(term=2, peer_term=2, was_primary=True, primary_this_run=True, services=True, sync_established=True)


def test_dr_split_a_running_primary_fences_for_good_when_a_warm_follower_accepts_writes() -> None:
    p = pol(dr_watch=True)
    s, acts = run_steps(_serving_primary(), p, lambda t: obs(t, PRIMARY, view(DbState.STANDBY, 2), t,
                                                             dr=DrSeen.WRITABLE), 0.1, 0.1)
    assert kinds(acts) == [(ActionKind.FENCE, Reason.DR_SERVES), (ActionKind.RELEASE_SERVICES, Reason.DR_SERVES)]
    assert s.fenced and not s.resumable and s.dr_serves and not s.services
    # Said in every heartbeat from then on, through the fence and after the server is down.
    for pg in (PRIMARY, LocalPg(DbState.DOWN)):
        assert advertise(s, pg, dict(BOTH_UP), True, False, True).dr_serves
    # Never resumed, whatever the peer says; only a rebuild (the road back) ends it.
    s, acts = run_steps(s, p, lambda t: obs(t, LocalPg(DbState.DOWN), view(DbState.STANDBY, 2, eligible=False), t,
                                            dr=DrSeen.CLEAR), 0.2, 20.0)
    assert not any(a.kind is ActionKind.RESTART_PG for a in acts) and s.fenced
    assert not ops.rebuilt(s).dr_serves and not ops.following(s).dr_serves


@pytest.mark.parametrize("dr", [None, DrSeen.UNKNOWN, DrSeen.CLEAR])
def test_dr_split_a_warm_follower_not_heard_or_a_standby_changes_nothing_for_a_running_primary(
        dr: DrSeen | None) -> None:
    """A WAN that is down is the usual case across sites: a silent DR node is no reason to stop serving."""
    s, acts = run_steps(_serving_primary(), pol(dr_watch=True),
                        lambda t: obs(t, PRIMARY, view(DbState.STANDBY, 2), t, dr=dr), 0.1, 10.0)
    assert not s.fenced and not any(a.kind is ActionKind.FENCE for a in acts)


def test_dr_split_in_maintenance_too() -> None:
    _s, acts = run_steps(_serving_primary(), pol(dr_watch=True, suspended=True),
                        lambda t: obs(t, PRIMARY, view(DbState.STANDBY, 2), t, dr=DrSeen.WRITABLE), 0.1, 0.1)
    assert (ActionKind.FENCE, Reason.DR_SERVES) in kinds(acts)


def test_dr_split_a_running_primary_is_always_in_question_and_a_fenced_one_never() -> None:
    assert dr_in_question(_serving_primary(), DbState.PRIMARY)
    assert not dr_in_question(replace(_serving_primary(), fenced=True), DbState.PRIMARY)
    # A hot standby is asked too since finding DR-window (tests/unit/test_findings_dr_window.py).


def _eligible_standby() -> State:
    s = State(term=2, peer_term=2, watching_since=0.0)
    s, _ = run_steps(s, pol(), lambda t: obs(t, STANDBY, view(DbState.PRIMARY, 2, sync_ok=True), t), 0.1, 1.0)
    assert s.eligible
    return s


@pytest.mark.parametrize("db", [DbState.FENCING, DbState.FENCED])
def test_dr_split_the_standby_does_not_take_the_database_over_from_a_dr_fence(db: DbState) -> None:
    """Without the word, FENCED is a hand-over (PEER_RELEASED_DB): the standby would promote beside gamma."""
    fenced = view(db, 2, dr_serves=True)
    s, acts = run_steps(_eligible_standby(), pol(), lambda t: obs(t, STANDBY, fenced, t), 1.1, 5.0)
    assert not s.eligible and not any(a.kind is ActionKind.PROMOTE for a in acts)
    # Nor when the fenced primary falls silent afterwards (its host goes): no claim is left to act on.
    s, acts = run_steps(s, pol(), lambda t: obs(t, replace(STANDBY, streaming=False), None, 5.0,
                                                tiebreaker_ok=True), 5.1, 15.0)
    assert not any(a.kind is ActionKind.PROMOTE for a in acts)


def test_dr_split_without_the_word_a_fenced_primary_is_a_hand_over_as_before() -> None:
    """The old reading stands for every other fence (a crashed server, a lost replication link)."""
    _, acts = run_steps(_eligible_standby(), pol(), lambda t: obs(t, STANDBY, view(DbState.FENCED, 2), t), 1.1, 1.5)
    assert (ActionKind.PROMOTE, Reason.PEER_RELEASED_DB) in kinds(acts)


def test_dr_split_simulated_the_wan_heals_the_primary_stops_and_the_standby_stays() -> None:
    with World(policies(sync=True) | {n: replace(p, dr_watch=True) for n, p in policies(sync=True).items()},
               seed=3, stop_delay=0.3) as w:
        w.run(2.0)
        w.promote_dr()
        w.run(10.0)
        assert w.primaries() == [], w.log
        a, b = w.nodes["a"], w.nodes["b"]
        assert a.state.fenced and a.state.dr_serves and not b.state.eligible and b.pg is DbState.STANDBY
        assert not a.holds_ips and not b.holds_ips


# dr_loss: the node's questions to the warm follower go unanswered pct % of the time (a slow WAN); dr_cut: all
# of them (the WAN from this node to the DR site is down), drawn as a kind of its own so that schedules reach it.
DR_FAULTS = [*FAULTS, "dr_promote", "dr_loss", "dr_cut"]
dr_schedule = st.lists(
    st.tuples(st.sampled_from(DR_FAULTS), st.sampled_from(["a", "b"]), st.sampled_from(list(Net)),
              st.integers(0, 100), st.floats(0.1, 4.0)),
    min_size=1, max_size=12,
)


@pytest.mark.parametrize("sync", [True, False])
@settings(max_examples=int(os.environ.get("STANDBY_SIM_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=dr_schedule, seed=st.integers(0, 2**16), stop_delay=st.sampled_from([0.0, 0.3]))
@example(steps=[("crash", "a", Net.PUBLIC, 0, 0.5), ("dr_promote", "a", Net.PUBLIC, 0, 0.2)], seed=0, stop_delay=0.3)
# The world's bound counted a dead agent's time: b promoted, its agent killed, the DR node promoted meanwhile.
@example(steps=[("crash", "a", Net.PUBLIC, 0, 1.0), ("kill_agent", "b", Net.PUBLIC, 0, 1.0),
                ("dr_promote", "a", Net.PUBLIC, 0, 2.0)], seed=0, stop_delay=0.3)
# Drawn 2026-12-05: b promoted for a crashed a, its server stopped answering in that moment (postgres-freeze), then
# the DR promotion: the world counted the stopped server as taking writes beside the DR node. It takes none while
# stopped; its bound counts from when it answers again (at the heal), and its agent then stops it in time.
@example(steps=[("crash", "a", Net.PUBLIC, 0, 1.0), ("hang_pg", "b", Net.PUBLIC, 0, 1.0),
                ("crash", "a", Net.PUBLIC, 0, 1.0), ("dr_promote", "a", Net.PUBLIC, 0, 2.0)], seed=0, stop_delay=0.0)
def test_dr_split_random_faults_with_a_dr_promotion_leave_no_pair_node_serving_beside_it(
        sync: bool, steps: list, seed: int, stop_delay: float) -> None:
    """The world's invariants (never two writable pair nodes, fenced nodes stay down, terms never go back), and:
    after a DR promotion no pair node accepts writes beside it for longer than reading the answer and the
    stop take, no pair node is promoted after its peer fenced itself for the DR node or once its own
    question read the DR node's answer or could have (finding DR-window; some answers lost on the way:
    CI run 31), and once healed the pair serves nowhere."""
    base = policies(sync=sync, failover=within_the_timings_rule(stop_delay))
    with World({n: replace(p, dr_watch=True) for n, p in base.items()}, seed=seed, stop_delay=stop_delay) as w:
        w.run(2.0)
        for fault, node, net, pct, wait in steps:
            if fault == "dr_promote":
                w.promote_dr()
            elif fault in ("dr_loss", "dr_cut"):
                w.set_dr_loss(node, pct if fault == "dr_loss" else 100)
            else:
                apply(w, fault, node, net, pct)
            w.run(wait)
        w.promote_dr()  # at the end if the schedule did not draw it
        w.heal()
        w.run(10.0)
        assert w.primaries() == [], w.log


# -- what `standby status` tells the person who must rebuild the fenced node ------------------------------


@pytest.mark.parametrize(("followers", "seen", "named"), [
    (("gamma",), {"gamma": None}, "gamma"),  # the only warm follower, its agent silent
    (("gamma", "epsilon"), {"gamma": "writable", "epsilon": "recovery"}, "gamma"),  # the one seen writable
    (("gamma", "epsilon"), {"gamma": None, "epsilon": "recovery"}, "FOLLOWER"),  # neither: no guess
    (("gamma", "epsilon"), {"gamma": "writable", "epsilon": "writable"}, "FOLLOWER"),  # two DR primaries
])
def test_dr_split_status_names_the_follower_to_rebuild_from(
        tmp_path: os.PathLike[str], followers: tuple[str, ...], seen: dict[str, str | None], named: str) -> None:
    from pathlib import Path

    from standby import config
    from standby import status as status_mod
    from tests.unit.configs import example_with_secrets
    from tests.unit.test_documents import view as agent_view
    from tests.unit.test_followers_agent import _view as follower_view
    from tests.unit.test_followers_config import follower

    raw, _ = example_with_secrets(Path(tmp_path))
    raw["followers"] = [follower(n, 21 + i) for i, n in enumerate(followers)]
    cfg = config.parse(raw)
    fenced = agent_view()
    fenced = replace(fenced, state=replace(fenced.state, fenced=True, dr_serves=True))
    views = {n: None if v is None else follower_view(n, in_recovery=v == "recovery") for n, v in seen.items()}
    o = status_mod.Observations("beta", {}, (), agents={"alpha": fenced, "beta": None}, followers=views)
    said = [w for w in status_mod._agent_warnings(cfg, o) if "alpha is FENCED" in w]
    assert said and f"`standby rejoin --node alpha --from {named}`" in said[0], said
