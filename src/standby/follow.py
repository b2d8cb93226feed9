"""The decision core of a follower: (state, observation, policy) -> (state, actions). No I/O.

A follower (standby.topology) is a replica beside the hot pair: warm (disaster recovery) or
reporting. It has no vote: it only listens to the pair's heartbeats and to its own server.

The safety argument:
1. A follower never promotes itself. ``FollowerActionKind`` has no promotion, and a restart brings the
   server back in recovery only. The one way a follower becomes a primary is the operator's
   (``standby promote --node NAME``); once its server is out of recovery this core decides nothing
   more for it (the pair's core takes over as for a warm pair).
2. It follows the newest term. Terms are raised by the pair before every promotion, so the newest
   term a follower has heard is the newest primary it can know of. A view from an older term is
   ignored (an old primary that has not yet fenced, a late heartbeat); a view from a newer term wins
   at once, even before it names a primary: the follower then points nowhere new until it does. The
   term it keeps never goes back.
3. It points only at a node serving in that term: the primary of the newest term, or (cascade) the
   hot standby heard streaming in that term, or another follower that answers. When its upstream is
   gone it falls back to the primary; it goes back only once the upstream has answered for a whole
   grace period, so a flapping upstream does not move it each step.
4. It follows a new timeline only if it can: when the WAL it replayed on its timeline goes past the
   point where the new primary's history left that timeline (the fork), its server holds WAL no
   primary has, and it is rejoined (salvage + rewind, as a pair member) instead of re-pointed. WAL
   received but not replayed is not counted: PostgreSQL leaves it behind at the timeline switch.
   While a rejoin runs nothing else is done to the server (no restart of the server it stopped), and
   the next one is decided at the earliest a backoff after it ended.
5. Its silence is not the site's. A pair node counts as heard only while its last heartbeat is
   fresh, and silence is counted from the end of this follower's own last stall: a site-loss alert
   says that nobody of the pair was heard while this follower was listening.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from standby.model import DbState
from standby.topology import PRIMARY, STANDBY


@dataclass(frozen=True)
class FollowerPolicy:
    """The follower's configuration, as the decisions need it."""

    upstream: str  # "primary", "standby" or another follower's name
    alerts: bool  # warm followers alert on site loss; reporting ones only say so
    fresh_s: float  # a pair heartbeat older than this is not "heard"
    site_loss_after_s: float  # no pair node heard this long: the site is gone
    realert_after_s: float  # the quiet period between two site-loss alerts
    upstream_grace_s: float  # an upstream silent this long is abandoned; back only after answering this long
    retry_s: float  # a re-pointing that did not take is tried again after this
    rejoin_backoff_s: float = 60.0
    restart_backoff_s: float = 5.0


@dataclass(frozen=True)
class PairView:
    """A pair node's last heartbeat, as this follower received it."""

    term: int
    db: DbState
    timeline: int
    lsn: int | None  # primary: its flush position; standby: received
    heard_at: float  # monotonic, this follower's clock
    streaming: bool = False  # standby: its WAL receiver streams from the primary
    # Primary: its timeline history, (timeline, LSN where the next timeline left it), oldest first.
    history: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class FollowerPg:
    """This follower's own server."""

    running: bool
    in_recovery: bool = True  # False: promoted (by the operator: this core never does)
    streaming: bool = False
    source: str | None = None  # the node its WAL receiver streams from
    timeline: int = 1  # of the WAL it received last
    received_lsn: int | None = None
    replay_lsn: int | None = None


@dataclass(frozen=True)
class FollowerObservation:
    now: float  # monotonic seconds
    gap: float  # since the previous step (a stalled follower sees a big one)
    pg: FollowerPg
    pair: Mapping[str, PairView] = field(default_factory=dict)  # last heartbeat per pair node, if any
    # Monotonic time each node's PostgreSQL last answered this follower (its WAL receiver or a probe).
    answered: Mapping[str, float] = field(default_factory=dict)
    rejoining: bool = False  # a rejoin (decided earlier) runs on this follower's server now


@dataclass(frozen=True)
class FollowerState:
    term: int = 0  # the newest term heard (persisted: never goes back)
    primary: str | None = None  # the primary of that term, once heard
    primary_timeline: int = 0
    target: str | None = None  # where this follower was last pointed
    pointed_at: float = -math.inf
    pointed_term: int = 0  # the term it was pointed in
    watching_since: float = 0.0  # the agent's start or the end of its last stall
    upstream_ok_since: float | None = None  # the configured cascade upstream has answered since
    last_alert_at: float = -math.inf
    last_rejoin_at: float = -math.inf
    last_restart_at: float = -math.inf
    promoted: bool = False  # its server left recovery: the operator promoted it


class FollowerReason(StrEnum):
    """Why: one per rule of ``decide_follower``."""

    PROMOTED_BY_OPERATOR = "promoted_by_operator"  # out of recovery: no longer a follower
    PG_DOWN = "pg_down"  # its own server is down: restart it, in recovery
    REJOINING = "rejoining"  # a rejoin runs on its server: nothing else is done to it meanwhile
    PAST_FORK = "past_fork"  # received WAL past the new timeline's fork: rejoin
    NOT_IN_HISTORY = "not_in_history"  # its timeline is not in the primary's history: rejoin
    AHEAD_OF_PRIMARY = "ahead_of_primary"  # its timeline is newer than the primary's it knows: wait
    NO_PRIMARY = "no_primary"  # no primary heard in the newest term: point nowhere new
    NEW_PRIMARY = "new_primary"  # a newer term's primary: follow its timeline
    UPSTREAM = "upstream"  # point at the configured upstream
    UPSTREAM_GONE = "upstream_gone"  # the configured upstream is gone: fall back to the primary
    UPSTREAM_BACK = "upstream_back"  # it has answered for the grace period: back to it
    WAITING = "waiting"  # pointed there a moment ago, not streaming yet
    RETRY = "retry"  # pointed there, still not streaming from it: again
    STREAMING = "streaming"  # nothing to change
    SITE_LOST = "site_lost"  # no pair node heard for site_loss_after_s


class FollowerActionKind(StrEnum):
    # There is deliberately no promotion here: see the safety argument, point 1.
    POINT_AT = "point_at"  # primary_conninfo at the target, recovery_target_timeline = latest, reload
    REJOIN = "rejoin"  # salvage, rewind (or clone) from the primary, then stream from the target
    RESTART = "restart"  # start the server again, in recovery (standby.signal kept)
    ALERT = "alert"  # site loss: tell people (warm followers)
    REPORT = "report"  # lag and exposure, every step, for status and metrics (not history)


@dataclass(frozen=True)
class FollowerAction:
    kind: FollowerActionKind
    reason: FollowerReason
    target: str | None = None  # POINT_AT, REJOIN: the node to stream from
    detail: str = ""
    lag_bytes: int | None = None  # REPORT: WAL not yet replayed here, against the primary's last flush
    loss_bytes: int | None = None  # REPORT: WAL a DR promotion now would lose (not received here)


Step = tuple[FollowerState, list[FollowerAction]]


# -- what the views say ----------------------------------------------------------------------------


def heard(v: PairView, o: FollowerObservation, p: FollowerPolicy) -> bool:
    """The view is what the node says now: its heartbeat is fresh."""
    return o.now - v.heard_at < p.fresh_s


def newest_term(s: FollowerState, o: FollowerObservation) -> int:
    """A newer term always wins, whatever the age of the heartbeat that carried it."""
    return max([s.term, *(v.term for v in o.pair.values())])


def serving_primary(term: int, o: FollowerObservation, p: FollowerPolicy) -> str | None:
    """The one node heard as primary in ``term``; None if none (or, impossibly, two) say so."""
    found = [n for n, v in o.pair.items() if v.term == term and v.db is DbState.PRIMARY and heard(v, o, p)]
    return found[0] if len(found) == 1 else None


def hot_standby(term: int, primary: str | None, o: FollowerObservation, p: FollowerPolicy) -> str | None:
    """The pair node heard as a streaming standby of ``primary`` in ``term``."""
    if primary is None:
        return None
    found = [n for n, v in o.pair.items() if n != primary and v.term == term and v.db is DbState.STANDBY
             and v.streaming and heard(v, o, p)]
    return found[0] if len(found) == 1 else None


def answers(node: str, o: FollowerObservation, p: FollowerPolicy) -> bool:
    t = o.answered.get(node)
    return t is not None and o.now - t < p.upstream_grace_s


def fork_of(timeline: int, history: tuple[tuple[int, int], ...]) -> int | None:
    """Where the primary's history left ``timeline`` (None: not one of its ancestors)."""
    return next((lsn for tli, lsn in history if tli == timeline), None)


def exposure(o: FollowerObservation, primary: PairView | None) -> tuple[int | None, int | None]:
    """(replay lag, loss of a DR promotion now) in bytes against the primary's last known flush position.
    Unknown (None) without a primary's position or once this follower's WAL left the primary's line."""
    pg = o.pg
    if primary is None or primary.lsn is None or pg.received_lsn is None:
        return None, None
    if pg.timeline != primary.timeline:
        fork = fork_of(pg.timeline, primary.history)
        if fork is None or pg.received_lsn > fork:
            return None, None
    loss = max(0, primary.lsn - pg.received_lsn)
    lag = None if pg.replay_lsn is None else max(0, primary.lsn - pg.replay_lsn)
    return lag, loss


def fresh_lag(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> int | None:
    """The replay lag against the primary's position as it says it *now* (a fresh heartbeat of the newest
    term's primary); None when no such primary is heard: an old position would make a stale copy look recent."""
    view = o.pair.get(s.primary) if s.primary is not None else None
    if view is None or view.term != s.term or not heard(view, o, p):
        return None
    return exposure(o, view)[0]


# -- the rules ---------------------------------------------------------------------------------------


def _track(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> FollowerState:
    """The newest term and its primary, since when the cascade upstream answers, and the end of a stall."""
    s = replace(s, watching_since=o.now if o.gap >= p.fresh_s else s.watching_since)
    term = newest_term(s, o)
    if term > s.term:
        s = replace(s, term=term, primary=None, primary_timeline=0)  # the old primary serves no more
    if (primary := serving_primary(s.term, o, p)) is not None:
        s = replace(s, primary=primary, primary_timeline=o.pair[primary].timeline)
    up = _upstream(s, o, p)
    ok = up is not None and answers(up, o, p)
    return replace(s, upstream_ok_since=(o.now if s.upstream_ok_since is None else s.upstream_ok_since) if ok else None)


def _upstream(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> str | None:
    """The configured cascade upstream as a node name, if it serves now; None for upstream = "primary"."""
    if p.upstream == PRIMARY:
        return None
    if p.upstream == STANDBY:
        return hot_standby(s.term, serving_primary(s.term, o, p), o, p)
    return p.upstream


def _wanted(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> tuple[str | None, FollowerReason]:
    """Where this follower should stream from now, and why: only a node serving in the newest term."""
    primary = serving_primary(s.term, o, p)
    if primary is None:
        return None, FollowerReason.NO_PRIMARY
    if p.upstream == PRIMARY:
        return primary, FollowerReason.UPSTREAM
    up = _upstream(s, o, p)
    if up is None or s.upstream_ok_since is None:
        return primary, FollowerReason.UPSTREAM_GONE
    # On it already, or never pointed: take it while it answers. Back from a fallback: after a whole grace period.
    if s.target in (None, up):
        return up, FollowerReason.UPSTREAM
    if o.now - s.upstream_ok_since >= p.upstream_grace_s:
        return up, FollowerReason.UPSTREAM_BACK
    return primary, FollowerReason.UPSTREAM_GONE


def _lineage(primary: PairView, pg: FollowerPg, name: str) -> tuple[FollowerReason, str] | None:
    """Can this follower's WAL continue on the primary's timeline? None if so, else why not."""
    if pg.timeline == primary.timeline or pg.received_lsn is None:
        return None
    if pg.timeline > primary.timeline:
        return FollowerReason.AHEAD_OF_PRIMARY, f"on timeline {pg.timeline}, the primary on {primary.timeline}"
    fork = fork_of(pg.timeline, primary.history)
    if fork is None:
        return FollowerReason.NOT_IN_HISTORY, f"timeline {pg.timeline} is not in {name}'s history"
    # What was replayed counts, as for PostgreSQL itself: WAL received past the fork but never applied (the head
    # of a record the old primary never finished: its receive position may stop mid-record, on a page boundary)
    # is left behind when the server switches timeline; a complete record is applied before the switch, and
    # the next step sees it here.
    applied = pg.replay_lsn if pg.replay_lsn is not None else pg.received_lsn
    if applied > fork:
        return FollowerReason.PAST_FORK, (f"replayed up to {applied} on timeline {pg.timeline} (received up to "
                                          f"{pg.received_lsn}), which {name}'s timeline {primary.timeline} left at "
                                          f"{fork}")
    return None


Rules = tuple[FollowerState, list[FollowerAction], FollowerReason]


def _stream_rules(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> Rules:
    """Rules 2-4: rejoin if past the fork, else point at the wanted upstream."""
    target, why = _wanted(s, o, p)
    if target is None or s.primary is None:
        return s, [], why
    if (bad := _lineage(o.pair[s.primary], o.pg, s.primary)) is not None:
        reason, detail = bad
        if reason is FollowerReason.AHEAD_OF_PRIMARY or o.now - s.last_rejoin_at < p.rejoin_backoff_s:
            return s, [], reason
        s = replace(s, last_rejoin_at=o.now, target=s.primary, pointed_at=o.now, pointed_term=s.term)
        return s, [FollowerAction(FollowerActionKind.REJOIN, reason, s.primary, detail)], reason
    if o.pg.streaming and o.pg.source == target:
        return replace(s, target=target, pointed_term=s.term), [], FollowerReason.STREAMING
    if s.target == target and s.pointed_term == s.term:
        if o.now - s.pointed_at < p.retry_s:
            return s, [], FollowerReason.WAITING
        why = FollowerReason.RETRY
    elif s.target is not None and s.pointed_term < s.term:
        why = FollowerReason.NEW_PRIMARY
    s = replace(s, target=target, pointed_at=o.now, pointed_term=s.term)
    detail = f"term {s.term}, timeline {s.primary_timeline}, recovery_target_timeline = latest"
    return s, [FollowerAction(FollowerActionKind.POINT_AT, why, target, detail)], why


def _site_rules(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> tuple[FollowerState, list[FollowerAction]]:
    """Rule 5: no pair node heard for site_loss_after_s while listening; alert, then again after a quiet period."""
    silent = site_silence(s, o)
    if silent < p.site_loss_after_s or not p.alerts or o.now - s.last_alert_at < p.realert_after_s:
        return s, []
    detail = f"no node of the hot pair heard for {silent:.1f}s; `standby promote --node` this follower to serve"
    return replace(s, last_alert_at=o.now), [FollowerAction(FollowerActionKind.ALERT, FollowerReason.SITE_LOST,
                                                            detail=detail)]


def site_silence(s: FollowerState, o: FollowerObservation) -> float:
    """Seconds since any pair node was last heard, counted from the end of this follower's last stall."""
    last = max([v.heard_at for v in o.pair.values()], default=-math.inf)
    return o.now - max(last, s.watching_since)


def _report(s: FollowerState, o: FollowerObservation, why: FollowerReason) -> FollowerAction:
    lag, loss = exposure(o, o.pair.get(s.primary) if s.primary is not None else None)
    return FollowerAction(FollowerActionKind.REPORT, why, o.pg.source, lag_bytes=lag, loss_bytes=loss)


def decide_follower(s: FollowerState, o: FollowerObservation, p: FollowerPolicy) -> Step:
    """One step: follow the newest term's primary (or the configured cascade), rejoin past a fork, restart a
    stopped server in recovery, alert on site loss, report. Never a promotion."""
    s = _track(s, o, p)
    if s.promoted or (o.pg.running and not o.pg.in_recovery):
        s = replace(s, promoted=True)
        return s, [_report(s, o, FollowerReason.PROMOTED_BY_OPERATOR)]
    acts: list[FollowerAction] = []
    if o.rejoining:
        # The rejoin stops, rewinds and starts this server itself; the backoff to another counts from its end.
        s, why = replace(s, last_rejoin_at=o.now), FollowerReason.REJOINING
    elif not o.pg.running:
        why = FollowerReason.PG_DOWN
        if o.now - s.last_restart_at >= p.restart_backoff_s:
            s = replace(s, last_restart_at=o.now)
            acts.append(FollowerAction(FollowerActionKind.RESTART, why, detail="in recovery, as a follower"))
    else:
        s, acts, why = _stream_rules(s, o, p)
    s, alert = _site_rules(s, o, p)
    return s, [*acts, *alert, _report(s, o, why)]
