"""The pair as one node sees it: both servers, the service IPs, and what is wrong.

`collect` does the looking (I/O); `assemble` turns observations into the
status document, as a pure function, so its rules are testable without a lab.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from standby import __version__, protocol, topology
from standby import operations as ops
from standby.apiclient import agent_status, follower_status
from standby.config import Config, Durability, Mode, OnPostgresCrash, ReportingFallback, ServiceIP
from standby.documents import (
    AgentSummary,
    AgentView,
    FollowerRejoinPhase,
    FollowerView,
    HomeStatus,
    IpStatus,
    NodeFacts,
    NodeStatus,
    PairStatus,
    PgStatus,
    ReportingStatus,
)
from standby.model import DbState, PgRole, SyncState
from standby.observe import addresses, probes
from standby.observe import postgres as obs
from standby.spool import state as spool_state

# A flush that has stood still this long with commits waiting is said: a busy disk takes a second now and
# then, a hung one never comes back (the hand-over waits for timings.wal_flush_stuck_ms).
WAL_STUCK_WARN_S = 3.0


@dataclass(frozen=True)
class IpHolders:
    address: str
    holders: tuple[str, ...]  # node names, or "unknown <mac>" for a stranger on the link
    probed: bool  # False when only this node's own interfaces could be checked


@dataclass(frozen=True)
class Observations:
    observer: str
    pg: dict[str, obs.PgObservation]
    ips: tuple[IpHolders, ...]
    facts: dict[str, NodeFacts] = field(default_factory=dict)
    observed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    agents: dict[str, AgentView | None] = field(default_factory=dict)  # each node agent's /status
    reporting: IpHolders | None = None  # the reporting IP, when [reporting] has one
    followers: dict[str, FollowerView | None] = field(default_factory=dict)  # each follower agent's /status
    homes: dict[str, IpHolders] = field(default_factory=dict)  # each node's home address, by its owner


def collect(cfg: Config, node: str, probe_arp: bool = True) -> Observations:
    """Every look at once: with the peer's host down most of them end in a timeout (its server on both
    networks, its agent, the ARP probes' listening), and one after another they took 8.5 s where the
    longest takes 2."""
    peer = cfg.peer_of(node)
    floating = cfg.reporting.floating() if cfg.reporting else None
    with ThreadPoolExecutor(max_workers=8 + len(cfg.followers)) as pool:
        local, remote = pool.submit(obs.observe_local, cfg, node), pool.submit(obs.observe_peer, cfg, peer)
        agents = {n: pool.submit(agent_status, cfg, n) for n in (node, peer)}
        ips = pool.submit(_ip_holders, cfg, node, probe_arp)
        reporting = pool.submit(_ip_holders, cfg, node, probe_arp, [floating]) if floating else None
        owned = {name: h for name, n in cfg.nodes.items() if (h := n.home()) is not None}
        homes = pool.submit(_ip_holders, cfg, node, probe_arp, list(owned.values())) if owned else None
        followers = {f.name: pool.submit(follower_status, cfg, f.name) for f in cfg.followers}
        pg = {node: local.result(), peer: remote.result()}
        return Observations(observer=node, pg=pg, ips=ips.result(), facts=obs.pair_facts(cfg, node, pg),
                            agents={n: a.result() for n, a in agents.items()},
                            reporting=reporting.result()[0] if reporting else None,
                            followers={n: f.result() for n, f in followers.items()},
                            homes=dict(zip(owned, homes.result(), strict=True)) if homes else {})


def _ip_holders(cfg: Config, node: str, probe_arp: bool, ips: list[ServiceIP] | None = None) -> tuple[IpHolders, ...]:
    peer = cfg.peer_of(node)
    mine = addresses.local_addresses()
    held_here = {a for addrs in mine.values() for a in addrs}
    wanted = list(cfg.service_ips if ips is None else ips)
    probed = [sip for sip in wanted if probe_arp and sip.interface in mine]
    # The same raw ARP probe the agent uses before it claims an address, each address's (and the peer's own
    # address's, to tell its MAC) at once: a probe listens for its whole timeout.
    with ThreadPoolExecutor(max_workers=1 + len(probed)) as pool:
        peer_macs = pool.submit(probes.arp_holders, probed[0].interface, str(cfg.nodes[peer].public.ip),
                                timeout_s=0.5) if probed else None
        answers = {sip.address: pool.submit(probes.arp_holders, sip.interface, str(sip.address.ip), timeout_s=0.5)
                   for sip in probed}
        out = []
        for sip in wanted:
            holders: list[str] = [node] if sip.address.ip in held_here else []
            try:
                answered = answers[sip.address].result() if sip.address in answers else None
                macs = peer_macs.result() if peer_macs is not None and answered else set()
            except probes.ProbeError:
                answered = None  # not probed: the warning says "seen from here"
            for mac in sorted(answered or ()):
                holders.append(peer if mac in macs else f"unknown {mac}")
            out.append(IpHolders(str(sip.address.ip), tuple(dict.fromkeys(holders)), answered is not None))
    return tuple(out)


def _agent_summary(a: AgentView | None) -> AgentSummary | None:
    if a is None:
        return None
    st = a.state
    return AgentSummary(running=True, term=st.term, fenced=st.fenced, services=st.services, degraded=st.degraded,
                        eligible=st.eligible, suspended=a.suspended, maintenance=a.maintenance,
                        peer_heard_s_ago=dict(a.peer_heard_s_ago), spool=a.spool)


def _wal_stuck_outcome(cfg: Config) -> str:
    """What happens next to a primary whose WAL flush stands still (decide._not_serving), in this configuration."""
    bound = cfg.timings.wal_flush_stuck_ms
    if cfg.mode is Mode.HOT and bound > 0 and cfg.replication.on_postgres_crash is OnPostgresCrash.FAILOVER:
        return (f"at timings.wal_flush_stuck_ms ({bound} ms) its agent hands the database to the standby, if the "
                "standby has every acknowledged commit (sync) or is within the lag bound (async)")
    # Not "standby promote": its fence of this node writes this node's state file first, on the hung disk.
    return ("nothing moves the database by itself here (warm mode, timings.wal_flush_stuck_ms = 0 or "
            "on_postgres_crash = \"restart\"); a node whose disk hangs cannot record its own fence: power it off, "
            "then `standby promote --force` on the standby")


def _agent_warnings(cfg: Config, o: Observations) -> list[str]:
    out = []
    for name in cfg.nodes:
        a = o.agents.get(name)
        if not o.agents:
            continue
        if a is None:
            out.append(f"{name}'s agent does not answer on its API: nothing decides for {name}")
            continue
        out.extend(spool_state.warnings(name, a.spool))
        if (hb := a.heartbeats).peer_protocol is not None:  # its peer's heartbeats are refused for their protocol
            why = protocol.Mismatch(a.peer + "'s agent", hb.peer_protocol, hb.protocol, name + "'s agent")
            out.append(f"{name} refuses {a.peer}'s heartbeats: {why}")
        st = a.state
        if st.fenced and st.dr_serves:
            source = _dr_source(cfg, o)
            out.append(f"{name} is FENCED because a warm follower accepts writes (a DR promotion): rebuild it from "
                       f"that follower (`standby rejoin --node {name} --from {source}`, docs/followers.md)")
        elif st.fenced:
            out.append(f"{name} is FENCED (it may not become primary by itself): rejoin it as a standby")
        if a.suspended:
            m = a.maintenance
            by, until, left = (m.by, m.until, m.remaining_s) if m else ("unknown", "unknown", "?")
            out.append(f"MAINTENANCE on {name}: automatic failover SUSPENDED (by {by}, until {until}, {left} s left); "
                       f"resume with POST /maintenance {{\"suspend\": false}} or let it expire")
        pg_state = a.postgres.state
        if ops.not_answering(a.postgres.unanswered_s):
            out.append(f"{name}'s PostgreSQL has left its agent's question unanswered for {a.postgres.unanswered_s:g} s "
                       "(its processes stopped, its disk hung?): the agent keeps its last reading, and refuses "
                       "operations but a fence")
        if a.postgres.wal_stuck_s >= WAL_STUCK_WARN_S:
            out.append(f"{name}'s PostgreSQL has flushed no WAL for {a.postgres.wal_stuck_s:g} s while it waits for it "
                       f"(its disk hung?): {_wal_stuck_outcome(cfg)}")
        if pg_state is DbState.PRIMARY and st.degraded and cfg.replication.durability is Durability.SYNC:
            out.append(f"{name} does not wait for a standby: commits acknowledged now exist only on {name}")
        if pg_state is DbState.STANDBY and cfg.mode is Mode.HOT and not st.eligible:
            dr = [f for f in _promoted_followers(o) if f in cfg.warm_followers()]
            if dr:
                because = f"{', '.join(dr)} accepts writes (a DR promotion): it promotes nothing beside it"
            elif st.dr_writable_seen:  # seen by its agent, not from here: the WAN may be down where this runs
                because = ("a warm follower was seen accepting writes (a DR promotion) and has not answered since "
                           "that it follows again: it promotes nothing")
            else:
                because = "it may lack acknowledged commits"
            out.append(f"{name} is NOT eligible for automatic promotion ({because})")
    return out


def _promoted_followers(o: Observations) -> list[str]:
    return [n for n, v in o.followers.items() if v is not None and v.running and not v.in_recovery]


def _dr_source(cfg: Config, o: Observations) -> str:
    """The follower a node fenced by rule 7 is rebuilt from: the one seen accepting writes, else the only warm
    follower configured; with neither (the follower's agent silent, several warm ones) a placeholder the
    reader fills in, rather than a guess that would rebuild the node from the wrong server."""
    promoted = _promoted_followers(o)
    warm = cfg.warm_followers()
    if len(promoted) == 1:
        return promoted[0]
    if not promoted and len(warm) == 1:
        return warm[0]
    return "FOLLOWER"


def _unreachable(name: str, o: Observations) -> str:
    """A node whose PostgreSQL and agent both stay silent on both networks is unreachable as a whole: libpq's
    last words ("server closed the connection unexpectedly", a timeout) would only send a reader astray."""
    if o.agents and o.agents.get(name) is None:
        return (f"{name} is UNREACHABLE from {o.observer}: neither its PostgreSQL nor its agent answers on either "
                "network (host down, or its cables cut)")
    return f"{name}'s PostgreSQL is unreachable: {o.pg[name].error}"


def _lsn(x: object) -> str | None:
    return None if x is None else str(x)


def assemble(cfg: Config, o: Observations) -> PairStatus:
    """The status document (`standby status`, and its stable JSON with --json)."""
    warnings: list[str] = []
    primaries = [n for n, p in o.pg.items() if p.role is PgRole.PRIMARY]
    primary = o.pg[primaries[0]] if len(primaries) == 1 else None
    if len(primaries) > 1:
        warnings.append(f"DUAL PRIMARY: {' and '.join(primaries)} both accept writes")
    elif not primaries:
        warnings.append("no primary: no node accepts writes")
    # A warm follower promoted by a person while the pair's site could not be reached (a cut WAN, say), and the
    # pair serving too: until its primary has read the follower's answer (decide.py rule 7), or for as long
    # as its agent does not run.
    dr = _promoted_followers(o)
    if dr and primaries:
        warnings.append(f"DUAL PRIMARY: follower {' and '.join(dr)} (promoted) and {' and '.join(primaries)} of the "
                        f"pair accept writes; keep one: fence the pair's (`standby fence --node {primaries[0]}`) "
                        f"and rebuild it from {dr[0]} (`standby rejoin --node {primaries[0]} --from {dr[0]}`), "
                        "or stop the follower's server")
    nodes: dict[str, NodeStatus] = {}
    # With replication.quorum, PostgreSQL says "quorum" of each member: never shown as plain "sync".
    want = SyncState.QUORUM if cfg.replication.quorum else SyncState.SYNC
    for name in cfg.nodes:  # config order, whichever node is looking
        p = o.pg[name]
        rep = None
        if primary is not None and p.role is PgRole.STANDBY:
            rep = next((r for r in primary.replicas if r.application_name == name), None)
        lag_bytes = None
        if primary is not None and primary.current_lsn is not None and p.replay_lsn is not None:
            lag_bytes = max(0, primary.current_lsn - p.replay_lsn)
        sync = rep.sync_state if rep else (SyncState.NONE if p.role is PgRole.STANDBY else None)
        if p.role is PgRole.STANDBY:
            if p.receiver_status != "streaming":
                warnings.append(f"{name} is a standby but not streaming (receiver: {p.receiver_status or 'none'})")
            elif cfg.replication.durability is Durability.SYNC and sync is not want:
                warnings.append(f"durability is sync{' with a quorum' if cfg.replication.quorum else ''} but {name} "
                                f"is {sync.value if sync else 'unknown'}, not {want.value}: commits are not protected "
                                "as configured")
        if p.role is PgRole.UNREACHABLE:
            warnings.append(_unreachable(name, o))
        f = o.facts.get(name)
        nodes[name] = NodeStatus(
            role=p.role,
            preferred_primary=name == cfg.preferred_primary,
            postgres=PgStatus(
                state=p.role,
                reached_via=p.via or None,
                version=p.version,
                timeline=p.timeline,
                current_lsn=_lsn(p.current_lsn),
                receive_lsn=_lsn(p.receive_lsn),
                replay_lsn=_lsn(p.replay_lsn),
                lag_bytes=lag_bytes,
                lag_seconds=(rep.replay_lag_s or 0.0) if rep else None,
                sync_state=sync,
                receiver_status=p.receiver_status,
                upstream=p.upstream,
                rewindable=p.rewindable,
                error=p.error,
                replay_age_s=p.replay_age_s,
                replay_paused=p.replay_paused,
                cancelled_queries=None if p.conflicts is None else sum(p.conflicts.values()),
                conflicts=p.conflicts,
            ),
            service_ips=[h.address for h in o.ips if name in h.holders],
            agent=_agent_summary(o.agents.get(name)),
            standby_version=__version__ if name == o.observer else (f.standby_version if f else None),
            observed_at=p.observed_at.isoformat(),
        )
    warnings.extend(_agent_warnings(cfg, o))
    for h in o.ips:
        if len(h.holders) > 1:
            warnings.append(f"SERVICE IP {h.address} IS HELD BY {' AND '.join(h.holders).upper()}: CLIENTS MAY REACH EITHER NODE")
        elif not h.holders:
            warnings.append(f"service IP {h.address} is held by no node" + ("" if h.probed else " seen from here"))
    reporting = _reporting(cfg, o, nodes, warnings)
    for owner, h in o.homes.items():
        if len(h.holders) > 1:
            warnings.append(f"HOME ADDRESS {h.address} ({owner.upper()}'S) IS HELD BY {' AND '.join(h.holders).upper()}")
        elif not h.holders:
            warnings.append(f"home address {h.address} ({owner}'s) is held by no node" + ("" if h.probed else
                            " seen from here") + ": answers to its proxy's calls reach nobody")
    warnings.extend(_follower_warnings(cfg, o))
    if cfg.replication.durability is Durability.SYNC and cfg.replication.degrade_after_s > 0:
        warnings.append(
            f"sync with degrade_after_s={cfg.replication.degrade_after_s:g}: if the standby is away that long, "
            "commits stop waiting for it and a failover in that window can lose them"
        )
    return PairStatus(
        cluster=cfg.cluster,
        mode=cfg.mode,
        durability=cfg.replication.durability,
        observer=o.observer,
        observed_at=o.observed_at.isoformat(),
        primary=primary.node if primary else None,
        nodes=nodes,
        service_ips={h.address: IpStatus(holders=list(h.holders), arp_probed=h.probed) for h in o.ips},
        reporting=reporting,
        warnings=warnings,
        followers={f.name: o.followers.get(f.name) for f in cfg.followers},
        home_addresses={owner: HomeStatus(h.address, list(h.holders), h.probed) for owner, h in o.homes.items()},
    )


def _follower_warnings(cfg: Config, o: Observations) -> list[str]:
    """A follower that is not receiving WAL is exposure growing (a DR copy that stops ages by the minute)."""
    out = []
    for f in cfg.followers:
        v = o.followers.get(f.name)
        if v is None:
            out.append(f"follower {f.name}'s agent does not answer on its API")
        elif v.promoted:
            out.append(f"follower {f.name} is out of recovery (promoted by an operator): it no longer follows the pair")
        elif not v.streaming:
            out.append(f"follower {f.name} is not streaming ({v.reason.value}); a promotion of it now would lose "
                       + ("an unknown amount" if v.loss_bytes is None else f"{v.loss_bytes} bytes of WAL"))
        if v is not None and v.reporting_ip is not None and not v.reporting_ip_held:
            why = v.reporting_ip_reason.value if v.reporting_ip_reason else "not decided yet"
            out.append(f"follower {f.name} does not hold its reporting IP {v.reporting_ip} ({why}): reports go to the "
                       "next host of `standby dsn --for reporting`")
        if v is not None and (r := v.rejoin) is not None:
            if r.phase is FollowerRejoinPhase.FAILED:
                out.append(f"follower {f.name}'s rejoin to {r.source} did not complete ({r.error}); it is tried again")
            elif r.salvage_report is not None:
                out.append(f"follower {f.name} was rejoined to {r.source}: {r.salvaged_rows} rows only it had are in "
                           f"{r.salvage_report} on its host (`standby salvage show --node {f.name}`; apply them on the "
                           "primary)")
    versions = {n: p.version_num for n, p in o.pg.items() if p.version_num is not None}
    versions |= {n: v.pg_version_num for n, v in o.followers.items() if v is not None and v.pg_version_num is not None}
    out.extend(str(p) for p in topology.version_problems(cfg.topology(), versions))
    return out


def _reporting(cfg: Config, o: Observations, nodes: dict[str, NodeStatus], warnings: list[str]) -> ReportingStatus | None:
    """Where reports go and what reading on the standby costs: lag, and queries cancelled by replay."""
    rep = cfg.reporting
    if rep is None:
        return None
    h = o.reporting
    for name, n in nodes.items():
        pg = n.postgres
        if pg.state is not PgRole.STANDBY:
            continue
        if pg.replay_paused:
            warnings.append(f"WAL replay is paused on {name}: reports there see old data and it falls behind")
        if pg.lag_bytes is not None and pg.lag_bytes > rep.max_lag_bytes:
            where = "on the primary" if rep.fallback is ReportingFallback.PRIMARY else "withdrawn"
            warnings.append(f"{name} has {pg.lag_bytes} B of WAL left to replay, over reporting.max_lag_bytes "
                            f"({rep.max_lag_bytes}): reports are {where}")
    if h is not None:
        if len(h.holders) > 1:
            warnings.append(f"REPORTING IP {h.address} IS HELD BY {' AND '.join(h.holders).upper()}")
        elif not h.holders and rep.fallback is ReportingFallback.PRIMARY:
            warnings.append(f"reporting IP {h.address} is held by no node" + ("" if h.probed else " seen from here"))
    return ReportingStatus(
        address=h.address if h else None,
        holders=list(h.holders) if h else [],
        arp_probed=h.probed if h else False,
        fallback=rep.fallback,
        max_lag_bytes=rep.max_lag_bytes,
        hot_standby_feedback=rep.hot_standby_feedback,
        max_standby_streaming_delay_ms=rep.max_standby_streaming_delay_ms,
    )
