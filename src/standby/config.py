"""The cluster configuration: one TOML file shared by both nodes.

Every node runs with the same file plus its own node name (``--node`` or
``STANDBY_NODE``). Everything is validated before anything is touched, and
each error names the key, the bad value and what is expected.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from standby import layout as pglayout
from standby import topology
from standby.confbase import Follower as Follower
from standby.confbase import FollowerRole as FollowerRole
from standby.confbase import Interface as Interface
from standby.confbase import Link as Link
from standby.confbase import ServiceIP as ServiceIP
from standby.confbase import Strict as _Strict

DEFAULT_CONFIG_PATH = Path("/etc/standby/standby.toml")
CONFIG_ENV = "STANDBY_CONFIG"
NODE_ENV = "STANDBY_NODE"


class Mode(StrEnum):
    HOT = "hot"  # automatic failover inside one subnet
    WARM = "warm"  # remote standby: alerts, manual promotion only


class Durability(StrEnum):
    SYNC = "sync"  # commit waits for the standby: zero loss on failover
    ASYNC = "async"  # commit does not wait: bounded loss, no stall


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"invalid configuration{f' in {source}' if source else ''}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


def for_node(text: str, node: str) -> str:
    """``text`` with ``{node}`` replaced by a node's name: how one shared file gives per-node values."""
    return text.replace("{node}", node)


def _cluster(value: str | None) -> str | None:
    return None if value is None else str(pglayout.ClusterRef.parse(value))


ClusterName = Annotated[str | None, AfterValidator(_cluster)]


class _WithCluster(_Strict):
    @model_serializer(mode="wrap")
    def _without_absent_cluster(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without a cluster, the dump (hence the agents' configuration digest) is what versions
        # before the key made: a peer still running one must agree with this one.
        out: dict[str, Any] = handler(self)
        if out.get("cluster", "") is None:
            del out["cluster"]
        return out


class NodePostgres(_WithCluster):
    """Per-node overrides of [postgres]; normally empty (both servers alike)."""

    data_dir: Path | None = None
    socket_dir: Path | None = None
    bin_dir: Path | None = None
    cluster: ClusterName = None  # two clusters on one host (the lab): each node its own


class Node(_Strict):
    public: Link
    private: Link
    postgres: NodePostgres = NodePostgres()
    state_dir: Path | None = None  # overrides the top-level state_dir (several nodes on one host)
    # The node's own address for what must come back to it (a SIP proxy's transactions), on its public
    # interface; the peer adopts it while this node is gone (standby.homeaddr). Hot mode, both nodes.
    home_address: ipaddress.IPv4Interface | None = Field(None, description="home address with prefix")

    def home(self) -> ServiceIP | None:
        """The home address in the shape the address actions take, or None when there is none."""
        if self.home_address is None:
            return None
        return ServiceIP(address=self.home_address, interface=self.public.interface)

    @model_serializer(mode="wrap")
    def _without_absent_home(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without a home address the dump (hence the configuration digest) is what releases before the key
        # made, so a pair can be upgraded one node at a time (see standby.protocol).
        out: dict[str, Any] = handler(self)
        if out.get("home_address", "") is None:
            del out["home_address"]
        return out


def _argv(value: list[str]) -> list[str]:
    if not value or not all(isinstance(a, str) and a for a in value):
        raise ValueError("expected a non-empty list of arguments, e.g. [\"systemctl\", \"start\", \"x\"]")
    return value


Argv = Annotated[list[str], AfterValidator(_argv)]


class Placement(StrEnum):
    ACTIVE = "active"  # runs only on the node holding the service IPs (started on takeover)
    # Runs on both nodes all the time; only the service IPs move. A failover
    # then waits for no process start (the service must find the primary by
    # itself, e.g. with a libpq host list and target_session_attrs=read-write).
    EVERYWHERE = "everywhere"


class Service(_Strict):
    """A service that runs on the node holding the service role.

    Commands are argument lists and are run without a shell, so no value in
    this file can inject one.
    """

    name: str = Field(min_length=1)
    start: Argv
    stop: Argv
    health: Argv | None = None
    timeout_s: float = Field(10.0, gt=0, le=600)
    placement: Placement = Placement.ACTIVE

    def argv(self, which: str, node: str) -> list[str] | None:
        """A command with ``{node}`` replaced by the local node's name (for per-node paths)."""
        cmd = getattr(self, which)
        return None if cmd is None else [for_node(a, node) for a in cmd]



class Postgres(_WithCluster):
    # A postgresql-common cluster ("15/main"): its data directory, hba file, port and socket
    # directory are its own files' (standby.layout); None: a plain data directory (data_dir).
    cluster: ClusterName = None
    bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    data_dir: Path = Path("/var/lib/postgresql/15/standby")
    socket_dir: Path = Path("/var/run/postgresql")
    port: int = Field(5432, ge=1, le=65535)
    os_user: str = "postgres"
    superuser: str = "postgres"
    database: str = "postgres"
    replication_user: str = "replicator"
    replication_password_file: Path = Path("/etc/standby/replication.password")
    # WAL kept beyond what the slots pin, for a replica that comes back without one (a follower whose slot
    # here pins nothing yet, after a failover). The rewind of a failed primary does not need it: a node
    # reserves its peer's slot before it promotes, which holds the WAL from before the fork. Kept modest
    # because PostgreSQL 15's pg_rewind copies the new primary's whole pg_wal: every MB here is a MB each
    # rewind sends over the private link (1024 made a 10 GB database's rewind copy 1.3 GB of WAL).
    wal_keep_size_mb: int = Field(128, ge=0)
    # Upper bound of WAL a replication slot may pin when its standby is gone,
    # so a dead standby cannot fill the primary's disk.
    max_slot_wal_keep_size_mb: int = Field(8192, ge=64)
    max_wal_senders: int = Field(10, ge=2)
    extra_settings: dict[str, str | int | bool] = Field(default_factory=dict)

    @field_validator("replication_user", "superuser", "os_user", "database")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "_-" for c in v):
            raise ValueError("expected a plain identifier (letters, digits, '_' or '-')")
        return v


class OnPostgresCrash(StrEnum):
    FAILOVER = "failover"  # hand over to the standby if it holds every acknowledged commit, else restart
    RESTART = "restart"  # always crash-recover in place


class Replication(_Strict):
    durability: Durability = Durability.SYNC
    # What a live primary does when its PostgreSQL dies. Failing over to an
    # in-sync standby is faster than crash recovery; without one, restart.
    on_postgres_crash: OnPostgresCrash = OnPostgresCrash.FAILOVER
    # In sync mode: seconds a primary waits for a lost standby before going
    # async (0 = never: commits wait, zero loss guaranteed).
    degrade_after_s: float = Field(0.0, ge=0)
    # In async mode: the most WAL (bytes) the standby may be behind and still
    # be promoted automatically.
    max_lag_on_failover_bytes: int = Field(16 * 1024 * 1024, ge=0)
    # sync only: 0 = each commit waits for the hot standby alone; k > 0 = for any k of the hot standby and
    # the warm followers streaming from the primary (standby.topology.sync_plan).
    quorum: int = Field(0, ge=0)


# How long a fenced primary's PostgreSQL may take to stop taking writes once the fence begins.
STOP_BUDGET_MS = 100
# The shortest timings.postgres_unresponsive_ms: past the agent's 2 s statement timeout and a busy moment.
MIN_UNRESPONSIVE_MS = 5_000


class Timings(_Strict):
    # Defaults give about one second from a dead primary to a serving standby on a LAN.
    heartbeat_interval_ms: int = Field(150, ge=20, le=10_000)
    failover_timeout_ms: int = Field(750, ge=100, le=600_000)
    fence_timeout_ms: int = Field(450, ge=50, le=600_000)
    # One network down this long at the node holding a role moves that role
    # (services for the public network, the database for the private one).
    # Long enough that a short outage of one link changes nothing.
    link_timeout_ms: int = Field(5000, ge=100, le=600_000)
    # Services failing their health check this long move to the peer.
    service_unhealthy_ms: int = Field(5000, ge=100, le=600_000)
    # A primary whose PostgreSQL leaves the agent's question on its open connection unanswered this long
    # (its processes stopped by a signal or a debugger: not a slow query, which answers with its timeout,
    # nor a connection that fails) hands the database to an in-sync standby, as if it had crashed
    # (replication.on_postgres_crash = "failover"). 0 = never.
    postgres_unresponsive_ms: int = Field(15_000, ge=0, le=600_000)
    # The same for a primary whose WAL flush position the agent's readings see stand still this long while
    # the server waits for it (a hung disk, standby.observe.walstuck). Longer: a disk stalls for seconds now
    # and then and comes back (a storage path failing over), where a stopped server never does. 0 = never.
    wal_flush_stuck_ms: int = Field(30_000, ge=0, le=600_000)
    # SCHED_RR priority of the agent (1-99; 0 = normal scheduling). A starved
    # agent cannot fence its primary in time; see standby.agent.priority.
    realtime_priority: int = Field(10, ge=0, le=99)
    # Maintenance (automatic decisions suspended, e.g. by a switchover) ends by
    # itself after this long: a forgotten one must not leave the pair without failover.
    maintenance_timeout_s: int = Field(600, ge=30, le=86_400)

    @model_validator(mode="after")
    def _order(self) -> Timings:
        if self.failover_timeout_ms < 3 * self.heartbeat_interval_ms:
            raise ValueError(
                f"timings.failover_timeout_ms ({self.failover_timeout_ms}) must be at least 3 x "
                f"timings.heartbeat_interval_ms ({self.heartbeat_interval_ms}), or single lost "
                "packets cause failovers"
            )
        if self.fence_timeout_ms >= self.failover_timeout_ms:
            raise ValueError(
                f"timings.fence_timeout_ms ({self.fence_timeout_ms}) must be shorter than "
                f"timings.failover_timeout_ms ({self.failover_timeout_ms}): an isolated primary "
                "must stop writing before the standby may promote"
            )
        if 0 < self.postgres_unresponsive_ms < MIN_UNRESPONSIVE_MS:
            raise ValueError(
                f"timings.postgres_unresponsive_ms ({self.postgres_unresponsive_ms}) must be 0 (never) or at least "
                f"{MIN_UNRESPONSIVE_MS}: the agent's reading of its server may take its 2 s statement timeout, and "
                "a slow server is not a hung one"
            )
        if 0 < self.wal_flush_stuck_ms < MIN_UNRESPONSIVE_MS:
            raise ValueError(
                f"timings.wal_flush_stuck_ms ({self.wal_flush_stuck_ms}) must be 0 (never) or at least "
                f"{MIN_UNRESPONSIVE_MS}: a busy disk holds a flush back for a moment, and a slow disk is not a hung one"
            )
        # The two silences are measured on two clocks from heartbeats up to one interval apart, and
        # the fenced server takes a moment to stop taking writes (state written, fast shutdown
        # signalled). A smaller gap lets a partition that heals in that moment meet two primaries
        # (found by the simulated schedules: tests/unit/test_decide.py).
        need = self.heartbeat_interval_ms + STOP_BUDGET_MS
        if self.failover_timeout_ms - self.fence_timeout_ms < need:
            raise ValueError(
                f"timings.failover_timeout_ms ({self.failover_timeout_ms}) must exceed timings.fence_timeout_ms "
                f"({self.fence_timeout_ms}) by at least timings.heartbeat_interval_ms + {STOP_BUDGET_MS} "
                f"(= {need}): lower fence_timeout_ms or raise failover_timeout_ms"
            )
        return self


class TieBreaker(_Strict):
    """An address each node should reach when its own network is fine."""

    address: ipaddress.IPv4Address
    # TCP port to connect to; 0 means ICMP echo.
    port: int = Field(0, ge=0, le=65535)


class Email(_Strict):
    smtp_host: str
    smtp_port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    username: str | None = None
    password_file: Path | None = None
    sender: str
    recipients: list[str] = Field(min_length=1)


class Webhook(_Strict):
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(5.0, gt=0, le=120)
    retries: int = Field(3, ge=0, le=100)


class Alerts(_Strict):
    email: Email | None = None
    webhook: Webhook | None = None
    lag_threshold_bytes: int = Field(64 * 1024 * 1024, ge=0)


class RejoinPolicy(StrEnum):
    MANUAL = "manual"  # a person approves (`standby rejoin --yes`), as after a client's approval
    AUTO = "auto"  # the agent rejoins a fenced old primary as soon as the new primary is healthy


class SalvageTable(_Strict):
    """A precious table: rows the old primary committed after the fork are salvaged, never thrown away."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    key: list[str] = Field(min_length=1)  # natural key: identifies the same row on both sides
    # Columns regenerated on apply when their value is already taken on the new primary
    # (a CDR id reused after the fork gets a new one; its call id is kept).
    renumber: list[str] = Field(default_factory=list)
    # Statements run once per applied row, in the same transaction, with :column
    # placeholders filled from the row (e.g. re-apply a balance delta as a delta).
    after_insert: list[str] = Field(default_factory=list)


class Salvage(_Strict):
    database: str = "postgres"
    tables: list[SalvageTable] = Field(default_factory=list)


class ReportingFallback(StrEnum):
    # Reports then load the primary, which carries the calls; pick it when a
    # report that is late costs more than calls that are slower.
    PRIMARY = "primary"
    # Nobody answers on the reporting IP until the standby is back in bound:
    # reports wait (or fail) and the primary keeps all its capacity for calls.
    WITHDRAW = "withdraw"


class Reporting(_Strict):
    """Reports (CDR summaries) served by the standby's replica, so the primary keeps carrying calls.

    The reporting IP floats like a service IP but follows the *standby*: it is
    held there while the standby streams within ``max_lag_bytes``, and goes to
    the primary or nowhere (``fallback``) otherwise. Without ``address`` only
    the PostgreSQL settings below apply (clients then use `standby dsn --for
    reporting`, which needs no floating address).
    """

    address: ipaddress.IPv4Interface | None = Field(None, description="floating reporting address with prefix")
    interface: Interface | None = None
    # Most WAL (bytes) the standby may have left to replay and still serve
    # reports. Beyond it the address moves away; it comes back once the lag is
    # under half of this, so a lag hovering at the bound does not move it back
    # and forth (each move breaks the reports running at that moment).
    max_lag_bytes: int = Field(16 * 1024 * 1024, ge=0)
    fallback: ReportingFallback = ReportingFallback.WITHDRAW
    # On: the standby tells the primary which rows its queries still read, so
    # the primary's VACUUM keeps them and long reports are not cancelled by WAL
    # replay. The price is bloat on the primary: dead rows of busy tables (the
    # balances) stay until the longest report ends. Off: the primary cleans up
    # freely and replay cancels a report that needs removed rows after
    # max_standby_streaming_delay_ms. Either way, a lock taken on the primary
    # (DDL, VACUUM truncating a table's end) still conflicts with reports.
    hot_standby_feedback: bool = True
    # How long WAL replay waits for a conflicting report before cancelling it.
    # Longer lets reports finish but lets replay fall behind, and a promotion
    # must first replay all of it (a slower failover); -1 waits forever.
    max_standby_streaming_delay_ms: int = Field(30_000, ge=-1, le=86_400_000)

    @model_validator(mode="after")
    def _both_or_neither(self) -> Reporting:
        if (self.address is None) != (self.interface is None):
            raise ValueError("address and interface go together: give both or neither")
        return self

    def floating(self) -> ServiceIP | None:
        """The reporting IP in the shape the address actions take, or None when there is none."""
        if self.address is None or self.interface is None:
            return None
        return ServiceIP(address=self.address, interface=self.interface)


class Tls(_Strict):
    """TLS for replication (and every other connection to the peer's PostgreSQL) and for the agents' API.

    ``cert_file`` and ``key_file`` may hold ``{node}`` so one file names each
    node's own pair; ``ca_file`` is the one CA that signed both.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path

    @field_validator("ca_file")
    @classmethod
    def _one_ca(cls, v: Path) -> Path:
        if "{node}" in str(v):
            raise ValueError("one CA signs both nodes' certificates: give a single file, without {node}")
        return v

    def cert_for(self, node: str) -> Path:
        return Path(for_node(str(self.cert_file), node))

    def key_for(self, node: str) -> Path:
        return Path(for_node(str(self.key_file), node))


class SpoolFormat(StrEnum):
    """How a service writes its call records into the spool, one record a line."""

    JSON = "json"  # one JSON object a line (Kamailio acc_json, any service that writes JSON lines)
    KAMAILIO_ACC = "kamailio-acc"  # Kamailio acc's log lines: "ACC: <event>: name=value;name=value;..."
    CSV = "csv"  # FreeSWITCH mod_cdr_csv, Asterisk cdr_csv: one CSV row a line, columns named below


class Spool(_Strict):
    """Call records a service hands over through a local file, shipped to the primary by `standby ship`.

    ``path`` is a file or a directory (files matching ``pattern``), append-only; ``{node}`` becomes the
    node's name. Each record goes into ``table`` exactly once, under its unique key: the values of
    ``key`` (field names), or the SHA-256 of the whole line when ``key`` is empty.
    """

    path: Path
    pattern: str = Field("*", min_length=1)
    format: SpoolFormat
    columns: list[str] = Field(default_factory=list)  # csv: the names of the columns, in order
    delimiter: str = Field(",", min_length=1, max_length=1)
    key: list[str] = Field(default_factory=list)
    table: str = Field("standby_spool", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    create_table: bool = True
    database: str = Field(min_length=1)
    user: str = Field(min_length=1)
    password_file: Path | None = None  # absent: libpq's own (~/.pgpass, PGPASSWORD)
    # Offsets and set-aside lines; default: state_dir/spool (per node).
    state_dir: Path | None = None
    # The shipper's backlog and counters for `standby status` and /metrics; default: state_dir/ship-status.json.
    # A path on tmpfs (/run/...) keeps it writable when the spool's disk is full.
    status_file: Path | None = None
    batch_size: int = Field(500, ge=1, le=10_000)
    max_line_bytes: int = Field(65_536, ge=256, le=16 * 1024 * 1024)
    poll_interval_ms: int = Field(200, ge=10, le=60_000)
    connect_timeout_s: int = Field(2, ge=1, le=60)
    retry_max_ms: int = Field(2000, ge=50, le=600_000)
    # Free space under the spool below this raises the disk alert: a service that cannot append loses records.
    min_free_mb: int = Field(64, ge=0)
    # After a lost connection, send again what was committed this long before the last commit: a failover
    # in async (or degraded sync) can lose the newest commits, theirs included. Default: 0 when every
    # commit waits for the standby (sync without degrade_after_s), else 30.
    resend_window_s: float | None = Field(None, ge=0, le=3600)

    @field_validator("columns", "key")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if any(not n or n != n.strip() for n in v):
            raise ValueError("expected non-empty names without surrounding spaces")
        if len(set(v)) != len(v):
            raise ValueError("each name at most once")
        return v

    @field_validator("pattern")
    @classmethod
    def _in_dir(cls, v: str) -> str:
        if "/" in v:
            raise ValueError('a file name pattern within spool.path, without "/", e.g. "*.csv"')
        return v

    def path_for(self, node: str) -> Path:
        return Path(for_node(str(self.path), node))

    def problems(self) -> list[str]:
        """Cross-key checks, each naming its key and the fix."""
        out = []
        if self.format is SpoolFormat.CSV:
            if not self.columns:
                out.append('spool.columns: format "csv" needs the column names in the order the service writes '
                           'them, e.g. columns = ["caller_id_number", "destination_number", "start_stamp", "uuid"]')
            missing = [k for k in self.key if self.columns and k not in self.columns]
            if missing:
                out.append(f"spool.key: {', '.join(missing)} not in spool.columns; name key fields from the columns")
        else:
            if self.columns:
                out.append(f'spool.columns: only format "csv" has columns (format is "{self.format.value}"); remove it')
            if self.delimiter != ",":
                out.append(f'spool.delimiter: only format "csv" has a delimiter (format is "{self.format.value}"); '
                           "remove it")
        if self.delimiter in "\"\r\n":
            out.append("spool.delimiter: a quote or a line break cannot separate fields; use , ; | or a tab")
        return out


class ApiListen(StrEnum):
    """Where the agent's API listens, by role: the same file serves both nodes."""

    PRIVATE = "private"  # this node's private address: the peer's agent and the CLI on it
    LOCALHOST = "localhost"  # 127.0.0.1: the CLI and local checks
    PUBLIC = "public"  # this node's public address: only when asked (a load balancer's health checks)


class Api(_Strict):
    """The agent's HTTP API: who can reach it, for how long, and what needs the token."""

    # Not every address: whoever reaches the port can open connections, so the public side is opt-in.
    listen: list[ApiListen] = Field(default_factory=lambda: [ApiListen.PRIVATE, ApiListen.LOCALHOST], min_length=1)
    port: int = Field(8008, ge=1, le=65535)
    token_file: Path | None = None
    # Connections open at once from other hosts (loopback clients are never turned away); beyond
    # it a new connection is closed at once. Each connection serves one request.
    max_connections: int = Field(64, ge=1, le=4096)
    # A connection must deliver a complete request (after its TLS handshake, if any) within this
    # time, and a request's body too; slower clients are cut off. Health checks need milliseconds.
    request_timeout_s: float = Field(5.0, gt=0, le=60)
    # true: GET /status and /metrics need the token too (HAProxy's /primary, /replica, /health stay open).
    token_for_status: bool = False
    # Without [tls] the token travels in clear; the CLI then sends it only to loopback and the
    # nodes' private addresses, unless this is true (e.g. a private network of another shape).
    token_in_clear: bool = False

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bind" in data:
            raise ValueError('bind: replaced by listen, a list of "private", "localhost" and "public", e.g. '
                             'listen = ["private", "localhost"] (add "public" for a load balancer\'s health checks)')
        return data

    @field_validator("listen")
    @classmethod
    def _once_each(cls, v: list[ApiListen]) -> list[ApiListen]:
        if len(set(v)) != len(v):
            raise ValueError("each of private, localhost, public at most once")
        return v


def api_addresses(cfg: Config, node: str) -> list[ipaddress.IPv4Address]:
    """The addresses ``node``'s API listens on, from api.listen."""
    n = cfg.nodes[node]
    where = {ApiListen.PRIVATE: n.private.ip, ApiListen.PUBLIC: n.public.ip,
             ApiListen.LOCALHOST: ipaddress.IPv4Address("127.0.0.1")}
    return [where[w] for w in cfg.api.listen]


def token_may_travel(cfg: Config, host: str) -> bool:
    """Whether a client may send the API token to ``host``: always over TLS; in clear only to
    loopback or a node's private address, unless api.token_in_clear."""
    if cfg.tls is not None or cfg.api.token_in_clear:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: where it leads is not known here
    return ip.is_loopback or any(ip == n.private.ip for n in cfg.nodes.values())


def hosts_in_order(cfg: Config, purpose: str, own: str | None = None) -> list[str]:
    """Both nodes in the order a client (`standby dsn`, the shipper) should try them.

    ``own``: that node first, for a client running on it: after a failover it finds its local
    database at once rather than first waiting out a connect timeout on the dead peer (the same
    file on both nodes would send one of them to the dead one first). Otherwise, for writes the
    preferred primary first, for reports the other one: libpq tries hosts in order, and starting
    with the likely match saves one connection attempt.
    """
    if own is not None:
        return sorted(cfg.nodes, key=lambda n: n != own)
    return sorted(cfg.nodes, key=lambda n: (n == cfg.preferred_primary) == (purpose == "reporting"))


class Config(_Strict):
    cluster: str = Field(min_length=1, max_length=63)
    mode: Mode = Mode.HOT
    preferred_primary: str
    nodes: dict[str, Node]
    service_ips: list[ServiceIP] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)
    postgres: Postgres = Postgres()
    replication: Replication = Replication()
    timings: Timings = Timings()
    tiebreaker: TieBreaker | None = None
    alerts: Alerts = Alerts()
    api: Api = Api()
    rejoin: RejoinPolicy = RejoinPolicy.MANUAL
    salvage: Salvage = Salvage()
    reporting: Reporting | None = None
    # Replicas beside the pair that never vote and never promote themselves (docs/followers.md).
    followers: list[Follower] = Field(default_factory=list)
    tls: Tls | None = None  # absent: replication and the API run without TLS
    # Absent: no call records to ship. Left out of model_dump, hence of the agents' configuration
    # digest: only the shipper reads it, and a peer of an older version must still agree with this one.
    spool: Spool | None = Field(None, exclude=True)
    heartbeat_key_file: Path | None = None
    heartbeat_port: int = Field(8009, ge=1, le=65535)
    # Move the service role to the peer when the services keep failing their health check.
    services_move_on_failure: bool = True
    # Run after a manual promotion (warm mode: clients must learn a new address),
    # e.g. a DNS update. "{node}" and "{address}" become the new primary's name and
    # public address. An argument list, run without a shell.
    address_change_hook: Argv | None = None
    state_dir: Path = Path("/var/lib/standby")

    @field_validator("nodes")
    @classmethod
    def _two_nodes(cls, v: dict[str, Node]) -> dict[str, Node]:
        if len(v) != 2:
            raise ValueError(f"expected exactly two nodes, got {len(v)} ({', '.join(v) or 'none'})")
        for name in v:
            if not name or not all(c.isalnum() or c in "-_" for c in name) or len(name) > 32:
                raise ValueError(f"node name {name!r}: expected letters, digits, '-' or '_' (max 32)")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> Config:
        problems: list[str] = []
        if self.preferred_primary not in self.nodes:
            problems.append(
                f"preferred_primary: {self.preferred_primary!r} is not one of the nodes "
                f"({', '.join(self.nodes)})"
            )
        seen: dict[ipaddress.IPv4Address, str] = {}
        for name, node in self.nodes.items():
            for kind, link in (("public", node.public), ("private", node.private)):
                key = f"nodes.{name}.{kind}.address"
                if link.ip in seen:
                    problems.append(f"{key}: {link.ip} is already used by {seen[link.ip]}; every address must be unique")
                seen[link.ip] = key
        for i, sip in enumerate(self.service_ips):
            key = f"service_ips[{i}].address"
            if sip.address.ip in seen:
                problems.append(f"{key}: {sip.address.ip} is already used by {seen[sip.address.ip]}")
            seen[sip.address.ip] = key
            if self.mode is Mode.HOT:
                for name, node in self.nodes.items():
                    if sip.address.ip not in node.public.address.network:
                        problems.append(
                            f"{key}: {sip.address} is outside node {name}'s public subnet "
                            f"{node.public.address.network}; in hot mode a service IP must be in "
                            "the subnet of both nodes so it can float between them"
                        )
            else:
                nets = {n.public.address.network for n in self.nodes.values()}
                if len(nets) > 1:
                    problems.append(
                        f"{key}: warm-mode nodes are in different subnets ({', '.join(map(str, nets))}), "
                        "so a service IP cannot float between them; remove service_ips and use an "
                        "address-change hook instead"
                    )
        problems.extend(self._reporting_problems(seen))
        problems.extend(self._home_problems(seen))
        problems.extend(self.spool.problems() if self.spool else [])
        if self.mode is Mode.HOT:
            nets = {n.public.address.network for n in self.nodes.values()}
            if len(nets) > 1:
                problems.append(
                    "nodes.*.public.address: in hot mode both nodes must share one public subnet "
                    f"(got {', '.join(map(str, sorted(nets)))}); use mode = \"warm\" for nodes in different subnets"
                )
            if not self.service_ips:
                problems.append("service_ips: hot mode needs at least one service IP that floats to the active node")
        problems.extend(self._cluster_problems())
        problems.extend(self._follower_problems(seen))
        deg = self.replication.degrade_after_s
        if deg and deg * 1000 < 2 * self.timings.failover_timeout_ms:
            problems.append(
                f"replication.degrade_after_s: {deg:g} is too short; it must be at least twice "
                f"timings.failover_timeout_ms ({self.timings.failover_timeout_ms} ms) so the standby gives up "
                "its claim to promotion before the primary stops waiting for it"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _cluster_problems(self) -> list[str]:
        out = []
        for name, node in self.nodes.items():
            if not (node.postgres.cluster or self.postgres.cluster):
                continue
            for key in ("data_dir", "socket_dir"):
                where = [f"nodes.{name}.postgres.{key}"] if getattr(node.postgres, key) is not None else []
                where += [f"postgres.{key}"] if key in self.postgres.model_fields_set else []
                if where:
                    out.append(f"{where[0]} and postgres.cluster: both given for node {name}; a cluster's "
                               f"{key.replace('_', ' ')} is the one its postgresql.conf names: remove "
                               f"{where[0]}, or remove postgres.cluster to use a plain data directory")
        return out

    def _follower_problems(self, seen: dict[ipaddress.IPv4Address, str]) -> list[str]:
        """The topology's checks (standby.topology), a follower's address taken by a floating one, the quorum."""
        t = self.topology()
        out = [str(p) for p in (*topology.check(t), *topology.quorum_problems(t, self.replication.quorum),
                                *topology.wal_sender_problems(t, *self._max_wal_senders()))]
        # A node's own public and private addresses are topology's to check; its floating home address is here's.
        floating = {ip: key for ip, key in seen.items() if not key.startswith("nodes.") or key.endswith(".home_address")}
        for i, f in enumerate(self.followers):
            out += [f"followers[{i}].{suffix}: {ip} is already used by {floating[ip]}; every address must be unique"
                    for suffix, ip in f.addresses() if ip in floating]
        q = self.replication.quorum
        if q and self.replication.durability is Durability.ASYNC:
            out.append(f"replication.quorum: {q} with durability = \"async\", where no commit waits; remove quorum "
                       "or set durability = \"sync\"")
        elif q and self.mode is Mode.HOT and not topology.sync_plan(t, self.preferred_primary, True, q) \
                .hot_standby_has_every_commit:
            n = 1 + len(topology.quorum_candidates(t))
            out.append(f"replication.quorum: {q} of {n} lets the hot standby lack a commit another member "
                       "acknowledged, and automatic failover (mode = \"hot\") would lose it; set quorum = "
                       f"{n} (every member has each commit) or 0 (the hot standby only)")
        return out

    def _max_wal_senders(self) -> tuple[int, str]:
        """The value the servers get (postgres.extra_settings wins over the key, as primary_settings writes
        them), and the key that gave it; a value that is not a number is left to PostgreSQL to refuse."""
        extra = self.postgres.extra_settings.get("max_wal_senders")
        if extra is not None and not isinstance(extra, bool) and str(extra).strip().isdigit():
            return int(str(extra).strip()), "postgres.extra_settings.max_wal_senders"
        return self.postgres.max_wal_senders, "postgres.max_wal_senders"

    def topology(self) -> topology.Topology:
        """The pair and the followers, as standby.topology checks and plans them."""
        return topology.Topology(pair=self.nodes, followers=tuple(self.followers))

    def _reporting_problems(self, seen: dict[ipaddress.IPv4Address, str]) -> list[str]:
        rep = self.reporting
        if rep is None or rep.address is None:
            return []
        key, out = "reporting.address", []
        if rep.address.ip in seen:
            out.append(f"{key}: {rep.address.ip} is already used by {seen[rep.address.ip]}; the reporting IP "
                       "must be an address of its own")
        seen.setdefault(rep.address.ip, key)  # the checks after this one (home addresses, followers) see it
        nets = {n.public.address.network for n in self.nodes.values()}
        outside = [name for name, n in self.nodes.items() if rep.address.ip not in n.public.address.network]
        if len(nets) > 1 and self.mode is Mode.WARM:
            out.append(f"{key}: the nodes are in different subnets, so no address can float between them; "
                       "remove reporting.address and give clients `standby dsn --for reporting` instead")
        elif outside:
            out.append(f"{key}: {rep.address} is outside the public subnet of {', '.join(outside)}; it must be "
                       "in the subnet of both nodes so it can float between them")
        return out

    def _home_problems(self, seen: dict[ipaddress.IPv4Address, str]) -> list[str]:
        homes = {name: n.home_address for name, n in self.nodes.items()}
        given = [name for name, a in homes.items() if a is not None]
        if not given:
            return []
        out = []
        for name in (n for n in self.nodes if n not in given):
            out.append(f"nodes.{name}.home_address: missing while nodes.{given[0]}.home_address is given; the "
                       "peer adopts a node's home address, so give every node of the pair one, or none")
        if self.mode is Mode.WARM:
            out.append(f"nodes.{given[0]}.home_address: a warm standby never takes over by itself, so it never "
                       "adopts its peer's home address; remove home_address or use mode = \"hot\"")
        for name in given:
            key, addr = f"nodes.{name}.home_address", homes[name]
            assert addr is not None
            if addr.ip in seen:
                out.append(f"{key}: {addr.ip} is already used by {seen[addr.ip]}; a home address must be an "
                           "address of its own (the node's public address stays put; this one moves)")
            seen.setdefault(addr.ip, key)
            outside = [n for n, node in self.nodes.items() if addr.ip not in node.public.address.network]
            if outside:
                out.append(f"{key}: {addr} is outside the public subnet of {', '.join(outside)}; it must be in "
                           "the subnet of both nodes so the peer can adopt it")
        return out

    # -- derived views ----------------------------------------------------

    def peer_of(self, node: str) -> str:
        (other,) = [n for n in self.nodes if n != node]
        return other

    def pg(self, node: str) -> Postgres:
        """[postgres] with the node's own overrides applied.

        With a cluster, the data and socket directories are the cluster's, read from its files on
        this host; where it does not exist (the peer's cluster seen from here) postgresql-common's
        defaults stand in, and ``layout`` is what refuses a missing local cluster.
        """
        f = self.follower(node)
        own = self.nodes[node].postgres if node in self.nodes else (f and f.postgres) or NodePostgres()
        over = {k: v for k, v in own.model_dump().items() if v is not None}
        pg = self.postgres.model_copy(update=over)
        if pg.cluster is None:
            return pg
        ref = pglayout.ClusterRef.parse(pg.cluster)
        try:
            lay = pglayout.read_cluster(ref)
            paths = {"data_dir": lay.data_dir, "socket_dir": lay.socket_dir}
        except pglayout.LayoutError:
            paths = {"data_dir": ref.default_data_dir, "socket_dir": pglayout.DEFAULT_SOCKET_DIR}
        explicit_bin = "bin_dir" in over or "bin_dir" in self.postgres.model_fields_set
        return pg.model_copy(update={**paths, **({} if explicit_bin else {"bin_dir": ref.bin_dir})})

    def layout(self, node: str) -> pglayout.Layout:
        """Where ``node``'s PostgreSQL keeps its files on this host (LayoutError: a missing cluster)."""
        pg = self.pg(node)
        if pg.cluster is None:
            return pglayout.plain(pg.data_dir, pg.socket_dir)
        return pglayout.read_cluster(pglayout.ClusterRef.parse(pg.cluster))

    def state_dir_for(self, node: str) -> Path:
        n = self.nodes.get(node)  # a follower has no override
        return (n.state_dir if n is not None else None) or self.state_dir

    def follower(self, name: str) -> Follower | None:
        return next((f for f in self.followers if f.name == name), None)

    def warm_followers(self) -> list[str]:
        """The followers a person may promote after a site loss (role "warm")."""
        return [f.name for f in self.followers if f.role is FollowerRole.WARM]

    def link(self, name: str, network: str = "private") -> Link:
        """A pair node's or a follower's link on ``network`` ("private" or "public")."""
        member: Node | Follower | None = self.nodes.get(name) or self.follower(name)
        if member is None:
            raise KeyError(name)
        return member.private if network == "private" else member.public

    def spool_state_dir(self, node: str) -> Path:
        """Where `standby ship` keeps its offsets and the lines it set aside."""
        sp = self.spool
        return Path(for_node(str(sp.state_dir), node)) if sp and sp.state_dir else self.state_dir_for(node) / "spool"

    def spool_resend_window_s(self) -> float:
        """How far back the shipper sends again after a lost connection (see Spool.resend_window_s)."""
        if self.spool is not None and self.spool.resend_window_s is not None:
            return self.spool.resend_window_s
        r = self.replication
        return 0.0 if r.durability is Durability.SYNC and not r.degrade_after_s else 30.0

    def spool_status_file(self, node: str) -> Path:
        """The shipper's status (backlog, counters), read by the agent for /status and /metrics."""
        sp = self.spool
        if sp and sp.status_file:
            return Path(for_node(str(sp.status_file), node))
        return self.state_dir_for(node) / "ship-status.json"

    def slot_name(self, node: str) -> str:
        """The physical replication slot that streams WAL to ``node``."""
        return "standby_" + node.replace("-", "_").lower()


def _format_error(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            out.append(f"{loc}: missing; this key is required")
        elif e["type"] == "extra_forbidden":
            # Never its value: a secret pasted inline (password = ...) would be printed and logged.
            out.append(f"{loc}: unknown key; remove it or check its spelling")
        elif loc:
            out.append(f"{loc}: {msg} (got {e['input']!r})" if not isinstance(e["input"], dict) else f"{loc}: {msg}")
        else:
            out.extend(m.strip() for m in msg.split("\n"))
    return out


def parse(data: dict[str, Any], source: str = "") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err), source) from None


def load(path: Path | str) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"file {path} does not exist; pass --config or set {CONFIG_ENV}"]) from None
    except OSError as e:
        raise ConfigError([f"cannot read {path}: {e.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"not valid TOML: {e}"], str(path)) from None
    return parse(data, str(path))


def resolve_node(cfg: Config, node: str | None) -> str:
    """The local node's name, from the flag or the environment."""
    name = node or os.environ.get(NODE_ENV)
    if not name:
        raise ConfigError([f"no node name: pass --node NAME or set {NODE_ENV} (one of {', '.join(cfg.nodes)})"])
    if name not in cfg.nodes:
        raise ConfigError([f"node {name!r} is not in the configuration (nodes: {', '.join(cfg.nodes)})"])
    return name


def check_secret_mode(path: Path, what: str) -> None:
    """Refuse a secret file that is missing or that group or others can read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError([f"{what}: secret file {path} does not exist"]) from None
    if st.st_mode & 0o077:
        raise ConfigError(
            [f"{what}: secret file {path} is readable by group or others (mode {st.st_mode & 0o777:o}); run: chmod 600 {path}"]
        )


def read_secret(path: Path, what: str) -> str:
    """Read a secret file, refusing one that others can read."""
    check_secret_mode(path, what)
    value = path.read_text().strip()
    if not value:
        raise ConfigError([f"{what}: secret file {path} is empty"])
    return value
