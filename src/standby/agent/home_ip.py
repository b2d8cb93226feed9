"""The home-address mover: who holds each node's home address is decided each step (standby.homeaddr), moved here.

It owns: the rule's state (since when the peer is silent), reading at the first step whether the kernel holds
this node's home address and the peer's; adding, announcing and removing them is their keepers' (keeper.py).
It may not: decide by itself (standby.homeaddr.step does), nor touch the service IPs, the reporting IP or the
state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from standby import homeaddr as home
from standby.act import addresses
from standby.agent.keeper import AddressKeeper
from standby.agent.threads import Run
from standby.config import Config
from standby.decide import Policy, State, peer_fresh, public_ok
from standby.model import DbState, LocalPg, Observation

log = logging.getLogger("standby.agent")


class HomeMover:
    def __init__(self, cfg: Config, me: str, in_kernel: Run, in_svc: Run, in_probe: Run,
                 clock: Callable[[], float], event: Callable[..., None]) -> None:
        own, theirs = cfg.nodes[me].home(), cfg.nodes[cfg.peer_of(me)].home()
        self._in_kernel = in_kernel
        # Both or neither (the configuration check): a node without one adopts nothing either.
        self.own = None if own is None else AddressKeeper(own, "home_address", in_svc, in_probe, clock, event)
        self.adopted = None if theirs is None or own is None else \
            AddressKeeper(theirs, "adopted_home_address", in_svc, in_probe, clock, event, look=True)
        self.state = home.HomeState()
        self.decisions: home.HomeDecisions | None = None
        self.policy: home.HomePolicy | None = None

    def advertised(self) -> bool:
        """What the heartbeat says: this node holds the peer's home address (or is still removing it). Unknown
        (before the first step has read the kernel, or after a failed read) counts as held: a restarted agent's
        first heartbeats leave before its first step, and "not adopted" would let the owner add the address
        this node may still have (the second reader's finding R1)."""
        return self.adopted is not None and self.adopted.held is not False

    async def step(self, obs: Observation, s: State, pg: LocalPg, p: Policy) -> None:
        """Decide who holds the two home addresses (pure, see standby.homeaddr); add or remove them off the loop."""
        own, adopted = self.own, self.adopted
        if own is None or adopted is None:
            return
        if own.held is None or adopted.held is None:  # first step: an agent restart keeps what the kernel has
            try:
                own.held = await self._in_kernel(addresses.held, own.sip)
                adopted.held = await self._in_kernel(addresses.held, adopted.sip)
            except (OSError, RuntimeError) as e:  # e.g. the interface is missing: say so, keep deciding the rest
                own.held = adopted.held = None
                log.warning("home address: %s", e)
                return
        # The peer trusts our last word for failover_timeout after it arrives; one heartbeat more for the way.
        wait = p.failover_timeout_s + p.heartbeat_s
        if self.policy is None or self.policy.silence_wait_s != wait:
            self.policy = home.HomePolicy(silence_wait_s=wait, peer_has_one=True)  # once, not every step
        inp = home.HomeInputs(db=DbState.FENCED if s.fenced else pg.db, peer=peer_fresh(obs, p),
                              public_ok=public_ok(obs), own_held=bool(own.held),
                              heard_me_s=None if obs.heard_me is None else obs.now - obs.heard_me,
                              adopted_held=bool(adopted.held), adopted_contested=adopted.contested, now=obs.now)
        self.state, d = home.step(self.state, inp, self.policy)
        self.decisions = d
        own.follow(d.own.hold, d.own.check_arp, reason=d.own.reason)
        adopted.follow(d.adopted.hold, d.adopted.check_arp, reason=d.adopted.reason)
