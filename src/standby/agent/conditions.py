"""Which alert conditions hold after a decision step: a pure function, so its rules are tested alone.

The dispatcher (standby.alerts) turns these into de-duplicated, rate-limited
messages; the agent only reports what is true now and which events happened.
It owns the rules for when a condition holds; it may not send anything (agent/alerter.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

from standby.alerts import AlertKind
from standby.decide import Policy, State, peer_fresh, silence
from standby.model import Action, ActionKind, DbState, Observation, Reason

REPLICATION_GRACE_S = 5.0  # a standby reconnecting after a blip is not an alert
MAINTENANCE_GRACE_S = 120.0  # a switchover's or a rejoin's own maintenance is over well before


@dataclass(frozen=True)
class Conditions:
    raised: frozenset[AlertKind]  # conditions true now (raise if new, keep if not)
    events: tuple[AlertKind, ...]  # one-off events of this step


def conditions(s: State, o: Observation, p: Policy, actions: list[Action], lag_threshold: int,
               manual_rejoin: bool, maintenance_for_s: float | None = None) -> Conditions:
    """``maintenance_for_s``: how long this node has been in maintenance (None: it is not)."""
    raised: set[AlertKind] = set()
    peer = peer_fresh(o, p)
    if not p.hot and o.pg.db is DbState.STANDBY and silence(s, o) >= p.failover_timeout_s:
        raised.add(AlertKind.PRIMARY_UNREACHABLE)
    if o.pg.db is DbState.STANDBY and s.stream_lost_since is not None and o.now - s.stream_lost_since >= REPLICATION_GRACE_S:
        raised.add(AlertKind.REPLICATION_BROKEN)
    if (o.pg.db is DbState.STANDBY and peer is not None and peer.db is DbState.PRIMARY and peer.lsn is not None
            and o.pg.lsn is not None and peer.lsn - o.pg.lsn > lag_threshold):
        raised.add(AlertKind.LAG_HIGH)
    if s.fenced:
        raised.add(AlertKind.FENCED)
        if manual_rejoin and peer is not None and peer.db is DbState.PRIMARY:
            raised.add(AlertKind.REJOIN_WAITING)
    if o.pg.db is DbState.PRIMARY and not s.fenced and peer is not None and peer.db is DbState.PRIMARY:
        raised.add(AlertKind.DUAL_PRIMARY_SUSPECTED)
    if p.suspended and maintenance_for_s is not None and maintenance_for_s >= MAINTENANCE_GRACE_S:
        raised.add(AlertKind.MAINTENANCE)  # left on by mistake, it quietly turns a hot pair into a warm one
    events = tuple(AlertKind.FAILOVER for a in actions
                   if a.kind is ActionKind.PROMOTE and a.reason in (Reason.PEER_DEAD, Reason.PEER_RELEASED_DB))
    return Conditions(frozenset(raised), events)
