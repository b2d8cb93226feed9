"""Promoting a warm follower by hand when the pair's site is gone: the decision. No I/O.

`standby promote --node <follower>` observes, asks this function, acts (fences, promotes), observes
again and asks again; it never promotes on a verdict other than PROMOTE.

The safety argument (two primaries must never accept writes):
1. Only a person's command reaches this; the follower's own core has no promotion (standby.follow).
2. PROMOTE needs every pair node either fenced (its agent says so: it starts nothing by itself until
   rejoined) or answering nowhere on either of its links. A hot standby that answers is not enough:
   its agent promotes it by itself once it judges the primary gone, which a site losing its primary
   is about to make it do. So any pair node that answers and is not fenced (a primary, a standby, a
   server down beside a live agent) refuses, or with ``force`` is fenced first, and the pair is
   looked at again without ``force``. A node whose server answers while its agent does not cannot be
   fenced from here: refused, a person stops it.
3. "Answers nowhere" is not "stopped": a site cut off from the follower may still serve clients that
   reach it. The verdict lists those nodes so the command says so before the person confirms; that is
   the price of a manual DR promotion, and why it is manual.
4. Only a warm follower whose server is running in recovery is promoted: a reporting follower never is
   (it may lag by design), and a server already out of recovery or down is not a standby to promote.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from standby.confbase import FollowerRole


class PairSeen(enum.StrEnum):
    """A pair node as the follower's host sees it."""

    PRIMARY = "primary"  # its server accepts writes, or its agent says it serves
    LIVE = "live"  # its agent answers, not fenced: it may promote or restart its server by itself
    LIVE_NO_AGENT = "live_no_agent"  # its server answers, its agent does not: nothing here can fence it
    FENCED = "fenced"  # its agent answers and is fenced: it starts nothing until rejoined
    UNREACHABLE = "unreachable"  # neither its server nor its agent answers on any link


@dataclass(frozen=True)
class FollowerSeen:
    """The follower itself, from its own agent's view."""

    running: bool
    in_recovery: bool


class Verdict(enum.StrEnum):
    REFUSE = "refuse"
    FENCE_FIRST = "fence_first"
    PROMOTE = "promote"


class Reason(enum.StrEnum):
    REPORTING_FOLLOWER = "reporting_follower"  # a reporting follower is never promoted
    AGENT_SILENT = "agent_silent"  # no view of the follower's own server: nothing to judge by
    SERVER_DOWN = "server_down"  # its server does not run: start it (the agent does) first
    NOT_IN_RECOVERY = "not_in_recovery"  # already a primary: nothing to promote
    PAIR_ALIVE = "pair_alive"  # a pair node answers, not fenced, and force was not given
    UNFENCEABLE = "unfenceable"  # force, but a pair node's server answers without its agent
    FENCE_PAIR = "fence_pair"  # force: fence the pair nodes that answer, then look again
    SITE_GONE = "site_gone"  # no pair node answers anywhere
    PAIR_FENCED = "pair_fenced"  # every pair node that answers is fenced


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: Reason
    to_fence: tuple[str, ...] = ()  # FENCE_FIRST only: the pair nodes to fence before looking again
    in_the_way: tuple[str, ...] = ()  # REFUSE only: the pair nodes that block the promotion (never fenced)
    unreachable: tuple[str, ...] = ()  # PROMOTE: nodes that may still serve clients that reach them


def decide(role: FollowerRole, me: FollowerSeen | None, pair: Mapping[str, PairSeen], force: bool) -> Decision:
    if role is FollowerRole.REPORTING:
        return Decision(Verdict.REFUSE, Reason.REPORTING_FOLLOWER)
    if me is None:
        return Decision(Verdict.REFUSE, Reason.AGENT_SILENT)
    if not me.running:
        return Decision(Verdict.REFUSE, Reason.SERVER_DOWN)
    if not me.in_recovery:
        return Decision(Verdict.REFUSE, Reason.NOT_IN_RECOVERY)
    alive = tuple(sorted(n for n, seen in pair.items() if seen in _MAY_WRITE))
    if alive:
        if not force:
            return Decision(Verdict.REFUSE, Reason.PAIR_ALIVE, in_the_way=alive)
        agentless = tuple(sorted(n for n, seen in pair.items() if seen is PairSeen.LIVE_NO_AGENT))
        if agentless:
            return Decision(Verdict.REFUSE, Reason.UNFENCEABLE, in_the_way=agentless)
        return Decision(Verdict.FENCE_FIRST, Reason.FENCE_PAIR, to_fence=alive)
    silent = tuple(sorted(n for n, seen in pair.items() if seen is PairSeen.UNREACHABLE))
    reason = Reason.SITE_GONE if len(silent) == len(pair) else Reason.PAIR_FENCED
    return Decision(Verdict.PROMOTE, reason, unreachable=silent)


# Pair nodes that write now or may start to by themselves.
_MAY_WRITE = frozenset({PairSeen.PRIMARY, PairSeen.LIVE, PairSeen.LIVE_NO_AGENT})
