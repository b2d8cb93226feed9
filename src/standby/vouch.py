"""What a node vouches for to a load balancer's checks (``GET /primary``, ``GET /replica``). No I/O.

The checks are answered on the API's own thread from what the decision loop last left, and two moments
make that stale:
- after a pause of the whole process (a frozen VM, SIGSTOP), until the loop's first step has looked: a
  thawed primary said "primary" for a server that step then fenced (0.03-0.49 s after the thaw in the
  lab), and a check answered then routes new connections to it;
- while a step that decided to fence writes that decision to disk (0.3 s on a busy disk) before the
  agent's state says "fenced".
So a check vouches only for a state that no pause has outdated and no decided fence contradicts. The
pause that counts is the one the next step will see (``Looked.gap``), bounded by the stall limit that
the decisions' stall fence uses (standby.decide.stall_limit): a shorter pause cannot have let the peer
take over (that fence's own argument), so a check answers through it without flapping on a busy
machine; a longer one is vouched for again only once a step has looked, and fenced if it had to.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from standby.decide import Policy, stall_limit
from standby.model import DbState


class Verdict(StrEnum):
    """A check's answer and why; only PRIMARY and STANDBY are vouched for (HTTP 200)."""

    PRIMARY = "primary"  # a writable primary, looked at since any long pause
    STANDBY = "standby"  # a streaming standby, looked at since any long pause
    FENCED = "fenced"  # fenced, or a step has just decided so and is writing it down
    PAUSED = "paused"  # this process paused longer than the stall limit, and no step has looked since
    NOT_PRIMARY = "not_primary"  # its server is no writable primary (a standby, down, starting)
    NOT_STREAMING = "not_streaming"  # no standby, or its WAL receiver is not streaming


@dataclass(frozen=True)
class InHand:
    """What the decision step in progress has seen and decided that is not yet the agent's state."""

    gap: float = 0.0  # the pause its observation saw
    fencing: bool = False  # it decided to fence


NOTHING_IN_HAND = InHand()


@dataclass(frozen=True)
class Looked:
    """What a check reads of the agent."""

    db: DbState  # its server, as last observed
    streaming: bool  # its WAL receiver, as last observed
    fenced: bool  # in its state, or decided by the step in progress
    gap: float  # the longest pause of the process that no completed step has looked at


def _paused(lk: Looked, p: Policy) -> bool:
    return lk.gap > stall_limit(p)


def primary(lk: Looked, p: Policy) -> Verdict:
    """``GET /primary``: may writes be routed here?"""
    if lk.fenced:
        return Verdict.FENCED
    if lk.db is not DbState.PRIMARY:
        return Verdict.NOT_PRIMARY
    return Verdict.PAUSED if _paused(lk, p) else Verdict.PRIMARY


def replica(lk: Looked, p: Policy) -> Verdict:
    """``GET /replica``: may reads be routed here? (The lag bound, a number the caller chooses, is the API's.)"""
    if lk.db is not DbState.STANDBY or not lk.streaming:
        return Verdict.NOT_STREAMING
    return Verdict.PAUSED if _paused(lk, p) else Verdict.STANDBY
