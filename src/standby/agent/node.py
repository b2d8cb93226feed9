"""The imperative shell around the decision core: observe, decide, act, heartbeat.

Everything that blocks (PostgreSQL, netlink, service commands) runs in worker
threads so the event loop keeps its rhythm: the heartbeat sender's own gaps
are what tell the decisions that this process was stalled (frozen).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import psycopg

from standby.act import addresses, services
from standby.act import postgres as pgact
from standby.agent import priority
from standby.agent.conditions import conditions
from standby.agent.executor import ROLE_OF, Executor, Role, Unhandled
from standby.agent.guard import Guard
from standby.agent.maintenance import MaintenanceFile
from standby.agent.servicerole import Claim, ServiceRole, TakeRefused
from standby.agent.heartbeat import Heartbeat, Receiver, encode
from standby.alerts import AlertDispatcher, AlertKind, alert_key, make_alert
from standby.agent.store import Store
from standby.config import (
    Config,
    Durability,
    Mode,
    Placement,
    RejoinPolicy,
    ReportingFallback,
    ServiceIP,
    for_node,
    read_secret,
)
from standby.decide import PgCrashPolicy, Policy, State, advertise, decide, peer_fresh, public_ok
from standby.model import Action, ActionKind, DbState, LocalPg, Lsn, Net, Observation, PeerView
from standby.observe import postgres as pgobs
from standby.observe import probes
from standby import reporting as rep
from standby import tls

log = logging.getLogger("standby.agent")
T = TypeVar("T")
IP_FREEBIND = 15  # linux/in.h; not exported by the socket module


def config_digest(cfg: Config) -> str:
    """Both agents must run the same configuration; heartbeats carry this to prove it."""
    dumped = cfg.model_dump(mode="json")
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
        auto_rejoin=cfg.rejoin is RejoinPolicy.AUTO,
        services_move_on_failure=cfg.services_move_on_failure,
        unhealthy_after_s=t.service_unhealthy_ms / 1000,
        has_service_ips=bool(cfg.service_ips),
    )


# Operator operations that change only the database role; the others change both.
_OP_ROLES: dict[str, tuple[Role, ...]] = {"rejoin": (Role.DATABASE,), "follow": (Role.DATABASE,)}


class RefusedToStart(Exception):
    """The agent will not run; the message says why and what to fix."""


class OpError(Exception):
    """An operator's request (switchover step, rejoin) that cannot be done now; nothing was changed."""


@dataclass
class Counters:
    decisions: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=lambda: {n.value: 0 for n in Net})
    send_errors: dict[str, int] = field(default_factory=lambda: {n.value: 0 for n in Net})


class Agent:
    def __init__(self, cfg: Config, node: str) -> None:
        if cfg.heartbeat_key_file is None:
            raise RefusedToStart("heartbeat_key_file: required to run the agent (a shared secret, mode 600, same on both nodes)")
        self.cfg, self.node, self.peer = cfg, node, cfg.peer_of(node)
        self.key = read_secret(cfg.heartbeat_key_file, "heartbeat_key_file").encode()
        # The other secrets are read when first needed (a failover, a POST): a bad one must stop the
        # start-up instead, while a person is watching.
        read_secret(cfg.pg(node).replication_password_file, "postgres.replication_password_file")
        if cfg.api.token_file is not None:
            read_secret(cfg.api.token_file, "api.token_file")
        tls.check(cfg, node)
        self.digest = config_digest(cfg)
        self.store = Store(cfg.state_dir_for(node), node)
        self.guard = Guard(self.event)  # a failing observation or loop is recorded, never fatal
        self.receiver = Receiver(self.key, cfg.cluster, self.peer, self.digest)
        self.maintenance = MaintenanceFile(self.store.maint_path, cfg.timings.maintenance_timeout_s)
        self.policy = policy_for(cfg, node)
        self.heard: dict[Net, float | None] = {n: None for n in Net}
        self.peer_view: PeerView | None = None
        self.seq = 0
        # Send times of our recent messages, by seq, to read the peer's
        # acknowledgements (decide.unheard); a few seconds' worth is plenty.
        self.sent_at: dict[int, float] = {}
        self.heard_me: float | None = None
        self.boot = 0
        self.pg = LocalPg(DbState.DOWN)
        self.sync_names: str | None = None
        self.carrier: dict[Net, bool] = {n: False for n in Net}
        self.tiebreaker_at = -math.inf
        self.services_healthy: bool | None = None
        self.ip_elsewhere: bool | None = None
        self.state = State()
        self.counters = Counters()
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)
        self.max_send_gap = 0.0
        self.last_send = time.monotonic()
        self.startup_gap = 0.0
        self.stopping = asyncio.Event()
        self.step_gap = 0.0
        self.state_write_s = 0.0
        # Each role's actions one at a time, in decision order (see agent.executor).
        self.executor = Executor(self._act)
        self.ensuring_services = False
        self.take_refused: TakeRefused | None = None
        # Decisions and operator operations take turns: an operation changes the
        # state under the decision loop's feet otherwise (a stale step would undo it).
        self.turn = asyncio.Lock()
        self.take_refused_at = -math.inf
        self._conn: psycopg.Connection | None = None
        # One thread for PostgreSQL (its connection is not shared), one for services and addresses.
        self.pg_pool = ThreadPoolExecutor(1, thread_name_prefix="pg", initializer=priority.follow)
        # The decision step's own state writes: never queued behind a slow PostgreSQL query.
        self.state_pool = ThreadPoolExecutor(1, thread_name_prefix="state", initializer=priority.follow)
        self._pg_read: asyncio.Future[tuple[LocalPg, str | None] | pgobs.Unanswered] | None = None
        self.pg_seen = False  # a first observation arrived (until then, waiting for it is no stall)
        self.step_started: float | None = None  # None: the next step's lateness is not a stall
        self.svc_pool = ThreadPoolExecutor(1, thread_name_prefix="svc", initializer=priority.follow)
        self.probe_pool = ThreadPoolExecutor(2, thread_name_prefix="probe", initializer=priority.follow)
        # The step's own quick kernel reads (carriers, the reporting IP), never behind a probe or a service command:
        # a step that waits is a stall (Observation.gap).
        self.observe_pool = ThreadPoolExecutor(1, thread_name_prefix="observe", initializer=priority.follow)
        # History and liveness writes, in order, off the event loop (see event()).
        self.disk_pool = ThreadPoolExecutor(1, thread_name_prefix="disk")
        self._liveness_write: Future[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.sockets: dict[Net, socket.socket] = {}
        self.service_role = ServiceRole(cfg, node, lambda fn, *a: self._in(self.svc_pool, fn, *a),
                                        lambda fn, *a: self._in(self.probe_pool, fn, *a), self.event)
        self.alerts = AlertDispatcher.from_config(cfg)
        self.alerts_raised: set[AlertKind] = set()
        # The reporting IP (standby.reporting): decided each step, applied off the loop.
        self.reporting_ip = cfg.reporting.floating() if cfg.reporting else None
        self.reporting_policy = rep.ReportingPolicy(
            fallback_primary=cfg.reporting is not None and cfg.reporting.fallback is ReportingFallback.PRIMARY,
            max_lag_bytes=cfg.reporting.max_lag_bytes if cfg.reporting else 0)
        self.reporting_state = rep.ReportingState()
        self.reporting_decision: rep.ReportingDecision | None = None
        self.reporting_held: bool | None = None  # None until read from the kernel
        self.reporting_busy = False
        self.reporting_refused = False
        self.reporting_announced = -math.inf

    # -- helpers ------------------------------------------------------------------

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def event(self, event: str, **detail: Any) -> None:
        entry = self.store.entry(event, **detail)
        # Written on the disk thread, in order: a file-system call that blocks (a rename or an
        # append on a busy disk took over a second in the lab) must never hold up the heartbeats.
        self.disk_pool.submit(self.store.append, entry)
        self.recent.append(entry)
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in detail.items()))

    # -- start-up -----------------------------------------------------------------

    async def _restore(self) -> None:
        now = time.monotonic()
        live = self.store.read_liveness()
        if live is not None and not live.clean:
            # The previous agent died without saying goodbye: nobody decided for
            # this node since its last decision. Treat that like a stall.
            self.startup_gap = max(0.0, now - live.last_decision)
        kept = self.store.load_state()
        self.maintenance.load()
        holding = await self.guard.read("service IPs", self.service_role.holds, False)
        self.state = State(**kept, watching_since=now, services=holding)  # type: ignore[arg-type]
        self.boot = self.store.next_boot()
        # Replay protection outlives this run: the peer's boots already seen stay refused.
        self.receiver.restore(self.store.peer_boot(), self.store.save_peer_boot)
        self.event("agent_started", boot=self.boot, restored=kept, holds_service_ips=holding,
                   unattended_for_s=round(self.startup_gap, 3))

    def _open_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        for net in Net:
            link = getattr(self.cfg.nodes[self.node], net.value)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # bind even while the link is down
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.interface.encode())
            s.bind((str(link.ip), self.cfg.heartbeat_port))
            s.setblocking(False)
            loop.add_reader(s.fileno(), self._on_packet, s, net)
            self.sockets[net] = s

    # -- heartbeats -----------------------------------------------------------------

    def _on_packet(self, s: socket.socket, net: Net) -> None:
        for _ in range(16):
            try:
                data, addr = s.recvfrom(4096)
            except OSError:  # nothing more to read (or the socket is gone)
                return
            if addr[0] != str(getattr(self.cfg.nodes[self.peer], net.value).ip):
                self.receiver.rejected["foreign"] += 1  # only the peer's own address may speak here
                continue
            hb = self.receiver.accept(data, net)
            if hb is None:
                continue
            newest = self.receiver.is_newest(hb)  # acknowledged even if not trusted yet: that is how trust comes
            if not self.receiver.trusted(hb, self.boot):
                self.receiver.rejected["unconfirmed"] += 1  # maybe a recording from before our restart
                continue
            self.heard[net] = time.monotonic()
            if hb.ack is not None and hb.ack[0] == self.boot and (t := self.sent_at.get(hb.ack[1])) is not None:
                self.heard_me = t if self.heard_me is None else max(self.heard_me, t)
            if newest:
                self.peer_view = hb.view

    def _advertised(self) -> PeerView:
        held, epoch, ack = rep.advertised(self.reporting_state, bool(self.reporting_held))
        return advertise(self.state, self.pg, self.carrier, self._tiebreaker_ok(), self.policy.preferred,
                         self.policy.sync, reporting=held, reporting_epoch=epoch, reporting_ack=ack,
                         hot=self.policy.hot)

    def _send(self) -> None:
        now = time.monotonic()
        self.max_send_gap = max(self.max_send_gap, now - self.last_send)
        self.last_send = now
        view = self._advertised()
        newest = self.receiver.newest
        ack = newest if newest[0] >= 0 else None
        for net, s in self.sockets.items():
            self.seq += 1
            self.sent_at[self.seq] = now
            self.sent_at.pop(self.seq - 512, None)
            peer_ip = str(getattr(self.cfg.nodes[self.peer], net.value).ip)
            packet = encode(Heartbeat(self.cfg.cluster, self.node, self.boot, self.seq, net, self.digest, view, ack),
                            self.key)
            try:
                s.sendto(packet, (peer_ip, self.cfg.heartbeat_port))
                self.counters.sent[net.value] += 1
            except OSError:
                self.counters.send_errors[net.value] += 1  # link down: the peer will notice the silence

    async def _sender(self) -> None:
        interval = self.cfg.timings.heartbeat_interval_ms / 1000
        while not self.stopping.is_set():
            self._send()
            try:
                await asyncio.wait_for(self.stopping.wait(), interval)
            except TimeoutError:
                pass

    # -- probes ------------------------------------------------------------------------

    def _tiebreaker_ok(self) -> bool | None:
        if self.cfg.tiebreaker is None:
            return None
        window = max(3 * self.cfg.timings.heartbeat_interval_ms, self.cfg.timings.fence_timeout_ms * 0.6) / 1000
        return time.monotonic() - self.tiebreaker_at < window

    async def _tiebreaker_prober(self) -> None:
        tb = self.cfg.tiebreaker
        if tb is None:
            return
        interval = self.cfg.timings.heartbeat_interval_ms / 1000
        timeout = min(0.5, interval * 2)
        while not self.stopping.is_set():
            t0 = time.monotonic()
            ok = await self._in(self.probe_pool, _probe_tiebreaker, str(tb.address), tb.port, timeout)
            if ok:
                self.tiebreaker_at = time.monotonic()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    async def _arp_prober(self) -> None:
        """While the peer is silent, keep asking who answers for the service IPs."""
        interval = self.cfg.timings.heartbeat_interval_ms / 1000
        while not self.stopping.is_set():
            now = time.monotonic()
            quiet = now - max([t for t in self.heard.values() if t is not None] + [self.state.watching_since])
            recently_refused = now - self.take_refused_at < 10.0
            if self.cfg.service_ips and not self.state.services and (quiet >= 2 * interval or recently_refused):
                claim, found = await self.service_role.who_else()
                self.ip_elsewhere = claim is not Claim.FREE  # a failed probe blocks a take like an answer
                if found:
                    log.warning("service IPs answered by %s while the peer is silent", ", ".join(sorted(found)))
            else:
                self.ip_elsewhere = None
            await asyncio.sleep(interval)

    async def _health_prober(self) -> None:
        while not self.stopping.is_set():
            if (self.state.services and self.cfg.services and not self.ensuring_services
                    and not self.executor.busy(ActionKind.TAKE_SERVICES)):
                ok, results = await self._in(self.svc_pool, services.healthy, self.cfg.services, self.node)
                if ok != self.services_healthy:
                    self.event("services_health", healthy=ok, detail=[r.detail for r in results if not r.ok])
                self.services_healthy = ok
            else:
                self.services_healthy = None
            await asyncio.sleep(1.0)

    async def _arp_refresher(self) -> None:
        """Keep announcing held service IPs: switches and ARP caches forget."""
        while not self.stopping.is_set():
            await asyncio.sleep(5.0)
            if self.state.services and not self.executor.busy(ActionKind.RELEASE_SERVICES):
                for sip in self.cfg.service_ips:
                    try:
                        await self._in(self.probe_pool, addresses.announce, sip, 1)
                    except OSError:
                        pass

    # -- observation ---------------------------------------------------------------------

    def _local_conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = pgobs.connect_local(self.cfg, self.node, application_name=pgobs.AGENT_APPLICATION_NAME)
            # Bounds how long a slow query holds the PostgreSQL thread; a timeout is not a crash.
            self._conn.execute("SET statement_timeout = '2s'")
        return self._conn

    def _observe_pg(self) -> tuple[LocalPg, str | None] | pgobs.Unanswered:
        try:
            return _read_local(self._local_conn(), self.peer)
        except psycopg.Error as e:
            if self._conn is not None:
                try:
                    self._conn.close()
                except psycopg.Error:
                    pass
            self._conn = None
            return pgobs.unanswered(e, pgobs.postmaster_running(self.cfg.pg(self.node).data_dir))

    async def _observe_postgres(self) -> None:
        """The local server, waited for one interval at most: a late answer is used by a later step, and
        meanwhile the last observation stands. Only a server whose postmaster is gone reads as DOWN."""
        if self._pg_read is None:
            self._pg_read = asyncio.ensure_future(self._in(self.pg_pool, self._observe_pg))
        wait_s = self.cfg.timings.heartbeat_interval_ms / 1000 if self.pg_seen else 3.0  # run() waits for the first
        await asyncio.wait({self._pg_read}, timeout=wait_s)
        if not self._pg_read.done():  # slow, not failed: recorded only if it ends in an error
            log.debug("PostgreSQL did not answer within %gs; keeping the last observation", wait_s)
            return
        read, self._pg_read = self._pg_read, None
        self.pg_seen = True
        try:
            result = read.result()
        except Exception as e:
            self.guard.failed("postgres", e)
            return
        if isinstance(result, pgobs.Unanswered) and not result.down:
            self.guard.failed("postgres", f"{result.value}; keeping the last observation")
            return
        self.pg, self.sync_names = (LocalPg(DbState.DOWN), None) if isinstance(result, pgobs.Unanswered) else result
        self.guard.ok("postgres")

    def _carriers(self) -> dict[Net, bool]:
        return {net: addresses.carrier(getattr(self.cfg.nodes[self.node], net.value).interface) for net in Net}

    async def _observe(self, now: float) -> Observation:
        await self._observe_postgres()
        self.carrier = await self.guard.read("carrier", lambda: self._in(self.observe_pool, self._carriers), self.carrier)
        # A stalled process may be scheduled here before its heartbeat sender has
        # run again: the time since the last send counts as well.
        # So does the decision loop's own lateness (this step started later than one interval after the last).
        gap = max(self.max_send_gap, time.monotonic() - self.last_send, self.startup_gap, self.step_gap)
        self.max_send_gap, self.startup_gap = 0.0, 0.0
        return Observation(
            now=now, gap=gap, pg=self.pg, peer=self.peer_view, heard=dict(self.heard), carrier=dict(self.carrier),
            tiebreaker_ok=self._tiebreaker_ok(), services_healthy=self.services_healthy,
            service_ip_elsewhere=self.ip_elsewhere, heard_me=self.heard_me,
        )

    # -- acting ----------------------------------------------------------------------------

    async def _act(self, a: Action) -> None:
        """Carry out one action; the executor runs it after the earlier ones on its role."""
        self.counters.actions[a.kind.value] = self.counters.actions.get(a.kind.value, 0) + 1
        try:
            match a.kind:
                case ActionKind.PROMOTE:
                    await self._in(self.pg_pool, self._promote)
                case ActionKind.FENCE:
                    await self._in(self.pg_pool, self._fence_pg)
                case ActionKind.RESTART_PG:
                    await self._in(self.pg_pool, pgact.start, self.cfg, self.node, 60)
                case ActionKind.TAKE_SERVICES:
                    await self._take_decided()
                case ActionKind.RELEASE_SERVICES:
                    await self.service_role.release()
                case ActionKind.SET_SYNC:
                    pass  # reconciled every step from the state (see _reconcile_sync)
                case ActionKind.REJOIN:
                    async with self.turn:  # the database role is already ours (operate would wait for it)
                        try:
                            await self._op_rejoin()
                        finally:
                            self.step_started = None
            self.event("done", action=a.kind.value)
        except Exception as e:  # an action failing must not stop the agent; the next step re-decides
            self.event("action_failed", action=a.kind.value, error=_first_line(e))
        finally:
            if ROLE_OF[a.kind] is Role.SERVICES and not self.executor.queued_after(a.kind):
                await self._services_from_kernel()

    async def _take_decided(self) -> None:
        """A decided take, run after what was decided before it: re-checked now, not at decision time."""
        refused: TakeRefused | None
        if not self.state.services:
            refused = TakeRefused.SUPERSEDED
        elif self.state.fenced:
            refused = TakeRefused.FENCED
        else:
            refused = await self.service_role.take()
            if refused is not None:
                self.ip_elsewhere = True
                self.take_refused_at = time.monotonic()
        if refused in (TakeRefused.SUPERSEDED, TakeRefused.FENCED) and refused is not self.take_refused:
            self.event("take_refused", reason=refused.value)
        self.take_refused = refused

    async def _services_from_kernel(self, locked: bool = False) -> None:
        """After a service action (done, failed or refused) the state says what the kernel holds.
        ``locked``: the caller has the turn already (an operator's operation)."""
        if not self.cfg.service_ips:
            return
        try:
            held = await self.service_role.holds()
        except Exception as e:
            log.warning("could not read the service IPs back: %s", e)
            return
        async with contextlib.nullcontext() if locked else self.turn:  # not under a decision step's feet
            if self.state.services != held:
                self.event("services_state_corrected", held=held)
                self.state = replace(self.state, services=held)

    def _promote(self) -> None:
        self._conn = self._local_conn()
        self._conn.execute("SELECT pg_promote(true, 30)")
        self._conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        self._conn.execute("SELECT pg_reload_conf()")

    def _fence_pg(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
        from standby.act import fence

        fence.stop_postgres(self.cfg, self.node)

    async def _ensure_services(self, placement: Placement | None) -> None:
        """Start what should already run here (after an agent restart, or services placed everywhere)."""
        self.ensuring_services = True
        try:
            async with self.executor.exclusive(Role.SERVICES):
                await self.service_role.start(placement)
        finally:
            self.ensuring_services = False

    def _wanted_sync_names(self) -> str:
        if self.policy.sync and not self.state.degraded:
            return pgact.sync_value(self.peer)
        return ""

    def _reconcile_sync(self) -> None:
        # Never on a node being fenced: turning sync off there would release the
        # commits waiting for the standby, acknowledged but never replicated.
        # Only a DEGRADE decision (or a promotion, alone) may stop the waiting.
        if (self.pg.db is not DbState.PRIMARY or self._conn is None or self.state.fenced
                or self.executor.busy(ActionKind.FENCE)):
            return
        want = self._wanted_sync_names()
        if self.sync_names != want:
            pgact.set_sync_names(self._conn, want)
            self.sync_names = want

    def _alert(self, obs: Observation, actions: list[Action]) -> None:
        """Tell people what changed: new conditions raised, cleared ones resolved, events sent."""
        m = self.maintenance.current if self.suspended else None
        now = conditions(self.state, obs, self.policy, actions, self.cfg.alerts.lag_threshold_bytes,
                         self.cfg.rejoin is RejoinPolicy.MANUAL,
                         maintenance_for_s=time.time() - m.since if m is not None else None)
        about_peer = {AlertKind.REPLICATION_BROKEN}  # said of the primary, which is the peer here
        for kind in now.raised - self.alerts_raised:
            subject = self.peer if kind in about_peer else self.node
            self.alerts.notify(make_alert(kind, node=subject, cluster=self.cfg.cluster,
                                          peer=self.node if subject == self.peer else self.peer,
                                          details={"term": self.state.term, "seen_by": self.node}))
            self.event("alert", kind=kind.value)
        for kind in self.alerts_raised - now.raised:
            subject = self.peer if kind in about_peer else self.node
            self.alerts.resolve(alert_key(kind, subject))
            self.event("alert_resolved", kind=kind.value)
        for kind in now.events:
            self.alerts.notify(make_alert(kind, node=self.node, cluster=self.cfg.cluster, peer=self.peer,
                                          details={"term": self.state.term}))
        self.alerts_raised = set(now.raised)

    # -- operations requested by a person (switchover, rejoin), through the API ----------------

    @property
    def suspended(self) -> bool:
        """Automatic decisions suspended (maintenance, until its deadline)."""
        return self.maintenance.active()

    def set_maintenance(self, on: bool, by: str = "api") -> None:
        if on:
            m = self.maintenance.start(by)
            self.event("maintenance", suspended=True, by=by, until=m.view(m.since)["until"])
        else:
            self.maintenance.end()
            self.event("maintenance", suspended=False)

    def maintenance_view(self) -> dict[str, object] | None:
        m = self.maintenance.current
        return m.view(time.time()) if m is not None and self.suspended else None

    def _save(self, new: State) -> None:
        self.store.save_state(new)
        self.state = new

    async def _op_demote(self) -> dict[str, Any]:
        """Switchover, on the primary: let go of the services, then shut PostgreSQL down cleanly."""
        if not self.suspended:
            raise OpError("automatic failover must be suspended first (maintenance)")
        if self.pg.db is not DbState.PRIMARY or self.state.fenced:
            raise OpError(f"{self.node} is not the primary (PostgreSQL is {self.pg.db.value})")
        try:
            await self.service_role.release()
        finally:
            await self._services_from_kernel(locked=True)
        self.state = replace(self.state, releasing_services=False)
        await self._in(self.pg_pool, self._fence_pg)
        ctl = await self._in(self.pg_pool, pgact.control_data, self.cfg, self.node)
        if ctl.get("Database cluster state") != "shut down":
            raise OpError(f"PostgreSQL did not shut down cleanly ({ctl.get('Database cluster state')})")
        self.pg = LocalPg(DbState.DOWN)
        lsn, tli = ctl["Latest checkpoint location"], int(ctl["Latest checkpoint's TimeLineID"])
        self.event("switchover_demoted", checkpoint=lsn, timeline=tli)
        return {"checkpoint_lsn": lsn, "timeline": tli}

    async def _op_promote(self, min_lsn: str, timeout_s: float) -> dict[str, Any]:
        """Switchover, on the standby: once every WAL byte up to the old primary's shutdown
        checkpoint is here, promote and take the services."""
        if not self.suspended:
            raise OpError("automatic failover must be suspended first (maintenance)")
        if self.pg.db is not DbState.STANDBY:
            raise OpError(f"{self.node} is not a standby (PostgreSQL is {self.pg.db.value})")
        need = Lsn.parse(min_lsn)
        if need is None:
            raise OpError(f"bad LSN {min_lsn!r}")
        deadline = time.monotonic() + timeout_s
        got: Lsn | None = None
        while True:
            got = await self._in(self.pg_pool, self._received_lsn)
            if got is not None and got > need:  # the checkpoint record itself has arrived
                break
            if time.monotonic() >= deadline:
                raise OpError(f"{self.node} received WAL up to {got} but the old primary's shutdown checkpoint "
                              f"is at {need}; not promoting (nothing would be lost by waiting, but it did not arrive "
                              f"within {timeout_s:g}s)")
            await asyncio.sleep(0.02)
        term = max(self.state.term, self.state.peer_term) + 1
        await self._in(self.pg_pool, self._save, replace(self.state, term=term, promoting=True, degraded=True,
                                                         was_primary=False))
        await self._in(self.pg_pool, self._promote)
        # Promoted: from here on, a failure must not read as a refusal (the caller would start
        # the old primary again). What fails is reported; the agent's next steps finish it.
        problems: list[str] = []
        try:
            await self._in(self.pg_pool, self._slot_for_peer)
        except Exception as e:
            problems.append(f"replication slot for {self.peer}: {e}")
        results: list[services.CommandResult] = []
        try:
            # The old primary released the addresses itself: no need to wait for an ARP check.
            await self.service_role.add_ips()
            self.state = replace(self.state, services=True, releasing_services=False)
            results = await self.service_role.start(Placement.ACTIVE)
        except Exception as e:
            problems.append(f"service IPs and services: {e}")
        self.event("switchover_promoted", term=term, received=str(got),
                   failed_services=[r.service for r in results if not r.ok], problems=problems)
        return {"term": term, "received_lsn": str(got), "problems": problems}

    async def _op_follow(self) -> dict[str, Any]:
        """Switchover, on the old primary: start again as a standby of the new primary."""
        if self.pg.db is not DbState.DOWN:
            raise OpError(f"PostgreSQL on {self.node} must be stopped (it is {self.pg.db.value})")
        await self._in(self.pg_pool, pgact.configure_as_standby, self.cfg, self.node, self.peer)
        await self._in(self.pg_pool, pgact.start, self.cfg, self.node, 60)
        await self._in(self.pg_pool, pgact.wait_streaming, self.cfg, self.node, 60)
        term = max(self.state.term, self.state.peer_term)
        await self._in(self.pg_pool, self._save, replace(self.state, term=term, was_primary=False, fenced=False,
                                                         degraded=False, peer_could_promote=False))
        self.event("switchover_following", primary=self.peer, term=term)
        return {"following": self.peer}

    async def _op_resume(self) -> dict[str, Any]:
        """Switchover aborted: the old primary starts again as it was, and takes its services back."""
        if self.state.fenced or not self.state.was_primary:
            raise OpError(f"{self.node} was not the primary before; refusing to make it one")
        if self.pg.db is DbState.DOWN:
            await self._in(self.pg_pool, pgact.start, self.cfg, self.node, 60)
        try:
            refused = await self.service_role.take()
        finally:
            await self._services_from_kernel(locked=True)
        self.event("switchover_aborted_resumed", services_refused=refused)
        return {"resumed": self.node}

    async def _op_rejoin(self) -> dict[str, Any]:
        """Reverse replication: this old primary becomes a standby of the new one (see act.rejoin)."""
        from standby.act import rejoin as rj

        from standby.salvage import salvage_for_rejoin

        salvage_fn = salvage_for_rejoin if self.cfg.salvage.tables else None
        self.set_maintenance(True, by="rejoin")
        try:
            result = await self._in(self.pg_pool, lambda: rj.rejoin(
                self.cfg, self.node, state_dir=self.cfg.state_dir_for(self.node),
                report=lambda m: self.event("rejoin_step", detail=m), salvage=salvage_fn))
            term = max(self.state.term, self.state.peer_term)
            await self._in(self.pg_pool, self._save, replace(self.state, term=term, was_primary=False, fenced=False,
                                                             degraded=False, promoting=False, peer_could_promote=False))
        finally:
            self.set_maintenance(False)
        self.event("rejoined", method=result.method, fork=result.fork_lsn, salvaged=result.salvaged_rows)
        return {"method": result.method, "fork_lsn": result.fork_lsn, "old_timeline": result.old_timeline,
                "salvage_report": str(result.salvage_report) if result.salvage_report else None,
                "salvaged_rows": result.salvaged_rows,
                "kept_aside": str(result.kept_aside) if result.kept_aside else None,
                "steps": [[n, round(d, 3)] for n, d in result.steps]}

    async def _op_manual_promote(self) -> dict[str, Any]:
        """A person decided (`standby promote`): promote, take the addresses, run the address-change hook,
        start the services; each step timed."""
        if self.pg.db is not DbState.STANDBY or self.state.fenced:
            raise OpError(f"{self.node} is not a running standby (PostgreSQL is {self.pg.db.value})")
        steps: list[list[Any]] = []
        t = time.monotonic()

        def step(name: str) -> None:
            nonlocal t
            now = time.monotonic()
            steps.append([name, round(now - t, 3)])
            t = now

        term = max(self.state.term, self.state.peer_term) + 1
        await self._in(self.pg_pool, self._save, replace(self.state, term=term, promoting=True, degraded=True))
        await self._in(self.pg_pool, self._promote)
        await self._in(self.pg_pool, self._slot_for_peer)
        step(f"PostgreSQL promoted (term {term})")
        if self.cfg.service_ips:
            claim, others = await self.service_role.who_else()
            if claim is Claim.TAKEN:
                step(f"service IPs NOT taken: still answered by {', '.join(sorted(others))}")
            elif claim is Claim.UNKNOWN:
                step("service IPs NOT taken: the ARP probe failed, so another holder cannot be ruled out")
            else:
                await self.service_role.add_ips()
                self.state = replace(self.state, services=True)
                step("service IPs taken")
        else:
            self.state = replace(self.state, services=True)
        argv = hook_argv(self.cfg, self.node)
        if argv:
            res = await self._in(self.svc_pool, _run_hook, argv)
            step(f"address-change hook: {res}")
        # Every service, those placed everywhere too: one that could not start while no primary
        # was writable (a warm standby whose primary died as its agent started) stopped again, and
        # nothing else would start it. Start commands are idempotent (a running one is left alone).
        results = await self.service_role.start(None)
        step("services started" + "".join(f"; {r.service} FAILED: {r.detail}" for r in results if not r.ok))
        self.event("manual_promotion", term=term, steps=steps)
        return {"term": term, "steps": steps}

    async def _op_fence(self) -> dict[str, Any]:
        """A person fences this node (before promoting the other one): no services, no PostgreSQL."""
        try:
            await self.service_role.release()
        finally:  # PostgreSQL stops even if an address could not be removed
            await self._in(self.pg_pool, self._save, replace(self.state, fenced=True, was_primary=False,
                                                             releasing_services=False, promoting=False))
            await self._services_from_kernel(locked=True)
            await self._in(self.pg_pool, self._fence_pg)
        self.event("fenced_by_operator")
        return {"fenced": self.node}

    async def operate(self, name: str, *args: Any) -> dict[str, Any]:
        """Run the operator operation ``_op_<name>`` once the actions already decided on the roles it
        changes are done, while no decision step and no other action on those roles runs."""
        fn = getattr(self, f"_op_{name}")
        async with contextlib.AsyncExitStack() as held:
            for role in _OP_ROLES.get(name, tuple(Role)):
                await held.enter_async_context(self.executor.exclusive(role))
            async with self.turn:  # always after the role locks: an action holding one may wait for the turn
                try:
                    return await fn(*args)  # type: ignore[no-any-return]
                finally:
                    self.step_started = None  # a person's operation held the steps back: that is no stall

    def _received_lsn(self) -> Lsn | None:
        row = self._local_conn().execute("SELECT pg_last_wal_receive_lsn()::text").fetchone()
        return Lsn.parse(row[0]) if row else None

    def _slot_for_peer(self) -> None:
        if self._conn is not None:
            pgact.ensure_slot(self._conn, self.cfg.slot_name(self.peer))

    # -- the reporting IP ---------------------------------------------------------------------------

    async def _reporting_step(self, obs: Observation) -> None:
        """Decide who holds the reporting IP (pure, see standby.reporting); add or remove it off the loop."""
        sip = self.reporting_ip
        if sip is None:
            return
        if self.reporting_held is None:  # first step: an agent restart keeps what the kernel has
            try:
                self.reporting_held = await self._in(self.observe_pool, addresses.held, sip)
            except (OSError, RuntimeError) as e:  # e.g. the interface is missing: say so, keep deciding the rest
                log.warning("reporting IP: %s", e)
                return
            self.reporting_state = rep.ReportingState.for_boot(self.boot)
        inp = rep.ReportingInputs(
            db=DbState.FENCED if self.state.fenced else self.pg.db, streaming=self.pg.streaming,
            replay_lsn=self.pg.replay_lsn, peer=peer_fresh(obs, self.policy), public_ok=public_ok(obs),
            held=self.reporting_held, now=obs.now)
        # The standby trusts our last word for failover_timeout after it arrives; one heartbeat more for the way.
        policy = replace(self.reporting_policy,
                         silence_wait_s=self.policy.failover_timeout_s + self.policy.heartbeat_s)
        self.reporting_state, d = rep.step(self.reporting_state, inp, policy)
        self.reporting_decision = d
        if self.reporting_busy:
            return
        if d.hold != self.reporting_held:
            self.reporting_busy = True
            if d.hold:
                # Held from now on, ARP check included: the next step must not give the standby a
                # receipt while this take may still add the address.
                self.reporting_held = True
            asyncio.get_running_loop().create_task(self._apply_reporting(sip, d))
        elif d.hold and time.monotonic() - self.reporting_announced >= 5.0:
            # Switches and ARP caches forget; keep telling them, as for the service IPs.
            self.reporting_announced = time.monotonic()
            self.reporting_busy = True
            asyncio.get_running_loop().create_task(self._announce_reporting(sip))

    async def _announce_reporting(self, sip: ServiceIP) -> None:
        try:
            await self._in(self.probe_pool, addresses.announce, sip, 1)
        except OSError:
            pass
        finally:
            self.reporting_busy = False

    async def _apply_reporting(self, sip: ServiceIP, d: rep.ReportingDecision) -> None:
        try:
            if d.hold:
                if d.check_arp:
                    try:
                        others = await self._in(self.probe_pool, addresses.answered_elsewhere, sip)
                    except Exception:
                        self.reporting_held = False  # never added
                        raise
                    if others:
                        self.reporting_held = False  # never added
                        if not self.reporting_refused:
                            self.event("reporting_take_refused", answered_by=sorted(others), reason=d.reason)
                        self.reporting_refused = True
                        return
                try:
                    await self._in(self.svc_pool, addresses.add, sip)
                except Exception:
                    await self._in(self.svc_pool, addresses.remove, sip)
                    self.reporting_held = False
                    raise
                self.reporting_announced = time.monotonic()
                await self._in(self.probe_pool, addresses.announce, sip, 3)
            else:
                await self._in(self.svc_pool, addresses.remove, sip)
                self.reporting_held = False  # only now may the peer be told it is free
            self.reporting_refused = False
            self.event("reporting", held=d.hold, reason=d.reason, lag_bytes=d.lag_bytes)
        except Exception as e:  # the next step decides again
            self.event("action_failed", action="reporting", error=_first_line(e))
        finally:
            self.reporting_busy = False

    # -- the loop ---------------------------------------------------------------------------------

    async def _step(self) -> None:
        async with self.turn:
            await self._step_locked()

    async def _step_locked(self) -> None:
        now = time.monotonic()
        interval = self.cfg.timings.heartbeat_interval_ms / 1000
        # The state's fsync is excluded: it must finish before acting, and heartbeats went out meanwhile (on a
        # loaded lab machine one took 0.7 s, and counting it fenced a healthy primary).
        self.step_gap = (0.0 if self.step_started is None
                         else max(0.0, now - self.step_started - interval - self.state_write_s))
        self.step_started, self.state_write_s = now, 0.0
        obs = await self._observe(now)
        if self.receiver.mismatched_digest and self.receiver.accepted == 0:
            raise RefusedToStart(
                f"the peer {self.peer} runs a different configuration (digest {self.receiver.mismatched_digest[:12]}, "
                f"ours {self.digest[:12]}): make the file identical on both nodes, then start the agent"
            )
        if (ended := self.maintenance.expire()) is not None:
            self.event("maintenance_expired", by=ended.by, since=ended.since, until=ended.until)
        self.policy = policy_for(self.cfg, self.node, self.suspended)
        before = self.state
        new, actions = decide(before, obs, self.policy)
        self.counters.decisions += 1
        if self.store.persisted_changed(before, new):
            t = time.monotonic()
            await self._in(self.state_pool, self.store.save_state, new)  # on disk before the action it allows
            self.state_write_s = time.monotonic() - t
        self.state = new
        self._alert(obs, actions)
        for a in actions:
            try:
                submitted = self.executor.submit(a)
            except Unhandled as e:
                self.event("action_failed", action=str(a.kind), error=str(e))
                continue
            if submitted:  # not when the same action is still on its way (e.g. a stop)
                self.event("decision", action=a.kind.value, reason=a.reason.value, detail=a.detail, term=new.term)
        await self._reporting_step(obs)
        # Off the step (it must not wait behind a slow query or a database action), one at a time.
        if (self._sync_task is None or self._sync_task.done()) and self._pg_read is None \
                and not self.executor.busy_role(Role.DATABASE):
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_names_task())
        if self._liveness_write is None or self._liveness_write.done():  # one at a time; a slow one skips a beat
            self._liveness_write = self.disk_pool.submit(self.store.write_liveness, self.boot, False)

    async def _sync_names_task(self) -> None:
        try:
            await self._in(self.pg_pool, self._reconcile_sync)
        except psycopg.Error as e:
            log.warning("could not set synchronous_standby_names: %s", e)

    async def run(self, on_ready: Callable[[], None] | None = None) -> None:
        await self._restore()
        self._open_sockets()
        await self.alerts.start()
        loop = asyncio.get_running_loop()
        # This process's own start-up is not a stall (the liveness record covers the time before it).
        await self._observe_postgres()  # the first read may take longer: start-up, not a stall
        self.last_send, self.max_send_gap = time.monotonic(), 0.0
        interval = self.cfg.timings.heartbeat_interval_ms / 1000
        tasks = [loop.create_task(self.guard.forever(c.__name__.strip("_"), c, interval, self.stopping))
                 for c in (self._sender, self._tiebreaker_prober, self._arp_prober, self._health_prober,
                           self._arp_refresher)]
        # Services placed everywhere run on both nodes; if this node already holds
        # the addresses, what they point at must run too.
        tasks.append(loop.create_task(self._ensure_services(None if self.state.services else Placement.EVERYWHERE)))
        if on_ready:
            on_ready()
        try:
            while not self.stopping.is_set():
                t0 = time.monotonic()
                try:
                    await self._step()
                    self.guard.ok("decision loop", "step")
                except RefusedToStart:
                    raise
                except Exception as e:  # recorded; the next interval tries again
                    self.guard.failed("decision loop", e, "step")
                try:
                    await asyncio.wait_for(self.stopping.wait(), max(0.0, interval - (time.monotonic() - t0)))
                except TimeoutError:
                    pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in self.sockets.values():
                loop.remove_reader(s.fileno())
                s.close()
            await self.alerts.stop(timeout_s=5.0)
            clean = self.stopping.is_set()
            # What is queued for the disk first: a late step's "unclean" liveness must not land after this one.
            self.disk_pool.shutdown(wait=True)
            self.store.write_liveness(self.boot, clean=clean)
            self.recent.append(self.store.record("agent_stopped", clean=clean))
            self.pg_pool.shutdown(wait=False)
            self.state_pool.shutdown(wait=False)
            self.observe_pool.shutdown(wait=False)
            self.svc_pool.shutdown(wait=False)
            self.probe_pool.shutdown(wait=False)

    def stop(self) -> None:
        self.stopping.set()


# -- pure-ish helpers used in worker threads ----------------------------------------------


def hook_argv(cfg: Config, node: str) -> list[str] | None:
    """The address-change hook for ``node``: placeholders filled in per argument, never parsed by a shell."""
    if not cfg.address_change_hook:
        return None
    address = str(cfg.nodes[node].public.ip)
    return [for_node(a, node).replace("{address}", address) for a in cfg.address_change_hook]


def _run_hook(argv: list[str]) -> str:
    import subprocess

    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run {argv[0]}: {e}"
    return f"exit {res.returncode}"


def _probe_tiebreaker(address: str, port: int, timeout: float) -> bool:
    if port:
        return probes.tcp_connect(address, port, timeout)
    try:
        return probes.icmp_echo(address, timeout)
    except OSError:
        return False


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _read_local(conn: psycopg.Connection, peer: str) -> tuple[LocalPg, str | None]:
    in_recovery, names = conn.execute(
        "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names')").fetchone()  # type: ignore[misc]
    if not in_recovery:
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        row = conn.execute(
            "SELECT sync_state, flush_lsn::text FROM pg_stat_replication WHERE application_name = %s "
            "AND state = 'streaming' ORDER BY flush_lsn DESC NULLS LAST LIMIT 1", (peer,)).fetchone()
        flush = Lsn.parse(row[1]) if row else None
        return LocalPg(DbState.PRIMARY, lsn=Lsn.parse(lsn).value, peer_sync=bool(row and row[0] == "sync"),  # type: ignore[union-attr]
                       peer_flush_lsn=flush.value if flush else None), names
    recv, replay = conn.execute("SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text").fetchone()  # type: ignore[misc]
    # The age of the upstream's last message is computed by the server, on its own clock.
    status = conn.execute("SELECT status, extract(epoch FROM clock_timestamp() - last_msg_receipt_time)::float8 "
                          "FROM pg_stat_wal_receiver").fetchone()
    pos = Lsn.parse(recv) or Lsn.parse(replay)
    applied = Lsn.parse(replay)
    age = float(status[1]) if status and status[1] is not None else None
    return LocalPg(DbState.STANDBY, lsn=pos.value if pos else None, replay_lsn=applied.value if applied else None,
                   streaming=bool(status and status[0] == "streaming"), upstream_age_s=age), names
