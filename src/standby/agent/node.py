"""The node agent: the parts wired together, and the loop that observes, decides (standby.decide) and acts.

The parts, one file each: the heartbeat link (link.py), the observer of PostgreSQL and the links (observer.py,
through the one connection in localdb.py), the background probes (probers.py), the executor of decided actions
(executor.py), operator operations (operator.py), the reporting-IP and home-address movers (reporting_ip.py,
home_ip.py), the alerter (alerter.py), the keeper of synchronous_standby_names (synckeeper.py); the persisted
state and history (store.py; the state's write before the actions, statewrite.py); the start-up refusals
(startup.py); what the API reads (surface.py); the grid the periodic loops wake on (ticks.py).

It owns: the decision state's turn (decisions and operator operations take turns), the step, and the agent's
threads. It may not block the event loop: everything that blocks (PostgreSQL, netlink, service commands, disk)
runs on a worker thread, because the heartbeat sender's own gaps and the step's lateness are what tell the
decisions that this process stalled (a frozen VM).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from standby.act import addresses, services  # noqa: F401  (re-exported: unit tests replace the kernel here)
from standby.agent import priority
from standby.agent.alerter import Alerter
from standby.agent.executor import Actions, Executor, Role
from standby.agent.guard import Guard
from standby.agent.home_ip import HomeMover
from standby.agent.link import HeartbeatLink, Transport, UdpTransport
from standby.agent.localdb import Database, LocalDb
from standby.agent.maintenance import MaintenanceFile
from standby.agent.observer import Observer
from standby.agent.operator import Operator
from standby.agent.opsteps import OpError, hook_argv, run_hook
from standby.agent.policy import config_digest, policy_for
from standby.agent.probers import Probers
from standby.agent.reporting_ip import ReportingMover
from standby.agent.servicerole import ServiceRole
from standby.agent.startup import RefusedToStart, heartbeat_key, same_configuration
from standby.agent.statewrite import HUNG_S, StateWriter
from standby.agent.store import StateCell, Store
from standby.agent.superseded import fence_if_superseded
from standby.agent.surface import Surface
from standby.agent.synckeeper import SyncKeeper
from standby.agent.threads import runner
from standby.agent.ticks import Ticks
from standby.alerts import AlertDispatcher
from standby.config import Config, Placement
from standby.decide import advertise, decide
from standby.model import ONLY_TAKE_AWAY, ActionKind, DbState, Observation, PeerView
from standby.observe import postgres as pgobs  # noqa: F401  (re-exported: unit tests replace the connection here)
from standby.vouch import NOTHING_IN_HAND, InHand

__all__ = ["Agent", "OpError", "RefusedToStart", "config_digest", "hook_argv", "policy_for", "run_hook"]
log = logging.getLogger("standby.agent")
STEP_TIMES = 300  # decision steps kept for standby_decision_step_seconds (a minute at 200 ms)
STEP_TIMES_EVERY = 25


class Agent(Surface):
    def __init__(self, cfg: Config, node: str, *, clock: Callable[[], float] = time.monotonic,
                 transport: Transport | None = None, db: Database | None = None) -> None:
        self.cfg, self.node, self.peer, self.clock = cfg, node, cfg.peer_of(node), clock
        self.key = heartbeat_key(cfg, node)
        self.digest = config_digest(cfg)
        self.interval_s = cfg.timings.heartbeat_interval_ms / 1000
        self.ticks = Ticks(self.interval_s)
        self.store = Store(cfg.state_dir_for(node), node)
        self.cell = StateCell(self.store)
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)
        self.guard = Guard(self.event)  # a failing observation or loop is recorded, never fatal
        # Made once: the configuration never changes under a running agent (one per step cost idle CPU).
        self.policies = {suspended: policy_for(cfg, node, suspended) for suspended in (False, True)}
        self.policy = self.policies[False]
        self.stopping, self.stepped = asyncio.Event(), asyncio.Event()  # stepped: set and cleared after each step
        self.started = False  # until run() restored the state, the API says "starting" (standby.api)
        # Decisions and operator operations take turns: an operation changes the
        # state under the decision loop's feet otherwise (a stale step would undo it).
        self.turn = asyncio.Lock()
        self.decisions = 0
        # The last STEP_TIMES steps' own durations (the turn's wait excluded), for the metrics' thread.
        self._step_times: deque[float] = deque(maxlen=STEP_TIMES)
        self.step_times: tuple[float, ...] = ()
        self.startup_gap = self.step_gap = self.state_write_s = 0.0
        self.step_started: float | None = None  # None: the next step's lateness is not a stall
        self.in_hand = NOTHING_IN_HAND  # what the step in progress saw and decided, for the API's checks
        self._liveness_write: Future[None] | None = None
        self._threads()
        in_pg, in_svc, in_probe, in_kernel = self._in_pg, self._in_svc, self._in_probe, self._in_kernel
        self.state_writer = StateWriter(self.store, self._in_state)
        self.db: Database = db or LocalDb(cfg, node)
        self.link = HeartbeatLink(cfg, node, self.key, self.digest, transport or UdpTransport(cfg, node), clock)
        self.observer = Observer(cfg, node, self.db, in_pg, in_kernel, self.guard, clock)
        self.service_role = ServiceRole(cfg, node, in_svc, in_probe, self.event, in_addr=runner(self.addr_pool))
        self.probers = Probers(cfg, node, self.policy, self.service_role, in_svc, in_probe, clock, self.event, self.ticks)
        self.actions = Actions(cfg, self.db, self.service_role, self.cell, self.turn, in_pg, self.probers.take_refused,
                               lambda: self.operator.decided_rejoin(), self.event)
        # Each role's actions one at a time, in decision order (see agent.executor).
        self.executor = Executor(self.actions.table(), self.event, self.actions.readback)
        self.maintenance = MaintenanceFile(self.store.maint_path, cfg.timings.maintenance_timeout_s)
        self.operator = Operator(cfg, node, self.cell, self.observer, self.db, self.service_role, self.executor,
                                 self.actions, self.maintenance, self.turn, in_pg, in_svc, self._in_state, self.event,
                                 self._forgive_pause)
        self.mover = ReportingMover(cfg, in_kernel, in_svc, in_probe, clock, self.event)
        self.homes = HomeMover(cfg, node, in_kernel, runner(self.addr_pool), in_probe, clock, self.event)
        self.alerts = AlertDispatcher.from_config(cfg)
        self.alerter = Alerter(cfg, node, self.alerts, self.event)
        self.sync_keeper = SyncKeeper(cfg, self.peer, self.db, self.observer, self.executor, in_pg,
                                      lambda: self.policy, lambda: self.state)

    def _threads(self) -> None:
        self.pg_pool = ThreadPoolExecutor(1, thread_name_prefix="pg", initializer=priority.follow)  # its connection: not shared
        # The decision step's own state writes: never queued behind a slow PostgreSQL query.
        self.state_pool = ThreadPoolExecutor(1, thread_name_prefix="state", initializer=priority.follow)
        self.svc_pool = ThreadPoolExecutor(1, thread_name_prefix="svc", initializer=priority.follow)
        # The service IPs and home addresses: moved without waiting for a service command or check (finding R2).
        self.addr_pool = ThreadPoolExecutor(1, thread_name_prefix="addr", initializer=priority.follow)
        self.probe_pool = ThreadPoolExecutor(2, thread_name_prefix="probe", initializer=priority.follow)
        # The step's quick kernel reads, never behind a probe or a service command (a wait is a stall: Observation.gap).
        self.observe_pool = ThreadPoolExecutor(1, thread_name_prefix="observe", initializer=priority.follow)
        # History and liveness writes, in order, off the event loop (see event()).
        self.disk_pool = ThreadPoolExecutor(1, thread_name_prefix="disk")
        self._in_pg, self._in_svc, self._in_probe, self._in_kernel, self._in_state = (
            runner(p) for p in (self.pg_pool, self.svc_pool, self.probe_pool, self.observe_pool, self.state_pool))

    def event(self, event: str, **detail: Any) -> None:
        entry = self.store.entry(event, **detail)
        # On the disk thread, in order: a blocking file-system call (over a second on a busy disk) never holds up heartbeats.
        self.disk_pool.submit(self.store.append, entry)
        self.recent.append(entry)
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in detail.items()))

    # -- start-up -----------------------------------------------------------------

    async def _restore(self) -> None:
        now = self.clock()
        self.startup_gap = self.store.unattended_for(now)  # an unclean death: nobody decided meanwhile
        self.maintenance.load()
        holding = await self.guard.read("service IPs", self.service_role.holds, False)
        self.cell.state = self.store.restored(now, holding)
        # Replay protection outlives this run: the peer's boots already seen stay refused.
        # A newer one is written on the state thread: never an fsync on the loop the heartbeats need.
        self.link.start(self.store.next_boot(), self.store.peer_boot(),
                        lambda boot: self.state_pool.submit(self.store.save_peer_boot, boot))
        self.event("agent_started", boot=self.boot, restored=self.state.persisted(), holds_service_ips=holding,
                   unattended_for_s=round(self.startup_gap, 3))

    # -- the step -----------------------------------------------------------------

    def _advertised(self) -> PeerView:
        held, epoch, ack = self.mover.advertised()
        return advertise(self.state, self.pg, self.carrier, self.probers.tiebreaker_ok(), self.policy.preferred,
                         self.policy.sync, reporting=held, reporting_epoch=epoch, reporting_ack=ack, hot=self.policy.hot,
                         home_adopted=self.homes.advertised(),
                         db_in_hand=self.executor.busy(ActionKind.RESTART_PG) or self.executor.busy(ActionKind.FENCE))

    async def _observe(self, now: float) -> Observation:
        await self.observer.both()
        # A stalled process may be scheduled here before its sender has run again: the time since the last send counts
        # too; so do the loop's own lateness (a step begun over an interval after the last) and the time before this agent.
        self.in_hand = InHand(self.link.pending_gap())  # before the link forgets it: the API's checks count it
        gap, self.startup_gap = max(self.link.take_send_gap(), self.startup_gap, self.step_gap), 0.0
        link, p, dr = self.link, self.probers, self.probers.dr_for(self.pg.db)
        return Observation(
            now=now, gap=gap, pg=self.pg, peer=link.peer_view, heard=dict(link.heard), carrier=dict(self.carrier),
            tiebreaker_ok=p.tiebreaker_ok(), services_healthy=p.services_healthy, service_ip_elsewhere=p.ip_elsewhere,
            heard_me=link.heard_me, dr=dr.seen if dr else None, dr_term=dr.term if dr else None,
            pg_silent_s=self.observer.silent_s(now), wal_stuck_s=self.observer.wal.stuck_s(),
        )

    async def _step(self) -> None:
        async with self.turn:
            t = self.clock()
            await self._step_locked()
            self._step_times.append(self.clock() - t)
            self.stepped.set()  # wakes what waits for a decision made after its own wait (the announcer) ...
            self.stepped.clear()  # ... and the next wait is for the next step
            if self.decisions % STEP_TIMES_EVERY == 0 or not self.step_times:
                self.step_times = tuple(self._step_times)

    async def _step_locked(self) -> None:
        now = self.clock()
        # The state's fsync is excluded: it must finish before acting, and heartbeats went out meanwhile (on a
        # loaded lab machine one took 0.7 s, and counting it fenced a healthy primary).
        self.step_gap = (0.0 if self.step_started is None
                         else max(0.0, now - self.step_started - self.interval_s - self.state_write_s))
        self.step_started, self.state_write_s = now, 0.0
        obs = await self._observe(now)
        same_configuration(self.receiver, self.peer, self.digest)
        if (ended := self.maintenance.expire()) is not None:
            self.event("maintenance_expired", by=ended.by, since=ended.since, until=ended.until)
        self.policy = self.policies[self.suspended]
        before = self.state
        new, actions = decide(before, obs, self.policy)
        self.in_hand = InHand(obs.gap, new.fenced)  # until self.state says so (standby.vouch)
        self.decisions += 1
        if obs.pg.db is DbState.PRIMARY and any(a.kind is ActionKind.FENCE for a in actions):
            # It takes writes until its server hears a stop: ask before the state write (chaos seed 77; why safe: act.fence).
            self.db.request_stop()
        if self.store.unsaved(new):  # also a write that failed at an earlier step: tried again
            t, takes_away_only = self.clock(), new.fenced and all(a.kind in ONLY_TAKE_AWAY for a in actions)
            try:
                await self.state_writer.write(new, takes_away_only)  # on disk before the action it allows
                self.guard.ok("state file", "write")
            except OSError as e:
                if not takes_away_only:
                    raise  # nothing acted on: the next step decides again
                # A fence only takes away: it goes on without its record, held in memory (agent.statewrite; F2).
                self.guard.failed("state file", f"not written within {HUNG_S:g} s (a hung disk?)" if isinstance(
                    e, TimeoutError) else f"[Errno {e.errno}] {e.strerror}", "write")  # no file name: it varies
            self.state_write_s = self.clock() - t
        self.state = new
        self.in_hand = NOTHING_IN_HAND
        self.alerter.after_step(new, obs, self.policy, actions, self.maintenance.current if self.suspended else None,
                                time.time())
        for a in actions:
            if self.executor.submit(a):  # not when the same action is still on its way (e.g. a stop)
                self.event("decision", action=a.kind.value, reason=a.reason.value, detail=a.detail, term=new.term)
        for name, part in (("reporting IP", self.mover.step(obs, self.state, self.pg, self.policy, self.boot)),
                           ("home addresses", self.homes.step(obs, self.state, self.pg, self.policy))):
            try:  # each on its own: one that fails must not keep the other from deciding (finding R1)
                await part
                self.guard.ok(name, "step")
            except Exception as e:  # noqa: BLE001  (recorded; the next step tries again)
                self.guard.failed(name, e, "step")
        self.sync_keeper.after_step()  # off the step: it must not wait behind a slow query or a database action
        # One write at a time (a slow one skips a beat), and never ahead of the state on disk (the fence above).
        if not self.store.unsaved(self.state) and (self._liveness_write is None or self._liveness_write.done()):
            self._liveness_write = self.disk_pool.submit(self.store.write_liveness, self.boot, False, now)

    def _forgive_pause(self) -> None:
        self.step_started = None  # the steps were held back on purpose (an operation): that is no stall

    # -- the loop -----------------------------------------------------------------

    def _background(self) -> dict[str, Callable[[], Any]]:
        s, p, stop = self, self.probers, self.stopping
        return {
            "sender": lambda: s.link.sender(s._advertised, s.interval_s, stop),  # off the grid: agent.ticks
            "tiebreaker_prober": lambda: p.tiebreaker(stop),
            "dr_prober": lambda: p.dr(stop, lambda: s.state, lambda: s.pg.db),
            "arp_prober": lambda: p.arp(stop, lambda: s.state, s.link.quiet_since),
            "health_prober": lambda: p.health(stop, lambda: s.state.services and not s.service_role.ensuring
                                              and not s.executor.busy(ActionKind.TAKE_SERVICES)),
            "arp_refresher": lambda: p.announcer(stop, lambda: s.state.services
                                                 and not s.executor.busy(ActionKind.RELEASE_SERVICES), s.stepped.wait),
        }

    async def run(self, on_ready: Callable[[], None] | None = None) -> None:
        await self._restore()
        self.link.open()
        await self.alerts.start()
        loop = asyncio.get_running_loop()
        await self.observer.postgres()  # the first read may take longer: start-up, not a stall
        await fence_if_superseded(self.cfg, self.node, self.cell, self.pg.db, self._in_probe, self._in_state, self.event)
        self.link.restart_gaps()  # this process's own start-up is not a stall (the liveness record covers it)
        tasks = [loop.create_task(self.guard.forever(name, fn, self.interval_s, self.stopping))
                 for name, fn in self._background().items()]
        # Services placed everywhere run on both nodes; if this node already holds the addresses, what they point at too.
        tasks.append(loop.create_task(self.service_role.ensure(None if self.state.services else Placement.EVERYWHERE,
                                                               self.executor.exclusive(Role.SERVICES))))
        self.started = True
        if on_ready:
            on_ready()
        try:
            while not self.stopping.is_set():
                t0 = loop.time()  # the clock the grid is on
                try:
                    await self._step()
                    self.guard.ok("decision loop", "step")
                except RefusedToStart:
                    raise
                except Exception as e:  # noqa: BLE001  (recorded; the next interval tries again)
                    self.guard.failed("decision loop", e, "step")
                # Within an interval of this step's start, at once if it took that long (agent.ticks: no lateness
                # added). Not a wait on `stopping` (a task made and cancelled each step): a stop is seen an interval later.
                await self.ticks.wait(since=t0)
        finally:
            await self._shut_down(tasks)

    async def _shut_down(self, tasks: list[asyncio.Task[Any]]) -> None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.link.close()
        await self.alerts.stop(timeout_s=5.0)
        clean = self.stopping.is_set()
        # What is queued for the disk first: a late step's "unclean" liveness must not land after this one.
        self.disk_pool.shutdown(wait=True)
        if not self.store.unsaved(self.state):  # else the next agent must see the time since as unattended
            self.store.write_liveness(self.boot, clean, self.clock())
        self.recent.append(self.store.record("agent_stopped", clean=clean))
        for pool in (self.pg_pool, self.state_pool, self.observe_pool, self.svc_pool, self.addr_pool, self.probe_pool):
            pool.shutdown(wait=False)

    def stop(self) -> None:
        self.stopping.set()
