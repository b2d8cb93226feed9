"""The observer: what the decision step sees of this node's PostgreSQL and links.

It owns: the last observation of the local server (read through the one connection, agent.localdb,
on the PostgreSQL thread) and of this node's carriers, how long the server's WAL flush has stood still
with commits waiting (observe.walstuck), and the rule for a read that is slow or fails: a late answer
is used by a later step, a server that does not answer (a query timeout, too many clients) keeps its
last observation, and only a postmaster that is gone reads as down.
It may not: decide, act, or read PostgreSQL any other way (there is no second reader in the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from standby.act import addresses
from standby.agent.guard import Guard
from standby.agent.localdb import Database, Reading
from standby.config import Config
from standby.model import DbState, LocalPg, Net
from standby.observe import postgres as pgobs
from standby.observe.walstuck import WalWatch

log = logging.getLogger("standby.agent")
Run = Callable[..., Awaitable[Any]]  # runs a blocking function on one of the agent's threads
FIRST_READ_WAIT_S = 3.0  # the first read may take longer: start-up, not a stall


def read_carriers(cfg: Config, node: str) -> dict[Net, bool]:
    return {net: addresses.carrier(getattr(cfg.nodes[node], net.value).interface) for net in Net}


class Observer:
    def __init__(self, cfg: Config, node: str, db: Database, in_pg: Run, in_kernel: Run, guard: Guard,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.node, self.db = cfg, node, db
        self._in_pg, self._in_kernel, self.guard, self._clock = in_pg, in_kernel, guard, clock
        # When the pending reading was asked on a connection already open (Observation.pg_silent_s); None: on
        # none (a connection being made may fail or time out: that says nothing of the running server).
        self.asked_open_at: float | None = None
        self.interval_s = cfg.timings.heartbeat_interval_ms / 1000
        self.pg = LocalPg(DbState.DOWN)
        self.sync_names: str | None = None
        self.carrier: dict[Net, bool] = {n: False for n in Net}
        self.read_carriers: Callable[[], dict[Net, bool]] = lambda: read_carriers(cfg, node)
        self.seen = False  # a first observation arrived (until then, waiting for it is no stall)
        self.pending: asyncio.Future[Reading] | None = None  # a read still under way
        self.wal = WalWatch()  # whether the WAL disk still completes writes, across readings

    async def refresh(self) -> None:
        """After an operator's operation changed the server: read it again. A reading begun before the
        operation (still pending) or kept from before it must not reach a decision taken after it: a
        kept PRIMARY advertised under the term a rejoin had just raised made the real primary step
        down, and the pair had none (chaos seed 103)."""
        if self.pending is not None:
            with contextlib.suppress(Exception):
                await self.pending  # begun before the operation: its answer is stale
            self.pending = None
        await self.postgres(wait_s=FIRST_READ_WAIT_S)

    async def postgres(self, wait_s: float | None = None) -> None:
        """The local server, waited for one interval at most: a late answer is used by a later step, and
        meanwhile the last observation stands. Only a server whose postmaster is gone reads as DOWN."""
        if self.pending is None:
            self.asked_open_at = self._clock() if self.db.connected else None
            self.pending = asyncio.ensure_future(self._in_pg(self.db.read))
        if wait_s is None:
            wait_s = self.interval_s if self.seen else FIRST_READ_WAIT_S
        await asyncio.wait({self.pending}, timeout=wait_s)
        if not self.pending.done():  # slow, not failed: recorded only if it ends in an error
            log.debug("PostgreSQL did not answer within %gs; keeping the last observation", wait_s)
            return
        read, self.pending = self.pending, None
        self.seen = True
        try:
            result = read.result()
        except Exception as e:  # noqa: BLE001  (an observation that fails reads as last known, never ends the agent)
            self.guard.failed("postgres", e)
            self.wal = WalWatch()  # it says nothing of the disk: the count starts again
            return
        if isinstance(result, pgobs.Unanswered) and not result.down:
            self.guard.failed("postgres", f"{result.value}; keeping the last observation")
            self.wal = WalWatch()
            return
        self.pg, self.sync_names = (LocalPg(DbState.DOWN), None) if isinstance(result, pgobs.Unanswered) else result
        self.wal = self.wal.after(self.pg, self._clock())
        self.guard.ok("postgres")

    def silent_s(self, now: float) -> float:
        """How long a question asked on the open connection has gone unanswered (0 with none outstanding). A
        running server answers it within the statement timeout, an error included; one whose processes are
        stopped (SIGSTOP, a debugger) leaves it for ever, while its last reading stands."""
        if self.pending is None or self.pending.done() or self.asked_open_at is None:
            return 0.0
        return max(0.0, now - self.asked_open_at)

    def silent_now(self) -> float:
        return self.silent_s(self._clock())

    async def carriers(self) -> None:
        self.carrier = await self.guard.read("carrier", lambda: self._in_kernel(self.read_carriers), self.carrier)

    async def both(self) -> None:
        await self.postgres()
        await self.carriers()
