"""The road back after a DR promotion: the decisions. No I/O.

After `standby promote --node <warm follower>` the follower (say gamma) is the only primary and the pair's
site is rebuilt from it, then gets the service back, in two operator commands:

1. ``standby rejoin --node alpha --from gamma`` (on alpha, its agent running): alpha is rebuilt as gamma's
   standby by the pair's own rejoin (salvage of what alpha alone had first, then pg_rewind or a clone).
   ``may_rebuild`` says whether it may start.
2. ``standby switchback --node gamma`` (on gamma, its follower agent stopped): gamma stops cleanly and alpha is
   promoted by its agent only once it has gamma's shutdown checkpoint, else gamma serves again; then gamma
   starts as alpha's standby. ``may_hand_back`` says whether it may start, ``next_step`` what comes after each
   observation.

The safety argument (two writable nodes must never be, nothing acknowledged is lost):
1. A rebuild needs the follower writable (it is the primary to copy) and the other pair node not writable:
   with two writable nodes a person decides which one is the primary, not this command.
2. A hand-back needs the follower's own agent stopped: it restarts a server it finds down, and a promoted
   follower's directory has no standby.signal, so that restart would bring it back writable beside the
   pair node just promoted.
3. The pair node must be a standby streaming from the follower, its agent answering and not fenced: only
   its agent promotes it (a new term written down first), and only once it has received WAL past the
   follower's shutdown checkpoint, the last WAL the follower ever writes as a primary (the switchover's rule).
4. After a failed promotion the follower serves again only if the pair node's agent confirms it is still a
   standby not being promoted; otherwise nothing is started and a person looks (the answer may have been
   lost after the promotion). A follower that did not stop cleanly promoted nothing and serves again.
5. Once the pair node is promoted, the follower is started as its standby only (``standby.signal``), on the
   new timeline: its shutdown checkpoint is in the pair node's history, so no rewind is needed.
6. A pair agent that starts while a warm follower accepts writes fences itself (``fence_at_start``) unless
   its server runs as a standby: nothing told the old site about the DR promotion, and two of its agents
   hearing each other would otherwise restart the old primary's server as a primary beside the DR node.
   Fenced, it stays down until `standby rejoin` (with ``--from`` for alpha) tells it what it is now.
7. The rebuilt node takes the first term of the next block (standby.operations.rebuilt): the lost site's
   newest term is unknown (its standby may have promoted unheard in its last second) but inside its block,
   so the rebuilt pair's terms supersede it, never tie with it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from standby.confbase import FollowerRole
from standby.model import DbState


class Reason(enum.StrEnum):
    # may_rebuild
    NOT_WARM_FOLLOWER = "not_warm_follower"  # the source is no warm follower: only a DR node is rebuilt from
    SOURCE_NOT_PRIMARY = "source_not_primary"  # the follower does not accept writes: it was never promoted
    OTHER_WRITABLE = "other_writable"  # the other pair node accepts writes: two primaries, a person decides
    REBUILD = "rebuild"
    # may_hand_back
    HERE_NOT_PRIMARY = "here_not_primary"  # this follower does not accept writes: nothing to hand back
    AGENT_RUNNING = "agent_running"  # this follower's agent would restart its stopped server, writable
    TARGET_AGENT_SILENT = "target_agent_silent"  # the pair node's agent does not answer: nothing can promote it
    TARGET_FENCED = "target_fenced"  # the pair node's agent is fenced: it promotes nothing
    TARGET_NOT_STREAMING = "target_not_streaming"  # the pair node is not a standby streaming from here
    HAND_BACK = "hand_back"
    # fence_at_start
    NO_DR_PRIMARY = "no_dr_primary"  # no warm follower accepts writes: the pair's rules as ever
    ALREADY_FENCED = "already_fenced"
    RUNNING_STANDBY = "running_standby"  # a standby takes no writes and, its peer not serving, cannot promote
    SUPERSEDED = "superseded"  # a DR node serves: this node must not restart or serve as a primary


@dataclass(frozen=True)
class Decision:
    go: bool
    reason: Reason


def _first_refusal(ok: Reason, *rules: tuple[bool, Reason]) -> Decision:
    """The first rule that refuses, in the order the safety argument gives them; else ``ok``."""
    for refuses, reason in rules:
        if refuses:
            return Decision(False, reason)
    return Decision(True, ok)


def may_rebuild(source_role: FollowerRole | None, source_writable: bool, other_writable: bool) -> Decision:
    """May a pair node be rebuilt as a standby of the follower ``source`` (None: no follower of that name)?"""
    return _first_refusal(
        Reason.REBUILD,
        (source_role is not FollowerRole.WARM, Reason.NOT_WARM_FOLLOWER),
        (not source_writable, Reason.SOURCE_NOT_PRIMARY),
        (other_writable, Reason.OTHER_WRITABLE),
    )


class TargetSeen(enum.StrEnum):
    """The pair node that takes the service back, as its agent and the follower's server see it."""

    AGENT_SILENT = "agent_silent"
    FENCED = "fenced"  # its agent answers, fenced
    NOT_STREAMING_HERE = "not_streaming_here"  # its agent answers, not fenced; not a standby streaming from here
    STREAMING_HERE = "streaming_here"  # its agent answers, not fenced; a standby streaming from this follower


def may_hand_back(role: FollowerRole | None, here_writable: bool, agent_answers: bool, target: TargetSeen,
                  other_writable: bool) -> Decision:
    """May this follower, an operator's primary, hand the service back to the pair node ``target``?"""
    return _first_refusal(
        Reason.HAND_BACK,
        (role is not FollowerRole.WARM, Reason.NOT_WARM_FOLLOWER),
        (not here_writable, Reason.HERE_NOT_PRIMARY),
        (agent_answers, Reason.AGENT_RUNNING),
        (other_writable, Reason.OTHER_WRITABLE),
        (target is TargetSeen.AGENT_SILENT, Reason.TARGET_AGENT_SILENT),
        (target is TargetSeen.FENCED, Reason.TARGET_FENCED),
        (target is TargetSeen.NOT_STREAMING_HERE, Reason.TARGET_NOT_STREAMING),
    )


class Promotion(enum.StrEnum):
    """The pair node's promotion, as far as the hand-back knows."""

    NOT_ASKED = "not_asked"
    DONE = "done"  # its agent answered: promoted
    FAILED_STILL_STANDBY = "failed_still_standby"  # refused or failed, and its agent says: a standby, not promoting
    FAILED_UNKNOWN = "failed_unknown"  # failed, and it cannot be told that it did not promote


class Next(enum.StrEnum):
    PROMOTE_TARGET = "promote_target"  # ask the pair node's agent to promote past the shutdown checkpoint
    FOLLOW_TARGET = "follow_target"  # start this follower as the new primary's standby
    RESUME_HERE = "resume_here"  # nothing was promoted: this follower serves again, as it was
    HOLD_STOPPED = "hold_stopped"  # the pair node may have been promoted: start nothing, a person looks


def next_step(stopped_cleanly: bool, promotion: Promotion) -> Next:
    """What the hand-back does once this follower's server was asked to stop."""
    if not stopped_cleanly:
        # No shutdown checkpoint to wait for, so nothing was promoted: crash recovery keeps every commit.
        return Next.RESUME_HERE
    match promotion:
        case Promotion.NOT_ASKED:
            return Next.PROMOTE_TARGET
        case Promotion.DONE:
            return Next.FOLLOW_TARGET
        case Promotion.FAILED_STILL_STANDBY:
            return Next.RESUME_HERE
        case Promotion.FAILED_UNKNOWN:
            return Next.HOLD_STOPPED


@dataclass(frozen=True)
class StartFence:
    fence: bool
    reason: Reason
    by: tuple[str, ...] = ()  # the warm followers seen accepting writes


def fence_at_start(dr_primaries: tuple[str, ...], fenced: bool, here: DbState) -> StartFence:
    """A pair agent starting: must it fence itself, a DR node (``dr_primaries``: warm followers seen accepting
    writes) having taken over while it was away? ``here``: its own server, as first observed."""
    if not dr_primaries:
        return StartFence(False, Reason.NO_DR_PRIMARY)
    if fenced:
        return StartFence(False, Reason.ALREADY_FENCED, dr_primaries)
    if here is DbState.STANDBY:
        return StartFence(False, Reason.RUNNING_STANDBY, dr_primaries)
    return StartFence(True, Reason.SUPERSEDED, dr_primaries)
