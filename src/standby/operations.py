"""Operator operations as pure state transitions, beside the decisions (standby.decide).

A person's operation (a switchover step, a manual promotion, a rejoin, a fence by hand) changes the
agent's persisted state as surely as a decision does. Each change is one function here, so the
rules are stated once: every promotion takes a term above any seen (the same bump for every kind
of promotion), a node that follows or rejoins takes the newest term it knows and is no longer
fenced (one rebuilt from a DR node: the next block of terms, see SITE_TERMS), a node fenced by hand
stays fenced until it rejoins. Each operation's precondition is a
function too, with a named refusal.

No I/O: the agent's shell (standby.agent.operator) asks, carries out the steps, and persists what
these functions return before the step they allow.
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum

from standby.config import MIN_UNRESPONSIVE_MS
from standby.decide import State
from standby.model import DbState


class Refusal(StrEnum):
    """Why an operation cannot be done now (nothing was changed)."""

    NOT_SUSPENDED = "automatic failover must be suspended first (maintenance)"
    NOT_PRIMARY = "is not the primary"
    NOT_STANDBY = "is not a standby"
    NOT_RUNNING_STANDBY = "is not a running standby"
    NOT_STOPPED = "has PostgreSQL running; it must be stopped first"
    NEVER_PRIMARY = "was not the primary before; refusing to make it one"
    NOT_ANSWERING = "has a PostgreSQL that has not answered the agent"

    def describe(self, node: str, db: DbState) -> str:
        if self is Refusal.NOT_SUSPENDED:
            return self.value
        if self is Refusal.NOT_ANSWERING:
            return (f"{node} {self.value} for over {UNANSWERED_REFUSE_S:g} s: nothing was changed. The operation would "
                    "wait behind that question, holding the agent's decisions. Try again in a moment (a long action "
                    "on that server also delays it); if it lasts, the server is not running (its processes stopped, its "
                    f"disk hung?): look at it, or fence it (standby fence {node}); a primary in that state is handed "
                    "over by its agent after timings.postgres_unresponsive_ms when a hot standby has everything")
        return f"{node} {self.value} (PostgreSQL is {db.value})"


class Operation(StrEnum):
    DEMOTE = "demote"  # switchover, on the primary
    PROMOTE = "promote"  # switchover, on the standby
    FOLLOW = "follow"  # switchover, on the old primary
    RESUME = "resume"  # switchover aborted, on the old primary
    REJOIN = "rejoin"
    REBUILD = "rebuild"  # after a DR promotion: a rejoin to the promoted follower (standby.rebuild)
    MANUAL_PROMOTE = "manual_promote"
    FENCE = "fence"


# The agent's question to its own server answers within its 2 s statement timeout, an error included. Left
# unanswered past the floor of timings.postgres_unresponsive_ms (a slow server is not a hung one), the server is
# likely not running (stopped by a signal, a hung disk), and every step of an operation but the fence's stop (a
# thread of its own) would queue behind that question on the PostgreSQL thread, holding the decision turn until
# the server runs again: no decision meanwhile, not even this server's hand-over. The time counts from when the
# question was asked, so a long action on that thread (a promotion's wait) may also cause a refusal: harmless,
# nothing is changed and the message says to try again.
UNANSWERED_REFUSE_S = MIN_UNRESPONSIVE_MS / 1000


def not_answering(pg_silent_s: float) -> bool:
    """Has the agent's question to its server been left unanswered too long for a person's operation to wait behind?
    Also asked by the commands before their first step (`standby switchover`, `standby promote`)."""
    return pg_silent_s > UNANSWERED_REFUSE_S


def refusal(op: Operation, s: State, db: DbState, suspended: bool, pg_silent_s: float = 0.0) -> Refusal | None:
    """May ``op`` run on a node in state ``s`` whose PostgreSQL is observed as ``db``, the agent's question to it
    unanswered for ``pg_silent_s`` (Observation.pg_silent_s)?"""
    if op is not Operation.FENCE and not_answering(pg_silent_s):
        return Refusal.NOT_ANSWERING
    match op:
        case Operation.DEMOTE:
            if not suspended:
                return Refusal.NOT_SUSPENDED
            return Refusal.NOT_PRIMARY if db is not DbState.PRIMARY or s.fenced else None
        case Operation.PROMOTE:
            if not suspended:
                return Refusal.NOT_SUSPENDED
            return Refusal.NOT_STANDBY if db is not DbState.STANDBY else None
        case Operation.FOLLOW:
            return Refusal.NOT_STOPPED if db is not DbState.DOWN else None
        case Operation.RESUME:
            return Refusal.NEVER_PRIMARY if s.fenced or not s.was_primary else None
        case Operation.MANUAL_PROMOTE:
            return Refusal.NOT_RUNNING_STANDBY if db is not DbState.STANDBY or s.fenced else None
        case Operation.REJOIN | Operation.REBUILD | Operation.FENCE:
            return None


class PeerFirst(StrEnum):
    """What `standby promote` does with the other pair node before it promotes this one."""

    FENCE = "fence"  # through its agent, for good (until a rejoin), and promote only once that is done
    REFUSE = "refuse"  # nothing changed: promoting now would make two writable primaries
    WARN = "warn"  # nothing of it answers: say that it could still be alive, and leave it to the person


def peer_first(peer_primary: bool, agent_answers: bool, force: bool) -> PeerFirst:
    """The rows, each with its why:
    - a primary, without ``--force``: REFUSE (a switchover is the planned way; two writers otherwise);
    - a primary, with ``--force``: FENCE (its agent must answer, or the fence fails and nothing is promoted);
    - not a primary, its agent answers: FENCE. Its server is down, but a fence it made itself as a precaution
      lets it start again as primary once it has heard this node as a standby that cannot promote; the last
      such heartbeat, sent just before the promotion, was enough (the simulated world's forced promotion
      found it). A person's fence is never resumed (`fenced_by_operator`);
    - not a primary, no agent answers: WARN (it may be dead, or alive behind a broken link)."""
    if peer_primary:
        return PeerFirst.FENCE if force else PeerFirst.REFUSE
    return PeerFirst.FENCE if agent_answers else PeerFirst.WARN


def after_failed_fence(peer_primary: bool, force: bool) -> PeerFirst:
    """When the fence asked of the other node failed (its agent stopped answering, the API token cannot be sent
    over the only network that answers, its disk is full):
    - a primary: REFUSE, whatever ``--force`` says (it could still be writing);
    - not a primary, without ``--force``: REFUSE, saying the ways on (stop its agent, whose own fence then holds
      with nobody to lift it; or ``--force``);
    - not a primary, with ``--force``: WARN and promote (the person's call: a precautionary fence of its own may
      let it start again beside this node until it hears the new term, which the command says)."""
    return PeerFirst.WARN if force and not peer_primary else PeerFirst.REFUSE


def next_term(s: State) -> int:
    """The term a promotion takes: above any this node has had or heard."""
    return max(s.term, s.peer_term) + 1


def promoting(s: State, planned: bool) -> State:
    """Persisted before PostgreSQL is promoted. Commits stop waiting for the old primary (degraded).
    ``planned`` (a switchover): the old primary shut down cleanly, so this node was never it."""
    new = replace(s, term=next_term(s), promoting=True, degraded=True, resumable=False)
    return replace(new, was_primary=False) if planned else new


def following(s: State) -> State:
    """A standby of the peer again (switchover's old primary, or a rejoin): unfenced, in the newest term
    known, and a standby cannot have been overtaken by a promotion of the peer it follows."""
    return replace(s, term=max(s.term, s.peer_term), was_primary=False, fenced=False, degraded=False,
                   promoting=False, peer_could_promote=False, dr_serves=False, resumable=False)


# Terms come in blocks of SITE_TERMS. Promotions inside the pair count up within a block; a pair node
# rebuilt from a DR node after a site loss starts the next block. The lost site may have promoted
# unheard just before it went (its standby, say, while the other node was already cut off), so nobody
# knows its newest term; but it cannot have left its block (that takes a million promotions), so every
# term of the rebuilt pair is above any it holds: it is superseded, never an equal that restarts its
# stale server or wins a tie on `preferred`.
SITE_TERMS = 1 << 20


def rebuilt(s: State) -> State:
    """Rebuilt as a standby of a promoted DR node: as `following`, in the first term of the next block."""
    return replace(following(s), term=(max(s.term, s.peer_term) // SITE_TERMS + 1) * SITE_TERMS)


def fenced_by_operator(s: State, dr_serves: bool = False) -> State:
    """Fenced by hand (before the peer is promoted by hand), or at start because a DR node serves
    (``dr_serves``: no hand-over, said to the peer; decide.py rule 7): sticky until a rejoin. Never
    resumable, whatever an older fence left: the person is about to promote the peer, and a `resumable`
    from before would let this node serve again at its next step (adversarial read F1)."""
    return replace(s, fenced=True, was_primary=False, releasing_services=False, promoting=False,
                   dr_serves=s.dr_serves or dr_serves, resumable=False)


def serving(s: State) -> State:
    """The service IPs were added here by an operation."""
    return replace(s, services=True, releasing_services=False)


def released(s: State) -> State:
    """The service role was let go of by an operation, not by a decision: nothing to tell the peer."""
    return replace(s, releasing_services=False)
