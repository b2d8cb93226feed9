"""One floating address that a pure rule decides on each step (the reporting IP, a home address), moved here.

It owns: whether this node holds the address (as told at the first step, then tracked), and adding (after an
ARP probe when the decision asks for one), announcing and removing it, off the step and one change at a time.
It may not: decide whether to hold it (its caller's pure rule does), nor touch any other address.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from standby.act import addresses
from standby.agent.executor import first_line
from standby.agent.servicerole import claim, let_go, reannounce
from standby.agent.threads import Run
from standby.config import ServiceIP

ANNOUNCE_EVERY_S = 5.0
# After another host answered for the address, the next probe waits this long: each probe holds a probe thread
# for its whole timeout, and a step every 200 ms would keep one busy while the other host stays.
RETRY_AFTER_REFUSAL_S = 2.0


class AddressKeeper:
    def __init__(self, sip: ServiceIP, what: str, in_svc: Run, in_probe: Run, clock: Callable[[], float],
                 event: Callable[..., None], look: bool = False) -> None:
        self.sip, self.what = sip, what  # ``what`` names the events: "<what>", "<what>_take_refused", ...
        # Look (ARP) before each re-announcement whether another host answers for the address too.
        self.look, self.contested = look, False
        self._in_svc, self._in_probe = in_svc, in_probe
        self.clock, self.event = clock, event
        self.held: bool | None = None  # None until the caller has read the kernel
        self.want = False  # the latest decision, also while a change is under way
        self.busy = False
        self.refused = False
        self.refused_at = -math.inf
        self.announced = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()

    def follow(self, hold: bool, check_arp: bool, **why: Any) -> None:
        """Start moving the address to match ``hold`` (if nothing is under way); re-announce it now and then."""
        self.want = hold
        if self.busy or self.held is None:
            return
        if hold and not self.held and check_arp and self.clock() - self.refused_at < RETRY_AFTER_REFUSAL_S:
            return
        if hold != self.held:
            self.busy = True
            if hold:
                # Held from now on, ARP probe included: the next step must not tell the peer the address is
                # free while this take may still add it.
                self.held = True
            self._spawn(self._apply(hold, check_arp, why))
        elif hold and self.clock() - self.announced >= ANNOUNCE_EVERY_S:
            self.announced = self.clock()
            self.busy = True
            self._spawn(self._announce())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self) -> None:
        try:
            if self.look:
                try:
                    others: set[str] = await self._in_probe(addresses.answered_elsewhere, self.sip)
                except Exception:  # noqa: BLE001  (could not look: nothing is known against holding it)
                    others = set()
                if others and not self.contested:
                    self.event(f"{self.what}_contested", answered_by=sorted(others))
                self.contested = bool(others)
                if others:
                    return  # the caller's rule decides who goes; announcing now would pull the traffic here
            await reannounce([self.sip], self._in_probe)
        finally:
            self.busy = False

    async def _apply(self, hold: bool, check_arp: bool, why: dict[str, Any]) -> None:
        try:
            if hold:
                if check_arp and not await self._free(why):
                    return
                if not self.want:
                    # The decision turned while the probe ran (this node's public link went down, say: a probe
                    # over a dead link finds nobody): add nothing (finding H2).
                    self.held = False
                    self.event(f"{self.what}_take_dropped", **why)
                    return
                try:
                    await claim([self.sip], self._in_svc, self._in_probe)
                except BaseException:
                    self.held = False
                    raise
                self.announced = self.clock()
            else:
                await let_go([self.sip], self._in_svc)
                self.held, self.contested = False, False  # only now may the peer be told it is free
            self.refused = False
            self.event(self.what, held=hold, **why)
        except Exception as e:  # noqa: BLE001  (the next step decides again)
            self.event("action_failed", action=self.what, error=first_line(e))
        finally:
            self.busy = False

    async def _free(self, why: dict[str, Any]) -> bool:
        """Nobody else answers ARP for the address (a probe that fails raises: the address is not added)."""
        try:
            others: set[str] = await self._in_probe(addresses.answered_elsewhere, self.sip)
        except Exception:
            self.held = False  # never added
            raise
        if others:
            self.held = False  # never added
            self.refused_at = self.clock()
            if not self.refused:
                self.event(f"{self.what}_take_refused", answered_by=sorted(others), **why)
            self.refused = True
            return False
        return True
