"""The follower's decision core (standby.follow): a case per rule, properties over random and exhaustive
observations, and a small simulated pair with followers through failover, switchover and site loss."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby.follow import (
    FollowerAction,
    FollowerActionKind,
    FollowerObservation,
    FollowerPg,
    FollowerPolicy,
    FollowerReason,
    FollowerState,
    PairView,
    decide_follower,
    fork_of,
)
from standby.model import DbState

NOW = 1000.0
FORK = 4000  # where timeline 2 left timeline 1
TL2 = ((1, FORK),)


def policy(upstream: str = "primary", alerts: bool = True) -> FollowerPolicy:
    return FollowerPolicy(upstream=upstream, alerts=alerts, fresh_s=1.0, site_loss_after_s=10.0,
                          realert_after_s=300.0, upstream_grace_s=3.0, retry_s=5.0, rejoin_backoff_s=60.0,
                          restart_backoff_s=5.0)


def primary(term: int = 1, tl: int = 1, lsn: int = 5000, at: float = NOW, history: tuple[tuple[int, int], ...] = ()
            ) -> PairView:
    return PairView(term=term, db=DbState.PRIMARY, timeline=tl, lsn=lsn, heard_at=at, history=history)


def standby(term: int = 1, tl: int = 1, at: float = NOW, streaming: bool = True, db: DbState = DbState.STANDBY
            ) -> PairView:
    return PairView(term=term, db=db, timeline=tl, lsn=4900, heard_at=at, streaming=streaming)


def pg(source: str | None = "alpha", tl: int = 1, received: int | None = 4800, streaming: bool = True,
       running: bool = True, in_recovery: bool = True) -> FollowerPg:
    return FollowerPg(running=running, in_recovery=in_recovery, streaming=streaming and running, source=source,
                      timeline=tl, received_lsn=received, replay_lsn=None if received is None else received - 300)


def obs(local: FollowerPg, now: float = NOW, gap: float = 0.1, answered: dict[str, float] | None = None,
        **pair: PairView) -> FollowerObservation:
    return FollowerObservation(now=now, gap=gap, pg=local, pair=pair,
                               answered={n: now for n in (*pair, "dr")} if answered is None else answered)


def streaming_from_alpha() -> FollowerState:
    return FollowerState(term=1, primary="alpha", primary_timeline=1, target="alpha", pointed_term=1,
                         watching_since=0.0)


def acted(acts: list[FollowerAction]) -> list[tuple[FollowerActionKind, FollowerReason, str | None]]:
    """The actions but the report, as (kind, reason, target)."""
    return [(a.kind, a.reason, a.target) for a in acts if a.kind is not FollowerActionKind.REPORT]


def report(acts: list[FollowerAction]) -> FollowerAction:
    (r,) = [a for a in acts if a.kind is FollowerActionKind.REPORT]
    return r


POINT, REJOIN = FollowerActionKind.POINT_AT, FollowerActionKind.REJOIN


# -- one case per rule -------------------------------------------------------------------------------------


def test_streaming_keeps_streaming_and_reports_lag_and_exposure() -> None:
    _, acts = decide_follower(streaming_from_alpha(), obs(pg(), alpha=primary(), beta=standby()), policy())
    assert acted(acts) == []
    r = report(acts)
    assert r.reason is FollowerReason.STREAMING and (r.lag_bytes, r.loss_bytes) == (500, 200)


def test_upstream_first_pointing_at_the_primary() -> None:
    s, acts = decide_follower(FollowerState(), obs(pg(source=None, streaming=False), alpha=primary(), beta=standby()),
                              policy())
    assert acted(acts) == [(POINT, FollowerReason.UPSTREAM, "alpha")] and s.term == 1 and s.primary == "alpha"


def test_waiting_then_retry_when_a_pointing_does_not_take() -> None:
    p, o = policy(), obs(pg(source=None, streaming=False), alpha=primary(), beta=standby())
    s, _ = decide_follower(FollowerState(), o, p)
    s, acts = decide_follower(s, obs(o.pg, NOW + 1, alpha=primary(at=NOW + 1), beta=standby(at=NOW + 1)), p)
    assert acted(acts) == [] and report(acts).reason is FollowerReason.WAITING
    later = NOW + p.retry_s
    s, acts = decide_follower(s, obs(o.pg, later, alpha=primary(at=later), beta=standby(at=later)), p)
    assert acted(acts) == [(POINT, FollowerReason.RETRY, "alpha")]


def test_new_primary_follows_its_timeline_without_a_reclone() -> None:
    """Failover in the pair: the follower had received up to the fork only; it is re-pointed, not rejoined."""
    o = obs(pg(received=FORK, streaming=False), alpha=standby(term=1, db=DbState.FENCED),
            beta=primary(term=2, tl=2, history=TL2))
    s, acts = decide_follower(streaming_from_alpha(), o, policy())
    assert acted(acts) == [(POINT, FollowerReason.NEW_PRIMARY, "beta")]
    assert "recovery_target_timeline = latest" in acts[0].detail and s.term == 2 and s.primary == "beta"


def test_past_fork_rejoins() -> None:
    """It had received WAL from the old primary past where the new timeline left it: it cannot follow."""
    o = obs(pg(received=FORK + 1, streaming=False), beta=primary(term=2, tl=2, history=TL2))
    s, acts = decide_follower(streaming_from_alpha(), o, policy())
    assert acted(acts) == [(REJOIN, FollowerReason.PAST_FORK, "beta")]
    s, acts = decide_follower(s, obs(o.pg, NOW + 1, beta=primary(term=2, tl=2, history=TL2, at=NOW + 1)), policy())
    assert acted(acts) == [] and report(acts).reason is FollowerReason.PAST_FORK  # one attempt per backoff


def test_not_in_history_rejoins() -> None:
    o = obs(pg(tl=3, received=100, streaming=False), beta=primary(term=4, tl=4, history=((1, 10), (2, 20))))
    _, acts = decide_follower(streaming_from_alpha(), o, policy())
    assert acted(acts) == [(REJOIN, FollowerReason.NOT_IN_HISTORY, "beta")]


def test_ahead_of_primary_waits() -> None:
    _, acts = decide_follower(streaming_from_alpha(), obs(pg(tl=3), alpha=primary(tl=2)), policy())
    assert acted(acts) == [] and report(acts).reason is FollowerReason.AHEAD_OF_PRIMARY


def test_no_primary_while_the_newer_term_names_none() -> None:
    """The standby raised the term (it is promoting) while the old primary still says primary in the old
    term: the old primary is not followed any more, and nothing new is pointed at yet."""
    o = obs(pg(source="beta", streaming=False), alpha=primary(term=1), beta=standby(term=2))
    s, acts = decide_follower(FollowerState(term=1, primary="alpha", target="beta", pointed_term=1), o, policy())
    assert acted(acts) == [] and report(acts).reason is FollowerReason.NO_PRIMARY
    assert s.term == 2 and s.primary is None


def test_newer_term_wins_even_from_an_old_heartbeat() -> None:
    """The term rises on any heartbeat that carries it; only a fresh one names a primary to point at."""
    o = obs(pg(), alpha=primary(term=1), beta=primary(term=2, tl=2, history=TL2, at=NOW - 50))
    s, acts = decide_follower(streaming_from_alpha(), o, policy())
    assert s.term == 2 and acted(acts) == []


def test_view_older_than_the_current_term_is_ignored() -> None:
    """A late heartbeat of the old primary (term 1) never takes the follower back to it."""
    s = FollowerState(term=2, primary="beta", primary_timeline=2, target="beta", pointed_term=2)
    o = obs(pg(source="beta", tl=2, streaming=False), alpha=primary(term=1, lsn=9000))
    s2, acts = decide_follower(s, o, policy())
    assert acted(acts) == [] and s2.term == 2 and report(acts).reason is FollowerReason.NO_PRIMARY


def test_upstream_standby_cascades_from_the_hot_standby() -> None:
    o = obs(pg(source=None, streaming=False), alpha=primary(), beta=standby())
    _, acts = decide_follower(FollowerState(), o, policy("standby"))
    assert acted(acts) == [(POINT, FollowerReason.UPSTREAM, "beta")]


def test_upstream_gone_falls_back_to_the_primary_and_comes_back_after_the_grace_period() -> None:
    p = policy("standby")
    s = FollowerState(term=1, primary="alpha", primary_timeline=1, target="beta", pointed_term=1, upstream_ok_since=0)
    o = obs(pg(source="beta", streaming=False), alpha=primary(), beta=standby(at=NOW - 5))  # the standby is silent
    s, acts = decide_follower(s, o, p)
    assert acted(acts) == [(POINT, FollowerReason.UPSTREAM_GONE, "alpha")]
    t = NOW + 1
    s, acts = decide_follower(s, obs(pg(source="alpha"), t, alpha=primary(at=t), beta=standby(at=t)), p)
    assert acted(acts) == []  # back, but not for a whole grace period yet
    t += p.upstream_grace_s
    s, acts = decide_follower(s, obs(pg(source="alpha"), t, alpha=primary(at=t), beta=standby(at=t)), p)
    assert acted(acts) == [(POINT, FollowerReason.UPSTREAM_BACK, "beta")]


def test_upstream_standby_not_streaming_is_no_upstream() -> None:
    o = obs(pg(source=None, streaming=False), alpha=primary(), beta=standby(streaming=False))
    _, acts = decide_follower(FollowerState(), o, policy("standby"))
    assert acted(acts) == [(POINT, FollowerReason.UPSTREAM_GONE, "alpha")]


def test_upstream_follower_cascades_while_it_answers() -> None:
    o = obs(pg(source=None, streaming=False), alpha=primary(), beta=standby())
    _, acts = decide_follower(FollowerState(), o, policy("dr"))
    assert acted(acts) == [(POINT, FollowerReason.UPSTREAM, "dr")]
    o = obs(pg(source=None, streaming=False), answered={"alpha": NOW}, alpha=primary(), beta=standby())
    _, acts = decide_follower(FollowerState(), o, policy("dr"))
    assert acted(acts) == [(POINT, FollowerReason.UPSTREAM_GONE, "alpha")]


def test_pg_down_restarts_in_recovery_with_a_backoff() -> None:
    p = policy()
    s, acts = decide_follower(streaming_from_alpha(), obs(pg(running=False), alpha=primary()), p)
    assert acted(acts) == [(FollowerActionKind.RESTART, FollowerReason.PG_DOWN, None)]
    _, acts = decide_follower(s, obs(pg(running=False), NOW + 1, alpha=primary(at=NOW + 1)), p)
    assert acted(acts) == []


def test_promoted_by_operator_ends_the_followers_decisions() -> None:
    s, acts = decide_follower(streaming_from_alpha(), obs(pg(in_recovery=False), beta=primary(term=2, tl=2)), policy())
    assert s.promoted and acted(acts) == [] and report(acts).reason is FollowerReason.PROMOTED_BY_OPERATOR
    _, acts = decide_follower(s, obs(pg(), alpha=primary(term=3, tl=3)), policy())
    assert acted(acts) == []  # a primary now: the pair's core decides for it


def test_site_lost_alerts_once_then_again_after_the_quiet_period() -> None:
    p = policy()
    s = streaming_from_alpha()
    last = NOW - 20
    alerts = []
    for t in (NOW, NOW + 10, NOW + p.realert_after_s - 1, NOW + p.realert_after_s):
        s, acts = decide_follower(s, obs(pg(streaming=False), t, alpha=primary(at=last), beta=standby(at=last)), p)
        alerts += [t for a in acts if a.kind is FollowerActionKind.ALERT and a.reason is FollowerReason.SITE_LOST]
    assert alerts == [NOW, NOW + p.realert_after_s]
    assert report(acts).loss_bytes == 200  # what a DR promotion now would lose, against the last known flush


def test_site_lost_is_not_alerted_by_a_reporting_follower() -> None:
    o = obs(pg(streaming=False), alpha=primary(at=NOW - 20))
    _, acts = decide_follower(streaming_from_alpha(), o, policy(alerts=False))
    assert acted(acts) == []


def test_site_lost_not_counted_across_the_followers_own_stall() -> None:
    """Silence heard while this follower was stalled is its own: counted from the end of the stall."""
    o = obs(pg(streaming=False), NOW, gap=30.0, alpha=primary(at=NOW - 20))
    s, acts = decide_follower(streaming_from_alpha(), o, policy())
    assert acted(acts) == [] and s.watching_since == NOW
    s, acts = decide_follower(s, obs(o.pg, NOW + 10, alpha=primary(at=NOW - 20)), policy())
    assert [a.kind for a in acts if a.kind is FollowerActionKind.ALERT] == [FollowerActionKind.ALERT]


def test_exposure_unknown_once_past_the_fork() -> None:
    o = obs(pg(received=FORK + 1, streaming=False), beta=primary(term=2, tl=2, history=TL2))
    _, acts = decide_follower(streaming_from_alpha(), o, policy())
    assert (report(acts).lag_bytes, report(acts).loss_bytes) == (None, None)


def test_every_reason_has_a_case_above() -> None:
    names = {r.name for r in FollowerReason}
    source = open(__file__).read()
    assert {n for n in names if f"FollowerReason.{n}" not in source} == set()


# -- properties -----------------------------------------------------------------------------------------------

NODES = ("alpha", "beta")


def _history(tl: int) -> tuple[tuple[int, int], ...]:
    return tuple((t, 1000 * t + 3000) for t in range(1, tl))


views = st.builds(
    lambda term, db, tl, lsn, age, streaming: PairView(term, db, tl, lsn, NOW - age, streaming, _history(tl)),
    st.integers(0, 4), st.sampled_from(list(DbState)), st.integers(1, 4), st.none() | st.integers(0, 9000),
    st.sampled_from([0.0, 0.5, 2.0, 50.0]), st.booleans())
locals_ = st.builds(FollowerPg, running=st.booleans(), in_recovery=st.booleans(), streaming=st.booleans(),
                    source=st.sampled_from([None, "alpha", "beta", "dr"]), timeline=st.integers(1, 4),
                    received_lsn=st.none() | st.integers(0, 9000), replay_lsn=st.none() | st.integers(0, 9000))
observations = st.builds(
    lambda local, pair, answered, gap: FollowerObservation(NOW, gap, local, pair,
                                                           {n: NOW - 0.5 for n in answered}),
    locals_, st.dictionaries(st.sampled_from(NODES), views),
    st.sets(st.sampled_from([*NODES, "dr"])), st.sampled_from([0.1, 30.0]))
states = st.builds(FollowerState, term=st.integers(0, 4), primary=st.sampled_from([None, *NODES]),
                   target=st.sampled_from([None, "alpha", "beta", "dr"]), pointed_term=st.integers(0, 4),
                   pointed_at=st.sampled_from([NOW - 100, NOW - 1]), upstream_ok_since=st.none() | st.just(NOW - 10.0),
                   last_rejoin_at=st.sampled_from([NOW - 100, NOW - 1]))
policies = st.sampled_from([policy("primary"), policy("standby"), policy("dr", alerts=False)])


def check_step(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> None:
    """The invariants of one step (the safety argument in standby.follow)."""
    new, acts = decide_follower(s, o, p)
    kinds = {a.kind for a in acts}
    # 1. Never a promotion: only these actions exist, a restart is in recovery, and nothing acts once promoted.
    assert kinds <= {POINT, REJOIN, FollowerActionKind.RESTART, FollowerActionKind.ALERT, FollowerActionKind.REPORT}
    assert "promot" not in " ".join(a.kind.value for a in acts)
    if new.promoted:
        assert kinds == {FollowerActionKind.REPORT}
    # 2. A term never goes back, and is at least every term heard.
    assert new.term >= s.term and all(new.term >= v.term for v in o.pair.values())
    for a in acts:
        if a.kind not in (POINT, REJOIN):
            continue
        assert a.target is not None
        # 3. Only a node serving in the newest term: its fresh view says so in that term.
        if a.target in NODES:
            v = o.pair[a.target]
            assert v.term == new.term and NOW - v.heard_at < p.fresh_s
            assert v.db is DbState.PRIMARY or (v.db is DbState.STANDBY and v.streaming and p.upstream == "standby")
        else:
            assert a.target == p.upstream
        # 4. A rejoin only when this follower's WAL cannot continue on the primary's timeline.
        if a.kind is REJOIN:
            v = o.pair[a.target]
            assert v.db is DbState.PRIMARY and o.pg.received_lsn is not None and o.pg.timeline < v.timeline
            fork = fork_of(o.pg.timeline, v.history)
            assert fork is None or o.pg.received_lsn > fork


@settings(max_examples=1500, deadline=None)
@given(states, observations, policies)
def test_each_step_keeps_the_invariants(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> None:
    check_step(s, o, p)


@settings(max_examples=300, deadline=None)
@given(st.lists(observations, min_size=1, max_size=12), policies)
def test_a_run_of_steps_keeps_the_invariants(seq: list[FollowerObservation], p: FollowerPolicy) -> None:
    s = FollowerState()
    for i, o in enumerate(seq):
        o = FollowerObservation(NOW + i, o.gap, o.pg, {n: PairView(v.term, v.db, v.timeline, v.lsn, v.heard_at + i,
                                                                   v.streaming, v.history) for n, v in o.pair.items()},
                                {n: t + i for n, t in o.answered.items()})
        check_step(s, o, p)
        term = s.term
        s, _ = decide_follower(s, o, p)
        assert s.term >= term


def _exhaustive_views() -> Iterator[PairView | None]:
    yield None
    for term, db, age, streaming in itertools.product((1, 2), DbState, (0.0, 5.0), (False, True)):
        yield PairView(term, db, term, 5000, NOW - age, streaming, TL2 if term == 2 else ())


def _exhaustive_locals() -> Iterator[FollowerPg]:
    for (running, rec), (streaming, source), (tl, received) in itertools.product(
            ((True, True), (True, False), (False, True)), ((False, None), (True, "alpha"), (True, "beta")),
            ((1, FORK), (1, FORK + 1), (2, 6000))):
        yield FollowerPg(running, rec, streaming, source, tl, received, received)


def test_never_promotes_and_keeps_the_invariants_exhaustively() -> None:
    """Every combination of a small world: two pair nodes each unheard or heard in term 1 or 2, in every
    database state, fresh or stale, streaming or not; the follower's server in each state, before and past
    the fork; every kind of upstream; a fresh and a following state."""
    pair_views = list(_exhaustive_views())
    locals_list = list(_exhaustive_locals())
    starts = (FollowerState(), streaming_from_alpha())
    count = 0
    for a, b in itertools.product(pair_views, repeat=2):
        pair = {n: v for n, v in (("alpha", a), ("beta", b)) if v is not None}
        for local, p, s in itertools.product(locals_list, (policy("primary"), policy("standby")), starts):
            check_step(s, FollowerObservation(NOW, 0.1, local, pair, {n: NOW for n in pair}), p)
            count += 1
    assert count == len(pair_views) ** 2 * len(locals_list) * 2 * 2


@pytest.mark.parametrize("upstream", ["primary", "standby"])
def test_only_a_rejoin_past_the_fork_and_a_follow_before_it(upstream: str) -> None:
    for received in range(FORK - 2, FORK + 3):
        o = obs(pg(received=received, streaming=False), alpha=standby(term=2, tl=2),
                beta=primary(term=2, tl=2, history=TL2))
        _, acts = decide_follower(streaming_from_alpha(), o, policy(upstream))
        kinds = [k for k, _, _ in acted(acts)]
        assert kinds == ([REJOIN] if received > FORK else [POINT])
