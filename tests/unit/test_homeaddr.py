"""Home addresses: per-step properties, and a two-node world with crashes, isolations, one-way silence and
public links that fail, heartbeats late and address changes slow."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby import homeaddr
from standby.homeaddr import OWNER_WAIT_FACTOR, HomeDecision, HomeInputs, HomePolicy, HomeReason, HomeState, step
from standby.model import DbState, Net, PeerView

dbs = st.sampled_from(list(DbState))
views = st.none() | st.builds(
    PeerView, term=st.integers(0, 3), db=dbs, services=st.booleans(), lsn=st.none(), sync_ok=st.booleans(),
    carrier=st.just({Net.PUBLIC: True, Net.PRIVATE: True}), tiebreaker_ok=st.none(), home_adopted=st.booleans())
inputs = st.builds(HomeInputs, db=dbs, peer=views, public_ok=st.booleans(), own_held=st.booleans(),
                   heard_me_s=st.none() | st.floats(0, 3), adopted_held=st.booleans(),
                   adopted_contested=st.booleans(), now=st.floats(0, 10))
states = st.builds(HomeState, silent_since=st.none() | st.floats(0, 10))
policies = st.builds(HomePolicy, silence_wait_s=st.sampled_from([0.0, 0.9]), peer_has_one=st.booleans())


@settings(max_examples=3000, deadline=None)
@given(states, inputs, policies)
def test_each_step_obeys_the_rules(s: HomeState, inp: HomeInputs, p: HomePolicy) -> None:
    new, d = step(s, inp, p)
    peer = inp.peer
    assert (new.silent_since is None) == (peer is not None)
    silent = None if new.silent_since is None else inp.now - new.silent_since
    # The peer's address: only a primary with its public network up, the peer unheard long enough.
    if d.adopted.hold:
        assert p.peer_has_one and inp.db is DbState.PRIMARY and peer is None and inp.public_ok
        assert not (inp.adopted_held and inp.adopted_contested)  # the owner answers for it: it goes first
        assert silent is not None and (inp.adopted_held or silent >= p.silence_wait_s)
        assert d.adopted.check_arp == (not inp.adopted_held)  # a new adoption asks the link first
    # Its own, whatever its database: heard, only while the peer says it does not hold it (and a take only once
    # the peer has heard this node lately); unheard, a take waits longer.
    if d.own.hold:
        if peer is not None:
            assert not peer.home_adopted and not d.own.check_arp
            if not inp.own_held:  # taken only once the peer says it heard this node lately
                assert inp.heard_me_s is not None and inp.heard_me_s < p.silence_wait_s
        else:
            assert inp.public_ok
            if not inp.own_held:
                assert silent is not None and silent >= OWNER_WAIT_FACTOR * p.silence_wait_s and d.own.check_arp
    if peer is not None and peer.home_adopted:
        assert not d.own.hold  # the one rule that gives it back: the adopter lets go once it hears us


def test_reasons_name_each_rule_once() -> None:
    values = [r.value for r in HomeReason]
    assert len(values) == len(set(values))


# -- a two-node world -----------------------------------------------------------------------------

NAMES = ("alpha", "beta")
FRESH = 5  # a heard view stays usable this many steps after its message arrived
MAX_DELAY = 4  # heartbeats arrive 1-MAX_DELAY steps late
MAX_CHANGE = 3  # an ARP check or an address change takes 0-MAX_CHANGE steps
FENCE = 8  # the primary fences this many steps after the standby last heard it (it learns so from acks)
FAILOVER = 12  # the standby promotes this many steps after it last heard the primary, once it is fenced or dead
WAIT = FRESH + MAX_DELAY + 1  # the agents' wait: the peer's freshness window and a heartbeat on the way
LOOK = 6  # a held address is looked at (ARP, before its re-announcement) every LOOK steps


@dataclass
class Node:
    name: str
    db: DbState
    hs: HomeState = field(default_factory=HomeState)
    alive: bool = True
    public: bool = True
    up_since: int = 0  # the step its public link last came up
    addrs: set[str] = field(default_factory=set)  # home addresses on this node's interface
    held: dict[str, bool] = field(default_factory=dict)  # advertised: on, or being added or removed
    pending: dict[str, tuple[str, int]] = field(default_factory=dict)  # owner -> (check|add|remove, step)
    want: dict[str, bool] = field(default_factory=dict)  # owner -> the latest decision (the keeper's ``want``)
    checking: dict[str, int] = field(default_factory=dict)  # owner -> the step its ARP probe began
    contested: bool = False  # the last look at the adopted address found the other node answering
    # (arrives, seq, view, ack: when this node sent the newest message the sender had, sent)
    inbox: list[tuple[int, int, PeerView, int | None, int]] = field(default_factory=list)
    seq: int = 0
    last_heard_alpha: int = 0  # beta: the step at which alpha's newest message arrives
    muted_until: int = -1  # what this node sends is lost until then
    restarting: bool = False  # a new agent whose first heartbeat leaves before its first step read the kernel

    def newest(self, now: int) -> PeerView | None:
        arrived = [m for m in self.inbox if m[0] <= now]
        if not arrived or now - max(m[0] for m in arrived) >= FRESH:
            return None
        return max(arrived, key=lambda m: m[1])[2]

    def heard_me(self, now: int) -> int | None:
        """When this node sent the newest of its messages the peer has acknowledged (agent.link keeps the
        newest acknowledgement it ever received, whichever message carried it)."""
        acks = [m[3] for m in self.inbox if m[0] <= now and m[3] is not None]
        return max(acks, default=None)

    def acks(self, now: int) -> int | None:
        """The send step of the peer's newest message arrived here (what this node's next message acknowledges)."""
        arrived = [m for m in self.inbox if m[0] <= now]
        return max(arrived, key=lambda m: m[1])[4] if arrived else None


def run_world(seed: int, events: int, one_way: bool, steps: int = 500, wait: int = WAIT,
              ignore_acks: bool = False, recheck: bool = True, look: bool = True,
              unknown_held: bool = True) -> tuple[Node, Node, list[int]]:
    """Alpha starts as the primary, beta as its standby, each holding its own home address. Events: alpha's
    host crashes (its addresses go with it) and comes back as a standby; a node is cut off both ways for a
    while; (``one_way``) one side's messages are lost while it hears the other; a public link fails and comes
    back (an overlap within an address change of a link's return is not counted). The primary fences itself
    FENCE steps after the standby last heard it, the standby promotes FAILOVER steps after, and only once the
    primary is fenced or dead: the decision core's guarantee. A fenced old primary rejoins as a standby once it
    hears the new one. Returns the steps at which one home
    address was on both nodes with both public links up. ``ignore_acks``: the owner takes its address back
    on the peer's word alone, whether or not the peer has heard it lately. ``recheck``: a take whose ARP probe
    found the address free adds it only if the latest decision still says to hold it (as the keeper does), and
    a probe during which this node's link lost its carrier fails (as probes.arp_holders does). ``look``: an
    adopter looks at the address it holds every LOOK steps and lets go if the owner answers for it.
    ``unknown_held``: a restarted agent's messages before its first step say it may hold the peer's address."""
    rnd = random.Random(seed)
    policy = HomePolicy(silence_wait_s=float(wait), peer_has_one=True)
    alpha, beta = Node("alpha", DbState.PRIMARY, addrs={"alpha"}), Node("beta", DbState.STANDBY, addrs={"beta"})
    for n in (alpha, beta):
        n.held = {n.name: True}
    change_at = sorted(rnd.sample(range(steps - 150), k=min(events, steps - 150)))
    both: list[int] = []
    adopted.clear()
    for t in range(steps):
        if change_at and change_at[0] == t:
            change_at.pop(0)
            kinds = ["crash", "isolate", "public", "public", "restart", *(["mute", "mute"] if one_way else [])]
            what, who = rnd.choice(kinds), rnd.choice([alpha, beta])
            if what == "crash" and alpha.alive and beta.db is not DbState.PRIMARY:
                alpha.alive, alpha.addrs, alpha.pending = False, set(), {}
            elif what == "isolate":
                who.muted_until = t + rnd.randint(FRESH, 6 * FRESH)
                (beta if who is alpha else alpha).muted_until = who.muted_until
            elif what == "public":
                who.public = not who.public
                who.up_since = t
            elif what == "mute":
                who.muted_until = t + rnd.randint(FRESH, 6 * FRESH)
            elif what == "restart" and who.alive and not who.pending:
                # A new agent on the same host: the kernel keeps the addresses; the agent knows no message yet,
                # and its first heartbeat leaves before its first step has read the kernel.
                who.hs, who.held, who.inbox, who.restarting = HomeState(), {}, [], True
        if t == steps - 150:  # a long calm end: the world must settle
            alpha.muted_until = beta.muted_until = -1
            for n in (alpha, beta):
                n.up_since, n.public = (n.up_since if n.public else t), True
        if not alpha.alive and t > (change_at[0] if change_at else steps - 150) - 1 and rnd.random() < 0.1:
            # The host comes back: a new agent, no address, its database a standby of the new primary.
            alpha.alive, alpha.db, alpha.hs, alpha.held, alpha.inbox = True, DbState.STANDBY, HomeState(), {}, []
        # The decision core's roles, as its safety argument gives them.
        if alpha.db is DbState.PRIMARY and alpha.alive and t - beta.last_heard_alpha >= FENCE:
            alpha.db = DbState.FENCED
        if beta.db is DbState.STANDBY and t - beta.last_heard_alpha >= FAILOVER and \
                (not alpha.alive or alpha.db is not DbState.PRIMARY):
            beta.db = DbState.PRIMARY
        if alpha.db is DbState.FENCED and alpha.alive and alpha.newest(t) is not None and beta.db is DbState.PRIMARY:
            alpha.db = DbState.STANDBY  # rejoined
        for me, other in ((alpha, beta), (beta, alpha)):
            if not me.alive:
                continue
            for owner, (kind, at) in list(me.pending.items()):
                if at > t:
                    continue
                del me.pending[owner]
                if kind == "check":
                    # A probe over a link that lost its carrier meanwhile hears nobody; it fails (probes.arp_holders:
                    # not added) unless ``recheck`` is off.
                    blind = not me.public or me.up_since > me.checking.pop(owner, t)
                    seen = owner in other.addrs and other.public and other.alive and not blind
                    if seen or (recheck and (blind or not me.want.get(owner, False))):
                        me.held[owner] = False
                    else:
                        me.pending[owner] = ("add", t + rnd.randint(0, MAX_CHANGE))
                elif kind == "add":
                    me.addrs.add(owner)
                else:
                    me.addrs.discard(owner)
                    me.held[owner] = False
            if me.restarting:  # its first heartbeat, then the kernel read of its first step
                me.restarting, me.seq = False, me.seq + 1
                first = PeerView(term=1, db=me.db, services=False, lsn=None, sync_ok=True, carrier={},
                                 tiebreaker_ok=None, home_adopted=unknown_held)
                if t > me.muted_until:
                    other.inbox.append((t + rnd.randint(1, MAX_DELAY), me.seq, first, None, t))
                me.held = {o: o in me.addrs for o in NAMES}
                continue
            peer = me.newest(t)
            if t % LOOK == 0:
                me.contested = other.name in other.addrs and other.alive and other.public and me.public
            me.hs, d = step(me.hs, HomeInputs(
                db=me.db, peer=peer,
                public_ok=me.public, own_held=me.held.get(me.name, False),
                heard_me_s=0.0 if ignore_acks else None if (h := me.heard_me(t)) is None else float(t - h),
                adopted_held=me.held.get(other.name, False), adopted_contested=look and me.contested,
                now=float(t)), policy)
            for owner, dec in ((me.name, d.own), (other.name, d.adopted)):
                me.want[owner] = dec.hold
                if owner in me.pending:
                    continue
                held = me.held.get(owner, False)
                if dec.hold and not held:
                    me.held[owner] = True  # held from the decision on, check included (as the agent does)
                    me.pending[owner] = ("check" if dec.check_arp else "add", t + rnd.randint(0, MAX_CHANGE))
                    me.checking[owner] = t
                elif not dec.hold and held:
                    me.pending[owner] = ("remove", t + rnd.randint(0, MAX_CHANGE))
            me.seq += 1
            view = PeerView(term=1, db=me.db, services=False, lsn=None, sync_ok=True, carrier={},
                            tiebreaker_ok=None, home_adopted=me.held.get(other.name, False))
            if t > me.muted_until:
                arrives = t + rnd.randint(1, MAX_DELAY)
                other.inbox.append((arrives, me.seq, view, me.acks(t), t))
                if me is alpha:
                    beta.last_heard_alpha = max(beta.last_heard_alpha, arrives)
        # A link that just came back may find an address change that began while it was down still under way
        # (a probe over a dead link sees nobody; a removal not finished): that overlap lasts no longer than
        # the change. Any other is a fault of the rules.
        settled = min(t - alpha.up_since, t - beta.up_since) > MAX_CHANGE + 1
        if alpha.alive and alpha.public and beta.public and alpha.addrs & beta.addrs and settled:
            both.append(t)
        if "alpha" in beta.addrs:
            adopted.append(t)
    return alpha, beta, both


adopted: list[int] = []  # the last world's steps at which beta held alpha's home address


def _settled(alpha: Node, beta: Node) -> bool:
    return ("alpha" not in beta.addrs and "beta" in beta.addrs
            and (not alpha.alive or alpha.addrs == {"alpha"}))  # fenced or not: its proxy lives on


# The worlds are drawn the same way in every run (derandomize): 2,400 of them had no overlap at all when the
# rules were written, so one found later is a fault of the rules, never a test that fails now and then.
@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32), st.integers(0, 25), st.booleans())
def test_never_on_two_nodes_and_settles_home(seed: int, events: int, one_way: bool) -> None:
    """Crashes, isolations, agent restarts, public links failing, (``one_way``) one side unheard: a home address
    is never on both nodes with both links up (but within an address change of a link's return), and the world
    settles with each address at home."""
    alpha, beta, both = run_world(seed, events, one_way=one_way)
    assert both == [], f"a home address on both nodes at steps {both[:10]}"
    assert _settled(alpha, beta)


def _doubles_somewhere(**kw: Any) -> bool:
    return any(run_world(seed, events, one_way=ow, **kw)[2]
               for seed in range(40) for events in (5, 19) for ow in (False, True))


def test_each_rule_is_needed_the_adopters_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    adopt = homeaddr._adopted
    monkeypatch.setattr(homeaddr, "_adopted", lambda *a: replace(adopt(*a), check_arp=False))
    assert _doubles_somewhere()


def test_each_rule_is_needed_the_adopters_word(monkeypatch: pytest.MonkeyPatch) -> None:
    own = homeaddr._own

    def deaf(inp: HomeInputs, p: HomePolicy, silent: float | None) -> HomeDecision:
        heard = None if inp.peer is None else replace(inp.peer, home_adopted=False)
        return own(replace(inp, peer=heard), p, silent)

    monkeypatch.setattr(homeaddr, "_own", deaf)
    assert _doubles_somewhere()


def test_the_worlds_do_adopt() -> None:
    """Not a vacuous world: after alpha's crash or isolation, beta holds alpha's address in many of them."""
    worlds = 0
    for seed in range(100):
        run_world(seed, 20, one_way=True)
        worlds += bool(adopted)
    assert worlds >= 30


def test_finding_h1_healed_isolation_heard_one_way_first() -> None:
    """After an isolation, the old primary heard the new one before the new one heard it: it took its address
    back on the word "not adopted" while the new primary, still not hearing it, was adopting it. The take now
    waits until the peer acknowledges a message sent lately. Seed 32 is a world that shows it."""
    assert run_world(32, 19, one_way=False)[2] == []
    assert run_world(32, 19, one_way=False, ignore_acks=True)[2] == [282]


def test_finding_h2_a_take_the_decision_gave_up_during_its_probe() -> None:
    """A node decided to take an address and probed ARP; meanwhile its own public link went down, the decision
    turned to "let go", and the probe (over the dead link) heard nobody: the address was added anyway and was on
    both nodes once the link was back. The probe now fails on a link that lost its carrier, and the keeper adds
    the address only if the latest decision still says to hold it. Seed 195 (one-way) is a world that shows it."""
    assert run_world(195, 19, one_way=True)[2] == []
    assert run_world(195, 19, one_way=True, recheck=False)[2] == [355, 356]


def test_finding_h3_the_adopter_looks_before_it_announces() -> None:
    """Two nodes deaf to each other both took the address (their probes crossed, or one probed over a link that
    came back): nothing ended it while they stayed deaf. The adopter now looks before each re-announcement and
    lets go when the owner answers. Seed 195 (one-way) is a world that shows it."""
    assert run_world(195, 19, one_way=True, look=False)[2] == [355, 356]
