"""Who holds each node's home address: one pure step per node, like the decision core.

A node's home address ([nodes.NAME] home_address) is its own address on the public network for
what must come back to that node and no other: a SIP proxy forwards each call from it, so the
callee's answer reaches the proxy that holds the call's transaction. It stays with its node through
switchovers (the service IP moves, the transactions do not). When the node dies, the answers to its
calls still ringing would go nowhere: so the survivor, once primary, adopts the dead node's home
address and relays what arrives there (its proxy listens there too), until the node is heard again.

Two nodes must not hold one address at once. The rules, for the owner (its own address) and the
adopter (the peer's):

- the adopter holds the peer's address only while it is the primary, its public network is up and
  the peer has been silent for ``silence_wait_s``, and only if an ARP probe finds nobody answering
  for it (which the shell does); it lets go as soon as it hears the peer, and says so in its
  heartbeat (``home_adopted``) until the address is gone;
- the owner takes its own address when it hears the peer say it does not hold it, in a message that
  acknowledges one this node sent less than ``silence_wait_s`` ago: the peer has heard it since, so it
  cannot be starting an adoption now, and one it starts later finds the address on ARP; an owner
  that hears nobody while its public network is down lets go (the peer's probe cannot see an
  address on a dead link, and would adopt it);
- a fenced owner keeps its address like any other: its proxy still holds its calls' transactions (a
  fence stops the database, not the proxy), and the peer adopts it only once it is silent too;
- an owner that hears nobody keeps what it holds (a live owner answers the adopter's probe), and
  takes its address only after ``3 x silence_wait_s`` of silence and its own ARP probe: an adoption
  the peer started when the silence began has then either answered ARP or was never made;
- an adopter that finds another host answering for the address it holds lets go: two nodes deaf to
  each other may each have probed while the other had not yet added it (the owner's wait ends as the
  adopter's public link comes back), and the owner goes first;
- the shell adds an address only if, after a probe that found it free, the latest decision still
  says to hold it, and a probe fails when the link lost its carrier (a probe over a dead link hears
  nobody): findings H1-H3 in tests/unit/test_homeaddr.py and test_keeper.py.

What is left is a moment of overlap: when one node hears the other but not the reverse while the
owner's public link is down (the adopter's probe finds nobody), until the owner reads the adopter's
next heartbeat; and when two probes cross, until the adopter's next look. A doubled home address
costs no data: both proxies listen on both addresses, and an answer that reaches the one without
its transaction is relayed all the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from standby.model import DbState, PeerView

# The owner waits this many adopter's waits before it takes its own address back unheard.
OWNER_WAIT_FACTOR = 3


@dataclass(frozen=True)
class HomePolicy:
    # How long the peer must be silent before its address is adopted: its freshness window for our
    # word plus a heartbeat (set by the shell from the timings).
    silence_wait_s: float
    peer_has_one: bool  # the peer has a home address to adopt


@dataclass(frozen=True)
class HomeState:
    silent_since: float | None = None  # since when the peer has not been heard


@dataclass(frozen=True)
class HomeInputs:
    db: DbState  # this node's PostgreSQL; FENCED when the node is fenced (only a PRIMARY adopts)
    peer: PeerView | None  # the peer's last word if heard recently, else None
    public_ok: bool  # this node can serve clients (public link up, tie-breaker not lost)
    own_held: bool  # this node's home address is here now, or being added or removed
    heard_me_s: float | None  # how long ago this node sent the newest message the peer acknowledged (None: none)
    adopted_held: bool  # the peer's home address is here now, or being added or removed
    # Another host answered ARP for the adopted address at the last look (the keeper looks before each of its
    # periodic announcements): its owner, taking it back while both were deaf to each other.
    adopted_contested: bool
    now: float  # monotonic seconds


class HomeReason(StrEnum):
    """Why a home address is held here or not: one per rule of ``step``."""

    # this node's own
    PEER_HOLDS_IT = "the peer adopted it while this node was silent; it lets go now that it hears this node"
    PEER_DOES_NOT = "the peer does not hold it"
    PEER_HAS_NOT_HEARD = "the peer does not hold it, but has not heard this node lately (it may be adopting it)"
    SILENT_PUBLIC_DOWN = "the peer is silent and the public network is down here (the peer may adopt it)"
    SILENT_KEPT = "the peer is silent; kept (an adopter takes only an address nobody answers for)"
    SILENT_WAITING = "the peer is silent; waiting until an adoption it may have begun has shown"
    SILENT_TAKEN = "the peer has been silent long enough; taken if nobody answers for it"
    # the peer's
    NONE_TO_ADOPT = "the peer has no home address"
    NOT_PRIMARY = "not the primary"
    PEER_HEARD = "the peer is heard: its address is its own"
    PUBLIC_DOWN = "the public network is down here"
    ADOPTED = "the peer is silent; adopted"
    CONTESTED = "another host answers for it (its owner, back while unheard): the owner goes first"
    PEER_SILENT_WAITING = "the peer is silent; waiting until it cannot still hold its address"
    ADOPTING = "the peer has been silent long enough; adopted if nobody answers for it"


@dataclass(frozen=True)
class HomeDecision:
    hold: bool
    reason: HomeReason
    check_arp: bool = False  # take only if nobody answers ARP for the address


@dataclass(frozen=True)
class HomeDecisions:
    own: HomeDecision
    adopted: HomeDecision


def step(s: HomeState, inp: HomeInputs, p: HomePolicy) -> tuple[HomeState, HomeDecisions]:
    if inp.peer is not None:
        s = replace(s, silent_since=None)
    elif s.silent_since is None:
        s = replace(s, silent_since=inp.now)  # also right after this agent's start
    silent_s = None if s.silent_since is None else inp.now - s.silent_since
    return s, HomeDecisions(own=_own(inp, p, silent_s), adopted=_adopted(inp, p, silent_s))


def _own(inp: HomeInputs, p: HomePolicy, silent_s: float | None) -> HomeDecision:
    if inp.peer is not None:
        if inp.peer.home_adopted:
            return HomeDecision(False, HomeReason.PEER_HOLDS_IT)
        if not inp.own_held and (inp.heard_me_s is None or inp.heard_me_s >= p.silence_wait_s):
            return HomeDecision(False, HomeReason.PEER_HAS_NOT_HEARD)
        return HomeDecision(True, HomeReason.PEER_DOES_NOT)
    if not inp.public_ok:
        return HomeDecision(False, HomeReason.SILENT_PUBLIC_DOWN)
    if inp.own_held:
        return HomeDecision(True, HomeReason.SILENT_KEPT)
    assert silent_s is not None  # set by step whenever the peer is silent
    if silent_s < OWNER_WAIT_FACTOR * p.silence_wait_s:
        return HomeDecision(False, HomeReason.SILENT_WAITING)
    return HomeDecision(True, HomeReason.SILENT_TAKEN, check_arp=True)


def _adopted(inp: HomeInputs, p: HomePolicy, silent_s: float | None) -> HomeDecision:
    if not p.peer_has_one:
        return HomeDecision(False, HomeReason.NONE_TO_ADOPT)
    if inp.db is not DbState.PRIMARY:
        return HomeDecision(False, HomeReason.NOT_PRIMARY)
    if inp.peer is not None:
        return HomeDecision(False, HomeReason.PEER_HEARD)
    if not inp.public_ok:
        return HomeDecision(False, HomeReason.PUBLIC_DOWN)
    if inp.adopted_held and inp.adopted_contested:
        return HomeDecision(False, HomeReason.CONTESTED)
    if inp.adopted_held:
        return HomeDecision(True, HomeReason.ADOPTED)
    assert silent_s is not None
    if silent_s < p.silence_wait_s:
        return HomeDecision(False, HomeReason.PEER_SILENT_WAITING)
    return HomeDecision(True, HomeReason.ADOPTING, check_arp=True)
