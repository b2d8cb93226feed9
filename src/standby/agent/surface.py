"""What the API, the status view and the metrics read of a running agent: its parts' current values.

It owns nothing: every value belongs to a part (the state to the loop, PostgreSQL and the carriers
to the observer, heartbeats to the link, probes to the probers, the reporting IP to its mover,
maintenance and operations to the operator). It may not change anything but through those parts.
The API reads these from its own thread: each is one attribute read, and the parts replace what
they hold rather than change it in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from standby import reporting as rep
from standby import vouch
from standby.agent.executor import Executor
from standby.agent.heartbeat import Receiver
from standby.agent.link import HeartbeatLink
from standby.agent.observer import Observer
from standby.agent.operator import Operator
from standby.agent.probers import Probers
from standby.agent.reporting_ip import ReportingMover
from standby.agent.store import StateCell
from standby.config import ServiceIP
from standby.decide import Policy, State
from standby.model import LocalPg, Net, PeerView


@dataclass(frozen=True)
class Counters:
    decisions: int
    actions: dict[str, int]
    sent: dict[str, int]
    send_errors: dict[str, int]


class Surface:
    cell: StateCell
    observer: Observer
    link: HeartbeatLink
    probers: Probers
    mover: ReportingMover
    operator: Operator
    executor: Executor
    decisions: int
    policy: Policy
    in_hand: vouch.InHand

    @property
    def state(self) -> State:
        return self.cell.state

    @state.setter
    def state(self, s: State) -> None:
        self.cell.state = s

    @property
    def pg(self) -> LocalPg:
        return self.observer.pg

    @pg.setter
    def pg(self, v: LocalPg) -> None:
        self.observer.pg = v

    def looked(self) -> vouch.Looked:
        """What the API's checks may vouch for (standby.vouch): a pause or a fence the step in progress holds counts.

        Several reads, and the loop may run between any two: in the order the step writes them backwards. The
        step puts a pause in hand before it takes it from the link, and its state before it empties its hand;
        so the link is read first, the hand next, the state last, and a pause or a fence is seen in one of them.
        """
        gap = self.link.pending_gap()
        h = self.in_hand
        pg, fenced = self.pg, self.state.fenced
        return vouch.Looked(pg.db, pg.streaming, fenced or h.fencing, max(gap, h.gap))

    @property
    def carrier(self) -> dict[Net, bool]:
        return self.observer.carrier

    @carrier.setter
    def carrier(self, v: dict[Net, bool]) -> None:
        self.observer.carrier = v

    @property
    def sync_names(self) -> str | None:
        return self.observer.sync_names

    @property
    def boot(self) -> int:
        return self.link.boot

    @property
    def receiver(self) -> Receiver:
        return self.link.receiver

    @property
    def heard(self) -> dict[Net, float | None]:
        return self.link.heard

    @property
    def peer_view(self) -> PeerView | None:
        return self.link.peer_view

    @property
    def counters(self) -> Counters:
        return Counters(self.decisions, self.executor.counts, self.link.sent, self.link.send_errors)

    def _tiebreaker_ok(self) -> bool | None:
        return self.probers.tiebreaker_ok()

    @property
    def services_healthy(self) -> bool | None:
        return self.probers.services_healthy

    @property
    def ip_elsewhere(self) -> bool | None:
        return self.probers.ip_elsewhere

    @property
    def reporting_ip(self) -> ServiceIP | None:
        return self.mover.sip

    @property
    def reporting_held(self) -> bool | None:
        return self.mover.held

    @property
    def reporting_state(self) -> rep.ReportingState:
        return self.mover.state

    @property
    def reporting_decision(self) -> rep.ReportingDecision | None:
        return self.mover.decision

    @property
    def suspended(self) -> bool:
        return self.operator.suspended

    async def set_maintenance(self, on: bool, by: str = "api") -> None:
        await self.operator.set_maintenance(on, by)

    def maintenance_view(self) -> dict[str, object] | None:
        return self.operator.maintenance_view()

    async def operate(self, name: str, *args: Any) -> dict[str, Any]:
        return await self.operator.operate(name, *args)
