"""This node as the status page shows it, read from the agent (in the API's thread: copies, never locks)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from standby.config import Durability, Mode
from standby.model import DbState
from standby.web.pair import NodeFacts, failover_risk, lag_bytes

if TYPE_CHECKING:
    from standby.agent.node import Agent


def peer_fresh(a: Agent, now: float | None = None) -> bool:
    """The peer's last heartbeat is recent enough to describe it (within a failover timeout)."""
    now = time.monotonic() if now is None else now
    heard = [t for t in dict(a.heard).values() if t is not None]
    return bool(heard) and now - max(heard) <= a.cfg.timings.failover_timeout_ms / 1000


def node_facts(a: Agent) -> NodeFacts:
    s, pg, peer = a.state, a.pg, a.peer_view
    db = DbState.FENCED if s.fenced else pg.db
    peer_db = peer.db if peer is not None and peer_fresh(a) else None
    peer_sync = pg.peer_sync if db is DbState.PRIMARY else bool(peer is not None and peer.sync_ok)
    return NodeFacts(db=db, sync=a.cfg.replication.durability is Durability.SYNC, hot=a.cfg.mode is Mode.HOT,
                     degraded=s.degraded, eligible=s.eligible, peer_sync=peer_sync, peer_db=peer_db,
                     lag_bytes=lag_bytes(db, pg.lsn, pg.peer_flush_lsn, peer_db, None if peer is None else peer.lsn))


def positions(a: Agent) -> tuple[int | None, int | None]:
    """(the primary's WAL position, the standby's received one) as this node knows them now."""
    pg, peer = a.pg, a.peer_view
    peer_lsn = peer.lsn if peer is not None and peer_fresh(a) else None
    peer_db = peer.db if peer is not None else None
    if pg.db is DbState.PRIMARY and not a.state.fenced:
        return pg.lsn, pg.peer_flush_lsn if pg.peer_flush_lsn is not None else (
            peer_lsn if peer_db is DbState.STANDBY else None)
    if pg.db is DbState.STANDBY and peer_db is DbState.PRIMARY:
        return peer_lsn, pg.lsn
    return None, None


def _lsn(x: int | None) -> str | None:
    return None if x is None else f"{x >> 32:X}/{x & 0xFFFFFFFF:X}"


def node_view(a: Agent, pg_detail: dict[str, Any] | None) -> dict[str, Any]:
    """This node for the page: its own word on itself, what it heard from the peer, and the risk now."""
    now = time.monotonic()
    s, pg, peer = a.state, a.pg, a.peer_view
    f = node_facts(a)
    risk = failover_risk(f)
    m = a.maintenance.current if a.suspended else None
    heard = dict(a.heard)
    return {
        "time": time.time(),  # the agent's wall clock: the page says how fresh each node's view is
        "node": a.node,
        "peer": a.peer,
        "role": f.db.value,
        "cluster": a.cfg.cluster,
        "mode": a.cfg.mode.value,
        "durability": a.cfg.replication.durability.value,
        "term": s.term,
        "fenced": s.fenced,
        "degraded": s.degraded,
        "eligible": s.eligible and pg.db is DbState.STANDBY,
        "promoting": s.promoting,
        "services": s.services,
        "service_ips": [str(ip.address.ip) for ip in a.cfg.service_ips] if s.services else [],
        "services_healthy": a.services_healthy,
        "reporting": None if a.reporting_ip is None else {
            "address": str(a.reporting_ip.address.ip), "held": bool(a.reporting_held)},
        "maintenance": None if m is None else {**m.view(time.time()), "since_s": time.time() - m.since},
        "lsn": _lsn(pg.lsn),
        "replay_lsn": _lsn(pg.replay_lsn),
        "streaming": pg.streaming,
        "peer_sync": f.peer_sync,
        "lag_bytes": f.lag_bytes,
        "risk": {"exposure": risk.exposure.value, "reason": risk.reason.value, "lag_bytes": risk.lag_bytes},
        "peer_heard_s_ago": {n.value: None if t is None else round(now - t, 3) for n, t in heard.items()},
        "peer_said": None if peer is None or not peer_fresh(a, now) else {
            "term": peer.term, "role": peer.db.value, "services": peer.services, "lsn": _lsn(peer.lsn),
            "reporting": peer.reporting, "eligible": peer.eligible},
        "pg": pg_detail,
    }
