"""The reporting-IP mover: who holds the reporting IP is decided each step (standby.reporting), moved here.

It owns: the reporting IP's decision state (the hand-over's episodes and receipts), and reading at the first
step whether the kernel holds the address; adding, announcing and removing it is its keeper's (keeper.py).
It may not: decide by itself (standby.reporting.step does), nor touch the service IPs or the state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from standby import reporting as rep
from standby.act import addresses
from standby.agent.keeper import AddressKeeper
from standby.agent.threads import Run
from standby.config import Config, ReportingFallback, ServiceIP
from standby.decide import Policy, State, peer_fresh, public_ok
from standby.model import DbState, LocalPg, Observation

log = logging.getLogger("standby.agent")


class ReportingMover:
    def __init__(self, cfg: Config, in_kernel: Run, in_svc: Run, in_probe: Run, clock: Callable[[], float],
                 event: Callable[..., None]) -> None:
        self.sip: ServiceIP | None = cfg.reporting.floating() if cfg.reporting else None
        self.policy = rep.ReportingPolicy(
            fallback_primary=cfg.reporting is not None and cfg.reporting.fallback is ReportingFallback.PRIMARY,
            max_lag_bytes=cfg.reporting.max_lag_bytes if cfg.reporting else 0)
        self._in_kernel = in_kernel
        self.keeper = None if self.sip is None else AddressKeeper(self.sip, "reporting", in_svc, in_probe, clock, event)
        self.state = rep.ReportingState()
        self.decision: rep.ReportingDecision | None = None

    @property
    def held(self) -> bool | None:
        """Whether the address is here (or being added or removed); None until read from the kernel."""
        return None if self.keeper is None else self.keeper.held

    def advertised(self) -> tuple[bool, int, int]:
        """What the heartbeat says of the reporting IP: held, episode, acknowledgement."""
        return rep.advertised(self.state, bool(self.held))

    async def step(self, obs: Observation, s: State, pg: LocalPg, p: Policy, boot: int) -> None:
        """Decide who holds the reporting IP (pure, see standby.reporting); add or remove it off the loop."""
        k = self.keeper
        if k is None:
            return
        if k.held is None:  # first step: an agent restart keeps what the kernel has
            try:
                k.held = await self._in_kernel(addresses.held, k.sip)
            except (OSError, RuntimeError) as e:  # e.g. the interface is missing: say so, keep deciding the rest
                log.warning("reporting IP: %s", e)
                return
            self.state = rep.ReportingState.for_boot(boot)
        inp = rep.ReportingInputs(
            db=DbState.FENCED if s.fenced else pg.db, streaming=pg.streaming, replay_lsn=pg.replay_lsn,
            peer=peer_fresh(obs, p), public_ok=public_ok(obs), held=bool(k.held), now=obs.now)
        # The standby trusts our last word for failover_timeout after it arrives; one heartbeat more for the way.
        if self.policy.silence_wait_s != (wait := p.failover_timeout_s + p.heartbeat_s):
            self.policy = replace(self.policy, silence_wait_s=wait)  # once: not a new policy every step
        self.state, d = rep.step(self.state, inp, self.policy)
        self.decision = d
        k.follow(d.hold, d.check_arp, reason=d.reason, lag_bytes=d.lag_bytes)
