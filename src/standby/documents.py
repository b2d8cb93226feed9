"""The documents that cross a boundary between parts: typed, with one codec each.

- ``NodeFacts``: what a node records about itself in the replicated facts table (bootstrap writes
  it; `standby check`, `standby status` and bootstrap on the peer read it).
- ``AgentView``: an agent's own view, served by ``GET /status`` (the API) and read by `standby
  status`, `promote`, `switchover`, the lab and the chaos campaign.
- ``HistoryRecord``: one line of an agent's ``history.jsonl`` (and of ``AgentView.recent``).
- ``ShipperStatus``: what `standby ship` reports about itself (its status file, ``standby.spool.state``
  reads and writes it); ``SpoolView``: that status as a node's agent sees it (``AgentView.spool``,
  ``AgentSummary.spool``), with ``/metrics`` and `standby status` reading the same type.
- ``FollowerView``: a follower agent's own view (its ``GET /status``), read by `standby status`.
- ``PairStatus``: the pair as one node sees it (`standby status`, ``--json`` for scripts).
- ``Operation``: the operator operations an agent runs, by name, and the API path of each;
  the results of the ones whose answers a client reads.
- ``LabStatus``: the lab's topology and state (`standby lab status`, the campaign's and the
  tests' waits).

The heartbeat is the agent's own wire format and lives with its codec in ``standby.agent.heartbeat``.
Each codec's ``encode`` gives plain JSON values (the wire format is unchanged from the untyped
dicts it replaces); ``decode`` accepts what ``json.loads`` gave and raises ``DocumentError``
naming the document and the field when the input is not such a document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

import pydantic

from standby.config import Durability, FollowerRole, Mode, ReportingFallback
from standby.follow import FollowerReason
from standby.model import DbState, PgRole, SyncState
from standby.reporting import FollowerReportingReason

T = TypeVar("T")


class DocumentError(ValueError):
    """Input that is not the document it should be; the message names the document and the field."""


class Codec(Generic[T]):
    """Encode a document to JSON values and decode it back, validating every field."""

    def __init__(self, cls: type[T], name: str) -> None:
        self.name = name
        self._adapter: pydantic.TypeAdapter[T] = pydantic.TypeAdapter(cls)

    def encode(self, doc: T) -> dict[str, Any]:
        out = self._adapter.dump_python(doc, mode="json")
        assert isinstance(out, dict)
        return out

    def decode(self, data: object) -> T:
        if not isinstance(data, dict):
            raise DocumentError(f"{self.name}: expected a JSON object, got {type(data).__name__}")
        try:
            return self._adapter.validate_python(data)
        except pydantic.ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(document)'}: {err['msg']}"
                                 for err in e.errors(include_url=False))
            raise DocumentError(f"{self.name}: {problems}") from None


# -- node facts --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeFacts:
    node: str
    standby_version: str
    pg_major: int
    pg_version: str
    cpus: int
    memory_bytes: int
    hostname: str
    updated_at: datetime


NODE_FACTS: Codec[NodeFacts] = Codec(NodeFacts, "node facts")


# -- history -----------------------------------------------------------------------------------------

# The record's own fields; everything else on a history line is the event's detail.
_HISTORY_FIELDS = ("time", "node", "event")


@dataclass(frozen=True)
class HistoryRecord:
    time: datetime
    node: str
    event: str
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def now(cls, node: str, event: str, detail: dict[str, Any]) -> HistoryRecord:
        return cls(datetime.now(UTC), node, event, detail)


class _HistoryCodec:
    """One flat JSON object per record, as `standby history --json` has always printed: the
    detail's keys beside time, node and event. Encoding never fails (the agent records from its
    loop): a detail value JSON cannot hold is written as its text, a detail key that would hide
    one of the record's own fields gets a trailing underscore."""

    name = "history record"
    _inner: Codec[HistoryRecord] = Codec(HistoryRecord, name)
    _detail = pydantic.TypeAdapter(dict[str, Any])

    def encode(self, rec: HistoryRecord) -> dict[str, Any]:
        detail = self._detail.dump_python(rec.detail, mode="json", fallback=str)
        return {"time": rec.time.isoformat(timespec="milliseconds"), "node": rec.node, "event": rec.event,
                **{(f"{k}_" if k in _HISTORY_FIELDS else k): v for k, v in detail.items()}}

    def decode(self, data: object) -> HistoryRecord:
        if not isinstance(data, dict):
            raise DocumentError(f"{self.name}: expected a JSON object, got {type(data).__name__}")
        own = {k: data[k] for k in _HISTORY_FIELDS if k in data}
        own["detail"] = {k: v for k, v in data.items() if k not in _HISTORY_FIELDS}
        return self._inner.decode(own)


HISTORY = _HistoryCodec()


def _history_in(data: object) -> object:
    return HISTORY.decode(data) if isinstance(data, dict) else data


# A history record inside another document: flat, as on its own line.
FlatHistoryRecord = Annotated[HistoryRecord, pydantic.BeforeValidator(_history_in),
                              pydantic.PlainSerializer(lambda r: HISTORY.encode(r), return_type=dict)]


# -- operations --------------------------------------------------------------------------------------

class RejoinMethod(StrEnum):
    REWIND = "rewind"
    CLONE = "clone"
    NONE_NEEDED = "none needed"  # already on the new primary's timeline


class Operation(StrEnum):
    """An operator operation; the value is the agent's name for it (``Agent.operate``)."""

    DEMOTE = "demote"  # switchover, on the primary: services released, clean shutdown
    PROMOTE = "promote"  # switchover, on the standby: promote once the old primary's last WAL is here
    FOLLOW = "follow"  # switchover, on the old primary: start as a standby of the new one
    RESUME = "resume"  # switchover aborted: the old primary serves again
    REJOIN = "rejoin"
    REBUILD = "rebuild"  # `standby rejoin --from FOLLOWER`: rebuilt as the promoted follower's standby
    MANUAL_PROMOTE = "manual_promote"  # `standby promote`
    FENCE = "fence"

    @property
    def path(self) -> str:
        return _OPERATION_PATHS[self]


_OPERATION_PATHS: dict[Operation, str] = {
    Operation.DEMOTE: "/switchover/demote", Operation.PROMOTE: "/switchover/promote",
    Operation.FOLLOW: "/switchover/follow", Operation.RESUME: "/switchover/resume",
    Operation.REJOIN: "/rejoin", Operation.REBUILD: "/rebuild", Operation.MANUAL_PROMOTE: "/promote", Operation.FENCE: "/fence",
}


@dataclass(frozen=True)
class Demoted:
    checkpoint_lsn: str  # the old primary's shutdown checkpoint: the last WAL it wrote in that role
    timeline: int
    steps: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds), as the agent timed them


@dataclass(frozen=True)
class Promoted:
    term: int
    received_lsn: str
    problems: list[str] = field(default_factory=list)  # after the promotion: reported, not a refusal
    steps: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds), as the agent timed them


@dataclass(frozen=True)
class ManuallyPromoted:
    term: int
    steps: list[tuple[str, float]]  # (what, seconds)


@dataclass(frozen=True)
class Rejoined:
    method: RejoinMethod
    fork_lsn: str | None
    old_timeline: int | None
    salvage_report: str | None
    salvaged_rows: int
    kept_aside: str | None
    steps: list[tuple[str, float]]


DEMOTED: Codec[Demoted] = Codec(Demoted, "demote result")
PROMOTED: Codec[Promoted] = Codec(Promoted, "promote result")
MANUALLY_PROMOTED: Codec[ManuallyPromoted] = Codec(ManuallyPromoted, "manual promotion result")
REJOINED: Codec[Rejoined] = Codec(Rejoined, "rejoin result")


# -- the call-record shipper -------------------------------------------------------------------------

class ShipPhase(StrEnum):
    STARTING = "starting"
    SHIPPING = "shipping"  # records waiting and a primary at hand
    CAUGHT_UP = "caught_up"  # everything complete in the spool is in the database
    NO_PRIMARY = "no_primary"  # records waiting and no writable node answers


class ShipProblem(StrEnum):
    DISK_LOW = "disk_low"  # free space under the spool below spool.min_free_mb: a service cannot append
    NOT_SAVED = "progress_not_saved"  # the offsets could not be written (a full disk): lines will be sent again
    SPOOL_UNREADABLE = "spool_unreadable"
    NO_PRIMARY = "no_primary"


@dataclass(frozen=True)
class ShipperStatus:
    node: str
    pid: int
    updated_at: float  # wall clock, seconds since the epoch
    phase: ShipPhase
    backlog_bytes: int  # in the spool, not yet shipped or set aside
    backlog_files: int
    shipped: int
    duplicates: int
    rejected: int
    blank: int
    rejects_file: str
    server: str | None = None  # the writable node it ships to
    disk_free_bytes: int | None = None
    last_error: str | None = None
    problems: tuple[ShipProblem, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SpoolView:
    """A node's shipper as its agent reads it from the shipper's status file."""

    running: bool  # its status was updated lately
    error: str | None  # why there is no status to read (no file, a damaged one)
    age_s: float | None  # how old the status is; None without one
    status: ShipperStatus | None  # None: nothing readable


SPOOL_VIEW: Codec[SpoolView] = Codec(SpoolView, "spool view")


# -- the agent's status view -------------------------------------------------------------------------

@dataclass(frozen=True)
class MaintenanceView:
    by: str
    since: str  # UTC, ISO 8601
    until: str
    remaining_s: int


MAINTENANCE_VIEW: Codec[MaintenanceView] = Codec(MaintenanceView, "maintenance")


@dataclass(frozen=True)
class PostgresView:
    state: DbState  # FENCED whenever the agent is fenced, whatever its server does
    lsn: int | None  # primary: current WAL position; standby: received
    streaming: bool
    peer_sync: bool
    synchronous_standby_names: str | None
    # How long the agent's question to its server has been left unanswered on the open connection (0: none
    # outstanding). Past operations.UNANSWERED_REFUSE_S a person's operations are refused. Absent from older agents.
    unanswered_s: float = 0.0
    # How long a primary's WAL flush position has stood still with commits waiting on it (0: flushing, or
    # nothing waits; standby.observe.walstuck): a hung disk. Absent from older agents.
    wal_stuck_s: float = 0.0


@dataclass(frozen=True)
class StateView:
    term: int
    fenced: bool
    services: bool
    degraded: bool
    eligible: bool
    promoting: bool
    sync_established: bool
    dr_serves: bool = False  # fenced because a warm follower accepts writes (decide.py rule 7)
    dr_writable_seen: bool = False  # a warm follower seen accepting writes, not yet seen to follow again (rule 7)


@dataclass(frozen=True)
class PeerSummary:
    """What the peer said in its last heartbeat, as far as a person needs it."""

    term: int
    db: DbState
    services: bool
    sync_ok: bool
    reporting: bool


@dataclass(frozen=True)
class HeartbeatCounts:
    accepted: int
    rejected: dict[str, int]  # by reason
    sent: dict[str, int]  # by network
    send_errors: dict[str, int]
    # This agent's heartbeat protocol (major) and the peer's, when its messages are refused for it
    # (standby.protocol); both absent from agents before protocol 1.1, which speak 1.
    protocol: int = 1
    peer_protocol: int | None = None


@dataclass(frozen=True)
class ReportingView:
    address: str
    held: bool
    fallback: ReportingFallback
    max_lag_bytes: int
    reason: str | None  # ReportingReason's text
    lag_bytes: int | None
    episode: int
    ack: int


@dataclass(frozen=True)
class AgentView:
    node: str
    peer: str
    cluster: str
    mode: Mode
    durability: Durability
    standby_version: str
    suspended: bool
    postgres: PostgresView
    state: StateView
    peer_heard_s_ago: dict[str, float | None]  # by network; None: never heard
    peer_view: PeerSummary | None
    carrier: dict[str, bool]
    tiebreaker_ok: bool | None
    services_healthy: bool | None
    heartbeats: HeartbeatCounts
    recent: list[FlatHistoryRecord]  # the newest of this agent's history
    reporting: ReportingView | None
    # Who suspended failover, until when; absent from an agent older than the deadline (protocol 1.0),
    # which still decodes (standby.protocol: a minor only adds fields with a default).
    maintenance: MaintenanceView | None = None
    # None without [spool]; absent from an agent older than the spool, which still decodes.
    spool: SpoolView | None = None

    def last_heard_s_ago(self) -> float | None:
        """Seconds since the peer was last heard on any network; None if never."""
        heard = [v for v in self.peer_heard_s_ago.values() if v is not None]
        return min(heard) if heard else None


AGENT_VIEW: Codec[AgentView] = Codec(AgentView, "agent status")


# -- a follower's own view, served by its agent's GET /status -----------------------------------------

class FollowerRejoinPhase(StrEnum):
    RUNNING = "running"
    DONE = "done"  # streaming from the primary it was rejoined to
    FAILED = "failed"  # refused (nothing changed) or stopped part-way: said in ``error``; tried again later


@dataclass(frozen=True)
class FollowerRejoin:
    """A follower's last automatic rejoin (standby.follow, rule 4), as its view shows it."""

    phase: FollowerRejoinPhase
    source: str  # the primary it was rejoined to
    why: str  # what the decision saw: replayed past the fork
    started_at: datetime
    finished_at: datetime | None = None
    method: RejoinMethod | None = None
    # The rows this follower alone had (after the fork), kept for a person: `standby salvage show FILE`,
    # then `standby salvage apply FILE` on the pair's primary. Nothing is applied by the rejoin.
    salvage_report: str | None = None
    salvaged_rows: int = 0
    kept_aside: str | None = None  # a clone's old data directory, kept until its salvage is dealt with
    error: str | None = None
    steps: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FollowerView:
    node: str
    cluster: str
    role: FollowerRole
    upstream: str  # as configured: "primary", "standby" or a follower's name
    standby_version: str
    running: bool
    in_recovery: bool
    streaming: bool
    streaming_from: str | None  # the node its WAL receiver streams from
    timeline: int | None
    received_lsn: str | None
    replay_lsn: str | None
    lag_bytes: int | None  # WAL the primary has flushed that is not replayed here
    lag_seconds: float | None  # since the newest transaction replayed here committed on the primary
    loss_bytes: int | None  # WAL a DR promotion now would lose (not received here); None: unknown
    term: int  # the newest term of the pair heard
    primary: str | None  # that term's primary, once heard
    target: str | None  # where it was last pointed
    reason: FollowerReason  # the last step's rule
    site_silent_s: float  # since a pair node was last heard (from this agent's start or its last stall)
    promoted: bool  # an operator took it out of recovery
    pg_version_num: int | None = None  # its server's server_version_num, once it has answered
    rejoin: FollowerRejoin | None = None  # its last automatic rejoin since its agent started
    # A reporting follower's own reporting IP ([[followers]] reporting_ip): held here now, and why (None: none set).
    reporting_ip: str | None = None
    reporting_ip_held: bool = False
    reporting_ip_reason: FollowerReportingReason | None = None


FOLLOWER_VIEW: Codec[FollowerView] = Codec(FollowerView, "follower status")


# -- the pair's status, as one node sees it ----------------------------------------------------------

@dataclass(frozen=True)
class PgStatus:
    state: PgRole
    reached_via: str | None  # "socket" or an address
    version: str | None
    timeline: int | None
    current_lsn: str | None  # primary only
    receive_lsn: str | None  # standby only
    replay_lsn: str | None
    lag_bytes: int | None  # standby: WAL the primary has that it has not replayed
    lag_seconds: float | None
    sync_state: SyncState | None
    receiver_status: str | None
    upstream: str | None
    rewindable: bool | None
    error: str | None
    replay_age_s: float | None
    replay_paused: bool | None
    cancelled_queries: int | None  # by WAL replay, since the statistics were reset
    conflicts: dict[str, int] | None  # the same, by cause


@dataclass(frozen=True)
class AgentSummary:
    running: bool
    term: int
    fenced: bool
    services: bool
    degraded: bool
    eligible: bool
    suspended: bool
    maintenance: MaintenanceView | None
    peer_heard_s_ago: dict[str, float | None]
    spool: SpoolView | None  # the agent's view of its node's shipper; None without [spool]


@dataclass(frozen=True)
class NodeStatus:
    role: PgRole
    preferred_primary: bool
    postgres: PgStatus
    service_ips: list[str]
    agent: AgentSummary | None  # None: the agent does not answer
    standby_version: str | None
    observed_at: str  # UTC, ISO 8601


@dataclass(frozen=True)
class IpStatus:
    holders: list[str]  # node names, or "unknown <mac>" for a stranger on the link
    arp_probed: bool  # False when only this node's own interfaces could be checked


@dataclass(frozen=True)
class HomeStatus:
    address: str
    holders: list[str]  # node names, or "unknown <mac>"
    arp_probed: bool


@dataclass(frozen=True)
class ReportingStatus:
    address: str | None
    holders: list[str]
    arp_probed: bool
    fallback: ReportingFallback
    max_lag_bytes: int
    hot_standby_feedback: bool
    max_standby_streaming_delay_ms: int


@dataclass(frozen=True)
class PairStatus:
    cluster: str
    mode: Mode
    durability: Durability
    observer: str
    observed_at: str  # UTC, ISO 8601
    primary: str | None  # the one writable node; None with none or two
    nodes: dict[str, NodeStatus]  # in the configuration's order
    service_ips: dict[str, IpStatus]  # by address
    reporting: ReportingStatus | None
    warnings: list[str]
    # [[followers]], in the file's order: each one's own view (None: its agent does not answer).
    followers: dict[str, FollowerView | None] = field(default_factory=dict)
    # Each node's home address ([nodes.NAME] home_address), by its owner's name: who holds it (the owner, or
    # the peer that adopted it while the owner was gone). Empty without home addresses.
    home_addresses: dict[str, HomeStatus] = field(default_factory=dict)


PAIR_STATUS: Codec[PairStatus] = Codec(PairStatus, "pair status")



# -- the lab, as `standby lab status` shows it ---------------------------------------------------------

@dataclass(frozen=True)
class LabNamespace:
    name: str
    exists: bool
    processes: int


@dataclass(frozen=True)
class LabLink:
    address: str  # with its prefix length
    interface: str
    switch_port: str


@dataclass(frozen=True)
class LabNode:
    netns: str
    public: LabLink
    private: LabLink
    pgdata: str
    socket_dir: str
    state_dir: str
    log_dir: str
    port: int
    dsn_local: str
    dsn_private: str
    postgres_running: bool
    postgres_initialised: bool
    links: dict[str, str]  # by network: "up" or "down" at the switch; empty without a switch
    frozen: bool
    loss: dict[str, int]  # by network: percent of packets dropped on the way in

    def reachable(self) -> bool:
        """Clients can reach what it holds: its public link is up and it is not frozen."""
        return self.links.get("public") == "up" and not self.frozen


@dataclass(frozen=True)
class LabClient:
    netns: str
    address: str
    interface: str
    links: dict[str, str]
    frozen: bool


@dataclass(frozen=True)
class LabFloatingIp:
    address: str
    interface: str
    holders: list[str]  # the nodes that have it configured


@dataclass(frozen=True)
class LabSwitch:
    netns: str
    bridges: dict[str, str]  # by network


@dataclass(frozen=True)
class LabStatus:
    name: str
    root: str
    config_path: str
    durability: str
    mode: str
    namespaces: dict[str, LabNamespace]  # by role
    switch: LabSwitch
    nodes: dict[str, LabNode]
    client: LabClient
    service_ips: list[LabFloatingIp]
    reporting_ip: LabFloatingIp | None  # hot mode only
    tiebreaker: str
    gateway: str

    def reachable_holders(self, ip: LabFloatingIp | None) -> list[str]:
        """Nodes holding ``ip`` where clients can reach it (a crashed host's leftovers do not count)."""
        return [] if ip is None else [n for n in ip.holders if n in self.nodes and self.nodes[n].reachable()]


LAB_STATUS: Codec[LabStatus] = Codec(LabStatus, "lab status")
