"""The decision core: (state, observation, policy) -> (state, actions). No I/O.

Two roles are placed separately, as the split-network design asks:
- the database role: which node's PostgreSQL is the writable primary;
- the service role: which node holds the service IPs and runs the services.

Why two servers are enough (the safety argument, in the order rules apply):
1. A node only promotes from a running standby that is *eligible*: it holds
   every acknowledged commit (sync: the primary's last word was "you are my
   synchronous standby"; async: the last known lag was within the bound).
   That word must be newer than the standby's own last stall: while it was
   stalled the primary may have stopped waiting for it or run ahead. A primary
   that starts waiting for its standby again says "in sync" only once the
   standby has flushed the position of that moment (the commits it
   acknowledged alone).
2. A standby promotes on its own only when the primary has been silent on
   *every* path for the failover timeout *and* its WAL receiver has heard
   nothing from the primary's server for as long (an agent can die while its
   PostgreSQL still commits) *and* the tie-breaker answers *and* nobody
   answers ARP for a service IP. An isolated primary cannot see the
   tie-breaker and fences itself after the fence timeout, which is shorter.
3. Every promotion takes a term above any it has seen, persisted before
   PostgreSQL is promoted. A primary that hears a newer term fences at once;
   in hot mode, a primary whose own loop stalled past the fence timeout fences
   before it looks at anything else (it may have been frozen while the peer
   took over; in warm mode nobody takes over by itself). These fences, and
   the isolation fence, apply in maintenance too: maintenance only holds back
   automatic promotions, restarts and role moves.
4. Fencing is sticky: a fenced node never becomes primary again by itself,
   with two exceptions. A primary that fenced itself as a precaution (it was
   isolated, or stalled) or to hand the database over (its PostgreSQL died or
   answers nothing, its replication link is down) and then hears its peer, for a whole failover
   timeout, (a) as a standby in no newer term that is not eligible, or (b) as
   down or fenced in an older term, knows nobody took over and nobody will:
   every promotion raises the term before it happens, a standby's eligibility
   changes only on hearing a primary, and a server that is down restarts as
   primary only while its peer's term is no newer than its own (and, with
   warm followers, while each answers and none accepts writes: a DR node is
   promoted by a person, in no term of the pair's). It starts
   again as primary (sync: commits wait for the standby again), rather than
   leave the pair with no primary at all. Of two fenced nodes only the one in
   the newer term can do so; in equal terms both wait for a person.
5. A move between two live nodes is a hand-over: the holder lets go first
   and says so in its heartbeat; the other side takes only after that. A
   fenced node says FENCING while its server still runs and FENCED once it is
   observed down; the peer takes the database over on FENCED only.
6. The service role goes only to a node with a database: the primary, or a
   running standby that a live primary handed it to (its public link or its
   services failed; the services then use the primary's database). A fenced
   node never takes it, and one that still holds it hands it to a primary
   that can serve once its own replication link is up.
7. A warm follower is promoted only by a person (`standby promote`), who
   fences the pair's nodes it reaches; one it could not reach (a cut WAN)
   may still serve. With warm followers configured, a running primary and
   a running hot standby ask them at least once a second whether one accepts writes.
   If one does, the primary fences itself for good (DR_SERVES: rebuilt from
   the DR node on the road back) and says so in every heartbeat from then
   on. That fence is no hand-over: a standby that hears it is no longer
   eligible (rule 1), so neither the fence nor the silence after it makes it
   promote, and only a primary saying "sync" again (after the road back)
   makes it eligible again. The standby's own answer does the same for a
   primary that died before its next question: a standby that sees a DR
   node accept writes is not eligible and promotes nothing, until every
   warm follower answers that none does (a slow answer is no such answer:
   the primary, which may not see the DR node at all, keeps saying "sync").
   And it says so in its heartbeats, with the term its question left in: a
   primary of that term fences itself for good on it as on its own answer
   (finding DR-relay: a primary cut off from the DR site would serve on
   beside it). Only the same term counts: a switchback promotes its primary
   in a new term once the DR node has stopped, so an answer from before
   that says nothing of the DR node now.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from standby.model import Action, ActionKind, DbState, DrSeen, LocalPg, Net, Observation, PeerView, Reason


class PgCrashPolicy(StrEnum):
    FAILOVER = "failover"  # hand over to the standby when it is eligible, else restart
    RESTART = "restart"  # always crash-recover in place


@dataclass(frozen=True)
class Policy:
    """The configuration, as the decisions need it (pure values)."""

    hot: bool  # False: warm mode, never promote automatically
    sync: bool  # durability
    preferred: bool  # this node is the preferred primary (breaks exact ties)
    failover_timeout_s: float
    fence_timeout_s: float
    heartbeat_s: float  # heartbeat interval
    link_timeout_s: float  # one network down this long at the holder moves that role
    degrade_after_s: float  # 0 = never
    max_lag_bytes: int  # async: most lag still eligible
    pg_crash: PgCrashPolicy = PgCrashPolicy.FAILOVER
    # A primary whose server has answered nothing this long is handed over as a crashed one (0 = never).
    pg_unresponsive_s: float = 0.0
    # The same for one whose WAL flush has stood still this long while awaited: a hung disk (0 = never).
    wal_stuck_s: float = 0.0
    services_move_on_failure: bool = True
    unhealthy_after_s: float = 5.0
    restart_backoff_s: float = 5.0
    has_service_ips: bool = True
    # Maintenance (a switchover or a rejoin in progress): no automatic promotion, restart or
    # role move; the safety fences (newer term, stall, isolation) still apply.
    suspended: bool = False
    auto_rejoin: bool = False  # rejoin = "auto"
    rejoin_backoff_s: float = 60.0  # between automatic rejoin attempts
    # Primary: a degraded standby this close behind (bytes of WAL not flushed) is caught up, and commits wait for it again.
    caught_up_bytes: int = 1024 * 1024
    # Warm followers are configured: a DR node may have been promoted while this site was gone (Observation.dr).
    dr_watch: bool = False

    def tiebreaker_window_s(self) -> float:
        """How long a tie-breaker answer counts: a few heartbeats, and well inside the fence timeout."""
        return max(3 * self.heartbeat_s, 0.6 * self.fence_timeout_s)


@dataclass(frozen=True)
class State:
    # Persisted (survive an agent restart):
    term: int = 0
    fenced: bool = False
    was_primary: bool = False  # last seen running as primary
    promoting: bool = False  # decided to promote; finish even after a restart
    degraded: bool = False  # primary: not waiting for the standby (alone or degraded)
    # The peer was last seen as a running standby (or never seen): it could
    # have been promoted while this node was not looking.
    peer_could_promote: bool = True
    # Fenced by this node's own rule while primary (a precaution or a hand-over):
    # may resume if the peer turns out not to have taken over (rule 4's exception).
    # It speaks for that one fence only: every other fence, a promotion and following a
    # primary set it false, so none can inherit it (adversarial read F1).
    resumable: bool = False
    # Fenced because a warm follower accepts writes (a DR promotion): said in every heartbeat, so the
    # peer never takes the database over from this fence; cleared when the node follows again.
    dr_serves: bool = False
    # A warm follower was seen accepting writes, and none has since answered that it follows again (CLEAR):
    # this node is not eligible (rule 7), whatever its primary says. A DR node does not stop accepting writes
    # by itself, and one slow or lost answer must not hand the word back to a primary that cannot see it
    # (finding DR-window, CI run 31).
    dr_writable_seen: bool = False
    # Standby: the term its current WRITABLE answer was asked in, relayed to the primary (rule 7). Not kept:
    # a restarted agent asks again.
    dr_relay_term: int | None = None
    # In memory only, rebuilt after a restart (the service role from the
    # addresses actually present, so a stale claim is never re-asserted):
    services: bool = False  # holds the service role
    # Since when this agent has been watching: its start, or the end of its
    # last stall. Silence before that is not evidence: a frozen agent heard
    # nothing because it was not listening, and its probes did not run.
    watching_since: float = 0.0
    eligible: bool = False
    peer_term: int = 0
    # Primary, sync: commits have been waiting for the peer since it was last
    # seen in sync, so every acknowledged commit is on it (even if it is away now).
    sync_established: bool = False
    last_peer_lag_ok: bool = False  # primary, async: the peer was within the lag bound at the last look
    stream_lost_since: float | None = None
    peer_unsynced_since: float | None = None
    public_bad_since: float | None = None
    private_bad_since: float | None = None
    # Since when at least one of this node's own links has been up: silence heard with
    # every cable out is this node's own, and says nothing about the peer.
    links_up_since: float | None = None
    unhealthy_since: float | None = None
    releasing_services: bool = False
    last_restart_at: float = -math.inf
    primary_this_run: bool = False  # this agent run has seen its server as primary
    last_rejoin_at: float = -math.inf
    fenced_at: float = -math.inf
    # Since fenced: the peer heard as a standby in no newer term that says it cannot promote.
    peer_standby_since: float | None = None
    # Since fenced: the peer heard down or fenced in an older term (it cannot have taken over).
    peer_older_since: float | None = None
    # Primary, sync: the WAL position when commits began to wait for the standby again.
    # Commits acknowledged alone before it are on the standby only once it has flushed
    # that far: until then it is not "in sync" (and is never told it is eligible).
    sync_from_lsn: int | None = None

    def persisted(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in PERSISTED}


# The fields that survive an agent restart: the agent's Store, `standby fence`
# and the simulator all save and load exactly these.
PERSISTED: tuple[str, ...] = ("term", "fenced", "was_primary", "promoting", "degraded", "peer_could_promote",
                              "resumable", "sync_from_lsn", "dr_serves", "dr_writable_seen")


# -- bookkeeping -------------------------------------------------------------


def stall_limit(p: Policy) -> float:
    """The longest this node's heartbeats may stop without the peer possibly declaring it dead.

    The peer acts on failover_timeout of silence; one heartbeat interval is
    kept as margin for the last heartbeat's own delay. A shorter stall (a busy
    machine) cannot have let the peer take over, so it needs no fencing.
    """
    return max(p.fence_timeout_s, p.failover_timeout_s - p.heartbeat_s)


def _since(prev: float | None, condition: bool, now: float) -> float | None:
    """When ``condition`` became (and stayed) true; None while it is false."""
    if not condition:
        return None
    return now if prev is None else prev


def _lasted(since: float | None, now: float, seconds: float) -> bool:
    return since is not None and now - since >= seconds


def silence(s: State, o: Observation) -> float:
    """Seconds since the peer was last heard on any path (or since this agent began watching)."""
    heard = [t for t in o.heard.values() if t is not None]
    return o.now - max([*heard, s.watching_since])


def unheard(s: State, o: Observation) -> float:
    """Seconds since the peer last confirmed hearing this node; 0 while it has never confirmed.

    Loss can be one-sided: this node may still hear the peer while the peer,
    hearing nothing, counts down to taking over. The confirmation is what this
    node's own isolation rules must time, as well as the silence.
    """
    if o.heard_me is None:
        return 0.0
    return o.now - max(o.heard_me, s.watching_since)


def _last_heard(o: Observation) -> float:
    return max([t for t in o.heard.values() if t is not None], default=-math.inf)


def fresh(o: Observation, net: Net, p: Policy) -> bool:
    t = o.heard.get(net)
    return t is not None and o.now - t < p.failover_timeout_s


def peer_fresh(o: Observation, p: Policy) -> PeerView | None:
    """The peer's last word, if heard recently on some path."""
    return o.peer if o.peer is not None and any(fresh(o, n, p) for n in Net) else None


def public_ok(o: Observation) -> bool:
    """Can this node serve clients? Its public link is up and the tie-breaker (on that side) answers."""
    return o.carrier.get(Net.PUBLIC, False) and o.tiebreaker_ok is not False


def _track(s: State, o: Observation, p: Policy) -> State:
    """What this observation says before any rule applies: eligibility, sync, terms, and since when each condition holds."""
    now = o.now
    peer = peer_fresh(o, p)
    stalled = o.gap > stall_limit(p)
    # After a stall the peer's silence and the tie-breaker's staleness are
    # our own doing; the stall rule below covers a peer that may have taken over.
    watching_since = now if stalled else s.watching_since
    dr_writable_seen = _dr_writable_seen(s, o, p)
    eligible, stream_lost = _standby_eligibility(s, o, p, stalled, watching_since, dr_writable_seen)
    established, lag_ok, sync_from = _primary_sync(s, o, p)
    term = s.term
    if o.pg.db is DbState.STANDBY and peer is not None and peer.db is DbState.PRIMARY:
        term = max(term, peer.term)  # a standby lives in its primary's term
    return replace(
        s,
        term=term,
        eligible=eligible,
        dr_writable_seen=dr_writable_seen,
        dr_relay_term=o.dr_term if o.pg.db is DbState.STANDBY and o.dr is DrSeen.WRITABLE else None,
        # A standby, or a server that is down for the moment (it may restart as a
        # standby and be promoted), could become primary while we look away.
        peer_could_promote=(peer.db in (DbState.STANDBY, DbState.DOWN)) if peer is not None else s.peer_could_promote,
        peer_term=max(s.peer_term, o.peer.term if o.peer else 0),
        was_primary=(o.pg.db is DbState.PRIMARY) if o.pg.db in (DbState.PRIMARY, DbState.STANDBY) else s.was_primary,
        sync_established=established,
        sync_from_lsn=sync_from,
        last_peer_lag_ok=lag_ok,
        stream_lost_since=stream_lost,
        # Counted only while commits are meant to wait for the standby: a restore starts it afresh
        # (PostgreSQL shows the standby as "sync" a moment after the names are set; chaos seed 104).
        peer_unsynced_since=_since(s.peer_unsynced_since,
                                   o.pg.db is DbState.PRIMARY and not o.pg.peer_sync and not s.degraded, now),
        public_bad_since=_since(s.public_bad_since, not public_ok(o), now),
        private_bad_since=_since(s.private_bad_since, not o.carrier.get(Net.PRIVATE, False), now),
        links_up_since=_since(s.links_up_since, any(o.carrier.get(n, False) for n in Net), now),
        unhealthy_since=_since(s.unhealthy_since, s.services and o.services_healthy is False, now),
        promoting=s.promoting and o.pg.db is not DbState.PRIMARY,
        primary_this_run=s.primary_this_run or o.pg.db is DbState.PRIMARY,
        # Counted from messages sent after the fence only: the last view from
        # before it says nothing about what the peer did since.
        peer_standby_since=_since(s.peer_standby_since, peer is not None and peer.db is DbState.STANDBY
                                  and not peer.eligible and peer.term <= s.term and _last_heard(o) > s.fenced_at,
                                  now),
        peer_older_since=_since(s.peer_older_since, peer is not None and peer.db in (DbState.DOWN, DbState.FENCED)
                                and not peer.eligible and peer.term < s.term and _last_heard(o) > s.fenced_at, now),
        watching_since=watching_since,
    )


def _dr_writable_seen(s: State, o: Observation, p: Policy) -> bool:
    """State.dr_writable_seen after this observation: set by a warm follower's WRITABLE answer, kept through
    answers that did not come (UNKNOWN) or were not asked (None), cleared only when every warm follower answered
    that none accepts writes (CLEAR: the road back is over) or none is configured any more (nobody would ever
    answer, and a hold kept on disk would stop every failover for good)."""
    if not p.dr_watch or o.dr is DrSeen.CLEAR:
        return False
    return s.dr_writable_seen or o.dr is DrSeen.WRITABLE


def _standby_eligibility(s: State, o: Observation, p: Policy, stalled: bool, watching_since: float,
                         dr_writable_seen: bool) -> tuple[bool, float | None]:
    """Rule 1 on a standby: (eligible, since when its stream has been lost); (False, None) elsewhere."""
    if o.pg.db is not DbState.STANDBY:
        return False, None
    now, peer, eligible = o.now, peer_fresh(o, p), s.eligible
    if stalled:
        # What the primary said before the stall is stale: meanwhile it may have
        # stopped waiting for us (degrade_after) or run past the lag bound.
        eligible = False
    elif s.dr_serves or dr_writable_seen or (peer is not None and peer.dr_serves):
        # A DR node serves (rule 7), seen here (now, or before and not seen to stop since) or by the primary,
        # which fenced itself: its fence is no hand-over, and nothing it said before makes this node the one
        # to serve. Eligible again only once the DR node follows again and a primary says "sync".
        eligible = False
    elif peer is not None and peer.db is DbState.PRIMARY and _last_heard(o) >= watching_since:
        if p.sync:
            eligible = peer.sync_ok
        else:
            eligible = peer.lsn is not None and o.pg.lsn is not None and peer.lsn - o.pg.lsn <= p.max_lag_bytes
    stream_lost = _since(s.stream_lost_since, not o.pg.streaming, now)
    if stream_lost is not None:
        stream_lost = min(stream_lost, now - o.gap)  # nothing says it streamed while we were not looking
    # The primary may stop waiting for us after degrade_after: give up our
    # claim well before that, so a degraded primary's commits are never
    # silently missing from a promoted standby.
    if p.sync and p.degrade_after_s > 0 and _lasted(stream_lost, now, p.degrade_after_s / 2):
        eligible = False
    return eligible, stream_lost


def _primary_sync(s: State, o: Observation, p: Policy) -> tuple[bool, bool, int | None]:
    """Rule 1 on a primary: (sync established, standby within the lag bound, position it must flush first)."""
    sync_from = s.sync_from_lsn
    if o.pg.db is DbState.PRIMARY:
        flushed = sync_from is None or (o.pg.peer_flush_lsn is not None and o.pg.peer_flush_lsn >= sync_from)
        established = p.sync and not s.degraded and (s.sync_established or (o.pg.peer_sync and flushed))
        lag_ok = (o.pg.lsn - o.pg.peer_flush_lsn <= p.max_lag_bytes
                  if o.pg.peer_flush_lsn is not None and o.pg.lsn is not None else s.last_peer_lag_ok)
        return established, lag_ok, None if established else sync_from
    if o.pg.db is DbState.DOWN:  # what we knew when the server died still holds
        return s.sync_established, s.last_peer_lag_ok, sync_from
    return False, False, None


# -- the database role -------------------------------------------------------


def _fence(s: State, reason: Reason, detail: str, release_services: bool,
           resumable: bool = False) -> tuple[State, list[Action]]:
    acts = [Action(ActionKind.FENCE, reason, detail)]
    if release_services and s.services:
        acts.append(Action(ActionKind.RELEASE_SERVICES, reason, "a fenced node must not answer on the service IPs"))
    return replace(s, fenced=True, was_primary=False, promoting=False, resumable=resumable,
                   services=s.services and not release_services, releasing_services=False,
                   dr_serves=s.dr_serves or reason is Reason.DR_SERVES), acts


def _resume(s: State, o: Observation, reason: Reason, detail: str) -> tuple[State, list[Action]]:
    return replace(s, fenced=False, resumable=False, was_primary=True, degraded=False,
                   sync_established=False, last_restart_at=o.now), [Action(ActionKind.RESTART_PG, reason, detail)]


def _promote(s: State, reason: Reason, detail: str) -> tuple[State, list[Action]]:
    # A promoted node runs alone until the old primary rejoins: waiting for a
    # standby that does not exist would stop every commit.
    term = max(s.term, s.peer_term) + 1
    return replace(s, term=term, promoting=True, degraded=True, eligible=False, resumable=False), [
        Action(ActionKind.PROMOTE, reason, f"{detail}; new term {term}")
    ]


def _safety_fence(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]] | None:
    """The fences that apply always, in maintenance too: a stall, a newer term, isolation."""
    if s.fenced:
        return None
    # Warm mode: nobody takes over automatically, so a stall cannot have let anyone in
    # (a manual promotion fences the old primary through the operator's path).
    if p.hot and o.gap > stall_limit(p) and s.peer_could_promote and (o.pg.db is DbState.PRIMARY or s.was_primary):
        # Fence first, ask later: while we were stalled the peer may have taken over.
        return _fence(s, Reason.RESUMED_AFTER_FREEZE,
                      f"this agent stalled {o.gap:.2f}s (> {stall_limit(p):.2f}s): the peer may have taken over", True,
                      resumable=True)
    if o.pg.db is DbState.PRIMARY:
        if o.dr is DrSeen.WRITABLE:
            # Rule 7: a person promoted a warm follower while this site could not be reached (a cut WAN), and
            # both accept writes since it can. The DR node was promoted on purpose, this node by nobody since.
            return _fence(s, Reason.DR_SERVES, "a warm follower accepts writes (a DR promotion): this primary "
                          "stops, and stays down until rebuilt from it (`standby rejoin --from`)", True)
        peer = peer_fresh(o, p)
        if _dr_relayed(s, peer, p):  # this node may not reach the DR site at all
            return _fence(s, Reason.DR_SERVES, "the standby sees a warm follower accept writes (a DR promotion; "
                          f"asked in this term, {s.term}): this primary stops, and stays down until rebuilt from "
                          "it (`standby rejoin --from`)", True)
        quiet = max(silence(s, o), unheard(s, o))
        if peer is not None and peer.db is DbState.PRIMARY and (peer.term, peer.preferred) > (s.term, p.preferred):
            return _fence(s, Reason.SUPERSEDED, f"peer is primary in term {peer.term}, ours is {s.term}",
                          release_services=peer.services)
        if quiet >= p.fence_timeout_s and o.tiebreaker_ok is False:
            return _fence(s, Reason.ISOLATED, f"no peer for {quiet:.2f}s and no tie-breaker", True, resumable=True)
    return None


def _dr_relayed(s: State, peer: PeerView | None, p: Policy) -> bool:
    """Rule 7, relayed (finding DR-relay): this node's running standby read a warm follower accepting writes, to
    a question asked in this node's term, so not one from before a switchback promoted this node in a newer one."""
    return p.dr_watch and peer is not None and peer.db is DbState.STANDBY and peer.dr_writable_term == s.term


def _upstream_silent(o: Observation, p: Policy) -> bool:
    """The standby's WAL receiver has heard nothing from the primary's server for the failover timeout.

    The agent's silence alone is not enough: a primary whose agent died keeps
    committing until its unclean-exit fence has stopped the server.
    """
    return o.pg.upstream_age_s is None or o.pg.upstream_age_s >= p.failover_timeout_s


def _db_rules(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    """The database role's rules in order: the safety fences, then the rules of this node's situation."""
    if (fenced := _safety_fence(s, o, p)) is not None:
        return fenced
    if s.fenced:
        return _fenced_rules(s, o, p)
    if o.pg.db is DbState.PRIMARY:
        return _primary_rules(s, o, p)
    # A server that may come back writable: it was primary, or its promotion was decided
    # (a host that crashed right after promoting cannot know whether the promotion finished).
    if o.pg.db is DbState.DOWN and (s.was_primary or s.promoting):
        return _crashed_primary_rules(s, o, p)
    if o.pg.db is DbState.DOWN:
        return _stopped_standby_rules(s, o, p)
    return _standby_rules(s, o, p)


def dr_in_question(s: State, db: DbState, hot: bool = True) -> bool:
    """Whether the next decisions need Observation.dr: a running primary, and a running hot standby, which
    may promote at any moment (rule 7, _safety_fence); a rebooted primary's restart (_crashed_primary_rules);
    or a precautionary fence's resumption while the peer lets it resume (_fenced_rules). A fence may last
    days, waiting for a rejoin, and a warm standby never promotes by itself: the shell asks the warm
    followers only while this holds."""
    rebooted = (s.was_primary or s.promoting) and not (s.fenced or s.primary_this_run)
    may_resume = s.resumable and (s.peer_standby_since is not None or s.peer_older_since is not None)
    serving = db is DbState.PRIMARY and not s.fenced  # rule 7: a running primary, at every moment
    may_promote = hot and db is DbState.STANDBY and not s.fenced  # finding DR-window
    return serving or may_promote or (db is DbState.DOWN and (rebooted or may_resume))


def _fenced_rules(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    """A fenced node stays down (rule 4): it rejoins when allowed, or resumes by one of rule 4's exceptions."""
    peer = peer_fresh(o, p)
    if o.pg.db is not DbState.DOWN:
        return s, [Action(ActionKind.FENCE, Reason.FENCE_ENFORCED, "fenced node found PostgreSQL running; stopping it")]
    if (p.auto_rejoin and peer is not None and peer.db is DbState.PRIMARY and peer.term >= s.term
            and o.now - s.last_rejoin_at >= p.rejoin_backoff_s):
        return replace(s, last_rejoin_at=o.now), [
            Action(ActionKind.REJOIN, Reason.REJOIN_AUTO, f"the new primary (term {peer.term}) is healthy")]
    # A person promoted a warm follower meanwhile, seen here or by the standby: nothing to resume.
    if s.resumable and (o.dr is DrSeen.WRITABLE or _dr_relayed(s, peer, p)):
        return _fence(s, Reason.DR_SERVES, "a warm follower accepts writes (a DR promotion): this node stays "
                      "down until rebuilt from it (`standby rejoin --from`)", True)
    if p.dr_watch and o.dr is not DrSeen.CLEAR:
        return s, []  # a warm follower not heard may be serving: resume only once each answers (finding DR-restart)
    if p.hot and s.resumable and _lasted(s.peer_standby_since, o.now, p.failover_timeout_s):
        # Rule 4's exception (a). Not degraded: in sync, nothing is acknowledged
        # until the standby has it, whatever happens next.
        return _resume(s, o, Reason.RESUMED_PRIMARY,
                       f"fenced here, but the peer stayed a standby in term {s.term} and cannot promote: serving again")
    if p.hot and s.resumable and _lasted(s.peer_older_since, o.now, p.failover_timeout_s):
        # Rule 4's exception (b) (chaos seed 93: both nodes fenced, nobody serving).
        return _resume(s, o, Reason.RESUMED_PEER_OLDER,
                       f"fenced here, but the peer is down or fenced in an older term than {s.term}: serving again")
    return s, []


def _primary_rules(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    """A running primary: hands the database over when its server answers nothing or its replication link is
    down (rule 5), else keeps sync."""
    peer = peer_fresh(o, p)
    # A server that serves nobody, handed over as a crashed one to a standby that has everything: one that
    # answers nothing (stopped by a signal), whose last observation would stand for ever, or one whose WAL
    # disk completes no write (a hung disk: commits wait, the agent's question, read from memory, is
    # answered). The fence's stop escalates to SIGKILL, and the standby takes over on FENCED only: once this
    # server is seen down (a process waiting on the disk holds the SIGKILL until its write returns, and then
    # ends before it can acknowledge anything).
    if (p.hot and p.pg_crash is PgCrashPolicy.FAILOVER and (not_serving := _not_serving(o, p)) is not None
            and peer is not None and peer.db is DbState.STANDBY and _standby_has_everything(s, p)):
        reason, what = not_serving
        return _fence(s, reason, f"{what}; the standby, which has every acknowledged commit (sync) or is within "
                      "the lag bound (async), takes over", False, resumable=True)
    if (p.hot and _lasted(s.private_bad_since, o.now, p.link_timeout_s) and fresh(o, Net.PUBLIC, p)
            and peer is not None and peer.db is DbState.STANDBY and peer.carrier.get(Net.PRIVATE, False)
            and _standby_has_everything(s, p)):
        return _fence(s, Reason.PRIVATE_LOST_HERE, "replication link down here; the database moves to the peer", False,
                      resumable=True)
    return _sync_rules(s, o, p)


def _sync_rules(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    """On a primary: wait for the standby (sync) unless degraded or alone."""
    if not p.sync:
        return s, []
    if not s.degraded and p.degrade_after_s > 0 and _lasted(s.peer_unsynced_since, o.now, p.degrade_after_s):
        return replace(s, degraded=True, sync_established=False), [Action(ActionKind.SET_SYNC, Reason.DEGRADE,
                                                  f"standby away for {p.degrade_after_s:g}s: commits stop waiting for it")]
    caught_up = (o.pg.peer_flush_lsn is not None and o.pg.lsn is not None
                 and o.pg.lsn - o.pg.peer_flush_lsn <= p.caught_up_bytes)
    if s.degraded and caught_up:
        # Commits acknowledged alone up to here: "in sync" only once the standby has flushed them.
        return replace(s, degraded=False, sync_established=False, sync_from_lsn=o.pg.lsn), [
            Action(ActionKind.SET_SYNC, Reason.RESTORE_SYNC, "standby streaming and caught up: commits wait for it again",
                   sync_on=True)]
    return s, []


def _crashed_primary_rules(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    """A primary whose server is down: hand over to a standby that has everything, else restart in place if safe."""
    peer = peer_fresh(o, p)
    standby_ready = peer is not None and peer.db is DbState.STANDBY and _standby_has_everything(s, p)
    if p.hot and p.pg_crash is PgCrashPolicy.FAILOVER and standby_ready:
        return _fence(s, Reason.PG_CRASHED_FAILOVER, "PostgreSQL died here; the standby, which has every "
                      "acknowledged commit (sync) or is within the lag bound (async), takes over", False,
                      resumable=True)
    if peer is not None and peer.db is DbState.PRIMARY and peer.term > s.term:  # the peer took over
        return _fence(s, Reason.SUPERSEDED, f"peer is primary in term {peer.term}", True)
    if o.dr is DrSeen.WRITABLE or _dr_relayed(s, peer, p):  # a person promoted a warm follower meanwhile
        return _fence(s, Reason.DR_SERVES, "a warm follower accepts writes (a DR promotion): this old primary "
                      "stays down until rebuilt from it (`standby rejoin --from`)", True)
    # Restart as primary only if nobody can have taken over meanwhile: this
    # agent watched the server die, or the peer is heard and still a standby
    # and, with warm followers, each answered and none accepts writes (finding
    # DR-restart: a site back from a power loss before its WAN cannot see the DR node).
    # A rebooted old primary whose peer is silent waits for a person.
    # A standby in a newer term is being promoted (the term is raised first); a peer
    # still fencing may still be writing.
    safe = s.primary_this_run or (peer is not None and peer.db in (DbState.STANDBY, DbState.FENCED)
                                  and peer.term <= s.term and (not p.dr_watch or o.dr is DrSeen.CLEAR))
    if safe and o.now - s.last_restart_at >= p.restart_backoff_s:
        return replace(s, last_restart_at=o.now), [
            Action(ActionKind.RESTART_PG, Reason.PG_CRASHED_RESTART, "PostgreSQL is down; crash recovery in place")]
    return s, []


def _stopped_standby_rules(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    """A standby whose server stopped: bring it back as a standby."""
    if o.now - s.last_restart_at >= p.restart_backoff_s:
        return replace(s, last_restart_at=o.now), [
            Action(ActionKind.RESTART_PG, Reason.PG_CRASHED_RESTART, "standby PostgreSQL is down; restarting it")]
    return s, []


def _standby_rules(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    """A running standby: finishes a decided promotion; in hot mode promotes on a hand-over or a dead primary (rule 2)."""
    if o.dr is DrSeen.WRITABLE:
        # Rule 7 (finding DR-window): the primary may have died before reading the same answer, and its
        # silence would make this node a second writer beside the DR node. Not fenced: a pair node rebuilt
        # from the DR node on the road back is its standby, and stays one until the switchback.
        return s, []
    if s.promoting:
        return s, [Action(ActionKind.PROMOTE, Reason.PEER_DEAD, f"finishing the promotion to term {s.term}")]
    if not p.hot:
        return s, []  # warm: a person decides
    peer = peer_fresh(o, p)
    # FENCED only: FENCING is said while the old primary's server may still be writing.
    if peer is not None and peer.db is DbState.FENCED and s.eligible:
        return _promote(s, Reason.PEER_RELEASED_DB, "the primary fenced itself and handed the database over")
    quiet = max(silence(s, o), unheard(s, o))
    if (quiet >= p.failover_timeout_s and _lasted(s.links_up_since, o.now, p.failover_timeout_s)
            and o.tiebreaker_ok is True and s.eligible and _upstream_silent(o, p)
            and (not p.has_service_ips or o.service_ip_elsewhere is False)):
        return _promote(s, Reason.PEER_DEAD, f"primary silent on every path for {quiet:.2f}s, tie-breaker answers")
    return s, []


def _not_serving(o: Observation, p: Policy) -> tuple[Reason, str] | None:
    """A running server that has served nobody for its bound (0: never judged), and how."""
    if 0 < p.pg_unresponsive_s <= o.pg_silent_s:
        return Reason.PG_UNRESPONSIVE_FAILOVER, f"PostgreSQL has answered nothing for {o.pg_silent_s:.0f} s"
    if 0 < p.wal_stuck_s <= o.wal_stuck_s:
        return Reason.WAL_FLUSH_STUCK_FAILOVER, (f"PostgreSQL has flushed no WAL for {o.wal_stuck_s:.0f} s while "
                                                 "it waits for it (a hung disk)")
    return None


def _standby_has_everything(s: State, p: Policy) -> bool:
    """Would handing the database over now lose nothing acknowledged (sync) or stay within the bound (async)?"""
    return (s.sync_established and not s.degraded) if p.sync else s.last_peer_lag_ok


# -- the service role --------------------------------------------------------


def _service_safety(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]] | None:
    """The service-role releases that apply always, in maintenance too: isolation, two holders."""
    if not s.services:
        return None
    peer = peer_fresh(o, p)
    if max(silence(s, o), unheard(s, o)) >= p.fence_timeout_s and o.tiebreaker_ok is False:
        return _release(s, Reason.ISOLATED, "no peer and no tie-breaker: letting go of the service IPs")
    if peer is not None and peer.services and (peer.term, peer.preferred) > (s.term, p.preferred):
        return _release(s, Reason.BOTH_SERVE, "both nodes held the service role; the peer's claim is newer")
    return None


def _service_rules(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    peer = peer_fresh(o, p)
    # A promotion held back beside a writable DR node (rule 7) brings no service IPs either.
    primary_here = (o.pg.db is DbState.PRIMARY and not s.fenced) or (s.promoting and o.dr is not DrSeen.WRITABLE)
    if (released := _service_safety(s, o, p)) is not None:
        return released
    if s.services:
        peer_can_serve = (peer is not None and fresh(o, Net.PRIVATE, p) and peer.carrier.get(Net.PUBLIC, False)
                          and peer.tiebreaker_ok is not False and peer.db not in (DbState.FENCED, DbState.FENCING))
        if (s.fenced and not s.promoting and peer_can_serve and peer is not None and peer.db is DbState.PRIMARY
                and peer.term >= s.term and o.carrier.get(Net.PRIVATE, False)):
            # Held here without a database (a fence that kept them, an agent restart): with
            # the replication link up the services belong with the primary. Without it they
            # stay: the database moved because of that link, the clients did not.
            return _release(s, Reason.SERVICES_TO_PRIMARY, f"fenced here; the primary (term {peer.term}) serves")
        if p.hot and _lasted(s.public_bad_since, o.now, p.link_timeout_s) and peer_can_serve:
            return _release(s, Reason.PUBLIC_LOST_HERE, "service network down here; the peer takes the service IPs")
        if (p.hot and p.services_move_on_failure and _lasted(s.unhealthy_since, o.now, p.unhealthy_after_s)
                and peer_can_serve):
            return _release(s, Reason.SERVICES_UNHEALTHY, f"services unhealthy for {p.unhealthy_after_s:g}s")
        if s.releasing_services and peer is not None and peer.services:
            return replace(s, releasing_services=False), []
        return s, []

    if not public_ok(o) or o.service_ip_elsewhere is True:
        return s, []  # cannot serve, or someone still answers for the addresses
    if s.fenced or not (primary_here or o.pg.db is DbState.STANDBY):
        return s, []  # no database here: a stale "I let go" must not bring the addresses back
    # A standby takes the role only as a live primary's hand-over (its public link or
    # its services failed): the services then use that primary's database.
    if (peer is not None and peer.releasing_services and not peer.services
            and (primary_here or peer.db is DbState.PRIMARY)):
        return _take(s, Reason.PEER_RELEASED_SERVICES, "the peer let go of the service role")
    if peer is not None and peer.db is DbState.FENCED and not peer.services and primary_here:
        return _take(s, Reason.PEER_RELEASED_SERVICES, "the peer is fenced and serves nothing")
    if (p.hot and primary_here and silence(s, o) >= p.failover_timeout_s
            and _lasted(s.links_up_since, o.now, p.failover_timeout_s) and o.tiebreaker_ok is True
            and (not p.has_service_ips or o.service_ip_elsewhere is False)):
        return _take(s, Reason.PEER_DEAD, "peer silent on every path; taking the service IPs")
    if primary_here and peer is not None and not peer.services and not peer.releasing_services:
        return _take(s, Reason.NOBODY_SERVES, "nobody holds the service role")
    return s, []


def _release(s: State, reason: Reason, detail: str) -> tuple[State, list[Action]]:
    return replace(s, services=False, releasing_services=True), [Action(ActionKind.RELEASE_SERVICES, reason, detail)]


def _take(s: State, reason: Reason, detail: str) -> tuple[State, list[Action]]:
    return replace(s, services=True, releasing_services=False), [Action(ActionKind.TAKE_SERVICES, reason, detail)]


# -- the whole step ----------------------------------------------------------


def decide(s: State, o: Observation, p: Policy) -> tuple[State, list[Action]]:
    """One step. Database rules first: a fence decided now also frees the service role."""
    s = _track(s, o, p)
    fenced_before = s.fenced
    if p.suspended:  # maintenance: only the fences that keep two writers apart
        s, db_actions = _safety_fence(s, o, p) or (s, [])
    else:
        s, db_actions = _db_rules(s, o, p)
    if s.fenced and not fenced_before:
        s = replace(s, fenced_at=o.now, peer_standby_since=None, peer_older_since=None)
    if any(a.kind is ActionKind.FENCE and a.reason in (Reason.ISOLATED, Reason.RESUMED_AFTER_FREEZE)
           for a in db_actions):
        return s, db_actions
    if (p.hot and o.gap > stall_limit(p) and s.services
            and (o.peer is None or o.peer.db not in (DbState.FENCED, DbState.FENCING))):
        # A live peer may have taken the service IPs meanwhile; a fenced one
        # takes them only once told they are free.
        return _release(s, Reason.RESUMED_AFTER_FREEZE, f"this agent stalled {o.gap:.2f}s; letting go of the service IPs")
    if p.suspended:
        s, svc_actions = _service_safety(s, o, p) or (s, [])
    else:
        s, svc_actions = _service_rules(s, o, p)
    return s, db_actions + svc_actions


def fence_needed(s: State, db: DbState) -> bool:
    """After this node's agent died uncleanly: must its PostgreSQL be stopped?

    Yes if it is (or was) primary and the peer could have been promoted while
    nobody decided for this node; otherwise keeping it is safe, and a restarted
    agent picks up where the last one stopped.
    """
    return s.peer_could_promote and (db is DbState.PRIMARY or s.was_primary) and not s.fenced


def advertise(s: State, pg: LocalPg, carrier: dict[Net, bool], tiebreaker_ok: bool | None, preferred: bool,
              sync: bool, reporting: bool = False, reporting_epoch: int = 0, reporting_ack: int = 0,
              hot: bool = True, db_in_hand: bool = False, home_adopted: bool = False) -> PeerView:
    """What this node tells its peer in every heartbeat (the reporting fields: see standby.reporting).
    ``db_in_hand``: a start or a stop of the server is queued or running, so a reading of "down" may be
    older than a server coming up (a fence decided while a restart runs: adversarial read F3)."""
    # FENCED only once the server is observed down with nothing in hand that starts or stops it: the
    # peer promotes on it at once.
    down = pg.db is DbState.DOWN and not db_in_hand
    db = (DbState.FENCED if down else DbState.FENCING) if s.fenced else pg.db
    return PeerView(
        term=s.term,
        db=db,
        services=s.services,
        lsn=pg.lsn,
        sync_ok=db is DbState.PRIMARY and (s.sync_established if sync else True) and not s.degraded,
        carrier=dict(carrier),
        tiebreaker_ok=tiebreaker_ok,
        releasing_services=s.releasing_services,
        preferred=preferred,
        reporting=reporting,
        reporting_epoch=reporting_epoch,
        reporting_ack=reporting_ack,
        eligible=hot and db is DbState.STANDBY and s.eligible,  # a warm standby never promotes by itself
        dr_serves=s.dr_serves,
        dr_writable_term=s.dr_relay_term if db is DbState.STANDBY else None,
        home_adopted=home_adopted,
    )
