"""A small deterministic world in which two agents run the real decision core.

It models what the decisions depend on (links, freezes, crashes, heartbeats,
streaming, the service IPs, client writes) coarsely, in ticks of 100 ms, so
that random fault schedules can search for a broken invariant in seconds.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

from standby import operations as ops
from standby.agent.store import Store
from standby.decide import Policy, State, advertise, decide, dr_in_question, fence_needed
from standby.model import ActionKind, DbState, DrSeen, LocalPg, Net, Observation, PeerView, Reason
from standby.observe.walstuck import WalWatch

TICK = 0.1
NODES = ("a", "b")  # "a" is the preferred primary
# A warm follower promoted by a person (decide.py rule 7): the agents' prober asks every second, so an
# agent reads the promotion this long after it happened.
DR_SEEN_AFTER = 1.0


@dataclass
class Node:
    name: str
    pg: DbState  # PRIMARY / STANDBY / DOWN (running server as it is)
    data_primary: bool  # what a restart of the server brings back
    data: list[int] = field(default_factory=list)  # committed call ids, in WAL order
    alive: bool = True
    frozen: bool = False
    agent_up: bool = True
    links: dict[Net, bool] = field(default_factory=lambda: {Net.PUBLIC: True, Net.PRIVATE: True})
    loss: dict[Net, int] = field(default_factory=lambda: {Net.PUBLIC: 0, Net.PRIVATE: 0})
    holds_ips: bool = False
    sync_names_on: bool = False
    sync_names_since: float = 0.0  # pg_stat_replication says "sync" only a little after the names are set
    state: State = field(default_factory=State)
    last_step: float = 0.0
    heard: dict[Net, float | None] = field(default_factory=lambda: {Net.PUBLIC: None, Net.PRIVATE: None})
    peer_view: PeerView | None = None
    streaming: bool = False
    pending_fence: bool = False  # the agent died; its unclean-exit fence runs when the host can run it
    stop_due: float | None = None  # a stop of PostgreSQL under way: the server is down from then on
    last_wal_at: float | None = None  # standby: when its WAL receiver last got data from the upstream
    store: Store | None = None
    # Promoted while the peer's host was paused (kept across this server's restarts: that
    # peer's server thawed into a fence and never writes again outside that window).
    promoted_over_frozen: bool = False
    thawed_at: float | None = None  # when the host was last let go after a pause
    writable_since: float | None = None  # since when its server accepts writes (for rule 7's bound)
    agent_since: float = 0.0  # when its agent (re)started: a dead agent reads no answer
    starting_until: float | None = None  # a booted agent's start-up: it sends before it first decides
    # The warm follower's answers as this node's prober gets them: the share lost (a slow or cut WAN
    # from this node to the DR site reads UNKNOWN), and when it first read the DR node writable.
    dr_loss: int = 0
    dr_unanswered: bool = False  # an answer was lost since the DR promotion: "could have read" needs a read
    dr_read_at: float | None = None
    # When it first heard its standby relay a WRITABLE answer asked in the term given (finding DR-relay).
    relay_heard: tuple[float, int] | None = None
    # The agent's tie-breaker probe: the last success. Like the real agent, an
    # observation reads the last result, so after a freeze it is stale.
    tb_ok_at: float = -math.inf
    heard_me: float | None = None  # the peer's acknowledgement (delivery is instant: send time = its receipt)
    # Its server answers nothing since then (a hung disk, stopped by a signal): no commit, no WAL sent, and its
    # agent's readings hang, so the agent keeps its last reading (last_pg). A kill (a fence's SIGKILL) ends it.
    hung_since: float | None = None
    last_pg: LocalPg | None = None
    # Its disk completes no write since then (a hung disk): its server answers the agent's readings, but no
    # commit finishes, no WAL is flushed or sent, and a standby stores nothing received. A kill does not end it
    # (the processes die, the disk stays hung); a crash does (the host comes back with a disk that works).
    disk_hung_since: float | None = None
    wal: WalWatch = field(default_factory=WalWatch)  # the agent's watch over its readings (observe.walstuck)

    def up(self, net: Net) -> bool:
        return self.alive and not self.frozen and self.links[net]

    def serving_pg(self) -> bool:
        return (self.alive and not self.frozen and self.pg is DbState.PRIMARY and self.hung_since is None
                and self.disk_hung_since is None)


@dataclass
class Violation(Exception):
    what: str
    t: float


class World:
    def __init__(self, policy_for: dict[str, Policy], seed: int, stop_delay: float = 0.0,
                 agent_fence_delay: float = 0.0, sync_report_delay: float = 0.0) -> None:
        self.t = 0.0
        self.rng = random.Random(seed)
        self.policy = dict(policy_for)
        # How long stopping PostgreSQL takes: after a decided fence, and in the
        # unclean-exit fence of a killed agent (which drops the addresses first).
        self.stop_delay = stop_delay
        self.agent_fence_delay = agent_fence_delay
        # From setting synchronous_standby_names to the standby shown as "sync" (a reload, then the
        # standby's next reply): the primary's agent sees the old answer meanwhile.
        self.sync_report_delay = sync_report_delay
        self.nodes = {
            "a": Node("a", DbState.PRIMARY, True, holds_ips=True, sync_names_on=policy_for["a"].sync),
            "b": Node("b", DbState.STANDBY, False),
        }
        # The agents persist their state through the real Store, as the agent and
        # `standby fence --if-unclean` do; tmpfs when there is one (fsync is cheap there).
        shm = Path("/dev/shm")
        self.dir = Path(tempfile.mkdtemp(prefix="standby-sim-", dir=shm if shm.is_dir() else None))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)
        for n in self.nodes.values():
            n.store = Store(self.dir / n.name, n.name)
            n.state = State(services=n.holds_ips, watching_since=0.0, was_primary=n.pg is DbState.PRIMARY)
            n.store.save_state(n.state)
        self.acked: list[int] = []
        self.dr_promoted_at: float | None = None  # a warm follower accepts writes from then on
        self.next_call = 1
        self.log: list[str] = []
        self.role_changes = 0

    def close(self) -> None:
        self._cleanup()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def peer(self, name: str) -> Node:
        return self.nodes["b" if name == "a" else "a"]

    # -- the physical world ---------------------------------------------------

    def _delivered(self, src: Node, dst: Node, net: Net) -> bool:
        if not (src.up(net) and dst.up(net)):
            return False
        loss = max(src.loss[net], dst.loss[net])
        return self.rng.randrange(100) >= loss

    def _tiebreaker(self, n: Node) -> bool:
        return n.up(Net.PUBLIC) and self.rng.randrange(100) >= n.loss[Net.PUBLIC]

    def _replicate(self) -> None:
        for s in self.nodes.values():
            p = self.peer(s.name)
            s.streaming = (s.pg is DbState.STANDBY and s.alive and not s.frozen and s.hung_since is None
                           and s.disk_hung_since is None and p.serving_pg()
                           and s.up(Net.PRIVATE) and p.up(Net.PRIVATE)
                           and s.data == p.data[: len(s.data)])  # a diverged standby cannot follow
            if s.streaming:
                s.data = list(p.data)
                s.last_wal_at = self.t

    def _client_write(self) -> None:
        """One call through whichever node answers on the service IP."""
        holders = [n for n in self.nodes.values() if n.holds_ips and n.up(Net.PUBLIC)]
        if len(holders) > 1:
            raise Violation("two reachable nodes hold the service IPs", self.t)
        if not holders:
            return
        front = holders[0]
        # The service follows any writable server it can reach (multi-host DSN).
        for db in (front, self.peer(front.name)):
            reach = db is front or any(front.up(n) and db.up(n) for n in Net)
            if not (reach and db.serving_pg()):
                continue
            other = self.peer(db.name)
            if db.sync_names_on and not (other.streaming and other.pg is DbState.STANDBY):
                return  # the commit waits for a standby that is not there: not acknowledged
            call = self.next_call
            self.next_call += 1
            db.data.append(call)
            if db.sync_names_on:
                other.data = list(db.data)
            self.acked.append(call)
            return

    # -- the agents -----------------------------------------------------------

    def _observe(self, n: Node) -> Observation:
        p = self.peer(n.name)
        hung = n.hung_since is not None and n.last_pg is not None
        pg = n.last_pg if hung else LocalPg(
            db=n.pg,
            lsn=len(n.data),
            streaming=n.streaming,
            peer_sync=(n.pg is DbState.PRIMARY and n.sync_names_on and p.streaming
                       and self.t - n.sync_names_since >= self.sync_report_delay),
            peer_flush_lsn=len(p.data) if p.streaming else None,
            upstream_age_s=(self.t - n.last_wal_at if n.pg is DbState.STANDBY and n.last_wal_at is not None
                            else None),
            flush_lsn=len(n.data) if n.pg is DbState.PRIMARY else None,
            # The service's calls wait on the hung disk's commits (the sim's client writes at every tick).
            wal_waiting=n.pg is DbState.PRIMARY and n.disk_hung_since is not None,
        )
        assert pg is not None
        if not hung:  # a reading that arrived: the agent's watch moves with it
            n.wal = n.wal.after(pg, self.t)
        n.last_pg = pg
        elsewhere = p.holds_ips and p.up(Net.PUBLIC) and n.up(Net.PUBLIC)
        pol = self.policy[n.name]
        obs = Observation(
            now=self.t, gap=self.t - n.last_step, pg=pg, peer=n.peer_view, heard=dict(n.heard),
            carrier={net: n.links[net] for net in Net}, tiebreaker_ok=self.t - n.tb_ok_at < pol.tiebreaker_window_s(),
            services_healthy=True if n.holds_ips else None, service_ip_elsewhere=elsewhere, heard_me=n.heard_me,
            dr=self._dr_seen(n, pol), dr_term=n.state.term,  # asked and answered within the step
            pg_silent_s=self.t - n.hung_since if hung and n.hung_since is not None else 0.0,
            wal_stuck_s=n.wal.stuck_s(),
        )
        if self._tiebreaker(n):  # the probe runs after this step has read its last result
            n.tb_ok_at = self.t
        return obs

    def _dr_seen(self, n: Node, pol: Policy) -> DrSeen | None:
        """What the agent's prober last read of the warm follower: asked only while decide says it matters."""
        if not pol.dr_watch or not dr_in_question(n.state, n.pg, pol.hot):
            return None
        if n.dr_loss and self.rng.randrange(100) < n.dr_loss:  # drawn only then: other schedules keep their stream
            n.dr_unanswered = n.dr_unanswered or self.dr_promoted_at is not None
            return DrSeen.UNKNOWN
        promoted = self.dr_promoted_at is not None and self.t - self.dr_promoted_at >= DR_SEEN_AFTER
        if promoted and n.dr_read_at is None:
            n.dr_read_at = self.t
        return DrSeen.WRITABLE if promoted else DrSeen.CLEAR

    def _dr_could_have_read(self, n: Node) -> float | None:
        """Since when this node's agent could know the DR node accepts writes: from its first such answer,
        or, while none of its answers was lost, from when the next question would have read it."""
        if self.dr_promoted_at is None:
            return None
        if n.dr_read_at is not None or n.dr_unanswered:
            return n.dr_read_at
        return self.dr_promoted_at + DR_SEEN_AFTER

    def _step_agent(self, n: Node) -> None:
        pol = self.policy[n.name]
        obs = self._observe(n)
        if n.starting_until is not None and self.t < n.starting_until:
            # Starting: the link is open and says the restored state before the first decision.
            self._send(n, obs, pol)
            return
        n.starting_until = None
        before = n.state
        n.state, actions = decide(n.state, obs, pol)
        n.last_step = self.t
        if n.state.resumable and not n.state.fenced:  # it speaks for one fence only (adversarial read F1)
            raise Violation(f"{n.name} carries a resumable fence while not fenced", self.t)
        assert n.store is not None
        if n.store.unsaved(n.state):
            n.store.save_state(n.state)  # on disk before the action it allows, as the agent does
        for a in actions:
            self.log.append(f"{self.t:7.1f} {n.name} {a.kind.value} ({a.reason.value}) {a.detail}")
            if a.kind is ActionKind.PROMOTE and n.pg is DbState.STANDBY:
                if obs.peer is not None and obs.peer.dr_serves:
                    raise Violation(f"{n.name} promoted after its peer fenced itself for a DR node", self.t)
                known = self._dr_could_have_read(n)
                if pol.dr_watch and known is not None and self.t >= known:
                    # Finding DR-window: its own prober read the DR node's answer, or could have by now (CI
                    # run 31: one lost answer after a WRITABLE one must not make it eligible again).
                    raise Violation(f"{n.name} promoted beside the DR node it could see accepting writes", self.t)
                n.pg, n.data_primary = DbState.PRIMARY, True
                # Over a paused peer, or one let go in this very tick: the silence acted on was its pause
                # (a primary paused through the whole failover window cannot fence in time).
                peer = self.peer(n.name)
                n.promoted_over_frozen = peer.frozen or (peer.thawed_at is not None and round(self.t - peer.thawed_at, 3) <= TICK)
                self.role_changes += 1
            elif a.kind is ActionKind.FENCE:
                if n.pg is not DbState.DOWN and n.stop_due is None:
                    n.stop_due = self.t + self.stop_delay
                    self.role_changes += 1
            elif a.kind is ActionKind.RESTART_PG and n.pg is DbState.DOWN:
                n.pg = DbState.PRIMARY if n.data_primary else DbState.STANDBY
            elif a.kind is ActionKind.TAKE_SERVICES:
                if obs.service_ip_elsewhere:  # the shell's duplicate-address check refuses
                    n.state = replace(n.state, services=False)
                else:
                    n.holds_ips = True
                    self.role_changes += 1
            elif a.kind is ActionKind.RELEASE_SERVICES:
                n.holds_ips = False
        self._stop_due_servers()
        if before.fenced and n.pg is DbState.PRIMARY and n.stop_due is None:
            # Only by rule 4's exception, and only when it is true that nobody took over.
            other = self.peer(n.name)
            standby_peer = any(a.reason is Reason.RESUMED_PRIMARY for a in actions)
            older_peer = any(a.reason is Reason.RESUMED_PEER_OLDER for a in actions)
            if (not (standby_peer or older_peer) or other.pg is DbState.PRIMARY or other.state.promoting
                    or other.state.term > n.state.term or (older_peer and other.state.term >= n.state.term)):
                raise Violation(f"fenced node {n.name} is primary again", self.t)
        if n.state.term < before.term:
            raise Violation(f"term went back on {n.name}", self.t)
        # The shell keeps synchronous_standby_names as the state says.
        names_on = pol.sync and not n.state.degraded and n.pg is DbState.PRIMARY
        if names_on and not n.sync_names_on:
            n.sync_names_since = self.t
        n.sync_names_on = names_on
        self._send(n, obs, pol)

    def _send(self, n: Node, obs: Observation, pol: Policy) -> None:
        view = advertise(n.state, obs.pg, obs.carrier, obs.tiebreaker_ok, pol.preferred, pol.sync, hot=pol.hot)
        p = self.peer(n.name)
        acked = max((t for t in n.heard.values() if t is not None), default=None)
        for net in Net:
            if self._delivered(n, p, net) and p.agent_up:
                p.heard[net] = self.t
                p.peer_view = view
                relayed = view.dr_writable_term
                if relayed is not None and (p.relay_heard is None or p.relay_heard[1] != relayed):
                    p.relay_heard = (self.t, relayed)
                if acked is not None:
                    p.heard_me = acked if p.heard_me is None else max(p.heard_me, acked)

    def _stop_due_servers(self) -> None:
        for n in self.nodes.values():
            if n.stop_due is not None and n.stop_due <= self.t and not n.frozen:
                n.stop_due = None
                n.pg, n.streaming, n.hung_since = DbState.DOWN, False, None  # the stop ends in SIGKILL

    def tick(self) -> None:
        self.t = round(self.t + TICK, 3)
        self._stop_due_servers()
        for name in NODES:
            n = self.nodes[name]
            if n.alive and not n.frozen and n.agent_up:
                self._step_agent(n)
        self._replicate()
        self._client_write()
        writable = [n.name for n in self.nodes.values()
                    if n.serving_pg() and any(n.up(net) for net in Net)
                    and not (n.sync_names_on and not self.peer(n.name).streaming)]
        if len(writable) > 1 and not any(self._thaw_window(self.nodes[x]) for x in writable):
            raise Violation(f"two writable, reachable primaries: {writable}", self.t)
        self._beside_the_dr_node()

    def _beside_the_dr_node(self) -> None:
        """Rule 7: once a warm follower accepts writes, a pair node's server may accept them beside it only
        until its agent has read the answer and the stop has run, counted from when it could have read it
        (_dr_could_have_read), from when it became writable or from when its agent last started, whichever
        is latest. While its agent is dead
        nobody asks: its unclean-exit fence stops the server only if the peer could have taken over, and a
        primary whose peer is down keeps serving until its agent is back (at once, under systemd)."""
        for n in self.nodes.values():
            # A paused host answers nobody, and neither does a server that answers nothing or whose disk completes
            # no write (its bound counts from when it serves again: its agent then reads it and stops it).
            writable = (n.alive and not n.frozen and n.pg is DbState.PRIMARY and n.hung_since is None
                        and n.disk_hung_since is None)
            n.writable_since = (n.writable_since if n.writable_since is not None else self.t) if writable else None
        if self.dr_promoted_at is None:
            return
        # From the read, or when it could have come, or from its standby's word for its own term (finding
        # DR-relay), whichever came first. A node that neither read the answer nor heard it relayed is not held
        # to a bound: alone it cannot know (across a cut WAN, the accepted risk).
        bound = max(self.stop_delay, self.agent_fence_delay) + 3 * TICK
        for n in self.nodes.values():
            since, known = n.writable_since, self._dr_could_have_read(n)
            relay = n.relay_heard
            if relay is not None and relay[1] == n.state.term and self.policy[n.name].dr_watch:
                known = relay[0] if known is None else min(known, relay[0])
            if (since is not None and known is not None and not n.frozen and n.agent_up
                    and self.t - max(since, known, n.agent_since) > bound):
                raise Violation(f"{n.name} accepts writes beside the promoted DR node", self.t)

    def promote_dr(self) -> None:
        """A person promotes a warm follower while this pair's site could not be reached."""
        if self.dr_promoted_at is None:
            self.dr_promoted_at = self.t

    def _thaw_window(self, n: Node) -> bool:
        """The one overlap no decision can prevent: the peer was promoted while this host was paused,
        and this node's server, thawed with it, is being stopped (fence first, ask later); it lasts
        as long as the stop takes. Acting on this node's word (M2) or on its agent's silence alone
        (H4) is not this case: there the peer promoted while this server ran."""
        return n.stop_due is not None and self.peer(n.name).promoted_over_frozen

    # -- faults -----------------------------------------------------------------

    def crash(self, name: str) -> None:
        n = self.nodes[name]
        n.alive, n.pg, n.holds_ips, n.agent_up, n.streaming = False, DbState.DOWN, False, False, False
        n.pending_fence, n.stop_due, n.last_wal_at, n.hung_since = False, None, None, None  # as kill_pg
        n.disk_hung_since = None  # the host comes back with a disk that works

    def boot(self, name: str, startup_s: float = 0.0, liveness_kept: bool = False) -> None:
        """Host back: the agent starts from its persisted state; PostgreSQL is left to the agent.

        ``startup_s``: how long the new agent sends its restored state before its first decision
        (a real one opens its link first and decides once it has observed PostgreSQL).
        ``liveness_kept``: every process died but /run survived (the lab's crash), so the new agent
        knows how long nobody decided for this node."""
        n = self.nodes[name]
        if n.alive:
            return
        n.alive, n.agent_up, n.frozen = True, True, False
        n.starting_until = self.t + startup_s if startup_s > 0 else None
        if not liveness_kept:
            n.last_step = self.t  # /run is empty after a reboot: no liveness record survives
        self._restart_agent(n)

    def _restart_agent(self, n: Node) -> None:
        assert n.store is not None
        n.agent_since = self.t
        n.state = n.store.restored(self.t, n.holds_ips)
        n.heard = {Net.PUBLIC: None, Net.PRIVATE: None}
        n.peer_view = None
        n.heard_me = None
        # last_step is kept: the agent's liveness record (on tmpfs) tells the new
        # process how long nobody was deciding for this node.

    def kill_agent(self, name: str) -> None:
        """The agent dies uncleanly; its service manager runs `standby fence --if-unclean` after it
        (on a frozen host, when the host thaws): the addresses go at once, the stop of PostgreSQL
        takes ``agent_fence_delay``, and meanwhile the server keeps accepting commits."""
        n = self.nodes[name]
        if not n.agent_up:
            return
        n.agent_up = False
        n.pending_fence = True
        if not n.frozen:
            self._after_agent_death(n)

    def _after_agent_death(self, n: Node) -> None:
        n.pending_fence = False
        n.holds_ips = False
        assert n.store is not None
        kept = State(**n.store.load_state())  # type: ignore[arg-type]
        if n.alive and fence_needed(kept, n.pg):
            n.store.save_state(replace(kept, fenced=True, was_primary=False, resumable=False))
            if n.stop_due is None:
                n.stop_due = self.t + self.agent_fence_delay

    def start_agent(self, name: str) -> None:
        n = self.nodes[name]
        if n.alive and not n.agent_up:
            if n.stop_due is not None:  # the service manager starts the agent after its stop command ends
                n.stop_due = self.t
                self._stop_due_servers()
            n.agent_up = True
            self._restart_agent(n)

    def manual_failover(self, name: str) -> None:
        """A person runs `standby promote --force` on ``name``, a running standby, and the command treats the
        other node as the real rule says (operations.peer_first): fenced through its agent when that answers
        over either network (the command waits for the record, the stop and the release), else the command
        refuses a primary it sees and warns of one it cannot see. The warned case is not drawn over a server
        that still runs: that is the person's call against the command's word, not the pair's."""
        s, p = self.nodes[name], self.peer(name)
        if not (s.alive and not s.frozen and s.agent_up and s.pg is DbState.STANDBY):
            return
        reached = p.alive and not p.frozen and any(p.up(net) and s.up(net) for net in Net)
        # The agent's status answers on either network; the fence needs its API token, which goes over the
        # private network only (no TLS configured, the default).
        answers = reached and p.agent_up
        fence_asked = answers and p.up(Net.PRIVATE) and s.up(Net.PRIVATE)
        primary = reached and p.pg is DbState.PRIMARY
        # The person gives --force to fence a primary, and takes the command's refusal after a failed fence.
        first = ops.peer_first(primary, answers, force=primary)
        if first is ops.PeerFirst.FENCE:
            if not fence_asked and ops.after_failed_fence(primary, force=False) is ops.PeerFirst.REFUSE:
                return  # refused, nothing changed
            assert p.store is not None
            p.state = replace(ops.fenced_by_operator(p.state), services=False)
            p.store.save_state(p.state)
            p.pg, p.streaming, p.stop_due, p.holds_ips = DbState.DOWN, False, None, False
            self.role_changes += 1
        elif first is ops.PeerFirst.REFUSE or (p.alive and p.pg is not DbState.DOWN):
            return
        assert s.store is not None
        s.state = ops.promoting(s.state, planned=False)
        s.store.save_state(s.state)
        s.pg, s.data_primary, s.promoted_over_frozen = DbState.PRIMARY, True, False
        if not p.holds_ips:
            s.holds_ips, s.state = True, ops.serving(s.state)
        self.log.append(f"{self.t:7.1f} {name} promoted by a person (term {s.state.term})")
        self.role_changes += 1

    def maintenance(self, name: str, on: bool) -> None:
        self.policy[name] = replace(self.policy[name], suspended=on)

    def kill_pg(self, name: str) -> None:
        n = self.nodes[name]
        if n.alive:
            # promoted_over_frozen stays: a restart brings the same promotion's data back.
            n.pg, n.stop_due, n.hung_since = DbState.DOWN, None, None

    def hang_pg(self, name: str) -> None:
        """Its server stops answering (chaos postgres-freeze): until unhang_pg, a kill, or the heal."""
        n = self.nodes[name]
        if n.alive and n.pg is not DbState.DOWN and n.hung_since is None:
            n.hung_since = self.t

    def unhang_pg(self, name: str) -> None:
        self.nodes[name].hung_since = None

    def hang_disk(self, name: str) -> None:
        """Its disk completes no write (a hung disk: chaos wal-disk-hang) until unhang_disk or a crash."""
        n = self.nodes[name]
        if n.alive and n.disk_hung_since is None:
            n.disk_hung_since = self.t

    def unhang_disk(self, name: str) -> None:
        self.nodes[name].disk_hung_since = None

    def freeze(self, name: str) -> None:
        if self.nodes[name].alive:
            self.nodes[name].frozen = True

    def thaw(self, name: str) -> None:
        n = self.nodes[name]
        if n.frozen:
            n.thawed_at = self.t
        n.frozen = False
        if n.pending_fence and n.alive:
            self._after_agent_death(n)

    def link(self, name: str, net: Net, up: bool) -> None:
        self.nodes[name].links[net] = up

    def set_loss(self, name: str, net: Net, pct: int) -> None:
        self.nodes[name].loss[net] = pct

    def set_dr_loss(self, name: str, pct: int) -> None:
        """This node's questions to the warm follower go unanswered ``pct`` % of the time."""
        self.nodes[name].dr_loss = pct

    def heal(self) -> None:
        for n in self.nodes.values():
            n.links = {Net.PUBLIC: True, Net.PRIVATE: True}
            n.loss = {Net.PUBLIC: 0, Net.PRIVATE: 0}
            n.dr_loss = 0
            n.hung_since = n.disk_hung_since = None
            if n.frozen:
                n.frozen, n.thawed_at = False, self.t  # as thaw(), without its agent-death follow-up
            self.boot(n.name)
            self.start_agent(n.name)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            self.tick()

    # -- final checks -----------------------------------------------------------

    def primaries(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.pg is DbState.PRIMARY]

    def lost(self) -> list[int]:
        """Acknowledged calls missing from the (single) primary."""
        ps = self.primaries()
        if len(ps) != 1:
            return []
        have = set(ps[0].data)
        return [c for c in self.acked if c not in have]
