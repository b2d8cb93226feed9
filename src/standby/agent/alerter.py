"""The alerter: after each decision step, tells people what changed.

It owns: which alert conditions are raised now (agent.conditions says which hold), handing new
ones, resolved ones and one-off events to the dispatcher (standby.alerts: de-duplicated,
rate-limited, never blocking), and recording them in the history.
It may not: decide, act, or wait for a message to go out.
"""

from __future__ import annotations

from collections.abc import Callable

from standby.agent.conditions import conditions
from standby.agent.maintenance import Maintenance
from standby.alerts import AlertDispatcher, AlertKind, alert_key, make_alert
from standby.config import Config, RejoinPolicy
from standby.decide import Policy, State
from standby.model import Action, Observation

ABOUT_PEER = frozenset({AlertKind.REPLICATION_BROKEN})  # said of the primary, which is the peer here


class Alerter:
    def __init__(self, cfg: Config, node: str, dispatcher: AlertDispatcher, event: Callable[..., None]) -> None:
        self.cfg, self.node, self.peer = cfg, node, cfg.peer_of(node)
        self.dispatcher, self.event = dispatcher, event
        self.raised: set[AlertKind] = set()

    def after_step(self, s: State, obs: Observation, p: Policy, actions: list[Action],
                   maintenance: Maintenance | None, wall_now: float) -> None:
        """``maintenance``: the one in force, if any (its age raises an alert of its own)."""
        now = conditions(s, obs, p, actions, self.cfg.alerts.lag_threshold_bytes, self.cfg.rejoin is RejoinPolicy.MANUAL,
                         maintenance_for_s=wall_now - maintenance.since if maintenance is not None else None)
        for kind in now.raised - self.raised:
            subject = self.peer if kind in ABOUT_PEER else self.node
            self.dispatcher.notify(make_alert(kind, node=subject, cluster=self.cfg.cluster,
                                              peer=self.node if subject == self.peer else self.peer,
                                              details={"term": s.term, "seen_by": self.node}))
            self.event("alert", kind=kind.value)
        for kind in self.raised - now.raised:
            subject = self.peer if kind in ABOUT_PEER else self.node
            self.dispatcher.resolve(alert_key(kind, subject))
            self.event("alert_resolved", kind=kind.value)
        for kind in now.events:
            self.dispatcher.notify(make_alert(kind, node=self.node, cluster=self.cfg.cluster, peer=self.peer,
                                              details={"term": s.term}))
        self.raised = set(now.raised)
