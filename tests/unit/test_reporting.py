"""The reporting IP's hand-over rule: per-step properties, and a two-node world with delayed heartbeats."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from standby.model import DbState, Net, PeerView
from standby.reporting import (
    ReportingDecision,
    ReportingInputs,
    ReportingPolicy,
    ReportingState,
    advertised,
    replay_lag,
    step,
)

BOUND = 1000

dbs = st.sampled_from(list(DbState))
lsns = st.none() | st.integers(0, 10 * BOUND)
views = st.none() | st.builds(
    PeerView, term=st.integers(0, 3), db=dbs, services=st.booleans(), lsn=lsns, sync_ok=st.booleans(),
    carrier=st.just({Net.PUBLIC: True, Net.PRIVATE: True}), tiebreaker_ok=st.none(),
    reporting=st.booleans(), reporting_epoch=st.integers(0, 5), reporting_ack=st.integers(0, 5))
inputs = st.builds(ReportingInputs, db=dbs, streaming=st.booleans(), replay_lsn=lsns, peer=views,
                   public_ok=st.booleans(), held=st.booleans(), now=st.floats(0, 10))
states = st.builds(ReportingState, episode=st.integers(0, 5), next_episode=st.integers(6, 9), ack=st.integers(0, 5),
                   silent_since=st.none() | st.floats(0, 10))
policies = st.builds(ReportingPolicy, fallback_primary=st.booleans(), max_lag_bytes=st.just(BOUND),
                     silence_wait_s=st.sampled_from([0.0, 0.9]))


@settings(max_examples=3000, deadline=None)
@given(states, inputs, policies)
def test_each_step_obeys_the_rule(s: ReportingState, inp: ReportingInputs, p: ReportingPolicy) -> None:
    new, d = step(s, inp, p)
    peer = inp.peer
    if inp.db in (DbState.DOWN, DbState.FENCED):
        assert not d.hold and new.episode == 0 and new.ack == 0
    if inp.db is DbState.STANDBY and d.hold:
        lag = replay_lag(inp)
        assert peer is not None and peer.db is DbState.PRIMARY and not peer.reporting
        assert inp.streaming and inp.public_ok and lag is not None and lag <= BOUND
        # Taking (not keeping) needs the primary's receipt for the current episode.
        assert inp.held or peer.reporting_ack == new.episode != 0
    if inp.db is DbState.STANDBY:
        assert new.ack == 0
        assert (new.episode != 0) == (d.reason.startswith("in bound"))
    if inp.db is DbState.PRIMARY:
        assert new.episode == 0
        peer_in_bound = peer is not None and peer.db is DbState.STANDBY and peer.reporting_epoch > 0
        if d.hold:
            assert p.fallback_primary and inp.public_ok and not peer_in_bound
            assert peer is None or not peer.reporting
            assert new.ack == 0
            assert d.check_arp == (peer is None)  # a silent peer gives no receipt: ask the link
            if peer is None and not inp.held:  # taken without a receipt only once any receipt has lapsed
                assert new.silent_since is not None and inp.now - new.silent_since >= p.silence_wait_s
        if peer is None:
            assert new.ack == 0  # a silent standby's receipt is withdrawn at once
        if new.ack:
            # A receipt is only ever for the standby's current episode, and never while the address is here.
            assert peer_in_bound and peer is not None and new.ack in (peer.reporting_epoch, s.ack)
            assert not inp.held or new.ack == s.ack


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 50), st.lists(st.booleans(), min_size=1, max_size=40))
def test_episodes_are_never_reused(boot: int, in_bound: list[bool]) -> None:
    primary = PeerView(term=1, db=DbState.PRIMARY, services=True, lsn=0, sync_ok=True, carrier={},
                       tiebreaker_ok=None)
    s = ReportingState.for_boot(boot)
    seen: list[int] = []
    for ok in in_bound:
        s, _ = step(s, ReportingInputs(DbState.STANDBY, ok, 0, primary, True, False, 0.0), ReportingPolicy(False, BOUND))
        if s.episode and (not seen or seen[-1] != s.episode):
            seen.append(s.episode)
    assert len(seen) == len(set(seen))
    assert all(e >> 24 == boot for e in seen)


def test_lag_hysteresis() -> None:
    p = ReportingPolicy(False, BOUND)
    primary = PeerView(term=1, db=DbState.PRIMARY, services=True, lsn=10_000, sync_ok=True, carrier={},
                       tiebreaker_ok=None)

    def at(s: ReportingState, lag: int) -> tuple[ReportingState, ReportingDecision]:
        return step(s, ReportingInputs(DbState.STANDBY, True, 10_000 - lag, primary, True, True, 0.0), p)

    s, d = at(ReportingState(), BOUND * 3 // 4)
    assert s.episode == 0 and not d.hold  # out of bound until under half the bound
    s, d = at(s, BOUND // 2)
    assert s.episode and d.hold
    s, d = at(s, BOUND)
    assert s.episode and d.hold  # still in bound at the bound itself
    s, d = at(s, BOUND + 1)
    assert s.episode == 0 and not d.hold


# -- a two-node world -----------------------------------------------------------------------------


# A heard view stays usable this many steps after its message arrived (the agents' freshness window).
FRESH = 5
MAX_DELAY = 4  # heartbeats arrive 1-MAX_DELAY steps late
MAX_CHANGE = 3  # an address change takes 0-MAX_CHANGE steps
# The primary's wait before taking on silence: the standby's window, a message
# still in flight, and an add already decided and still being made.
SILENCE_WAIT = FRESH + MAX_DELAY + MAX_CHANGE + 1


@dataclass
class Node:
    db: DbState
    rs: ReportingState
    addr: bool = False  # the address is on this node's interface
    held: bool = False  # what it advertises: on the interface, or being added or removed
    pending: tuple[str, int] | None = None  # ("add" | "remove", step it completes)
    inbox: list[tuple[int, int, PeerView]] = field(default_factory=list)  # (arrives, seq, view)
    seq: int = 0
    streaming: bool = True
    lag: int = 0
    public_ok: bool = True
    muted_until: int = -1  # what this node sends is lost until then (one-way loss, a stalled sender)

    def newest(self, now: int) -> PeerView | None:
        """The newest view, while the last message arrived recently (as decide.peer_fresh)."""
        arrived = [m for m in self.inbox if m[0] <= now]
        if not arrived or now - max(m[0] for m in arrived) >= FRESH:
            return None
        return max(arrived, key=lambda m: m[1])[2]


def run_world(seed: int, fallback_primary: bool, events: int, steps: int = 400,
              silence_wait: int = SILENCE_WAIT, held_while_checking: bool = True) -> tuple[Node, Node, list[int]]:
    """Alpha is the primary throughout; beta's health changes at random, and either side's
    heartbeats may be lost for a while. Heartbeats arrive 1-4 steps late (so they overtake each
    other; the newest wins), an ARP check before a take without a receipt and address changes
    take 0-3 steps. ``held_while_checking``: a take advertises "held" from its decision on,
    through the ARP check (as the agent does), rather than only once the check has passed."""
    rnd = random.Random(seed)
    p = ReportingPolicy(fallback_primary, BOUND, silence_wait)
    alpha = Node(DbState.PRIMARY, ReportingState.for_boot(1))
    beta = Node(DbState.STANDBY, ReportingState.for_boot(7))
    change_at = sorted(rnd.sample(range(steps - 100), k=min(events, steps - 100)))
    both: list[int] = []
    primary_lsn = 0
    for t in range(steps):
        if change_at and change_at[0] == t:
            change_at.pop(0)
            what = rnd.choice(["lag", "lag", "stream", "down", "public", "heal", "mute"])
            if what == "lag":
                beta.lag = rnd.choice([0, BOUND // 3, BOUND, 2 * BOUND, 10 * BOUND])
            elif what == "stream":
                beta.streaming = not beta.streaming
            elif what == "down":
                beta.db = DbState.DOWN if beta.db is DbState.STANDBY else DbState.STANDBY
            elif what == "public":
                beta.public_ok = not beta.public_ok
            elif what == "mute":
                rnd.choice([alpha, beta]).muted_until = t + rnd.randint(FRESH, 4 * FRESH)
            else:
                beta.db, beta.streaming, beta.lag, beta.public_ok = DbState.STANDBY, True, 0, True
        if t == steps - 100:  # a long calm end: the world must settle
            beta.db, beta.streaming, beta.lag, beta.public_ok = DbState.STANDBY, True, 0, True
            alpha.muted_until = beta.muted_until = -1
        primary_lsn += rnd.randint(0, 50)
        for me, other in ((alpha, beta), (beta, alpha)):
            if me.pending and me.pending[1] <= t:
                kind, _ = me.pending
                me.pending = None
                if kind == "check":
                    me.held = not other.addr
                    if me.held:  # nobody answered: add it
                        me.pending = ("add", t + rnd.randint(0, MAX_CHANGE))
                elif kind == "add":
                    me.addr = True
                else:
                    me.addr = me.held = False
            peer = me.newest(t)
            replay = primary_lsn - me.lag if me.db is DbState.STANDBY else None
            me.rs, d = step(me.rs, ReportingInputs(me.db, me.streaming and me.db is DbState.STANDBY, replay, peer,
                                                   me.public_ok, me.held, float(t)), p)
            if me.pending is None:
                if d.hold and not me.held and d.check_arp:
                    me.held = held_while_checking
                    me.pending = ("check", t + rnd.randint(0, MAX_CHANGE))
                elif d.hold and not me.held:
                    me.held = True
                    me.pending = ("add", t + rnd.randint(0, MAX_CHANGE))
                elif not d.hold and me.held:
                    me.pending = ("remove", t + rnd.randint(0, MAX_CHANGE))
            reporting, epoch, ack = advertised(me.rs, me.held)
            me.seq += 1
            view = PeerView(term=1, db=me.db, services=False, lsn=primary_lsn if me.db is DbState.PRIMARY else replay,
                            sync_ok=True, carrier={}, tiebreaker_ok=None, reporting=reporting,
                            reporting_epoch=epoch, reporting_ack=ack)
            if t > me.muted_until:
                other.inbox.append((t + rnd.randint(1, MAX_DELAY), me.seq, view))
        if alpha.addr and beta.addr:
            both.append(t)
    return alpha, beta, both


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.booleans(), st.integers(0, 60))
def test_never_held_twice_and_settles_on_the_standby(seed: int, fallback_primary: bool, events: int) -> None:
    alpha, beta, both = run_world(seed, fallback_primary, events)
    assert both == [], f"both nodes held the reporting IP at steps {both[:5]}"
    assert beta.addr and not alpha.addr  # calm at the end: the in-bound standby serves reports


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60))
def test_r1_silent_standby_with_a_receipt_is_not_raced_for_the_address(seed: int, events: int) -> None:
    """The standby goes silent just after the primary acknowledged its episode: the primary,
    falling back, must not take the address while the standby may still take it with that receipt."""
    alpha, beta, both = run_world(seed, True, events)
    assert both == [], f"both nodes held the reporting IP at steps {both[:5]}"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60))
def test_r2_no_receipt_while_a_take_is_being_checked(seed: int, events: int) -> None:
    """A primary checking ARP before a take must already count as holding: a receipt given
    meanwhile lets the standby add the address just as the primary does."""
    alpha, beta, both = run_world(seed, True, events, held_while_checking=True)
    assert both == [], f"both nodes held the reporting IP at steps {both[:5]}"


def test_r2_not_held_during_the_check_races() -> None:
    """The agent's earlier order (held only once the check passed) lets both take it in the same world."""
    # A narrow window (the standby heard again during the check): a few worlds in a thousand.
    assert any(run_world(seed, True, 80, held_while_checking=False)[2] for seed in range(1000))


def test_r1_without_the_wait_the_race_happens() -> None:
    """The same world with no wait after silence finds a step with two holders: the wait is what prevents it."""
    assert any(run_world(seed, True, 40, silence_wait=0)[2] for seed in range(200))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.booleans())
def test_standby_out_of_bound_falls_back_by_policy(seed: int, fallback_primary: bool) -> None:
    rnd = random.Random(seed)
    p = ReportingPolicy(fallback_primary, BOUND)
    primary = PeerView(term=1, db=DbState.PRIMARY, services=True, lsn=100 * BOUND, sync_ok=True, carrier={},
                       tiebreaker_ok=None)
    lagging = ReportingInputs(DbState.STANDBY, True, 100 * BOUND - rnd.randint(BOUND + 1, 50 * BOUND), primary,
                              True, rnd.random() < 0.5, 0.0)
    s, d = step(ReportingState(episode=3, next_episode=4), lagging, p)
    assert not d.hold and s.episode == 0
    standby_view = PeerView(term=1, db=DbState.STANDBY, services=False, lsn=0, sync_ok=False, carrier={},
                            tiebreaker_ok=None, reporting=False, reporting_epoch=s.episode)
    _, d = step(ReportingState(ack=3), ReportingInputs(DbState.PRIMARY, False, None, standby_view, True, False, 0.0), p)
    assert d.hold is fallback_primary and not d.check_arp
    _, d = step(ReportingState(), ReportingInputs(DbState.PRIMARY, False, None, None, True, False, 0.0), p)
    assert d.hold is fallback_primary and d.check_arp is fallback_primary
