"""Who holds the reporting IP: one pure step per node, like the decision core.

Reports read from the standby's replica so the primary keeps its CPU for
calls. The reporting IP therefore follows the standby while it is *in bound*
(running, streaming, its public network up, and the WAL it still has to
replay within ``max_lag_bytes`` of the primary's position as the primary last
said in its heartbeat). Otherwise it goes to the primary (fallback
"primary") or to nobody (fallback "withdraw").

Two nodes must not hold it at once, so a move is a hand-over with a receipt:

- a standby that comes in bound opens a new *episode* (a number never used
  before by this node, since it starts from the agent's boot counter) and
  advertises it;
- a primary that sees an in-bound standby lets go of the address, and only
  once it is gone acknowledges that episode;
- the standby takes the address only when the primary's heartbeat says "I do
  not hold it" *and* acknowledges the standby's current episode. That message
  was written after the primary saw the standby in bound, and the primary takes
  the address again only after a newer standby message says "out of bound",
  which the standby sends only once it has let go itself (``held`` stays true
  while a removal is in flight).

When the peer is silent the primary cannot get a receipt; it takes the address
(fallback "primary") only once the standby has been silent for
``silence_wait_s``, and then only if an ARP probe finds nobody answering for
it, which the shell does. Silence does not withdraw a receipt already given: a
standby that has just read one may be adding the address while the primary's
probe runs, and both would hold it. So from the moment the primary hears
nothing it advertises no receipt, and once the wait (the standby's own
freshness window and a heartbeat) is over, the standby has either read that
or stopped trusting its view of the primary, and an address it added
meanwhile answers the probe. A standby never holds it without hearing the
primary, since it cannot know its lag then.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from standby.model import DbState, PeerView

# Episodes are numbered from (boot << EPISODE_BITS): a restarted agent never
# reuses a number the primary may still acknowledge from the previous run.
EPISODE_BITS = 24


@dataclass(frozen=True)
class ReportingPolicy:
    fallback_primary: bool  # fallback = "primary"
    max_lag_bytes: int
    # Primary: how long the standby must be silent before the address is taken
    # without a receipt. The shell sets it from the timings (the peer's
    # freshness window plus a heartbeat); 0 only where no receipt can be out.
    silence_wait_s: float = 0.0


@dataclass(frozen=True)
class ReportingState:
    episode: int = 0  # standby: current in-bound episode (0: not in bound)
    next_episode: int = 1  # the next number to open an episode with
    ack: int = 0  # primary: the standby episode it has stepped aside for (0: none)
    silent_since: float | None = None  # primary: since when the standby has not been heard

    @classmethod
    def for_boot(cls, boot: int) -> ReportingState:
        return cls(next_episode=(boot << EPISODE_BITS) + 1)


@dataclass(frozen=True)
class ReportingInputs:
    db: DbState  # this node's PostgreSQL; FENCED when the node is fenced
    streaming: bool  # standby: WAL receiver streaming
    replay_lsn: int | None  # standby: WAL applied so far
    peer: PeerView | None  # the peer's last word if heard recently, else None
    public_ok: bool  # this node can serve clients (public link up, tie-breaker not lost)
    held: bool  # the address is on this node now, or being added or removed
    now: float  # monotonic seconds


class ReportingReason(StrEnum):
    """Why the reporting IP is held here or not: one per rule of ``step``."""

    FENCED = "fenced"
    PG_DOWN = "PostgreSQL is down here"
    # standby
    PRIMARY_NOT_HEARD = "the primary is not heard (lag unknown)"
    NOT_STREAMING = "not streaming from the primary"
    PUBLIC_DOWN = "public network down here"
    LAG_OVER_BOUND = "replay lag over the bound"
    PRIMARY_STILL_HOLDS = "in bound; the primary still holds it"
    IN_BOUND = "in bound"
    WAITING_FOR_PRIMARY = "in bound; waiting for the primary to step aside"
    PRIMARY_STEPPED_ASIDE = "in bound; the primary stepped aside"
    # primary
    STANDBY_TAKES_IT = "the standby is in bound and takes it"
    STANDBY_HOLDS_IT = "the standby holds it"
    WITHDRAWN = "no standby in bound; withdrawn (fallback withdraw)"
    NO_STANDBY_PUBLIC_DOWN = "no standby in bound, and the public network is down here"
    STANDBY_SILENT = "the standby is silent; waiting until a receipt it may hold has lapsed"
    ON_PRIMARY = "no standby in bound; reports go to the primary (fallback primary)"


@dataclass(frozen=True)
class ReportingDecision:
    hold: bool
    reason: ReportingReason
    lag_bytes: int | None = None  # standby: WAL left to replay, when known
    check_arp: bool = False  # take only if nobody answers ARP for the address (peer silent)


def replay_lag(inp: ReportingInputs) -> int | None:
    """WAL the standby still has to apply: the primary's heartbeat position minus the local replay position."""
    peer = inp.peer
    if inp.db is not DbState.STANDBY or peer is None or peer.db is not DbState.PRIMARY:
        return None
    if peer.lsn is None or inp.replay_lsn is None:
        return None
    # The heartbeat position may be a step older than the local one: never negative.
    return max(0, peer.lsn - inp.replay_lsn)


def advertised(s: ReportingState, held: bool) -> tuple[bool, int, int]:
    """(reporting, reporting_epoch, reporting_ack) for the heartbeat."""
    return held, s.episode, s.ack


def step(s: ReportingState, inp: ReportingInputs, p: ReportingPolicy) -> tuple[ReportingState, ReportingDecision]:
    if inp.db is DbState.STANDBY:
        return _standby(s, inp, p)
    if inp.db is DbState.PRIMARY:
        return _primary(s, inp, p)
    s = replace(s, episode=0, ack=0, silent_since=None)
    why = ReportingReason.FENCED if inp.db is DbState.FENCED else ReportingReason.PG_DOWN
    return s, ReportingDecision(False, why)


def _standby(s: ReportingState, inp: ReportingInputs, p: ReportingPolicy) -> tuple[ReportingState, ReportingDecision]:
    s = replace(s, silent_since=None)
    lag = replay_lag(inp)
    # Leave at the bound, come back under half of it: a lag hovering at the
    # bound must not move the address (and break running reports) each step.
    bound = p.max_lag_bytes if s.episode else p.max_lag_bytes // 2
    why: ReportingReason | None = None
    if lag is None:
        why = ReportingReason.PRIMARY_NOT_HEARD
    elif not inp.streaming:
        why = ReportingReason.NOT_STREAMING
    elif not inp.public_ok:
        why = ReportingReason.PUBLIC_DOWN
    elif lag > bound:
        why = ReportingReason.LAG_OVER_BOUND  # the lag is in the decision; the bound is max_lag_bytes (or half)
    if why is not None:
        return replace(s, episode=0, ack=0), ReportingDecision(False, why, lag)
    if not s.episode:
        s = replace(s, episode=s.next_episode, next_episode=s.next_episode + 1)
    s = replace(s, ack=0)
    peer = inp.peer
    assert peer is not None  # a known lag needs a heard primary
    if peer.reporting:
        return s, ReportingDecision(False, ReportingReason.PRIMARY_STILL_HOLDS, lag)
    if inp.held:
        return s, ReportingDecision(True, ReportingReason.IN_BOUND, lag)
    if peer.reporting_ack != s.episode:
        return s, ReportingDecision(False, ReportingReason.WAITING_FOR_PRIMARY, lag)
    return s, ReportingDecision(True, ReportingReason.PRIMARY_STEPPED_ASIDE, lag)


def _primary(s: ReportingState, inp: ReportingInputs, p: ReportingPolicy) -> tuple[ReportingState, ReportingDecision]:
    peer = inp.peer
    s = replace(s, episode=0, silent_since=s.silent_since if peer is None else None)
    if peer is not None and peer.db is DbState.STANDBY and peer.reporting_epoch > 0:
        # Acknowledge only once the address is gone from here: the receipt is
        # what lets the standby take it.
        ack = s.ack if inp.held else peer.reporting_epoch
        return replace(s, ack=ack), ReportingDecision(False, ReportingReason.STANDBY_TAKES_IT)
    s = replace(s, ack=0)
    if peer is not None and peer.reporting:
        return s, ReportingDecision(False, ReportingReason.STANDBY_HOLDS_IT)
    if not p.fallback_primary:
        return s, ReportingDecision(False, ReportingReason.WITHDRAWN)
    if not inp.public_ok:
        return s, ReportingDecision(False, ReportingReason.NO_STANDBY_PUBLIC_DOWN)
    if peer is None and not inp.held:
        # Also right after this agent's start: its previous run may have given a receipt.
        since = inp.now if s.silent_since is None else s.silent_since
        s = replace(s, silent_since=since)
        if inp.now - since < p.silence_wait_s:
            return s, ReportingDecision(False, ReportingReason.STANDBY_SILENT)
    return s, ReportingDecision(True, ReportingReason.ON_PRIMARY, check_arp=peer is None)


# -- a reporting follower's own address ----------------------------------------------------------------
#
# A reporting follower's ``reporting_ip`` ([[followers]]) is its own: it never floats, and the
# configuration check refuses it on any other member, so no receipt is needed and this rule is the
# standby's rule alone. Reports reach it first (`standby dsn --for reporting` lists the reporting
# followers before the pair), so a follower that cannot say its data is recent withdraws it and the
# client's next host answers. One difference: the pair's heartbeats stop for a second or two at every
# failover inside the pair, which is no reason to break the reports running here; an unknown lag
# withdraws the address only once it has lasted ``unknown_grace_s``.


class FollowerReportingReason(StrEnum):
    """Why a reporting follower holds its own reporting IP or not: one per rule of ``follower_step``."""

    PG_DOWN = "PostgreSQL is down here"
    PROMOTED = "out of recovery (an operator promoted it): not a replica"
    LAG_UNKNOWN = "no primary heard: its lag is unknown"
    LAG_UNKNOWN_A_MOMENT = "no primary heard for a moment (a failover in the pair): kept meanwhile"
    LAG_OVER_BOUND = "replay lag over the bound"
    IN_BOUND = "in bound"


@dataclass(frozen=True)
class FollowerReportingState:
    held: bool = False  # the last decision: in bound (the shell tracks the kernel)
    unknown_since: float | None = None  # since when the lag is unknown, while it is


@dataclass(frozen=True)
class FollowerReportingInputs:
    running: bool
    in_recovery: bool
    lag_bytes: int | None  # WAL not yet replayed here against a freshly heard primary's position; None: unknown
    now: float  # monotonic seconds


@dataclass(frozen=True)
class FollowerReportingPolicy:
    max_lag_bytes: int  # [reporting] max_lag_bytes: leave over it, come back under half of it
    unknown_grace_s: float  # an unknown lag this long withdraws the address


def follower_step(s: FollowerReportingState, inp: FollowerReportingInputs, p: FollowerReportingPolicy) -> tuple[
        FollowerReportingState, FollowerReportingReason]:
    """(new state, why); the address is held exactly when ``new.held``."""
    unknown_since = None if inp.lag_bytes is not None else (inp.now if s.unknown_since is None else s.unknown_since)
    s = replace(s, unknown_since=unknown_since)
    if not inp.running:
        return replace(s, held=False), FollowerReportingReason.PG_DOWN
    if not inp.in_recovery:
        return replace(s, held=False), FollowerReportingReason.PROMOTED
    if inp.lag_bytes is None:
        assert unknown_since is not None
        if s.held and inp.now - unknown_since < p.unknown_grace_s:
            return s, FollowerReportingReason.LAG_UNKNOWN_A_MOMENT
        return replace(s, held=False), FollowerReportingReason.LAG_UNKNOWN
    # As for the pair's standby: a lag hovering at the bound must not move the address each step.
    bound = p.max_lag_bytes if s.held else p.max_lag_bytes // 2
    if inp.lag_bytes > bound:
        return replace(s, held=False), FollowerReportingReason.LAG_OVER_BOUND
    return replace(s, held=True), FollowerReportingReason.IN_BOUND
