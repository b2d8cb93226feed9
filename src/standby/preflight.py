"""`standby check`: a preflight that is safe to run at any time (it only reads).

`gather` looks; `evaluate` is a pure function from what was seen to findings,
so every rule is unit-testable.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from standby import apiclient, protocol, tls, unitcheck, versioncheck
from standby import layout as pglayout
from standby.config import Config, ConfigError, Mode
from standby.documents import AgentView, NodeFacts
from standby.model import CheckItem, PgRole, Verdict
from standby.observe import network, probes
from standby.observe import postgres as obs
from standby.observe.system import local_facts


@dataclass(frozen=True)
class Seen:
    node: str
    local_facts: NodeFacts | None
    local_facts_error: str | None
    peer_facts: NodeFacts | None
    pg: dict[str, obs.PgObservation]
    # "public"/"private"/"tiebreaker" -> answered; for the tie-breaker None: could not be asked
    reach: dict[str, bool | None]
    tls_problems: list[str] = field(default_factory=list)
    cluster: ClusterSeen | None = None  # with postgres.cluster: what its files say
    agents: dict[str, AgentView | None] = field(default_factory=dict)  # each node's agent's view (None: silent)
    units: dict[str, str] = field(default_factory=dict)  # systemd unit -> the key naming it
    unit_states: dict[str, str | None] = field(default_factory=dict)  # its LoadState; None: not asked
    data_dir_owner: str | None = None  # a plain data directory's owning account (None: absent, or a cluster)
    data_major: int | None = None  # the major version in this node's data directory (PG_VERSION); None: none


@dataclass(frozen=True)
class ClusterSeen:
    """A postgresql-common cluster as its files on this host describe it."""

    name: str
    missing: str | None  # why it cannot be read (it does not exist), else None
    layout: pglayout.Layout | None = None
    owners: dict[str, str | None] = field(default_factory=dict)  # path -> owning account (None: absent)
    settings: dict[str, str] = field(default_factory=dict)  # in force from its files, with the file of each
    sources: dict[str, str] = field(default_factory=dict)
    conf_d_read: bool = True
    checksums: bool | None = None  # from pg_controldata; None: unknown


def _owner(path: Path) -> str | None:
    try:
        uid = os.lstat(path).st_uid
    except FileNotFoundError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _read_nofollow(path: Path) -> str:
    # Files of the PostgreSQL account, possibly read as root: never through a planted link.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        return f.read()


def gather_cluster(cfg: Config, node: str) -> ClusterSeen | None:
    pg = cfg.pg(node)
    if pg.cluster is None:
        return None
    try:
        lay = cfg.layout(node)
    except pglayout.LayoutError as e:
        return ClusterSeen(pg.cluster, str(e))
    assert lay.conf_file is not None
    conf = _read_nofollow(lay.conf_file)
    files = [(lay.conf_file, conf)]
    files += [(f, _read_nofollow(f)) for d in pglayout.include_dirs(conf, lay.config_dir) if d.is_dir()
              for f in sorted(d.glob("*.conf"))]
    files.append((lay.auto_conf, _read_nofollow(lay.auto_conf)))
    settings: dict[str, str] = {}
    sources: dict[str, str] = {}
    for path, text in files:
        for k, v in pglayout.settings_of(text).items():
            settings[k], sources[k] = v, str(path)
    checksums = None
    res = subprocess.run(["runuser", "-u", pg.os_user, "--", str(pg.bin_dir / "pg_controldata"), "-D", str(lay.data_dir)]
                         if os.geteuid() == 0 else [str(pg.bin_dir / "pg_controldata"), "-D", str(lay.data_dir)],
                         capture_output=True, text=True, timeout=30, check=False, env={**os.environ, "LC_ALL": "C"})
    for line in res.stdout.splitlines() if res.returncode == 0 else []:
        if line.startswith("Data page checksum version:"):
            checksums = line.split(":", 1)[1].strip() != "0"
    owners = {str(p): _owner(p) for p in (lay.data_dir, lay.config_dir)}
    return ClusterSeen(pg.cluster, None, lay, owners, settings, sources,
                       pglayout.conf_d_included(conf, lay.config_dir), checksums)


def gather(cfg: Config, node: str) -> Seen:
    peer = cfg.peer_of(node)
    with ThreadPoolExecutor(6, thread_name_prefix="check") as pool:
        # Every question to another host at once: a silent peer costs one timeout, not one per question.
        peer_pg = pool.submit(obs.observe_peer, cfg, peer)
        pings = {net: pool.submit(network.ping, str(getattr(cfg.nodes[peer], net).ip)) for net in ("public", "private")}
        asked = {n: pool.submit(apiclient.agent_status, cfg, n) for n in (node, peer)}
        tiebreaker = pool.submit(probes.tiebreaker_answers, cfg, tries=3) if cfg.tiebreaker is not None else None
        try:
            mine, err = local_facts(cfg, node), None
        except RuntimeError as e:
            mine, err = None, str(e)
        pg = {node: obs.observe_local(cfg, node), peer: peer_pg.result()}
        reach: dict[str, bool | None] = {net: f.result() for net, f in pings.items()}
        agents = {n: f.result() for n, f in asked.items()}
    facts = obs.pair_facts(cfg, node, pg).get(peer)
    if tiebreaker is not None:
        try:
            reach["tiebreaker"] = tiebreaker.result()
        except probes.ProbeError:
            reach["tiebreaker"] = None
    problems: list[str] = []
    try:
        tls.check(cfg, node)
    except ConfigError as e:
        problems = list(e.problems)
    units = unitcheck.named(cfg, node, unitcheck.systemd_booted())
    data_dir = cfg.pg(node).data_dir
    return Seen(node, mine, err, facts, pg, reach, problems, gather_cluster(cfg, node), agents, units,
                unitcheck.load_states(list(units)), None if cfg.pg(node).cluster else _owner(data_dir),
                _data_major(data_dir / "PG_VERSION"))


def _data_major(pg_version: Path) -> int | None:
    text = _read_nofollow(pg_version).strip()
    return int(text) if text.isdigit() else None


def _pg_version(s: Seen, name: str) -> versioncheck.PgVersion | None:
    """What a node runs (its server), else what it has installed (this node) or had at its bootstrap."""
    running = s.pg[name].version_num if name in s.pg else None
    if running is not None:
        return versioncheck.PgVersion.from_num(running)
    facts = s.local_facts if name == s.node else s.peer_facts
    return None if facts is None else versioncheck.PgVersion.from_text(facts.pg_version)


def _release_items(s: Seen, peer: str) -> list[CheckItem]:
    assert s.local_facts is not None
    mine_agent, peer_agent = s.agents.get(s.node), s.agents.get(peer)
    mine = (versioncheck.Release(mine_agent.standby_version, "its agent") if mine_agent
            else versioncheck.Release(s.local_facts.standby_version, "installed"))
    theirs = (versioncheck.Release(peer_agent.standby_version, "its agent") if peer_agent
              else versioncheck.Release(s.peer_facts.standby_version, "at its bootstrap") if s.peer_facts else None)
    hb = mine_agent.heartbeats if mine_agent else None
    # This node's agent refuses its peer's heartbeats: another protocol major, whatever the numbers say.
    mismatch = (protocol.Mismatch(f"{peer}'s agent", hb.peer_protocol, hb.protocol, f"{s.node}'s agent")
                if hb is not None and hb.peer_protocol is not None else None)
    return versioncheck.release_items(s.node, peer, mine, theirs, mismatch)


def _listens_on(value: str, ip: ipaddress.IPv4Address) -> bool:
    names = {v.strip() for v in value.split(",")}
    return bool(names & {"*", "0.0.0.0"}) or str(ip) in names


def _wrong_owner(path: str, owner: str, user: str) -> str:
    return f"{path} belongs to {owner}, not postgres.os_user ({user}): run `chown -R {user}: {path}`, " \
           f"or set postgres.os_user = \"{owner}\""


def data_dir_items(cfg: Config, node: str, owner: str | None) -> list[CheckItem]:
    """A plain data directory belongs to the PostgreSQL account (a cluster's: cluster_items)."""
    pg = cfg.pg(node)
    if pg.cluster is not None or owner is None or owner == pg.os_user:
        return []
    return [CheckItem(node, "data directory ownership", Verdict.FAIL,
                      f"postgres.data_dir: {_wrong_owner(str(pg.data_dir), owner, pg.os_user)}")]


def cluster_items(cfg: Config, node: str, c: ClusterSeen, pg: obs.PgObservation | None) -> list[CheckItem]:
    """What a postgresql-common cluster needs before standby can run it (pure)."""
    out: list[CheckItem] = []

    def add(name: str, verdict: Verdict, reason: str) -> None:
        out.append(CheckItem(node, name, verdict, reason))

    if c.missing is not None or c.layout is None:
        add("cluster", Verdict.FAIL, c.missing or f"cluster {c.name} cannot be read")
        return out
    lay, want = c.layout, cfg.pg(node)
    conf = lay.conf_file
    add("cluster", Verdict.PASS, f"{c.name}: data {lay.data_dir}, configuration {lay.config_dir}")
    wrong = [_wrong_owner(path, owner, want.os_user) for path, owner in c.owners.items()
             if owner is not None and owner != want.os_user]
    if wrong:
        add("cluster ownership", Verdict.FAIL, "; ".join(wrong))
    elif c.owners.get(str(lay.data_dir), "") is None:
        add("cluster ownership", Verdict.WARN, f"{lay.data_dir} does not exist yet: `standby bootstrap` clones into it")
    if not c.conf_d_read:
        add("cluster conf.d", Verdict.FAIL, f"{conf} does not read conf.d, where standby writes its settings "
            f"({lay.settings_file.name}): put include_dir = 'conf.d' back at its end")
    port = c.settings.get("port", str(pglayout.DEFAULT_PORT))
    if port != str(want.port):
        add("cluster port", Verdict.FAIL, f"port = {port} in {c.sources.get('port', conf)}, but postgres.port = "
            f"{want.port} (what the peer and the clients connect to): make them equal")
    else:
        add("cluster port", Verdict.PASS, f"{port}, as postgres.port")
    listen = c.settings.get("listen_addresses", "localhost")
    links = cfg.nodes[node]
    needed = {"private": links.private.ip, "public": links.public.ip}
    missing = [f"{ip} ({what})" for what, ip in needed.items() if not _listens_on(listen, ip)]
    if missing:
        add("cluster listen_addresses", Verdict.FAIL,
            f"listen_addresses = '{listen}' in {c.sources.get('listen_addresses', conf)} does not cover "
            f"{', '.join(missing)}: the peer replicates over the private address; set listen_addresses = '*' "
            f"(`standby bootstrap` writes it to {lay.settings_file})")
    else:
        add("cluster listen_addresses", Verdict.PASS, f"'{listen}' covers {node}'s addresses")
    hints = c.settings.get("wal_log_hints", "off").lower() in ("on", "true", "yes", "1")
    checksums = c.checksums if c.checksums is not None else (pg.data_checksums if pg else None)
    if hints or checksums:
        add("cluster rewind", Verdict.PASS, "wal_log_hints on" if hints else "data checksums on")
    else:
        add("cluster rewind", Verdict.FAIL if checksums is False else Verdict.WARN,
            f"wal_log_hints is off in {c.sources.get('wal_log_hints', conf)} and data checksums are "
            f"{'off' if checksums is False else 'unknown'}: a failed primary could not be rewound; "
            f"`standby bootstrap --restart` sets wal_log_hints = on in {lay.settings_file}")
    return out


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
        links = cfg.nodes[name]
        shared = [str(sip.address.ip) for sip in cfg.service_ips if sip.interface == links.private.interface]
        if shared:
            add(name, "separate replication interface", Verdict.WARN,
                f"replication ({links.private.interface}) shares its interface with service IP {', '.join(shared)}: "
                "a fault there moves both roles at once")
        else:
            add(name, "separate replication interface", Verdict.PASS,
                f"replication on {links.private.interface}, services on {links.public.interface}")

    # Reachability between the nodes.
    for net_name in ("public", "private"):
        ip = getattr(cfg.nodes[peer], net_name).ip
        ok = s.reach.get(net_name, False)
        add(node, f"{net_name} network to {peer}", Verdict.PASS if ok else Verdict.FAIL,
            f"{peer} answers at {ip}" if ok else f"{peer} does not answer at {ip}: check the link and firewall")
    if cfg.tiebreaker is not None and "tiebreaker" in s.reach:
        ok = s.reach["tiebreaker"]
        tb = probes.tiebreaker_target(cfg.tiebreaker)
        if ok is None:
            add(node, "tie-breaker", Verdict.WARN, f"{tb} could not be probed from here (the agent's probe needs "
                "root: a raw ICMP socket); run `standby check` as the agent's user")
        else:
            add(node, "tie-breaker", Verdict.PASS if ok else Verdict.FAIL,
                f"{tb} answers the agent's probe" if ok else f"{tb} does not answer the agent's probe: "
                "without it an isolated primary cannot tell it is the isolated one")
    elif cfg.mode is Mode.HOT:
        add("pair", "tie-breaker", Verdict.WARN, "no [tiebreaker] configured: automatic failover will not fence safely")

    # Versions.
    if s.local_facts is None:
        add(node, "postgresql binaries", Verdict.FAIL, s.local_facts_error or "unknown")
    else:
        add(node, "postgresql binaries", Verdict.PASS, f"PostgreSQL {s.local_facts.pg_version} in {cfg.pg(node).bin_dir}")
        out.extend(versioncheck.data_dir_items(node, s.data_major, s.local_facts.pg_major, str(cfg.pg(node).data_dir),
                                               str(cfg.pg(node).bin_dir)))
        out.extend(versioncheck.pg_items(node, peer, _pg_version(s, node), _pg_version(s, peer)))
        out.extend(_release_items(s, peer))

        # Capacity: the standby must be able to carry the primary's load.
        roles = {n: p.role for n, p in s.pg.items()}
        primary = next((n for n, r in roles.items() if r is PgRole.PRIMARY), cfg.preferred_primary)
        capacity = {node: s.local_facts}
        if s.peer_facts:
            capacity[peer] = s.peer_facts
        other = cfg.peer_of(primary)
        if primary in capacity and other in capacity:
            big, small_one = capacity[primary], capacity[other]
            small = [f"{what} {mine} < {theirs}" for what, mine, theirs in
                     (("cpus", small_one.cpus, big.cpus), ("memory_bytes", small_one.memory_bytes, big.memory_bytes))
                     if mine < theirs]
            add(other, "capacity", Verdict.WARN if small else Verdict.PASS,
                f"standby smaller than primary {primary}: {', '.join(small)}" if small
                else f"at least the primary's ({small_one.cpus} CPUs, {small_one.memory_bytes // 2**20} MiB)")
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
        if s.tls_problems:
            add(node, "tls files", Verdict.FAIL, "; ".join(s.tls_problems))
        else:
            add(node, "tls files", Verdict.PASS, "CA, certificate and key (mode 600) in place")
    if s.cluster is not None:
        out.extend(cluster_items(cfg, node, s.cluster, s.pg.get(node)))
    out.extend(data_dir_items(cfg, node, s.data_dir_owner))
    out.extend(unitcheck.items(node, s.units, s.unit_states))
    primaries = [n for n, p in s.pg.items() if p.role is PgRole.PRIMARY]
    if len(primaries) > 1:
        add("pair", "single primary", Verdict.FAIL, f"{' and '.join(primaries)} both accept writes")
    return out
