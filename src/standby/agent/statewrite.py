"""The decision state's record on disk, written before the actions it allows (on the state thread).

It owns: the write in flight, and how long a decision waits for it. Every decision that gives this node
something (a promotion, a restart, the service role) waits for its record however long it takes: acted on
first, an agent that dies before the record lands comes back on the state before it. A decision that only
takes away (a fence: model.ONLY_TAKE_AWAY) does not wait for a write that fails (adversarial read F2) or
that hangs past ``HUNG_S`` (a hung disk under the state file): it goes on held in memory, the liveness
record waits with it (a next agent counts the time as unattended and fences first), and the newest state
is written once the disk lets it. A write that hangs is never joined by a second behind it, and a later fence
does not wait for it again: the step after it ends writes the newest state then.
It may not: decide, or choose what a failed write means for the step (the caller does, from the decision).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from standby.agent.store import Store
from standby.decide import State

HUNG_S = 1.0  # a write this slow with a fence waiting: the disk hangs (a busy one took 0.7 s in the lab)


class StateWriter:
    def __init__(self, store: Store, in_state: Callable[..., Awaitable[Any]]) -> None:
        self.store, self._in_state = store, in_state
        self._in_flight: asyncio.Future[Any] | None = None

    async def write(self, new: State, takes_away_only: bool) -> None:
        """``new`` on disk, or an error: OSError from the write, TimeoutError (an OSError too) when a take-away
        decision's write, or the one still in flight before it, has not returned within HUNG_S."""
        if self._in_flight is not None and not self._in_flight.done():
            if takes_away_only:  # an older write still in the kernel: the disk hangs, this fence waits no more
                raise TimeoutError("an earlier state write has not returned")
            await self._in_flight
        self._in_flight = asyncio.ensure_future(self._in_state(self.store.save_state, new))
        await self._wait(self._in_flight, takes_away_only)

    async def _wait(self, write: asyncio.Future[Any], takes_away_only: bool) -> None:
        if takes_away_only:
            await asyncio.wait_for(asyncio.shield(write), HUNG_S)  # the write goes on; the fence does not wait
        else:
            await write
