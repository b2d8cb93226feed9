"""The executor: runs the decided actions, each role's one at a time, in decision order.

A node has two roles an action can change: the database (promote, fence,
restart, rejoin) and the service role (take or release the service IPs and
services). Opposite actions on one role must never overlap: a release still
removing addresses while a later take adds them leaves a fenced node holding
the service IPs. So every action waits for the ones decided before it on the
same role; the two roles stay independent (a fence need not wait for a slow
service stop). After a service action the state is set to what the kernel holds.

It owns: the order of actions per role, what is queued or running, one handler
per action kind (an action without one is recorded as failed, never as done),
and the record of each action's outcome.
It may not: decide (it never reorders, and drops an action only when the same
kind is already the latest one waiting on its role), nor change the state
beyond what the kernel says of the service IPs. The fence is act/fence.py's
stop, the same routine `standby fence` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from enum import StrEnum
from typing import Any

from standby.agent import priority
from standby.agent.localdb import Database
from standby.agent.servicerole import ServiceRole, TakeRefused
from standby.agent.store import StateCell
from standby.config import Config
from standby.model import KILL_AT_ONCE, Action, ActionKind

log = logging.getLogger("standby.agent")
Run = Callable[..., Awaitable[Any]]


class Role(StrEnum):
    DATABASE = "database"
    SERVICES = "services"


ROLE_OF: dict[ActionKind, Role] = {
    ActionKind.PROMOTE: Role.DATABASE,
    ActionKind.FENCE: Role.DATABASE,
    ActionKind.RESTART_PG: Role.DATABASE,
    ActionKind.SET_SYNC: Role.DATABASE,
    ActionKind.REJOIN: Role.DATABASE,
    ActionKind.TAKE_SERVICES: Role.SERVICES,
    ActionKind.RELEASE_SERVICES: Role.SERVICES,
}


Handler = Callable[[Action], Awaitable[None]]


def first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


class Executor:
    def __init__(self, handlers: Mapping[ActionKind, Handler], event: Callable[..., None],
                 readback: Callable[[], Awaitable[None]]) -> None:
        missing = [k.value for k in ActionKind if k not in handlers or k not in ROLE_OF]
        if missing:
            raise ValueError(f"no handler for action kinds {missing}")
        self._handlers, self._event, self._readback = dict(handlers), event, readback
        # asyncio.Lock is fair (first waiter first): tasks queue on it in submission order.
        self._locks = {r: asyncio.Lock() for r in Role}
        self._pending: dict[Role, list[ActionKind]] = {r: [] for r in Role}  # running first, then queued
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts: dict[str, int] = {}
        # Bumped when an operator's operation starts: an action decided before it but queued behind it
        # would act on a node the operation changed (a FENCE decided just before a rejoin stopped the
        # standby the rejoin had started: chaos seed 103). Such an action is dropped; the next step
        # decides again from what the operation left.
        self.epoch = 0

    def submit(self, a: Action) -> bool:
        """Queue ``a`` behind its role's earlier actions; False if the same kind is already the latest queued,
        or if there is no handler for its kind (recorded as a failed action)."""
        role = ROLE_OF.get(a.kind)
        if role is None or a.kind not in self._handlers:
            self._event("action_failed", action=str(a.kind), error=f"no handler for action kind {a.kind}")
            return False
        if self._pending[role] and self._pending[role][-1] is a.kind:
            return False
        self._pending[role].append(a.kind)
        task = asyncio.get_running_loop().create_task(self._go(role, a, self.epoch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _go(self, role: Role, a: Action, epoch: int) -> None:
        try:
            async with self._locks[role]:
                if epoch != self.epoch:
                    self._event("action_superseded", action=a.kind.value,
                                reason="an operator's operation ran after it was decided")
                    return
                await self._run(role, a)
        finally:
            self._pending[role].remove(a.kind)  # the first of its kind is this one: FIFO

    async def _run(self, role: Role, a: Action) -> None:
        self.counts[a.kind.value] = self.counts.get(a.kind.value, 0) + 1
        try:
            await self._handlers[a.kind](a)
            self._event("done", action=a.kind.value)
        except Exception as e:  # noqa: BLE001  (an action failing must not stop the agent; the next step re-decides)
            self._event("action_failed", action=a.kind.value, error=first_line(e))
        finally:
            if role is Role.SERVICES and not self.queued_after(a.kind):
                await self._readback()  # done, failed or refused: the state says what the kernel holds

    def busy(self, kind: ActionKind) -> bool:
        """Is an action of this kind running or waiting?"""
        return kind in self._pending[ROLE_OF[kind]]

    @contextlib.contextmanager
    def held(self, kind: ActionKind) -> Iterator[None]:
        """An operator's operation doing what an action of ``kind`` does: counted as in hand while it runs."""
        self._pending[ROLE_OF[kind]].append(kind)
        try:
            yield
        finally:
            self._pending[ROLE_OF[kind]].remove(kind)

    def busy_role(self, role: Role) -> bool:
        return bool(self._pending[role])

    def queued_after(self, kind: ActionKind) -> bool:
        """While an action of ``kind`` runs: has a later decision queued another action on its role?"""
        return len(self._pending[ROLE_OF[kind]]) > 1

    def supersede(self) -> None:
        """An operator's operation starts: every action decided before it and not yet run is dropped."""
        self.epoch += 1

    def exclusive(self, role: Role) -> asyncio.Lock:
        """Held by an operator's operation on ``role``: it runs after the queued actions, alone."""
        return self._locks[role]

    async def drain(self) -> None:
        """Wait for everything submitted so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Actions:
    """What each action kind does on this node: the executor's handlers."""

    def __init__(self, cfg: Config, db: Database, service_role: ServiceRole, cell: StateCell, turn: asyncio.Lock,
                 in_pg: Run, on_take_refused: Callable[[], None], rejoin: Callable[[], Awaitable[object]],
                 event: Callable[..., None]) -> None:
        self.cfg, self.db, self.service_role, self.cell, self.turn = cfg, db, service_role, cell, turn
        self._in_pg, self._on_take_refused, self._rejoin, self._event = in_pg, on_take_refused, rejoin, event
        self.take_refused: TakeRefused | None = None
        # The fence's stop has a thread of its own, not the PostgreSQL one: behind a reading that hangs there
        # (a backend stuck where its statement timeout cannot reach, a server stopped by SIGSTOP), the
        # escalation to SIGKILL such a server needs would never come (a known residual of the fence read).
        # Its thread is made at the first fence (as a pool does) and ends with the process.
        self.stopper = ThreadPoolExecutor(1, thread_name_prefix="stop", initializer=priority.follow)

    async def fence_stop(self, at_once: bool = False) -> None:
        """A fence's stop (decided or a person's), escalating to SIGKILL (act.fence), whatever the PostgreSQL
        thread is doing; its order against the other database actions is the executor's (one role lock).
        ``at_once``: SIGKILL only (a server that serves nobody, model.KILL_AT_ONCE)."""
        await asyncio.get_running_loop().run_in_executor(self.stopper, self.db.fence_stop, at_once)

    def table(self) -> dict[ActionKind, Handler]:
        return {
            ActionKind.PROMOTE: lambda a: self._in_pg(self.db.promote),
            ActionKind.FENCE: lambda a: self.fence_stop(a.reason in KILL_AT_ONCE),
            ActionKind.RESTART_PG: lambda a: self._in_pg(self.db.start),
            ActionKind.TAKE_SERVICES: self.take,
            ActionKind.RELEASE_SERVICES: lambda a: self.service_role.release(self.cell.state.fenced),
            ActionKind.SET_SYNC: self.set_sync,
            ActionKind.REJOIN: lambda a: self._rejoin(),
        }

    async def set_sync(self, a: Action) -> None:
        """Nothing to do now: synchronous_standby_names is reconciled every step from the state."""

    async def take(self, a: Action) -> None:
        """A decided take, run after what was decided before it: re-checked now, not at decision time."""
        refused: TakeRefused | None
        s = self.cell.state
        if not s.services:
            refused = TakeRefused.SUPERSEDED
        elif s.fenced:
            refused = TakeRefused.FENCED
        else:
            refused = await self.service_role.take()
            if refused is not None:
                self._on_take_refused()
        if refused in (TakeRefused.SUPERSEDED, TakeRefused.FENCED) and refused is not self.take_refused:
            self._event("take_refused", reason=refused.value)
        self.take_refused = refused

    async def readback(self, locked: bool = False) -> None:
        """The state says what the kernel holds, after a service action (done, failed or refused) or an
        operator's operation. ``locked``: the caller has the turn already (an operator's operation)."""
        if not self.cfg.service_ips:
            return
        try:
            held = await self.service_role.holds()
        except Exception as e:  # noqa: BLE001  (read again after the next service action; the agent goes on)
            log.warning("could not read the service IPs back: %s", e)
            return
        async with contextlib.nullcontext() if locked else self.turn:  # not under a decision step's feet
            if self.cell.state.services != held:
                self._event("services_state_corrected", held=held)
                self.cell.state = replace(self.cell.state, services=held)
