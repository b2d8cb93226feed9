"""The service role on this node: the service IPs in the kernel and the services they point at.

It owns: adding (and announcing) and removing the service IPs, starting and
stopping the services placed on the active node, asking who else answers ARP
for the addresses, and reading what the kernel holds. The add-and-announce
sequence (``claim``) and the re-announcement are here once, for the reporting
IP too.
It may not: decide whether this node should hold the role, nor change the
agent's state; its callers set the state from what ``holds`` reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import Any

from standby.act import addresses, services, sessions
from standby.config import Config, Placement, ServiceIP

Run = Callable[..., Awaitable[Any]]  # runs a blocking function off the event loop


class Claim(StrEnum):
    """What an ARP check found before taking the addresses."""

    FREE = "free"  # asked, nobody else answers
    TAKEN = "taken"  # another host answers for a service IP
    UNKNOWN = "unknown"  # the probe failed: treated exactly like TAKEN


class TakeRefused(StrEnum):
    DUPLICATE_ADDRESS = "duplicate address"
    PROBE_FAILED = "ARP probe failed"
    FENCED = "fenced"
    SUPERSEDED = "a later decision let go of the service role"


def who_else(cfg: Config) -> tuple[Claim, set[str]]:
    """Who else answers for the service IPs (in a worker thread); our own addresses are not asked about."""
    found: set[str] = set()
    for sip in cfg.service_ips:
        try:
            if addresses.held(sip):
                continue  # ours: the kernel does not answer its own probe
            found |= addresses.answered_elsewhere(sip)
        except (OSError, RuntimeError):
            return Claim.UNKNOWN, found
    return (Claim.TAKEN if found else Claim.FREE), found


async def claim(sips: Sequence[ServiceIP], in_svc: Run, in_probe: Run) -> None:
    """Add and announce each address; on any failure remove them all again (half a take is none)."""
    try:
        for sip in sips:
            await in_svc(addresses.add, sip)
            await in_probe(addresses.announce, sip, 3)
    except BaseException:
        await let_go(sips, in_svc)
        raise


async def let_go(sips: Sequence[ServiceIP], in_svc: Run) -> None:
    """Remove every address the kernel holds, whatever the state says; the first error after trying them all."""
    errors: list[BaseException] = []
    for sip in sips:
        try:
            await in_svc(addresses.remove, sip)
        except Exception as e:  # noqa: BLE001  (the others are removed all the same; raised below)
            errors.append(e)
    if errors:
        raise errors[0]


async def reannounce(sips: Sequence[ServiceIP], in_probe: Run) -> None:
    """One gratuitous ARP for each address held: switches and ARP caches forget."""
    for sip in sips:
        try:
            await in_probe(addresses.announce, sip, 1)
        except OSError:
            pass  # the next round tries again


class ServiceRole:
    def __init__(self, cfg: Config, node: str, in_svc: Run, in_probe: Run,
                 event: Callable[..., None], in_addr: Run | None = None) -> None:
        self.cfg, self.node = cfg, node
        self._svc, self._probe, self._event = in_svc, in_probe, event
        self.ensuring = False  # `ensure` is starting what should already run: the health probe waits
        # The addresses on a thread of their own where given: a move never waits for a service command
        # (a health check) that happens to be running.
        self._addr = in_addr or in_svc

    async def who_else(self) -> tuple[Claim, set[str]]:
        return await self._probe(who_else, self.cfg)  # type: ignore[no-any-return]

    async def holds(self) -> bool:
        """Does the kernel hold any of the service IPs? (A half-held role is held: it must be released.)"""
        return await self._addr(lambda: any(addresses.held(sip) for sip in self.cfg.service_ips))  # type: ignore[no-any-return]

    async def add_ips(self) -> None:
        # Announced from the addresses' thread too: not behind a probe that may be waiting for answers.
        await claim(self.cfg.service_ips, self._addr, self._addr)

    async def remove_ips(self) -> None:
        await let_go(self.cfg.service_ips, self._addr)

    async def take(self) -> TakeRefused | None:
        """ARP check, then the addresses, then the services; the reason when refused."""
        claim, others = await self.who_else()
        if claim is not Claim.FREE:
            refused = TakeRefused.DUPLICATE_ADDRESS if claim is Claim.TAKEN else TakeRefused.PROBE_FAILED
            self._event("take_refused", reason=refused.value, answered_by=sorted(others))
            return refused
        await self.add_ips()
        await self.start(Placement.ACTIVE)
        return None

    async def release(self, stop_decided: bool = False) -> None:
        # Addresses first: clients stop reaching this node at once. The services stop even if an address
        # could not be removed; that error is raised afterwards. But a server told to stop (``stop_decided``:
        # a fence) first tells its clients, while they can still hear it (standby.act.sessions).
        if left := await self._addr(sessions.told_unless_running_on, self.cfg, self.node, stop_decided):
            self._event("sessions_left_open", sessions=left)
        try:
            await self.remove_ips()
        finally:
            await self.stop_services()

    async def stop_services(self) -> None:
        """The services placed on the active node stop; a failure is recorded, not raised."""
        for r in await self._svc(services.stop_all, self.cfg.services, self.node, Placement.ACTIVE):
            if not r.ok:
                self._event("service_stop_failed", service=r.service, detail=r.detail)

    async def ensure(self, placement: Placement | None, exclusive: asyncio.Lock) -> None:
        """Start what should already run here (after an agent restart, or services placed everywhere),
        holding the service role's lock (``exclusive``) as an action would."""
        self.ensuring = True
        try:
            async with exclusive:
                await self.start(placement)
        finally:
            self.ensuring = False

    async def start(self, placement: Placement | None) -> list[services.CommandResult]:
        results: list[services.CommandResult] = await self._svc(services.start_all, self.cfg.services, self.node,
                                                                 placement)
        for r in results:
            if not r.ok:
                self._event("service_start_failed", service=r.service, detail=r.detail)
        return results
