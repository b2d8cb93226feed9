"""The ordered action runner: each role's actions run one at a time, in decision order.

A node has two roles an action can change: the database (promote, fence,
restart, rejoin) and the service role (take or release the service IPs and
services). Opposite actions on one role must never overlap: a release still
removing addresses while a later take adds them leaves a fenced node holding
the service IPs. So every action waits for the ones decided before it on the
same role; the two roles stay independent (a fence need not wait for a slow
service stop).

It owns: the order of actions per role, and what is queued or running.
It may not: decide (it never reorders, and drops an action only when the same
kind is already the latest one waiting on its role), touch PostgreSQL or the
kernel itself (the ``run`` callable does), or change the agent's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum

from standby.model import Action, ActionKind


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


class Unhandled(Exception):
    """An action kind this shell has no handler for: an error in the decisions or the shell, never "done"."""

    def __init__(self, kind: object) -> None:
        super().__init__(f"no handler for action kind {kind}")


class Executor:
    def __init__(self, run: Callable[[Action], Awaitable[None]]) -> None:
        self._run = run
        # asyncio.Lock is fair (first waiter first): tasks queue on it in submission order.
        self._locks = {r: asyncio.Lock() for r in Role}
        self._pending: dict[Role, list[ActionKind]] = {r: [] for r in Role}  # running first, then queued
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, a: Action) -> bool:
        """Queue ``a`` behind its role's earlier actions; False if the same kind is already the latest queued."""
        role = ROLE_OF.get(a.kind)
        if role is None:
            raise Unhandled(a.kind)
        if self._pending[role] and self._pending[role][-1] is a.kind:
            return False
        self._pending[role].append(a.kind)
        task = asyncio.get_running_loop().create_task(self._go(role, a))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _go(self, role: Role, a: Action) -> None:
        try:
            async with self._locks[role]:
                await self._run(a)
        finally:
            self._pending[role].remove(a.kind)  # the first of its kind is this one: FIFO

    def busy(self, kind: ActionKind) -> bool:
        """Is an action of this kind running or waiting?"""
        return kind in self._pending[ROLE_OF[kind]]

    def busy_role(self, role: Role) -> bool:
        return bool(self._pending[role])

    def queued_after(self, kind: ActionKind) -> bool:
        """While an action of ``kind`` runs: has a later decision queued another action on its role?"""
        return len(self._pending[ROLE_OF[kind]]) > 1

    def exclusive(self, role: Role) -> asyncio.Lock:
        """Held by an operator's operation on ``role``: it runs after the queued actions, alone."""
        return self._locks[role]

    async def drain(self) -> None:
        """Wait for everything submitted so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
