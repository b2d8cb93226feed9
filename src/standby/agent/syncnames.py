"""What the agent keeps reconciled off the decision step: the primary's synchronous_standby_names and
the followers' replication slots (Agent._reconcile_sync does it on the PostgreSQL thread).

It owns: the rule for the names a primary should have and whether there is anything to do at all (at
rest there is not, and each hand-over to the PostgreSQL thread wakes it). Pure: it reads what the agent
observed and decided, and may not touch the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from standby.act import postgres as pgact
from standby.config import Config
from standby.decide import Policy, State
from standby.model import DbState, LocalPg


@dataclass(frozen=True)
class Work:
    names: str | None  # synchronous_standby_names to set (None: leave them)
    slots: bool  # check the followers' slots

    @property
    def any(self) -> bool:
        return self.names is not None or self.slots


def work(cfg: Config, peer: str, policy: Policy, state: State, pg: LocalPg, names_now: str | None, connected: bool,
         fencing: bool) -> Work:
    # Never on a node being fenced: turning sync off there would release the
    # commits waiting for the standby, acknowledged but never replicated.
    # Only a DEGRADE decision (or a promotion, alone) may stop the waiting.
    if not connected or state.fenced or fencing:
        return Work(None, False)
    want = None
    if pg.db is DbState.PRIMARY:
        want = pgact.sync_names(cfg, peer) if policy.sync and not state.degraded else ""
    # Primary or standby: either may serve the followers next.
    return Work(want if want is not None and want != names_now else None, bool(cfg.followers))
