"""The alert policy: one message per change, bounded under flapping, nothing silently lost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from standby.alerts import (
    HOUR_S,
    Alert,
    AlertKind,
    AlertPolicy,
    Message,
    Notice,
    Phase,
    RateLimits,
    alert_key,
    make_alert,
)

INTERVAL = 10.0
CONDITIONS = ["lag@beta", "fenced@alpha"]
EVENTS = ["failover@beta"]
SLOT = (Phase.FIRING, Phase.FLAPPED)  # the rate-limited phases


@dataclass(frozen=True)
class Op:
    what: str  # raise, clear, event, tick
    key: str
    dt: float  # seconds since the previous op


ops = st.lists(
    st.one_of(
        st.builds(Op, st.sampled_from(["raise", "clear", "tick"]), st.sampled_from(CONDITIONS),
                  st.floats(0, 2 * INTERVAL)),
        st.builds(Op, st.just("event"), st.sampled_from(EVENTS), st.floats(0, 2 * INTERVAL)),
        # long quiet stretches, so the hourly cap both fills and drains
        st.builds(Op, st.just("tick"), st.just(""), st.floats(0, HOUR_S)),
    ),
    max_size=120,
)


@dataclass
class Run:
    notices: list[Notice]
    raises: dict[str, int]  # effective raises (clear -> raised) per condition key
    events: dict[str, int]
    resolved_expected: int  # clears of a condition whose FIRING had gone out
    raised_at_end: set[str]


def run(seq: list[Op], limits: RateLimits, flush: bool = True) -> Run:
    p = AlertPolicy(limits)
    now = 0.0
    out: list[Notice] = []
    raised: set[str] = set()
    announced: set[str] = set()
    raises = {k: 0 for k in CONDITIONS}
    events = {k: 0 for k in EVENTS}
    resolved_expected = 0
    for op in seq:
        now += op.dt
        if op.what == "raise":
            if op.key not in raised:
                raises[op.key] += 1
                raised.add(op.key)
                announced.discard(op.key)
            got = p.raise_(op.key, now)
        elif op.what == "clear":
            got = p.clear(op.key, now)
            if op.key in raised:
                raised.discard(op.key)
                if op.key in announced:
                    resolved_expected += 1
                    # the RESOLVED goes out at once, never held back
                    assert [n.phase for n in got] == [Phase.RESOLVED]
        elif op.what == "event":
            events[op.key] += 1
            got = p.event(op.key, now)
        else:
            got = p.tick(now)
        for n in got:
            if n.phase is Phase.FIRING and n.key in raised:
                announced.add(n.key)
        out += got
    if flush:
        # Quiet from here on: everything held back must come out within a few hours.
        for _ in range(5000):
            if not p.pending():
                break
            now += INTERVAL
            out += p.tick(now)
        assert p.pending() == 0
    return Run(out, raises, events, resolved_expected, raised)


def by_key(notices: list[Notice], key: str) -> list[Notice]:
    return [n for n in notices if n.key == key]


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 8))
def test_messages_per_key_bounded_in_any_window(seq: list[Op], cap: int) -> None:
    r = run(seq, RateLimits(INTERVAL, cap))
    for key in CONDITIONS + EVENTS:
        mine = by_key(r.notices, key)
        slots = [n.at for n in mine if n.phase in SLOT]
        assert all(b - a >= INTERVAL for a, b in zip(slots, slots[1:]))
        for width in (0.0, INTERVAL / 2, INTERVAL, 3 * INTERVAL):
            bound = 2 * (int(width // INTERVAL) + 1) + 1
            for start in {n.at for n in mine}:
                assert sum(start <= n.at <= start + width for n in mine) <= bound


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 8))
# Found by a test run: two alerts fired an hour apart (the second held back by the cap) resolved in the same
# minute as the next hour's reminder: three notices in one hour at cap 1. The product was right (a resolve is
# never held back); the old property, "the hour's total stays within twice the cap", was not.
@example([Op("raise", "lag@beta", 0.0), Op("event", "failover@beta", 0.0), Op("raise", "fenced@alpha", 0.0),
          Op("tick", "", 3600.0), Op("tick", "", 3600.0), Op("clear", "lag@beta", 0.0),
          Op("clear", "fenced@alpha", 0.0)], 1)
def test_hourly_cap_holds_across_keys(seq: list[Op], cap: int) -> None:
    r = run(seq, RateLimits(INTERVAL, cap))
    slots = [n.at for n in r.notices if n.phase in SLOT]
    for start in slots:
        assert sum(start <= t < start + HOUR_S for t in slots) <= cap
    # RESOLVED are not capped: each answers a FIRING of its key sent before it, however long ago.
    for key in {n.key for n in r.notices}:
        phases = [n.phase for n in by_key(r.notices, key)]
        for i, phase in enumerate(phases):
            if phase is Phase.RESOLVED:
                assert phases[:i].count(Phase.RESOLVED) < phases[:i].count(Phase.FIRING), (key, phases)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 8))
def test_firing_and_resolved_pair_up(seq: list[Op], cap: int) -> None:
    r = run(seq, RateLimits(INTERVAL, cap))
    assert sum(n.phase is Phase.RESOLVED for n in r.notices) == r.resolved_expected
    for key in CONDITIONS:
        open_ = False
        for n in by_key(r.notices, key):
            if n.phase is Phase.FIRING:
                assert not open_, "a second FIRING while the first is unresolved"
                open_ = True
            elif n.phase is Phase.RESOLVED:
                assert open_, "RESOLVED without a FIRING"
                open_ = False
            else:
                assert not open_, "FLAPPED while a FIRING is unresolved"
        # once quiet, a key that is still raised has been announced, one that is clear has not
        assert open_ == (key in r.raised_at_end)
    for key in EVENTS:
        assert {n.phase for n in by_key(r.notices, key)} <= {Phase.FIRING}


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 8))
def test_nothing_is_lost_only_folded(seq: list[Op], cap: int) -> None:
    r = run(seq, RateLimits(INTERVAL, cap))
    for key in CONDITIONS:
        told = sum(1 + n.repeats if n.phase is Phase.FIRING else n.repeats
                   for n in by_key(r.notices, key) if n.phase in SLOT)
        assert told == r.raises[key]
    for key in EVENTS:
        assert sum(1 + n.repeats for n in by_key(r.notices, key)) == r.events[key]


def apply(p: AlertPolicy, op: Op, now: float) -> list[Notice]:
    if op.what == "raise":
        return p.raise_(op.key, now)
    if op.what == "clear":
        return p.clear(op.key, now)
    if op.what == "event":
        return p.event(op.key, now)
    return p.tick(now)


@settings(max_examples=200, deadline=None)
@given(ops, st.lists(st.floats(0, 3 * INTERVAL), min_size=1, max_size=30))
def test_condition_that_stays_raised_fires_exactly_once(history: list[Op], later: list[float]) -> None:
    key = CONDITIONS[0]
    p = AlertPolicy(RateLimits(INTERVAL, 1000))
    now = 0.0
    for op in history:
        now += op.dt
        apply(p, op, now)
    p.clear(key, now)  # whatever the history did, the episode under test starts here
    got = p.raise_(key, now)
    for i, dt in enumerate(later):  # repeated raises and ticks, never a clear
        now += dt
        got += apply(p, Op("raise" if i % 2 else "tick", key, dt), now)
    for _ in range(10):
        now += INTERVAL
        got += p.tick(now)
    assert [n.phase for n in got if n.key == key] == [Phase.FIRING]


def test_flapping_is_folded_and_reported() -> None:
    p = AlertPolicy(RateLimits(min_interval_s=300, max_per_hour=100))
    out: list[Notice] = []
    t = 0.0
    for _ in range(50):
        out += p.raise_("k", t)
        out += p.clear("k", t + 0.05)
        t += 0.1
    assert [n.phase for n in out] == [Phase.FIRING, Phase.RESOLVED]
    assert p.tick(299.0) == []
    summary = p.tick(300.0)
    assert [(n.phase, n.repeats) for n in summary] == [(Phase.FLAPPED, 49)]
    assert p.tick(10_000.0) == [] and p.pending() == 0


def test_held_back_raise_fires_when_window_ends_with_count() -> None:
    p = AlertPolicy(RateLimits(min_interval_s=60))
    assert [n.phase for n in p.raise_("k", 0)] == [Phase.FIRING]
    assert [n.phase for n in p.clear("k", 1)] == [Phase.RESOLVED]
    assert p.raise_("k", 2) == [] and p.clear("k", 3) == [] and p.raise_("k", 4) == []
    assert p.tick(59) == []
    (n,) = p.tick(60)
    assert (n.phase, n.repeats) == (Phase.FIRING, 1)
    assert [m.phase for m in p.clear("k", 61)] == [Phase.RESOLVED]


def test_events_each_count_even_when_held_back() -> None:
    p = AlertPolicy(RateLimits(min_interval_s=60))
    assert len(p.event("f", 0)) == 1
    assert p.event("f", 1) == [] and p.event("f", 2) == []
    (n,) = p.tick(60)
    assert (n.phase, n.repeats) == (Phase.FIRING, 1)  # the latest one, plus one earlier
    assert p.clear("f", 61) == []  # events never resolve


def test_hourly_cap_defers_then_sends() -> None:
    p = AlertPolicy(RateLimits(min_interval_s=0, max_per_hour=2))
    sent = p.raise_("a", 0) + p.raise_("b", 1) + p.raise_("c", 2)
    assert [n.key for n in sent] == ["a", "b"]
    assert [n.phase for n in p.clear("a", 3)] == [Phase.RESOLVED]  # not capped
    assert p.tick(HOUR_S - 1) == []
    assert [(n.key, n.phase) for n in p.tick(HOUR_S)] == [("c", Phase.FIRING)]


def test_time_going_backwards_is_harmless() -> None:
    p = AlertPolicy(RateLimits(min_interval_s=10))
    p.raise_("k", 100)
    p.clear("k", 101)
    assert p.raise_("k", 5) == []  # treated as t=101: still inside the window
    assert [n.phase for n in p.tick(111)] == [Phase.FIRING]


# -- what a message says ----------------------------------------------------------------------

SINCE = datetime(2026, 11, 26, 11, 40, tzinfo=UTC)


@pytest.mark.parametrize("kind", list(AlertKind))
def test_every_kind_has_full_default_texts(kind: AlertKind) -> None:
    a = make_alert(kind, node="beta", cluster="sw1", peer="alpha", since=SINCE)
    assert a.summary and a.what_was_done and a.next_command.startswith("standby ")
    assert a.key == alert_key(kind, "beta")
    msg = Message(Notice(a.key, Phase.FIRING, 0.0), a, SINCE + timedelta(seconds=5))
    body, payload = msg.body(), msg.payload()
    for text in (a.summary, a.what_was_done, a.next_command, SINCE.isoformat()):
        assert text in body
    assert payload["kind"] == kind.value and payload["node"] == "beta" and payload["state"] == "firing"
    assert payload["since"] == SINCE.isoformat() and payload["next_command"] == a.next_command
    assert kind.value in msg.subject() and "beta" in msg.subject()


def test_warm_primary_unreachable_names_the_promotion() -> None:
    a = make_alert(AlertKind.PRIMARY_UNREACHABLE, node="beta", cluster="sw1", peer="alpha")
    assert a.next_command == "standby promote --node beta"
    assert "alpha" in a.summary and "never promoted automatically" in a.what_was_done


def test_overrides_and_naive_time() -> None:
    a = make_alert(AlertKind.LAG_HIGH, node="beta", cluster="c", next_command="standby status --json",
                   details={"lag_bytes": 123})
    assert a.next_command == "standby status --json" and a.details == {"lag_bytes": 123}
    assert a.since.tzinfo is not None
    with pytest.raises(ValueError, match="timezone-aware"):
        Alert(AlertKind.FENCED, "a", "c", "s", datetime(2026, 1, 1), "x", "y")
    Alert(AlertKind.FENCED, "a", "c", "s", datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1))), "x", "y")


def test_resolved_and_flapped_messages_read_right() -> None:
    a = make_alert(AlertKind.REPLICATION_BROKEN, node="alpha", cluster="c", since=SINCE)
    r = Message(Notice(a.key, Phase.RESOLVED, 1.0), a, SINCE + timedelta(minutes=3), note="streaming again")
    assert "RESOLVED" in r.subject() and "streaming again" in r.body() and r.payload()["state"] == "resolved"
    f = Message(Notice(a.key, Phase.FLAPPED, 1.0, repeats=7), a, SINCE)
    assert "7 time(s)" in f.body() and f.payload()["repeats"] == 7 and "FLAPPING" in f.subject()


def test_subject_is_one_line_whatever_the_summary() -> None:
    a = make_alert(AlertKind.FENCED, node="alpha", cluster="c", summary="stopped\nBcc: someone@example.net")
    subject = Message(Notice(a.key, Phase.FIRING, 0.0), a, SINCE).subject()
    assert "\n" not in subject and "\r" not in subject and "Bcc: someone" in subject
