"""The follower's decision core (standby.follow): a case per rule, properties over random and exhaustive
observations, and a small simulated pair with followers through failover, switchover and site loss."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

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
    """It had replayed WAL from the old primary past where the new timeline left it: it cannot follow."""
    o = obs(pg(received=FORK + 301, streaming=False), beta=primary(term=2, tl=2, history=TL2))
    s, acts = decide_follower(streaming_from_alpha(), o, policy())
    assert acted(acts) == [(REJOIN, FollowerReason.PAST_FORK, "beta")]
    s, acts = decide_follower(s, obs(o.pg, NOW + 1, beta=primary(term=2, tl=2, history=TL2, at=NOW + 1)), policy())
    assert acted(acts) == [] and report(acts).reason is FollowerReason.PAST_FORK  # one attempt per backoff


def test_i12_while_a_rejoin_runs_its_stopped_server_is_left_to_it_and_the_backoff_counts_from_its_end() -> None:
    o = obs(pg(received=FORK + 301, streaming=False), beta=primary(term=2, tl=2, history=TL2))
    s, acts = decide_follower(streaming_from_alpha(), o, policy())
    assert acted(acts) == [(REJOIN, FollowerReason.PAST_FORK, "beta")]
    # The rejoin stopped the server and runs for longer than the backoff: no restart, no second rejoin.
    for t in range(1, 100, 7):
        s, acts = decide_follower(s, replace(obs(pg(running=False), NOW + t, beta=primary(term=2, tl=2, history=TL2,
                                                                                        at=NOW + t)), rejoining=True),
                                  policy())
        assert acted(acts) == [] and report(acts).reason is FollowerReason.REJOINING
    # It failed at NOW + 99, the server still past the fork: the next one a whole backoff later.
    end = NOW + 99
    for t, wanted in ((1, []), (59, []), (61, [(REJOIN, FollowerReason.PAST_FORK, "beta")])):
        s, acts = decide_follower(s, obs(o.pg, end + t, beta=primary(term=2, tl=2, history=TL2, at=end + t)), policy())
        assert acted(acts) == wanted, t


def test_i12_the_head_of_a_record_past_the_fork_is_no_fork() -> None:
    """The old primary's WAL writer flushed a page that held only the head of a record before it crashed: the
    follower received up to that page's end, past the end of the last whole record, where the new timeline
    left. Nothing of it was replayed, so PostgreSQL follows the new timeline: re-point it, no clone (seen in
    the lab: received 84041728, fork 84038896)."""
    local = FollowerPg(running=True, in_recovery=True, streaming=False, source="alpha", timeline=1,
                       received_lsn=FORK + 2832, replay_lsn=FORK - 120)
    _, acts = decide_follower(streaming_from_alpha(), obs(local, beta=primary(term=2, tl=2, history=TL2)), policy())
    assert acted(acts) == [(POINT, FollowerReason.NEW_PRIMARY, "beta")]


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


def test_a_primary_heard_too_long_ago_is_not_pointed_at() -> None:
    """Heard means a fresh heartbeat: the last word of a primary older than fresh_s names nobody to follow."""
    p = policy()
    o = obs(pg(source=None, streaming=False), alpha=primary(at=NOW - p.fresh_s), beta=standby())
    s, acts = decide_follower(FollowerState(), o, p)
    assert acted(acts) == [] and report(acts).reason is FollowerReason.NO_PRIMARY and s.term == 1
    o = obs(o.pg, alpha=primary(at=NOW - p.fresh_s / 2), beta=standby())
    _, acts = decide_follower(s, o, p)
    assert acted(acts) == [(POINT, FollowerReason.UPSTREAM, "alpha")]


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
    source = Path(__file__).read_text()
    assert {n for n in names if f"FollowerReason.{n}" not in source} == set()


def test_every_reason_has_a_row_in_the_design() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "followers.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")}
    assert {r.value for r in FollowerReason} <= rows


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
    lambda local, pair, answered, gap, rejoining: FollowerObservation(NOW, gap, local, pair,
                                                                      {n: NOW - 0.5 for n in answered}, rejoining),
    locals_, st.dictionaries(st.sampled_from(NODES), views),
    st.sets(st.sampled_from([*NODES, "dr"])), st.sampled_from([0.1, 30.0]), st.booleans())
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
    # 4. While a rejoin runs on its server, nothing else is done to that server (it stopped it itself).
    if o.rejoining and not new.promoted:
        assert kinds <= {FollowerActionKind.ALERT, FollowerActionKind.REPORT}
    # 2. A term never goes back, and is at least every term heard.
    assert new.term >= s.term and all(new.term >= v.term for v in o.pair.values())
    for a in acts:
        if a.kind not in (POINT, REJOIN):
            continue
        assert a.target is not None
        # 3. Only a node serving in the newest term: its fresh view says so in that term.
        if a.target in NODES:
            v = o.pair[a.target]
            assert v.term == new.term and o.now - v.heard_at < p.fresh_s
            assert v.db is DbState.PRIMARY or (v.db is DbState.STANDBY and v.streaming and p.upstream == "standby")
        else:
            assert a.target == p.upstream
        # 4. A rejoin only when this follower's WAL cannot continue on the primary's timeline.
        if a.kind is REJOIN:
            v = o.pair[a.target]
            assert v.db is DbState.PRIMARY and o.pg.received_lsn is not None and o.pg.timeline < v.timeline
            fork = fork_of(o.pg.timeline, v.history)
            applied = o.pg.replay_lsn if o.pg.replay_lsn is not None else o.pg.received_lsn
            assert fork is None or applied > fork


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
    for replayed in range(FORK - 2, FORK + 3):
        local = replace(pg(received=replayed + 300, streaming=False), replay_lsn=replayed)
        o = obs(local, alpha=standby(term=2, tl=2), beta=primary(term=2, tl=2, history=TL2))
        _, acts = decide_follower(streaming_from_alpha(), o, policy(upstream))
        kinds = [k for k, _, _ in acted(acts)]
        assert kinds == ([REJOIN] if replayed > FORK else [POINT])


# -- a small world: the pair, scripted, and followers running the real core -----------------------------------

TICK = 0.5


@dataclass
class Server:
    """A PostgreSQL server of the pair, as far as WAL, timelines and terms go."""

    name: str
    db: DbState
    lsn: int = 1000
    timeline: int = 1
    history: tuple[tuple[int, int], ...] = ()
    term: int = 1
    alive: bool = True
    source: str | None = None  # a standby's upstream

    def serves(self) -> bool:
        return self.alive and self.db in (DbState.PRIMARY, DbState.STANDBY)

    def has_line_of(self, timeline: int, lsn: int) -> bool:
        """Can a replica at (timeline, lsn) continue from this server's WAL?"""
        if timeline == self.timeline:
            return lsn <= self.lsn
        fork = fork_of(timeline, self.history)
        return fork is not None and lsn <= fork


@dataclass
class FollowerNode:
    name: str
    policy: FollowerPolicy
    state: FollowerState = field(default_factory=FollowerState)
    timeline: int = 1
    received: int = 0
    source: str | None = None
    streaming: bool = False
    in_recovery: bool = True
    rejoins: int = 0
    alerts: int = 0
    points: list[str] = field(default_factory=list)


class Site:
    """alpha (primary) and beta (hot standby, streaming), scripted; followers decide with decide_follower."""

    def __init__(self, *followers: tuple[str, str]) -> None:
        self.t = 0.0
        self.servers = {"alpha": Server("alpha", DbState.PRIMARY), "beta": Server("beta", DbState.STANDBY)}
        self.servers["beta"].source = "alpha"
        self.followers = {n: FollowerNode(n, policy(up)) for n, up in followers}

    def primary(self) -> Server | None:
        live = [s for s in self.servers.values() if s.alive and s.db is DbState.PRIMARY]
        return max(live, key=lambda s: s.term) if live else None

    def upstream_of(self, name: str) -> Server | FollowerNode | None:
        return self.servers.get(name) or self.followers.get(name)

    def run(self, seconds: float, standby_lag: int = 0) -> None:
        for _ in range(round(seconds / TICK)):
            self.t += TICK
            self._pair_step(standby_lag)
            for f in self.followers.values():
                self._follower_step(f)

    def _pair_step(self, standby_lag: int) -> None:
        for p in self.servers.values():
            if p.alive and p.db is DbState.PRIMARY:
                p.lsn += 100  # the calls (an old primary not yet fenced takes some too)
        for s in self.servers.values():
            src = self.servers.get(s.source) if s.source else None
            if s.db is DbState.STANDBY and s.alive and src is not None and src.serves():
                s.lsn, s.timeline, s.history = max(s.lsn, src.lsn - standby_lag), src.timeline, src.history

    def _streams(self, s: Server) -> bool:
        src = self.servers.get(s.source) if s.source else None
        return s.alive and s.db is DbState.STANDBY and src is not None and src.serves()

    def _stream(self, f: FollowerNode) -> None:
        src = self.upstream_of(f.source) if f.source else None
        if isinstance(src, Server):
            ok = src.serves() and src.has_line_of(f.timeline, f.received)
            pos, tl = src.lsn, src.timeline
        else:
            ok = src is not None and src.streaming and src.timeline == f.timeline
            pos, tl = (src.received, src.timeline) if src is not None else (0, 0)
        f.streaming = ok
        if ok:
            f.received, f.timeline = max(f.received, pos), tl

    def _follower_step(self, f: FollowerNode) -> None:
        self._stream(f)
        pair = {n: PairView(s.term, s.db, s.timeline, s.lsn, self.t, self._streams(s), s.history)
                for n, s in self.servers.items() if s.alive}
        answered = {n: self.t for n in [*self.servers, *self.followers]
                    if (u := self.upstream_of(n)) is not None and (u.serves() if isinstance(u, Server) else u.streaming)}
        o = FollowerObservation(self.t, TICK, FollowerPg(True, f.in_recovery, f.streaming, f.source if f.streaming else None,
                                                         f.timeline, f.received, f.received), pair, answered)
        check_step(f.state, o, f.policy)
        f.state, acts = decide_follower(f.state, o, f.policy)
        for a in acts:
            if a.kind is POINT:
                assert a.target is not None
                assert a.target not in self.servers or self.servers[a.target].serves(), "pointed at a dead node"
                f.source, f.points = a.target, [*f.points, a.target]
            elif a.kind is REJOIN:
                p = self.servers[a.target or ""]
                assert p is self.primary() and not p.has_line_of(f.timeline, f.received)  # really needed
                f.timeline, f.received, f.source, f.rejoins = p.timeline, p.lsn, p.name, f.rejoins + 1
            elif a.kind is FollowerActionKind.ALERT:
                f.alerts += 1

    def promote(self, name: str, fork: int) -> None:
        """The pair's failover or switchover: ``name`` becomes primary of a new term and timeline, which
        leaves the old timeline at ``fork`` (what it had received)."""
        s = self.servers[name]
        s.lsn = fork
        s.history = (*s.history, (s.timeline, fork))
        s.timeline, s.term, s.db, s.source = s.timeline + 1, max(x.term for x in self.servers.values()) + 1, \
            DbState.PRIMARY, None


def test_sim_pair_failover_followers_follow_without_a_reclone() -> None:
    """sync: the standby has every byte the primary sent; the primary dies; both followers (one direct, one
    cascaded from the standby, which is promoted under it) stream from the new primary without a rejoin."""
    w = Site(("dr", "primary"), ("reports", "standby"))
    w.run(5)
    assert [w.followers[n].source for n in ("dr", "reports")] == ["alpha", "beta"]
    a = w.servers["alpha"]
    a.alive = False
    w.promote("beta", a.lsn)
    w.run(5)
    for f in w.followers.values():
        assert f.source == "beta" and f.streaming and f.rejoins == 0 and f.timeline == 2
        assert f.received == w.servers["beta"].lsn and f.state.term == 2
    assert w.followers["dr"].points == ["alpha", "beta"]


def test_sim_pair_failover_a_follower_past_the_fork_is_rejoined() -> None:
    """async: the standby was behind; the direct follower had more of the old primary's WAL than the
    new primary: it is rejoined once, then streams; the cascaded one (behind the standby) just follows."""
    w = Site(("dr", "primary"), ("reports", "standby"))
    w.run(5, standby_lag=300)
    a, b = w.servers["alpha"], w.servers["beta"]
    assert w.followers["dr"].received > b.lsn
    a.alive = False
    w.promote("beta", b.lsn)
    w.run(5)
    dr, reports = w.followers["dr"], w.followers["reports"]
    assert dr.rejoins == 1 and dr.streaming and dr.source == "beta" and dr.timeline == 2
    assert reports.rejoins == 0 and reports.streaming and reports.source == "beta"


def test_sim_old_primary_not_yet_fenced_is_left_for_the_newer_term() -> None:
    """The old primary still runs and writes in term 1 (it has not fenced yet) while the standby was
    promoted in term 2: the follower streaming from it leaves it for the newer term, and having received
    past the fork, is rejoined; it never points back at the old primary."""
    w = Site(("dr", "primary"))
    w.run(3)
    w.promote("beta", w.servers["beta"].lsn)
    w.run(5)
    dr = w.followers["dr"]
    assert dr.points == ["alpha"] and dr.rejoins == 1 and dr.source == "beta" and dr.streaming
    w.servers["alpha"].db = DbState.FENCED
    w.run(5)
    assert dr.points == ["alpha"] and dr.source == "beta" and dr.streaming


def test_sim_switchover_and_back_followers_follow_each_time() -> None:
    w = Site(("dr", "primary"), ("reports", "standby"))
    w.run(3)
    for new, old in (("beta", "alpha"), ("alpha", "beta")):
        o = w.servers[old]
        w.promote(new, o.lsn)  # a clean switchover: the new primary has the old one's last byte
        o.db, o.source, o.term = DbState.STANDBY, new, w.servers[new].term
        w.run(5)
        assert w.followers["dr"].source == new and w.followers["reports"].source == old
        assert all(f.streaming and f.rejoins == 0 for f in w.followers.values())
    assert w.followers["dr"].state.term == 3 and w.followers["dr"].timeline == 3


def test_sim_site_loss_alerts_then_the_operator_promotes_the_dr_follower() -> None:
    w = Site(("dr", "primary"), ("reports", "standby"))
    w.run(3)
    received = w.followers["dr"].received
    for s in w.servers.values():
        s.alive = False
    w.run(5)
    assert w.followers["dr"].alerts == 0  # not yet site_loss_after_s
    w.run(policy().realert_after_s + 10)
    dr = w.followers["dr"]
    assert dr.alerts == 2 and w.followers["reports"].alerts == 2  # once, then once after the quiet period
    assert not dr.streaming and dr.received == received
    # Nothing was pointed anywhere while nobody served.
    assert dr.points == ["alpha"] and w.followers["reports"].points == ["beta"]
    dr.in_recovery = False  # `standby promote --node dr`: the operator's, the only promotion there is
    for s in w.servers.values():
        s.alive = True  # the old pair comes back, still in term 1: the promoted follower does not follow it
    w.run(20)
    assert dr.state.promoted and dr.points == ["alpha"] and dr.rejoins == 0


def test_sim_hot_standby_lost_under_a_cascaded_follower() -> None:
    """The cascaded follower falls back to the primary, and goes back to the standby once it is back for
    the grace period; the direct follower never moves."""
    w = Site(("dr", "primary"), ("reports", "standby"))
    w.run(3)
    w.servers["beta"].alive = False
    w.run(5)
    reports = w.followers["reports"]
    assert reports.source == "alpha" and reports.streaming
    w.servers["beta"].alive = True
    w.run(1)
    assert reports.source == "alpha"  # not back before the grace period
    w.run(5)
    assert reports.source == "beta" and reports.streaming and reports.rejoins == 0
    assert reports.points == ["beta", "alpha", "beta"] and w.followers["dr"].points == ["alpha"]


def test_sim_a_follower_cascading_from_a_follower() -> None:
    w = Site(("dr", "primary"), ("dr2", "dr"))
    w.run(5)
    dr2 = w.followers["dr2"]
    assert dr2.source == "dr" and dr2.streaming and dr2.received == w.followers["dr"].received
