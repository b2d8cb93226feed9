"""The background probes: the tie-breaker, who answers ARP for the service IPs, the services' health.

Each runs in a loop of its own, off the decision step (a probe may take longer than a step), and
keeps only its latest result, which the step reads. After a stall the results are stale, which is
why the tie-breaker's answer counts only for a window (Policy.tiebreaker_window_s).

It owns: those results, and the periodic gratuitous ARP for the service IPs this node holds.
It may not: decide, change the agent's state, or add or remove an address.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from standby.act import services
from standby.agent.servicerole import Claim, ServiceRole, reannounce
from standby.agent.superseded import DrWatch
from standby.agent.ticks import Ticks
from standby.config import Config
from standby.decide import Policy, State, dr_in_question
from standby.model import DbState, DrSeen
from standby.observe import probes

log = logging.getLogger("standby.agent")
Run = Callable[..., Awaitable[Any]]
REFUSED_RECENTLY_S = 10.0  # after a refused take, keep asking who answers even while the peer is heard
HEALTH_EVERY_S = 1.0
DR_EVERY_S = 1.0  # the warm followers, while decide.dr_in_question holds (a running primary or hot standby: always)
ANNOUNCE_EVERY_S = 5.0  # switches and ARP caches forget


def probe_tiebreaker(cfg: Config) -> bool:
    """One tie-breaker answer or none, asked as `standby check` asks it (probes.tiebreaker_answers): the agent's
    TCP probe; its ICMP echo is the same echo with the same timeout, through a socket of its own (Probers.tiebreaker).
    An echo that cannot even be sent counts as no answer."""
    try:
        return probes.tiebreaker_answers(cfg)
    except OSError:  # ProbeError included
        return False


@dataclass(frozen=True)
class DrAnswer:
    """The warm followers' answer to one question, with what this node was when the question left."""

    seen: DrSeen
    asked_as: DbState  # this node's server's role (dr_for drops the answer once the role has changed)
    term: int  # this node's term (a standby relays a WRITABLE answer for this term: decide rule 7)


class Probers:
    def __init__(self, cfg: Config, node: str, policy: Policy, service_role: ServiceRole, in_svc: Run, in_probe: Run,
                 clock: Callable[[], float], event: Callable[..., None], ticks: Ticks | None = None) -> None:
        self.cfg, self.node, self.service_role = cfg, node, service_role
        self.ticks = ticks or Ticks(policy.heartbeat_s)  # the agent's grid: its loops wake with the step (agent.ticks)
        self._in_svc, self._in_probe, self.clock, self.event = in_svc, in_probe, clock, event
        self.window_s = policy.tiebreaker_window_s()
        self.interval_s = policy.heartbeat_s
        self.tiebreaker_at = -math.inf
        self.ip_elsewhere: bool | None = None
        self.services_healthy: bool | None = None
        self.take_refused_at = -math.inf
        self.dr_answer: DrAnswer | None = None
        self._echo_failed: Exception | None = None  # what the echo reader raised, for the prober's loop to raise
        self.hot = policy.hot

    def dr_for(self, db: DbState) -> DrAnswer | None:
        """The warm followers' last answer, for a decision on a server now ``db``: None if asked in another role."""
        a = self.dr_answer
        return a if a is not None and a.asked_as is db else None

    def tiebreaker_ok(self) -> bool | None:
        if self.cfg.tiebreaker is None:
            return None
        return self.clock() - self.tiebreaker_at < self.window_s

    def take_refused(self) -> None:
        """A take found another holder (or could not tell): the next decisions must see it at once."""
        self.ip_elsewhere = True
        self.take_refused_at = self.clock()

    async def dr(self, stopping: asyncio.Event, state: Callable[[], State], db: Callable[[], DbState]) -> None:
        """While decide.dr_in_question holds (a running primary or hot standby; a rebooted primary's restart; a
        fenced primary's resumption), whether a warm follower accepts writes (superseded.DrWatch); not asked
        otherwise. An answer counts only while this node's server has the role it had when the question left
        (dr_for): one asked while this node was a standby (a switchback promotes it the moment the DR node has
        stopped) says nothing of the DR node after the promotion, whether it came back before or after it.
        Until the first answer the decision sees None, which holds a restart back and fences nothing."""
        if not self.cfg.warm_followers():
            return
        watch = DrWatch(self.cfg)
        try:
            while not stopping.is_set():
                asked_as, asked = db(), state()
                if dr_in_question(asked, asked_as, self.hot):
                    seen = await watch.seen()
                    # dr_for drops it if the role has changed; the term goes with it as it was when asked.
                    self.dr_answer = DrAnswer(seen, asked_as, asked.term)
                else:
                    self.dr_answer = None
                await self.ticks.wait(DR_EVERY_S)
        finally:
            watch.close()

    async def tiebreaker(self, stopping: asyncio.Event) -> None:
        """An echo every interval. ICMP (the usual tie-breaker, a router) on the event loop itself, one socket
        for the agent's life (probes.Echoer): a thread woken and a socket made per echo were a fifth of the
        agent's CPU at rest. A TCP port is asked on a probe thread, as `standby check` asks it."""
        tb = self.cfg.tiebreaker
        if tb is None:
            return
        loop, echoer = asyncio.get_running_loop(), None
        if tb.port:
            while not stopping.is_set():
                began = loop.time()
                if await self._in_probe(probe_tiebreaker, self.cfg):
                    self.tiebreaker_at = self.clock()
                await self.ticks.wait(since=began)  # at once if the probe took the whole interval (agent.ticks)
            return
        self._echo_failed = None
        try:
            # Raises without root (a raw socket): the guard records that and starts this loop again.
            echoer = probes.Echoer(str(tb.address), probes.tiebreaker_timeout_s(self.cfg), self.clock)
            loop.add_reader(echoer.fileno(), self._echo_read, echoer)
            while not stopping.is_set():
                if self._echo_failed is not None:
                    raise self._echo_failed  # a reader that failed: recorded by the guard, the socket made anew
                began = loop.time()
                echoer.send()  # one that cannot leave (the route is gone) goes unanswered: no answer, as before
                await self.ticks.wait(since=began)
        finally:
            if echoer is not None:
                loop.remove_reader(echoer.fileno())
                echoer.close()

    def _echo_read(self, echoer: probes.Echoer) -> None:
        try:
            if echoer.answered():
                self.tiebreaker_at = self.clock()
        except Exception as e:  # noqa: BLE001  (asyncio would log it and call again for ever: the loop above raises it)
            self._echo_failed = e

    async def arp(self, stopping: asyncio.Event, state: Callable[[], State], last_heard: Callable[[float], float]) -> None:
        """While the peer is silent, keep asking who answers for the service IPs."""
        while not stopping.is_set():
            now, s = self.clock(), state()
            quiet = now - last_heard(s.watching_since)
            recently_refused = now - self.take_refused_at < REFUSED_RECENTLY_S
            if self.cfg.service_ips and not s.services and (quiet >= 2 * self.interval_s or recently_refused):
                claim, found = await self.service_role.who_else()
                self.ip_elsewhere = claim is not Claim.FREE  # a failed probe blocks a take like an answer
                if found:
                    log.warning("service IPs answered by %s while the peer is silent", ", ".join(sorted(found)))
            else:
                self.ip_elsewhere = None
            await self.ticks.wait()

    async def health(self, stopping: asyncio.Event, watch: Callable[[], bool]) -> None:
        """``watch``: this node serves and no take or start is under way (a service starting is not sick)."""
        while not stopping.is_set():
            if self.cfg.services and watch():
                ok, results = await self._in_svc(services.healthy, self.cfg.services, self.node)
                if ok != self.services_healthy:
                    self.event("services_health", healthy=ok, detail=[r.detail for r in results if not r.ok])
                self.services_healthy = ok
            else:
                self.services_healthy = None
            await self.ticks.wait(HEALTH_EVERY_S)

    async def announcer(self, stopping: asyncio.Event, holding: Callable[[], bool],
                        next_step: Callable[[], Awaitable[Any]]) -> None:
        """Keep announcing the service IPs while this node holds them (and is not letting go), as the first step
        to complete after each wait says (``next_step``). The state read at the end of a wait is stale when the
        agent was paused meanwhile: announcing on it took the address's clients back from the peer that had
        taken over, before the step that let go had run (CI run 57, tests/unit/test_announcer.py)."""
        while not stopping.is_set():
            await asyncio.sleep(ANNOUNCE_EVERY_S)
            await next_step()
            if holding():
                await reannounce(self.cfg.service_ips, self._in_probe)
