"""The typed vocabulary shared by observation, decisions, actions and output."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PgRole(StrEnum):
    PRIMARY = "primary"  # running, not in recovery: accepts writes
    STANDBY = "standby"  # running, in recovery
    STOPPED = "stopped"  # data directory present, server not running
    EMPTY = "empty"  # no data directory yet (before a clone)
    UNREACHABLE = "unreachable"  # a remote node we could not reach


class SyncState(StrEnum):
    SYNC = "sync"
    POTENTIAL = "potential"
    QUORUM = "quorum"
    ASYNC = "async"
    NONE = "none"  # not connected as a replica


class Verdict(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, order=True)
class Lsn:
    """A WAL position; ordered and subtractable (bytes)."""

    value: int

    @classmethod
    def parse(cls, text: str | None) -> Lsn | None:
        if not text:
            return None
        hi, lo = text.split("/")
        return cls((int(hi, 16) << 32) | int(lo, 16))

    def __sub__(self, other: Lsn) -> int:
        return self.value - other.value

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class CheckItem:
    """One preflight finding, with a reason a person can act on."""

    node: str
    name: str
    verdict: Verdict
    reason: str


# -- the agent's vocabulary ------------------------------------------------


class Net(StrEnum):
    PUBLIC = "public"  # services and service IPs
    PRIVATE = "private"  # replication


class DbState(StrEnum):
    """A node's PostgreSQL as its own agent sees it."""

    PRIMARY = "primary"
    STANDBY = "standby"
    DOWN = "down"  # not running (crashed or stopped), not fenced
    # Fenced, but its server is still observed running (the stop may be queued or slow):
    # not yet evidence that this node stopped writing.
    FENCING = "fencing"
    FENCED = "fenced"  # fenced and observed stopped; stays down until rejoined


class Reason(StrEnum):
    """Why a decision was taken; one per named rule of the decision core."""

    SUPERSEDED = "superseded"  # the peer was promoted with a newer term
    DR_SERVES = "dr_serves"  # a warm follower accepts writes (a DR promotion): this primary stops, or stays down
    RESUMED_AFTER_FREEZE = "resumed_after_freeze"  # this agent stalled longer than the fence timeout
    ISOLATED = "isolated"  # no peer on any path and no tie-breaker
    PG_CRASHED_FAILOVER = "pg_crashed_failover"  # local PostgreSQL died; the in-sync standby takes over
    PG_CRASHED_RESTART = "pg_crashed_restart"  # local PostgreSQL died; restart in place
    PG_UNRESPONSIVE_FAILOVER = "pg_unresponsive_failover"  # local PostgreSQL answers nothing; the in-sync standby takes over
    WAL_FLUSH_STUCK_FAILOVER = "wal_flush_stuck_failover"  # local WAL not flushed, commits waiting (hung disk): hand over
    PRIVATE_LOST_HERE = "private_lost_here"  # this primary's replication link is down: hand the DB over
    PEER_DEAD = "peer_dead"  # primary silent on every path, tie-breaker seen, eligible: fail over
    PEER_RELEASED_DB = "peer_released_db"  # the primary fenced itself and handed the DB over
    DEGRADE = "degrade"  # sync standby away for degrade_after: stop waiting for it
    RESTORE_SYNC = "restore_sync"  # the standby is back and caught up: wait for it again
    PUBLIC_LOST_HERE = "public_lost_here"  # this node's service network is down: hand services over
    SERVICES_UNHEALTHY = "services_unhealthy"  # health checks keep failing: hand services over
    PEER_RELEASED_SERVICES = "peer_released_services"  # the peer let go of the service role
    NOBODY_SERVES = "nobody_serves"  # the primary takes the unclaimed service role
    BOTH_SERVE = "both_serve"  # both hold the service role: the one not preferred lets go
    REJOIN_AUTO = "rejoin_auto"  # rejoin = "auto": the fenced old primary follows the healthy new one
    FENCE_ENFORCED = "fence_enforced"  # a fenced node's PostgreSQL was found running: stop it again
    RESUMED_PRIMARY = "resumed_primary"  # fenced as a precaution, and the peer did not take over: serve again
    # Fenced as a precaution, and the peer is down or fenced in an older term: nobody took over, serve again.
    RESUMED_PEER_OLDER = "resumed_peer_older"
    SERVICES_TO_PRIMARY = "services_to_primary"  # a node without a database hands the service role to the primary


@dataclass(frozen=True)
class PeerView:
    """What the peer said in its last authenticated heartbeat."""

    term: int
    db: DbState
    services: bool  # holds the service role
    lsn: int | None  # primary: current WAL position; standby: received
    sync_ok: bool  # primary: the receiver is its synchronous standby and it is not degraded
    carrier: dict[Net, bool]
    tiebreaker_ok: bool | None
    releasing_services: bool = False
    preferred: bool = False
    # The reporting address (see standby.reporting); defaults keep older peers' messages valid.
    reporting: bool = False  # holds the reporting IP (or is still removing it)
    reporting_epoch: int = 0  # standby: its current in-bound episode, 0 when not in bound
    reporting_ack: int = 0  # primary: the standby episode it has stepped aside for
    # Holds this node's home address, adopted while this node was silent (or is still removing it): see
    # standby.homeaddr. Older peers do not say, and adopt nothing.
    home_adopted: bool = False
    # Standby: it would promote if its primary went away. An older peer does not
    # say; assume it would (the safe reading: see decide's rule 4).
    eligible: bool = True
    # A warm follower accepts writes (a DR promotion) and this node fenced itself for it: the database is not
    # handed over, and a standby that hears it gives up its claim to promotion. Older peers do not say.
    dr_serves: bool = False
    # Standby: a warm follower answered that it accepts writes, to a question this node asked in that term
    # (finding DR-relay): the primary of that term stops, as on its own answer. None: no such answer now.
    dr_writable_term: int | None = None


@dataclass(frozen=True)
class LocalPg:
    db: DbState  # PRIMARY, STANDBY or DOWN as observed (FENCING/FENCED come from state)
    lsn: int | None = None  # primary: current; standby: received
    streaming: bool = False  # standby: WAL receiver streaming
    peer_sync: bool = False  # primary: the peer is connected and 'sync'
    peer_flush_lsn: int | None = None  # primary: how far the peer has flushed
    replay_lsn: int | None = None  # standby: how far WAL has been applied (what queries see)
    # Standby: seconds since its WAL receiver last heard from the upstream server (the server's
    # own clock); None without a receiver. A live upstream PostgreSQL is evidence the primary writes.
    upstream_age_s: float | None = None
    # Primary: how far its WAL is on disk, and whether, with that position unchanged since the previous
    # reading, the server waits for it to move (a process waits on a WAL write or sync, or more than a page
    # is written and not flushed): standing still so, the WAL disk hangs (standby.observe.walstuck).
    flush_lsn: int | None = None
    wal_waiting: bool = False


@dataclass(frozen=True)
class Observation:
    now: float  # monotonic seconds
    gap: float  # seconds since the previous decision (a stalled agent sees a big one)
    pg: LocalPg
    peer: PeerView | None  # None until a heartbeat was ever heard
    heard: dict[Net, float | None]  # monotonic time of the last heartbeat per network
    carrier: dict[Net, bool]  # this node's own link state
    tiebreaker_ok: bool | None  # None: none configured
    services_healthy: bool | None  # None: not running here or no health command
    service_ip_elsewhere: bool | None = None  # ARP: someone else answers for a service IP
    # When this node sent the newest message the peer says it received (monotonic,
    # this node's clock); None until the peer confirms one (older peers never do).
    heard_me: float | None = None
    # The warm followers, looked at only while decide.dr_in_question holds (a running primary, a rebooted
    # primary's restart, a fenced primary's resumption); None: not looked, or no answer yet.
    dr: DrSeen | None = None
    dr_term: int | None = None  # the term this node was in when the question behind ``dr`` left
    # How long the agent's question to the local server, asked on its open connection, has gone unanswered
    # (0 with none outstanding). A running server answers within the statement timeout, with an error if
    # need be; one whose processes are stopped (a signal, a debugger) never does, and its last observation
    # (say PRIMARY) stands meanwhile. A connection that fails to open says nothing of the running server.
    pg_silent_s: float = 0.0
    # How long the readings have seen the local primary's WAL flush position stand still while awaited (0
    # otherwise; standby.observe.walstuck). Its server answers the agent's question, which reads memory only,
    # while no commit can finish: a hung disk.
    wal_stuck_s: float = 0.0


class DrSeen(StrEnum):
    """The warm followers ([[followers]] role "warm") as this pair node sees them."""

    CLEAR = "clear"  # every one answered, and none accepts writes
    WRITABLE = "writable"  # one accepts writes: a person promoted it (a site loss)
    UNKNOWN = "unknown"  # one did not answer: across a WAN that is down it may be serving


class ActionKind(StrEnum):
    PROMOTE = "promote"
    FENCE = "fence"  # stop PostgreSQL, refuse to be primary until rejoined
    RESTART_PG = "restart_pg"
    SET_SYNC = "set_sync"  # primary: synchronous_standby_names on (peer) or off ("")
    TAKE_SERVICES = "take_services"  # add service IPs (after ARP check), announce, start services
    RELEASE_SERVICES = "release_services"  # stop services, drop service IPs
    REJOIN = "rejoin"  # salvage, rewind (or clone), follow the peer


# The actions that only take a role away from this node: they can never make a second writer or holder,
# so they need no record on disk before they run (every other action waits for its decision's record).
ONLY_TAKE_AWAY: frozenset[ActionKind] = frozenset({ActionKind.FENCE, ActionKind.RELEASE_SERVICES})

# Fences whose stop goes straight to SIGKILL: a server whose disk completes no write. No clean stop can finish
# (a shutdown checkpoint writes WAL to the hung disk, and the processes waiting on it do not act on an immediate
# shutdown's SIGQUIT either), so the escalation's fast and immediate steps would only add their timeouts (10 s)
# to the time without a database. Not a server that answers nothing: where that is the agent's trouble, not the
# server's, a fast stop still sends an async standby the WAL it lacks (a stopped server is killed at once anyway,
# act.fence.stop_postgres).
KILL_AT_ONCE: frozenset[Reason] = frozenset({Reason.WAL_FLUSH_STUCK_FAILOVER})


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: Reason
    detail: str = ""
    sync_on: bool = False  # for SET_SYNC
