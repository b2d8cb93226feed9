"""The part that keeps the primary's synchronous_standby_names and the followers' replication slots as the
state asks (the rule: agent.syncnames), off the decision step.

It owns its one task at a time on the PostgreSQL thread. It may not run while a read of the server or a
database action is on its way, and it reads the state and the policy when it runs, not when it was asked:
a fence decided meanwhile must find it doing nothing (turning sync off on a node being fenced would
release the commits waiting for the standby, acknowledged but never replicated).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from standby.agent import syncnames
from standby.agent.executor import Executor, Role
from standby.agent.localdb import Database
from standby.agent.observer import Observer
from standby.config import Config
from standby.decide import Policy, State
from standby.model import ActionKind, DbState

log = logging.getLogger("standby.agent")


class SyncKeeper:
    def __init__(self, cfg: Config, peer: str, db: Database, observer: Observer, executor: Executor,
                 in_pg: Callable[..., Awaitable[Any]], policy: Callable[[], Policy], state: Callable[[], State]) -> None:
        self.cfg, self.peer, self.db, self.observer, self.executor = cfg, peer, db, observer, executor
        self._in_pg, self._policy, self._state = in_pg, policy, state
        self.task: asyncio.Task[None] | None = None

    def after_step(self) -> None:
        """Starts the reconciliation when there is work and nothing else is on the server's way."""
        if (self.task is None or self.task.done()) and self.observer.pending is None \
                and not self.executor.busy_role(Role.DATABASE) and self.work().any:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._in_pg(self.reconcile)
        except psycopg.Error as e:
            log.warning("could not set synchronous_standby_names: %s", e)

    def work(self) -> syncnames.Work:
        return syncnames.work(self.cfg, self.peer, self._policy(), self._state(), self.observer.pg,
                              self.observer.sync_names, self.db.connected, self.executor.busy(ActionKind.FENCE))

    def reconcile(self) -> None:
        """On the PostgreSQL thread."""
        w = self.work()
        if w.names is not None:
            self.db.set_sync_names(w.names)
            self.observer.sync_names = w.names
        if w.slots:
            self.db.ensure_follower_slots({DbState.PRIMARY: True, DbState.STANDBY: False}.get(self.observer.pg.db))
