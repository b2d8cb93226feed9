"""The configuration as the agent's parts need it: the decisions' Policy, and the digest both agents compare.

It owns: turning the configuration into pure values. It may not read anything but the configuration.
"""

from __future__ import annotations

import hashlib
import json

from standby import protocol
from standby.config import Config, Durability, Mode, RejoinPolicy
from standby.decide import PgCrashPolicy, Policy


def config_digest(cfg: Config) -> str:
    """Both agents must run the same configuration; heartbeats carry this to prove it."""
    dumped = protocol.digest_document(cfg.model_dump(mode="json"), Config, cfg)
    for section in ("reporting", "tls"):
        if dumped.get(section) is None:
            # Without it, the digest older versions compute: they may still run on the peer.
            dumped.pop(section, None)
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()


def policy_for(cfg: Config, node: str, suspended: bool = False) -> Policy:
    t = cfg.timings
    return Policy(
        hot=cfg.mode is Mode.HOT,
        suspended=suspended,
        sync=cfg.replication.durability is Durability.SYNC,
        preferred=node == cfg.preferred_primary,
        failover_timeout_s=t.failover_timeout_ms / 1000,
        fence_timeout_s=t.fence_timeout_ms / 1000,
        heartbeat_s=t.heartbeat_interval_ms / 1000,
        link_timeout_s=t.link_timeout_ms / 1000,
        degrade_after_s=cfg.replication.degrade_after_s,
        max_lag_bytes=cfg.replication.max_lag_on_failover_bytes,
        pg_crash=PgCrashPolicy(cfg.replication.on_postgres_crash.value),
        pg_unresponsive_s=t.postgres_unresponsive_ms / 1000,
        wal_stuck_s=t.wal_flush_stuck_ms / 1000,
        auto_rejoin=cfg.rejoin is RejoinPolicy.AUTO,
        services_move_on_failure=cfg.services_move_on_failure,
        unhealthy_after_s=t.service_unhealthy_ms / 1000,
        has_service_ips=bool(cfg.service_ips),
        dr_watch=bool(cfg.warm_followers()),
    )
