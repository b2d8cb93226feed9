"""The lab's fixed shape: names, addresses and paths. Pure data, no side effects.

Other parts of the project (demo, benchmarks, tests) code against these
values, so they are a contract: change them only together with those users.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

LAB_BASE = Path("/var/lib/standby-lab")
DEFAULT_NAME = "sblab"
NAME_ENV = "STANDBY_LAB"

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_VERSION = "15"
PG_ETC = Path("/etc/postgresql")
# "plain": a data directory of the lab's own; "cluster": a postgresql-common cluster per node.
PG_LAYOUTS = ("plain", "cluster")
PG_PORT = 5432
PG_OS_USER = "postgres"
PG_SUPERUSER = "postgres"

APP_ROLE = "softswitch"
APP_DB = "softswitch"

PUBLIC_BRIDGE = "brpub"
PRIVATE_BRIDGE = "brpriv"
PUBLIC_IF = "pub0"
PRIVATE_IF = "priv0"

GATEWAY = "192.0.2.1"  # on brpub in the switch namespace; also the tie-breaker
PREFIX_LEN = 24
PUBLIC_NET = "192.0.2.0/24"
PRIVATE_NET = "198.51.100.0/24"
SERVICE_IP = "192.0.2.100/24"
# Follows the standby while it is in bound (reports read there); hot mode only.
REPORTING_IP = "192.0.2.101/24"
CLIENT_ADDRESS = "192.0.2.50/24"
# Each node's home address ([nodes.NAME] home_address), where a lab has them (the Kamailio lab: each proxy
# forwards from its node's, and the survivor adopts the dead node's). Hot mode only.
HOME_IPS: dict[str, str] = {"alpha": "192.0.2.21/24", "beta": "192.0.2.22/24"}

# Warm mode: beta stands in another site's subnet, routed through the switch.
REMOTE_GATEWAY = "203.0.113.1"
REMOTE_PUBLIC = "203.0.113.12/24"

# The private link's rate: a veth moves data at page-cache speed, which no real link between two
# servers does (a clone or a rewind measured over it says nothing about a 1 Gbit/s network).
PRIVATE_MBIT = 1000

SECRET_FILES = ("replication.password", "heartbeat.key", "api.token", "app.password")

# A lab name becomes part of namespace names and paths: keep it plain.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class Net(StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"


class Role(StrEnum):
    """Every namespace a lab owns."""

    SWITCH = "sw"
    ALPHA = "alpha"
    BETA = "beta"
    CLIENT = "client"


DB_NODES: tuple[str, ...] = (Role.ALPHA.value, Role.BETA.value)
ALL_ROLES: tuple[str, ...] = tuple(r.value for r in Role)
# Followers a lab may add beside the pair ([[followers]]), each a namespace of its own, and their roles.
FOLLOWER_ROLES: dict[str, str] = {"gamma": "warm", "delta": "reporting"}
FOLLOWER_NODES: tuple[str, ...] = tuple(FOLLOWER_ROLES)
# The reporting followers' own reporting IPs ([[followers]] reporting_ip, on their public interface): reports
# reach delta there, and it holds the address only while its copy is recent.
FOLLOWER_REPORTING_IPS: dict[str, str] = {"delta": "192.0.2.114/24"}
# The followers that stand in another site: their own subnets, reached through the WAN router.
WAN_FOLLOWERS: tuple[str, ...] = ("gamma",)
# The router's namespace between the pair's networks and the other site's (present with a WAN follower).
WAN_ROUTER = "wan"
# The router's address on each of the pair's networks, and on each of the other site's (its gateways).
WAN_ROUTER_NEAR: dict[Net, str] = {Net.PUBLIC: "192.0.2.254", Net.PRIVATE: "198.51.100.254"}
WAN_ROUTER_FAR: dict[Net, str] = {Net.PUBLIC: "198.18.0.1", Net.PRIVATE: "198.18.1.1"}
# The other site's subnets (benchmarking addresses, RFC 2544), and the pair's own.
WAN_NETS: dict[Net, str] = {Net.PUBLIC: "198.18.0.0/24", Net.PRIVATE: "198.18.1.0/24"}
PAIR_NETS: dict[Net, str] = {Net.PUBLIC: PUBLIC_NET, Net.PRIVATE: PRIVATE_NET}
# The WAN link's default rate: a modest site-to-site line (the router shapes each direction to it).
DEFAULT_WAN_RATE_KBIT = 100_000
MIN_WAN_RATE_KBIT, MAX_WAN_RATE_KBIT = 64, 10_000_000
# Where the lab's followers stream from ([[followers]] upstream): the pair's primary, or cascaded from the hot
# standby (which then carries the followers' WAL instead of the primary).
FOLLOWER_UPSTREAMS: tuple[str, ...] = ("primary", "standby")

_NODE_ADDRESSES: dict[str, dict[Net, str]] = {
    "alpha": {Net.PUBLIC: "192.0.2.11/24", Net.PRIVATE: "198.51.100.11/24"},
    "beta": {Net.PUBLIC: "192.0.2.12/24", Net.PRIVATE: "198.51.100.12/24"},
    # The warm follower in the other site, behind the WAN router.
    "gamma": {Net.PUBLIC: "198.18.0.13/24", Net.PRIVATE: "198.18.1.13/24"},
    # The reporting follower in the pair's subnets, on the same switch.
    "delta": {Net.PUBLIC: "192.0.2.14/24", Net.PRIVATE: "198.51.100.14/24"},
}


def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def interface_for(net: Net | str) -> str:
    return PUBLIC_IF if Net(net) is Net.PUBLIC else PRIVATE_IF


def bridge_for(net: Net | str) -> str:
    return PUBLIC_BRIDGE if Net(net) is Net.PUBLIC else PRIVATE_BRIDGE


def switch_port(role: str, net: Net | str) -> str:
    """Name of the switch-side veth end, e.g. ``alpha-pub``."""
    return f"{role}-{'pub' if Net(net) is Net.PUBLIC else 'priv'}"


def rate_limit_argv(interface: str, mbit: int) -> list[str]:
    """``tc`` arguments that cap ``interface``'s egress at ``mbit`` Mbit/s with a token bucket.

    The bucket holds 10 ms at the rate (a host's timer tick must refill less than a bucket) and the
    queue up to 20 ms more: enough that TCP fills the link, not a bufferbloat that hides the rate.
    """
    burst = max(mbit * 1_000_000 // 8 // 100, 64 * 1024)
    return ["tc", "qdisc", "replace", "dev", interface, "root", "tbf", "rate", f"{mbit}mbit",
            "burst", str(burst), "latency", "20ms"]


@dataclass(frozen=True)
class Link:
    net: Net
    address: str  # with prefix length
    interface: str
    switch_port: str

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass(frozen=True)
class NodeLayout:
    """One database node: its namespace, links and directories."""

    name: str
    netns: str
    public: Link
    private: Link
    dir: Path
    cluster: str | None = None  # "15/<lab>-<node>" in the cluster layout

    @property
    def pgdata(self) -> Path:
        return self.dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    def link(self, net: Net | str) -> Link:
        return self.public if Net(net) is Net.PUBLIC else self.private

    def dsn_local(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={PG_PORT} user={PG_SUPERUSER} dbname={dbname}"

    def dsn_private(self, dbname: str = "postgres") -> str:
        return f"host={self.private.ip} port={PG_PORT} user={PG_SUPERUSER} dbname={dbname}"


@dataclass(frozen=True)
class LabSpec:
    """What to build. Everything else follows from the name."""

    name: str = DEFAULT_NAME
    durability: str = "sync"
    base: Path = field(default=LAB_BASE)
    mode: str = "hot"  # "warm": beta in another subnet, no floating service IP
    private_mbit: int = PRIVATE_MBIT  # each host's private egress rate in Mbit/s; 0: unlimited
    pg_layout: str = "plain"
    followers: tuple[str, ...] = ()  # of FOLLOWER_NODES; none: the two-node lab
    # The WAN link's rate each way (tbf on the router); only with a follower in WAN_FOLLOWERS.
    wan_rate_kbit: int = DEFAULT_WAN_RATE_KBIT
    follower_upstream: str = "primary"  # of FOLLOWER_UPSTREAMS, for every follower of the lab
    home_addresses: bool = False  # each node of the pair has its home address (HOME_IPS); hot mode only

    def __post_init__(self) -> None:
        if self.home_addresses and self.mode != "hot":
            raise ValueError("home addresses: hot mode only (a warm standby adopts no address)")
        if not valid_name(self.name):
            raise ValueError(
                f"lab name {self.name!r}: expected 1-32 lowercase letters, digits, '_' or '-', "
                "starting with a letter or digit"
            )
        if self.durability not in ("sync", "async"):
            raise ValueError(f"durability {self.durability!r}: expected 'sync' or 'async'")
        if self.pg_layout not in PG_LAYOUTS:
            raise ValueError(f"pg_layout {self.pg_layout!r}: expected one of {', '.join(PG_LAYOUTS)}")
        unknown = [f for f in self.followers if f not in FOLLOWER_NODES]
        if unknown or len(set(self.followers)) != len(self.followers):
            raise ValueError(f"followers {', '.join(self.followers)}: expected each of {', '.join(FOLLOWER_NODES)} "
                             "at most once")
        if self.private_mbit < 0:
            raise ValueError(f"private_mbit {self.private_mbit}: expected a rate in Mbit/s, or 0 for no limit")
        if self.followers and self.pg_layout != "plain":
            raise ValueError("followers: a follower's data directory is postgres.data_dir, which a cluster layout "
                             "may not set; use pg_layout 'plain'")
        if not MIN_WAN_RATE_KBIT <= self.wan_rate_kbit <= MAX_WAN_RATE_KBIT:
            raise ValueError(f"wan_rate_kbit {self.wan_rate_kbit}: expected {MIN_WAN_RATE_KBIT} to "
                             f"{MAX_WAN_RATE_KBIT} (e.g. 100000 for 100 Mbit/s)")
        if self.follower_upstream not in FOLLOWER_UPSTREAMS:
            raise ValueError(f"follower_upstream {self.follower_upstream!r}: expected one of "
                             f"{', '.join(FOLLOWER_UPSTREAMS)}")

    @property
    def root(self) -> Path:
        return self.base / self.name

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def config_path(self) -> Path:
        return self.root / "standby.toml"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def secret(self, filename: str) -> Path:
        return self.secrets_dir / filename

    @property
    def tls_dir(self) -> Path:
        """The lab CA and the nodes' certificates (the PostgreSQL OS user must reach its key here)."""
        return self.secrets_dir / "tls"

    def netns(self, role: str) -> str:
        return netns_name(self.name, role)

    def role_dir(self, role: str) -> Path:
        return self.root / role

    def node(self, name: str) -> NodeLayout:
        if name not in _NODE_ADDRESSES:
            raise KeyError(name)
        addrs = dict(_NODE_ADDRESSES[name])
        if self.mode == "warm" and name == "beta":
            addrs[Net.PUBLIC] = REMOTE_PUBLIC
        links = {net: Link(net, addr, interface_for(net), switch_port(name, net)) for net, addr in addrs.items()}
        return NodeLayout(
            name=name,
            netns=self.netns(name),
            public=links[Net.PUBLIC],
            private=links[Net.PRIVATE],
            dir=self.role_dir(name),
            cluster=cluster_for(self.name, name) if self.pg_layout == "cluster" else None,
        )

    def gateway_for(self, role: str) -> str:
        if role in self.wan_followers():
            return WAN_ROUTER_FAR[Net.PUBLIC]
        return REMOTE_GATEWAY if self.mode == "warm" and role == "beta" else GATEWAY

    def follower_source(self) -> str:
        """The pair node a follower of this lab streams from while alpha is primary and beta its hot standby."""
        return "beta" if self.follower_upstream == "standby" else "alpha"

    def wan_followers(self) -> tuple[str, ...]:
        """This lab's followers in the other site, behind the WAN router (none: no router)."""
        return tuple(f for f in self.followers if f in WAN_FOLLOWERS)

    def nodes(self) -> list[NodeLayout]:
        """The pair's nodes (followers are apart: ``follower_nodes``)."""
        return [self.node(n) for n in DB_NODES]

    def follower_nodes(self) -> list[NodeLayout]:
        return [self.node(n) for n in self.followers]

    def roles(self) -> tuple[str, ...]:
        """Every namespace this lab has: ALL_ROLES, its followers' and, with a follower in the other site, the
        WAN router's."""
        return (*ALL_ROLES, *self.followers, *((WAN_ROUTER,) if self.wan_followers() else ()))

    @property
    def client_link(self) -> Link:
        return Link(Net.PUBLIC, CLIENT_ADDRESS, PUBLIC_IF, switch_port(Role.CLIENT.value, Net.PUBLIC))


def cluster_for(lab: str, node: str) -> str:
    """A lab node's postgresql-common cluster: named after the lab, so never the host's own (15/main)."""
    return f"{PG_VERSION}/{lab}-{node}"


def netns_name(lab: str, role: str) -> str:
    return f"{lab}-{role}"
