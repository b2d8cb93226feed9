"""A reporting follower's own reporting IP, held while standby.reporting.follower_step says so.

It owns: the follower's ``reporting_ip`` on this host (read from the kernel at the first step, then
tracked), the rule's state, adding the address with a gratuitous ARP (and one more every few seconds:
switches and ARP caches forget), and removing it.
It may not: decide by itself, or touch any other address. Each change is one netlink request on the
follower's step thread (milliseconds); a failed one is said once and tried again at the next step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from standby.act import addresses
from standby.config import ServiceIP
from standby.reporting import (
    FollowerReportingInputs,
    FollowerReportingPolicy,
    FollowerReportingReason,
    FollowerReportingState,
    follower_step,
)

log = logging.getLogger(__name__)
ANNOUNCE_EVERY_S = 5.0


class OwnReportingIp:
    def __init__(self, sip: ServiceIP, policy: FollowerReportingPolicy,
                 held: Callable[[ServiceIP], bool] = addresses.held,
                 add: Callable[[ServiceIP], bool] = addresses.add,
                 remove: Callable[[ServiceIP], bool] = addresses.remove,
                 announce: Callable[[ServiceIP, int], None] = addresses.announce) -> None:
        self.sip, self.policy = sip, policy
        self._held, self._add, self._remove, self._announce = held, add, remove, announce
        self.state = FollowerReportingState()
        self.reason: FollowerReportingReason | None = None
        self.on_host: bool | None = None  # None until read from the kernel
        self.announced = -math.inf
        self.error: str | None = None  # the last failure, said once

    def step(self, inp: FollowerReportingInputs) -> None:
        """Decide, then bring the kernel to the decision."""
        if self.on_host is None:
            # An agent restart keeps what the kernel has: the reports reading there are not cut for nothing.
            if not self._try("read", lambda: self._read()):
                return
            self.state = FollowerReportingState(held=bool(self.on_host))
        self.state, why = follower_step(self.state, inp, self.policy)
        if why is not self.reason:
            log.warning("reporting IP %s: %s (%s)", self.sip.address, "held" if self.state.held else "not held",
                        why.value)
        self.reason = why
        if self.state.held and not self.on_host:
            if self._try("add", lambda: self._add(self.sip)):
                self.on_host = True
                self.announced = inp.now
                self._try("announce", lambda: self._announce(self.sip, 3))
        elif not self.state.held and self.on_host:
            if self._try("remove", lambda: self._remove(self.sip)):
                self.on_host = False
        elif self.on_host and inp.now - self.announced >= ANNOUNCE_EVERY_S:
            self.announced = inp.now
            self._try("announce", lambda: self._announce(self.sip, 1))

    def _read(self) -> None:
        self.on_host = self._held(self.sip)

    def _try(self, what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except (OSError, RuntimeError) as e:  # e.g. the interface is missing: said once, tried again next step
            text = f"{what} {self.sip.address} on {self.sip.interface}: {e}"
            if text != self.error:
                log.error("reporting IP: %s", text)
            self.error = text
            return False
        self.error = None
        return True
