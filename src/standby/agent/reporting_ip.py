"""The reporting-IP mover: who holds the reporting IP is decided each step (standby.reporting), moved here.

It owns: the reporting IP's decision state (the hand-over's episodes and receipts), whether this node
holds the address (read from the kernel at the first step, then tracked), and adding, announcing and
removing it, off the step and one change at a time.
It may not: decide by itself (standby.reporting.step does), nor touch the service IPs or the state.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from standby import reporting as rep
from standby.act import addresses
from standby.agent.executor import first_line
from standby.agent.servicerole import claim, let_go, reannounce
from standby.config import Config, ReportingFallback, ServiceIP
from standby.decide import Policy, State, peer_fresh, public_ok
from standby.model import DbState, LocalPg, Observation

log = logging.getLogger("standby.agent")
Run = Callable[..., Awaitable[Any]]
ANNOUNCE_EVERY_S = 5.0


class ReportingMover:
    def __init__(self, cfg: Config, in_kernel: Run, in_svc: Run, in_probe: Run, clock: Callable[[], float],
                 event: Callable[..., None]) -> None:
        self.sip: ServiceIP | None = cfg.reporting.floating() if cfg.reporting else None
        self.policy = rep.ReportingPolicy(
            fallback_primary=cfg.reporting is not None and cfg.reporting.fallback is ReportingFallback.PRIMARY,
            max_lag_bytes=cfg.reporting.max_lag_bytes if cfg.reporting else 0)
        self._in_kernel, self._in_svc, self._in_probe = in_kernel, in_svc, in_probe
        self.clock, self.event = clock, event
        self.state = rep.ReportingState()
        self.decision: rep.ReportingDecision | None = None
        self.held: bool | None = None  # None until read from the kernel
        self.busy = False
        self.refused = False
        self.announced = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()

    def advertised(self) -> tuple[bool, int, int]:
        """What the heartbeat says of the reporting IP: held, episode, acknowledgement."""
        return rep.advertised(self.state, bool(self.held))

    async def step(self, obs: Observation, s: State, pg: LocalPg, p: Policy, boot: int) -> None:
        """Decide who holds the reporting IP (pure, see standby.reporting); add or remove it off the loop."""
        sip = self.sip
        if sip is None:
            return
        if self.held is None:  # first step: an agent restart keeps what the kernel has
            try:
                self.held = await self._in_kernel(addresses.held, sip)
            except (OSError, RuntimeError) as e:  # e.g. the interface is missing: say so, keep deciding the rest
                log.warning("reporting IP: %s", e)
                return
            self.state = rep.ReportingState.for_boot(boot)
        inp = rep.ReportingInputs(
            db=DbState.FENCED if s.fenced else pg.db, streaming=pg.streaming, replay_lsn=pg.replay_lsn,
            peer=peer_fresh(obs, p), public_ok=public_ok(obs), held=self.held, now=obs.now)
        # The standby trusts our last word for failover_timeout after it arrives; one heartbeat more for the way.
        if self.policy.silence_wait_s != (wait := p.failover_timeout_s + p.heartbeat_s):
            self.policy = replace(self.policy, silence_wait_s=wait)  # once: not a new policy every step
        self.state, d = rep.step(self.state, inp, self.policy)
        self.decision = d
        if self.busy:
            return
        if d.hold != self.held:
            self.busy = True
            if d.hold:
                # Held from now on, ARP check included: the next step must not give the standby a
                # receipt while this take may still add the address.
                self.held = True
            self._spawn(self._apply(sip, d))
        elif d.hold and self.clock() - self.announced >= ANNOUNCE_EVERY_S:
            self.announced = self.clock()
            self.busy = True
            self._spawn(self._announce(sip))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, sip: ServiceIP) -> None:
        try:
            await reannounce([sip], self._in_probe)
        finally:
            self.busy = False

    async def _apply(self, sip: ServiceIP, d: rep.ReportingDecision) -> None:
        try:
            if d.hold:
                if d.check_arp and not await self._free(sip, d):
                    return
                try:
                    await claim([sip], self._in_svc, self._in_probe)
                except BaseException:
                    self.held = False
                    raise
                self.announced = self.clock()
            else:
                await let_go([sip], self._in_svc)
                self.held = False  # only now may the peer be told it is free
            self.refused = False
            self.event("reporting", held=d.hold, reason=d.reason, lag_bytes=d.lag_bytes)
        except Exception as e:  # noqa: BLE001  (the next step decides again)
            self.event("action_failed", action="reporting", error=first_line(e))
        finally:
            self.busy = False

    async def _free(self, sip: ServiceIP, d: rep.ReportingDecision) -> bool:
        """Nobody else answers ARP for the address (a probe that fails raises: the address is not added)."""
        try:
            others: set[str] = await self._in_probe(addresses.answered_elsewhere, sip)
        except Exception:
            self.held = False  # never added
            raise
        if others:
            self.held = False  # never added
            if not self.refused:
                self.event("reporting_take_refused", answered_by=sorted(others), reason=d.reason)
            self.refused = True
            return False
        return True
