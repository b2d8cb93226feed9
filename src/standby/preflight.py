"""`standby check`: a preflight that is safe to run at any time (it only reads).

`gather` looks; `evaluate` is a pure function from what was seen to findings,
so every rule is unit-testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from standby import tls
from standby.act.postgres import read_facts
from standby.config import Config, ConfigError, Mode
from standby.model import CheckItem, PgRole, Verdict
from standby.observe import network
from standby.observe import postgres as obs
from standby.observe.system import NodeFacts, local_facts


@dataclass(frozen=True)
class Seen:
    node: str
    local_facts: NodeFacts | None
    local_facts_error: str | None
    peer_facts: dict[str, Any] | None
    pg: dict[str, obs.PgObservation]
    reach: dict[str, bool]  # "public"/"private"/"tiebreaker" -> answered
    extra: dict[str, Any] = field(default_factory=dict)


def gather(cfg: Config, node: str) -> Seen:
    peer = cfg.peer_of(node)
    try:
        mine, err = local_facts(cfg, node), None
    except RuntimeError as e:
        mine, err = None, str(e)
    pg = {node: obs.observe_local(cfg, node), peer: obs.observe_peer(cfg, peer)}
    facts: dict[str, Any] | None = None
    for name, connect in ((peer, lambda: obs.connect_peer(cfg, peer)), (node, lambda: obs.connect_local(cfg, node))):
        if facts is None and pg[name].role in (PgRole.PRIMARY, PgRole.STANDBY):
            try:
                with connect() as conn:
                    facts = read_facts(conn).get(peer)
            except psycopg.Error:
                pass
    reach = {
        "public": network.ping(str(cfg.nodes[peer].public.ip)),
        "private": network.ping(str(cfg.nodes[peer].private.ip)),
    }
    if cfg.tiebreaker is not None:
        tb = str(cfg.tiebreaker.address)
        reach["tiebreaker"] = network.ping(tb) if cfg.tiebreaker.port == 0 else network.tcp_open(tb, cfg.tiebreaker.port)
    extra: dict[str, Any] = {}
    try:
        tls.check(cfg, node)
    except ConfigError as e:
        extra["tls_problems"] = e.problems
    return Seen(node, mine, err, facts, pg, reach, extra)


def evaluate(cfg: Config, s: Seen) -> list[CheckItem]:
    node, peer = s.node, cfg.peer_of(s.node)
    out: list[CheckItem] = []

    def add(who: str, name: str, verdict: Verdict, reason: str) -> None:
        out.append(CheckItem(who, name, verdict, reason))

    # Addresses (already enforced by the config schema; reported so the operator sees them).
    if cfg.mode is Mode.HOT:
        net = cfg.nodes[node].public.address.network
        n = 2 + len(cfg.service_ips)
        add("pair", "addresses", Verdict.PASS, f"{n} addresses (2 nodes + {len(cfg.service_ips)} service IP) in {net}")
    else:
        add("pair", "addresses", Verdict.PASS, "warm mode: nodes may be in different subnets; no floating service IP")
    for name in (node, peer):
        n = cfg.nodes[name]
        shared = [str(sip.address.ip) for sip in cfg.service_ips if sip.interface == n.private.interface]
        if shared:
            add(name, "separate replication interface", Verdict.WARN,
                f"replication ({n.private.interface}) shares its interface with service IP {', '.join(shared)}: "
                "a fault there moves both roles at once")
        else:
            add(name, "separate replication interface", Verdict.PASS,
                f"replication on {n.private.interface}, services on {n.public.interface}")

    # Reachability between the nodes.
    for net_name in ("public", "private"):
        ip = getattr(cfg.nodes[peer], net_name).ip
        ok = s.reach.get(net_name, False)
        add(node, f"{net_name} network to {peer}", Verdict.PASS if ok else Verdict.FAIL,
            f"{peer} answers at {ip}" if ok else f"{peer} does not answer at {ip}: check the link and firewall")
    if "tiebreaker" in s.reach:
        ok = s.reach["tiebreaker"]
        add(node, "tie-breaker", Verdict.PASS if ok else Verdict.FAIL,
            f"{cfg.tiebreaker.address} answers" if ok else f"{cfg.tiebreaker.address} does not answer: "  # type: ignore[union-attr]
            "without it an isolated primary cannot tell it is the isolated one")
    elif cfg.mode is Mode.HOT:
        add("pair", "tie-breaker", Verdict.WARN, "no [tiebreaker] configured: automatic failover will not fence safely")

    # Versions.
    if s.local_facts is None:
        add(node, "postgresql binaries", Verdict.FAIL, s.local_facts_error or "unknown")
    else:
        add(node, "postgresql binaries", Verdict.PASS, f"PostgreSQL {s.local_facts.pg_version} in {cfg.pg(node).bin_dir}")
        peer_pg = s.pg[peer]
        peer_major = peer_pg.major or (s.peer_facts or {}).get("pg_major")
        if peer_major is None:
            add("pair", "postgresql major version", Verdict.WARN, f"{peer}'s version unknown (its server is not reachable)")
        elif peer_major != s.local_facts.pg_major:
            add("pair", "postgresql major version", Verdict.FAIL,
                f"{node} has {s.local_facts.pg_major}, {peer} has {peer_major}: replication needs the same major version")
        else:
            add("pair", "postgresql major version", Verdict.PASS, f"both {peer_major}")
        if s.peer_facts is None:
            add("pair", "standby version", Verdict.WARN,
                f"{peer}'s standby version unknown until it has run `standby bootstrap`")
        elif s.peer_facts["standby_version"] != s.local_facts.standby_version:
            add("pair", "standby version", Verdict.FAIL,
                f"{node} runs {s.local_facts.standby_version}, {peer} runs {s.peer_facts['standby_version']}")
        else:
            add("pair", "standby version", Verdict.PASS, f"both {s.local_facts.standby_version}")

        # Capacity: the standby must be able to carry the primary's load.
        roles = {n: p.role for n, p in s.pg.items()}
        primary = next((n for n, r in roles.items() if r is PgRole.PRIMARY), cfg.preferred_primary)
        facts = {node: {"cpus": s.local_facts.cpus, "memory_bytes": s.local_facts.memory_bytes}}
        if s.peer_facts:
            facts[peer] = s.peer_facts
        other = cfg.peer_of(primary)
        if primary in facts and other in facts:
            p, o = facts[primary], facts[other]
            small = [f"{k} {o[k]} < {p[k]}" for k in ("cpus", "memory_bytes") if o[k] < p[k]]
            add(other, "capacity", Verdict.WARN if small else Verdict.PASS,
                f"standby smaller than primary {primary}: {', '.join(small)}" if small
                else f"at least the primary's ({o['cpus']} CPUs, {o['memory_bytes'] // 2**20} MiB)")
        else:
            add("pair", "capacity", Verdict.WARN, "cannot compare CPU and memory until both nodes have run `standby bootstrap`")

    # PostgreSQL state and rewind readiness.
    for name, p in s.pg.items():
        if p.role in (PgRole.PRIMARY, PgRole.STANDBY):
            add(name, "postgresql", Verdict.PASS, f"{p.role.value}, {p.version}, timeline {p.timeline}")
            if p.rewindable:
                add(name, "rewind ready", Verdict.PASS, "wal_log_hints=on" if p.wal_log_hints else "data checksums on")
            else:
                add(name, "rewind ready", Verdict.FAIL if p.role is PgRole.PRIMARY else Verdict.WARN,
                    "wal_log_hints is off and data checksums are off: a failed primary could not be rewound; "
                    "`standby bootstrap --restart` turns wal_log_hints on")
        elif p.role is PgRole.EMPTY:
            add(name, "postgresql", Verdict.PASS, f"no data directory yet: `standby bootstrap --node {name}` will clone it")
        elif p.role is PgRole.STOPPED:
            add(name, "postgresql", Verdict.WARN, f"data directory present but the server is not running ({p.error})")
        else:
            add(name, "postgresql", Verdict.FAIL, f"unreachable: {p.error}")
    if cfg.tls is not None:
        problems = s.extra.get("tls_problems")
        if problems:
            add(node, "tls files", Verdict.FAIL, "; ".join(problems))
        else:
            add(node, "tls files", Verdict.PASS, "CA, certificate and key (mode 600) in place")
    primaries = [n for n, p in s.pg.items() if p.role is PgRole.PRIMARY]
    if len(primaries) > 1:
        add("pair", "single primary", Verdict.FAIL, f"{' and '.join(primaries)} both accept writes")
    return out
