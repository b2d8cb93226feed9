"""Operator operations: what a person asks of this node through the API, carried out in steps.

Switchover (demote, promote, follow, resume), rejoin (or rebuild), manual promotion, fence by hand, maintenance.
Every change of the persisted state is a pure transition (standby.operations), saved before the step
it allows; every precondition is a named refusal there too.

It owns: the steps of each operation and their order, the maintenance file, and running an operation
while no decision step and no action on the roles it changes runs.
It may not: decide (it never acts on its own; the decision loop does), nor write the state other than
through the transitions in standby.operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from standby import operations as ops
from standby.act import postgres as pgact
from standby.act import services
from standby.agent.executor import Actions, Executor, Role
from standby.agent.localdb import Database
from standby.agent.maintenance import MaintenanceFile
from standby.agent.observer import Observer
from standby.agent.opsteps import Marks, OpError, hook_argv, run_hook, stop_asked
from standby.agent.servicerole import Claim, ServiceRole
from standby.agent.store import StateCell
from standby.config import Config
from standby.decide import State
from standby.model import ActionKind, DbState, LocalPg, Lsn
from standby.operations import Operation

if TYPE_CHECKING:
    from standby.act.rejoin import Rejoining

Run = Callable[..., Awaitable[Any]]

# Operations that change only the database role; the others change both.
_ROLES: dict[Operation, tuple[Role, ...]] = {o: (Role.DATABASE,) for o in (Operation.REJOIN, Operation.REBUILD, Operation.FOLLOW)}


class Operator:
    def __init__(self, cfg: Config, node: str, cell: StateCell, observer: Observer, db: Database,
                 service_role: ServiceRole, executor: Executor, actions: Actions, maintenance: MaintenanceFile,
                 turn: asyncio.Lock, in_pg: Run, in_svc: Run, in_state: Run, event: Callable[..., None],
                 forgive_pause: Callable[[], None]) -> None:
        self.cfg, self.node, self.peer = cfg, node, cfg.peer_of(node)
        self.cell, self.observer, self.db, self.service_role = cell, observer, db, service_role
        self.executor, self.actions, self.maintenance, self.turn = executor, actions, maintenance, turn
        self._in_pg, self._in_svc, self._in_state, self.event, self._forgive_pause = in_pg, in_svc, in_state, event, forgive_pause

    @property
    def suspended(self) -> bool:
        """Automatic decisions suspended (maintenance, until its deadline)."""
        return self.maintenance.active()

    async def set_maintenance(self, on: bool, by: str = "api") -> None:
        # Written (fsynced) off the loop: a 0.75 s write on a busy disk read as a stall, and fenced a switchover's primary.
        if on:
            m = await asyncio.to_thread(self.maintenance.start, by)
            self.event("maintenance", suspended=True, by=by, until=m.view(m.since)["until"])
        else:
            await asyncio.to_thread(self.maintenance.end)
            self.event("maintenance", suspended=False)

    def maintenance_view(self) -> dict[str, object] | None:
        m = self.maintenance.current
        return m.view(time.time()) if m is not None and self.suspended else None

    # -- running an operation ---------------------------------------------------------------------

    async def operate(self, name: str, *args: Any) -> dict[str, Any]:
        """Run the operation ``name`` once the actions already decided on the roles it changes are done,
        while no decision step and no other action on those roles runs."""
        op = Operation(name)
        async with contextlib.AsyncExitStack() as held:
            for role in _ROLES.get(op, tuple(Role)):
                await held.enter_async_context(self.executor.exclusive(role))
            async with self.turn:  # always after the role locks: an action holding one may wait for the turn
                try:
                    return await self._run(op, *args)
                finally:
                    self._forgive_pause()  # a person's operation held the steps back: that is no stall

    async def decided_rejoin(self) -> None:
        """The REJOIN action (rejoin = "auto"): the database role is the executor's already."""
        async with self.turn:
            self.executor.supersede()
            try:
                await self.rejoin()
            finally:
                await self.observer.refresh()
                self._forgive_pause()

    async def _run(self, op: Operation, *args: Any) -> dict[str, Any]:
        if (refused := ops.refusal(op, self.cell.state, self.observer.pg.db, self.suspended,
                                   self.observer.silent_now())) is not None:
            raise OpError(refused.describe(self.node, self.observer.pg.db))
        # From here the operation changes the node: what was decided or observed before it is stale (a refusal changes nothing).
        self.executor.supersede()
        try:
            return await self._dispatch(op, *args)
        finally:
            await self.observer.refresh()

    async def _dispatch(self, op: Operation, *args: Any) -> dict[str, Any]:
        steps: dict[Operation, Callable[..., Awaitable[dict[str, Any]]]] = {
            Operation.DEMOTE: self.demote, Operation.PROMOTE: self.promote, Operation.FOLLOW: self.follow,
            Operation.RESUME: self.resume, Operation.REJOIN: self.rejoin, Operation.REBUILD: self.rebuild,
            Operation.MANUAL_PROMOTE: self.manual_promote, Operation.FENCE: self.fence}
        return await steps[op](*args)

    async def _save(self, new: State) -> None:
        await self._in_state(self.cell.save, new)  # never behind a PostgreSQL reading: a fence writes before its signal

    # -- the operations ---------------------------------------------------------------------------

    async def demote(self) -> dict[str, Any]:
        """Switchover, on the primary: a checkpoint while it still serves (the shutdown checkpoint then has little
        to write), the stop's signal, the services let go, the clean shutdown. Timed: from the signal, clients wait."""
        marks = Marks()
        done = await self._in_pg(self.db.checkpoint)
        marks.mark("checkpoint while serving" if done else
                   "checkpoint while serving: not done, the shutdown checkpoint writes it all")
        marks.mark(await stop_asked(self.cfg, self.node, self.db, self._in_pg))  # before the addresses go
        try:
            await self.service_role.remove_ips()
        except BaseException:
            try:  # as a release: the services stop all the same, and the state says what the kernel holds
                await self.service_role.stop_services()
            finally:
                await self.actions.readback(locked=True)
            raise
        marks.mark("service IPs released")
        # No client reaches this node any more: its services and its server stop side by side.
        done = await asyncio.gather(self.service_role.stop_services(), self.actions.readback(locked=True),
                                    self._in_pg(self.db.stop), return_exceptions=True)
        self.cell.state = ops.released(self.cell.state)
        if failed := [r for r in done if isinstance(r, BaseException)]:
            raise failed[0]
        marks.mark("PostgreSQL stopped, services too: shutdown checkpoint written and sent")
        ctl = await self._in_pg(pgact.control_data, self.cfg, self.node)
        if ctl.get("Database cluster state") != "shut down":
            raise OpError(f"PostgreSQL did not shut down cleanly ({ctl.get('Database cluster state')})")
        marks.mark("shutdown checkpoint read")
        self.observer.pg = LocalPg(DbState.DOWN)
        lsn, tli = ctl["Latest checkpoint location"], int(ctl["Latest checkpoint's TimeLineID"])
        self.event("switchover_demoted", checkpoint=lsn, timeline=tli, steps=marks.detail())
        return {"checkpoint_lsn": lsn, "timeline": tli, "steps": marks.steps}

    async def _received(self, need: Lsn, timeout_s: float) -> Lsn:
        """Wait until WAL past ``need`` (the old primary's shutdown checkpoint record) has arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = await self._in_pg(self.db.received_lsn)
            if got is not None and got > need:  # the checkpoint record itself has arrived
                return got  # type: ignore[no-any-return]
            if time.monotonic() >= deadline:
                raise OpError(f"{self.node} received WAL up to {got} but the old primary's shutdown checkpoint "
                              f"is at {need}; not promoting (nothing would be lost by waiting, but it did not arrive "
                              f"within {timeout_s:g}s)")
            await asyncio.sleep(0.02)

    async def promote(self, min_lsn: str, timeout_s: float) -> dict[str, Any]:
        """Switchover, on the standby: once every WAL byte up to the old primary's shutdown
        checkpoint is here, promote and take the services. Each step timed: clients wait until
        the service IPs have moved."""
        need = Lsn.parse(min_lsn)
        if need is None:
            raise OpError(f"bad LSN {min_lsn!r}")
        marks = Marks()
        got = await self._received(need, timeout_s)
        marks.mark("received past the old primary's shutdown checkpoint")
        await self._save(ops.promoting(self.cell.state, planned=True))
        term = self.cell.state.term
        await self._in_pg(self.db.promote)
        marks.mark(f"PostgreSQL promoted (term {term})")
        # Promoted: from here on, a failure must not read as a refusal (the caller would start
        # the old primary again). What fails is reported; the agent's next steps finish it.
        problems: list[str] = []
        results: list[services.CommandResult] = []
        try:
            # The old primary released the addresses itself: no need to wait for an ARP check.
            await self.service_role.add_ips()
            self.cell.state = ops.serving(self.cell.state)
            marks.mark("service IPs moved")
            # All: one placed everywhere may have failed to start here while nothing was writable (rebuilt from a DR node).
            results = await self.service_role.start(None)
            marks.mark("services started")
        except Exception as e:  # noqa: BLE001  (reported to the caller; the promotion stands)
            problems.append(f"service IPs and services: {e}")
        try:
            # Only the old primary's follow needs it, and that comes after this answer: out of the pause.
            await self._in_pg(self.db.ensure_peer_slot)
            marks.mark("replication slot for the old primary")
        except Exception as e:  # noqa: BLE001  (reported to the caller; the promotion stands)
            problems.append(f"replication slot for {self.peer}: {e}")
        self.event("switchover_promoted", term=term, received=str(got),
                   failed_services=[r.service for r in results if not r.ok], problems=problems,
                   steps=marks.detail())
        return {"term": term, "received_lsn": str(got), "problems": problems, "steps": marks.steps}

    async def follow(self) -> dict[str, Any]:
        """Switchover, on the old primary: start again as a standby of the new primary."""
        await self._in_pg(pgact.configure_as_standby, self.cfg, self.node, self.peer)
        await self._in_pg(pgact.start, self.cfg, self.node, 60)
        await self._in_pg(pgact.wait_streaming, self.cfg, self.node, 60)
        await self._save(ops.following(self.cell.state))
        self.event("switchover_following", primary=self.peer, term=self.cell.state.term)
        return {"following": self.peer}

    async def resume(self) -> dict[str, Any]:
        """Switchover aborted: the old primary starts again as it was, and takes its services back."""
        if self.observer.pg.db is DbState.DOWN:
            await self._in_pg(self.db.start)
        try:
            refused = await self.service_role.take()
        finally:
            await self.actions.readback(locked=True)
        self.event("switchover_aborted_resumed", services_refused=refused)
        return {"resumed": self.node}

    async def rejoin(self) -> dict[str, Any]:
        """Reverse replication: this old primary becomes a standby of the new one (see act.rejoin)."""
        from standby.act.rejoin import Rejoining
        return await self._rejoin(Rejoining.peer(self.cfg, self.node), stop_stuck=True)

    async def rebuild(self, source: str) -> dict[str, Any]:
        """After a DR promotion: a rejoin to ``source``, the promoted follower (standby.rebuild), ending in the
        next block of terms (operations.rebuilt): the lost site may hold a term this node never heard."""
        from standby.agent import rejoinop
        return await self._rejoin(rejoinop.rebuilding(self.cfg, self.node, source), after=ops.rebuilt)

    async def _rejoin(self, who: Rejoining, stop_stuck: bool = False,
                      after: Callable[[State], State] = ops.following) -> dict[str, Any]:
        from standby.agent import rejoinop

        await self.set_maintenance(True, by="rejoin")  # from here no restart: a server stopped stays so
        try:
            if stop_stuck and await rejoinop.stuck_after_a_moment(self.observer, self.cfg, self.node):  # rewound
                await self._in_pg(self.db.stop)
            result = await self._in_pg(rejoinop.run, self.cfg, who, self.event)
            await self._save(after(self.cell.state))
        finally:
            await self.set_maintenance(False)
        self.event("rejoined", source=who.source, method=result.method, fork=result.fork_lsn, salvaged=result.salvaged_rows)
        return rejoinop.answer(result)

    async def manual_promote(self) -> dict[str, Any]:
        """A person decided (`standby promote`): promote, take the addresses, run the address-change hook,
        start the services; each step timed."""
        marks = Marks()
        step = marks.mark
        await self._save(ops.promoting(self.cell.state, planned=False))
        term = self.cell.state.term
        await self._in_pg(self.db.promote)  # the old primary's slot first, reserved while in recovery
        step(f"PostgreSQL promoted (term {term})")
        if (taken := await self._take_addresses()) is not None:
            step(taken)
        argv = hook_argv(self.cfg, self.node)
        if argv:
            step(f"address-change hook: {await self._in_svc(run_hook, argv)}")
        # Every service, those placed everywhere too: one that could not start while no primary
        # was writable (a warm standby whose primary died as its agent started) stopped again, and
        # nothing else would start it. Start commands are idempotent (a running one is left alone).
        results = await self.service_role.start(None)
        step("services started" + "".join(f"; {r.service} FAILED: {r.detail}" for r in results if not r.ok))
        self.event("manual_promotion", term=term, steps=marks.steps)
        return {"term": term, "steps": marks.steps}

    async def _take_addresses(self) -> str | None:
        """A manual promotion's service IPs: added unless another host still answers for them."""
        if not self.cfg.service_ips:
            self.cell.state = ops.serving(self.cell.state)
            return None
        claim, others = await self.service_role.who_else()
        if claim is Claim.TAKEN:
            return f"service IPs NOT taken: still answered by {', '.join(sorted(others))}"
        if claim is Claim.UNKNOWN:
            return "service IPs NOT taken: the ARP probe failed, so another holder cannot be ruled out"
        await self.service_role.add_ips()
        self.cell.state = ops.serving(self.cell.state)
        return "service IPs taken"

    async def fence(self) -> dict[str, Any]:
        """A person fences this node (before the other is promoted): "fenced" on disk, the stop's signal, the release once
        the clients were told, the stop (act.fence's order); a FENCE in hand throughout: the peer hears "fencing" (F3)."""
        with self.executor.held(ActionKind.FENCE):
            await self._save(ops.fenced_by_operator(self.cell.state))  # not written: nothing was changed
            try:
                self.db.request_stop()
                await self.service_role.release(stop_decided=True)
            finally:  # PostgreSQL stops even if an address could not be removed
                await self.actions.readback(locked=True)
                await self.actions.fence_stop()
        self.event("fenced_by_operator")
        return {"fenced": self.node}
