"""The rejoin operations' parts that are not steps: whom a node rejoins, and what the answer says.

A pair node rejoins its peer (`standby rejoin`), or after a DR promotion is rebuilt as a standby of the
promoted follower (`standby rejoin --from FOLLOWER`, standby.rebuild). The steps themselves run in
standby.agent.operator, on the database role, in maintenance.

It owns: building the ``Rejoining`` (with the rebuild's check once the follower answers as a primary), the
refusal texts, whether a running standby is one to stop first, the answer's shape.
It may not: act on the server or the state (the operator does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from standby import rebuild
from standby.act import rejoin as rj
from standby.agent.opsteps import OpError
from standby.config import Config
from standby.model import DbState, PgRole
from standby.observe import postgres as pgobs

if TYPE_CHECKING:
    from standby.agent.observer import Observer

# Why a rebuild from a promoted follower is refused, and what to do (standby.rebuild.may_rebuild).
_REFUSED = {
    rebuild.Reason.NOT_WARM_FOLLOWER: "{source} is not a warm follower in this configuration: a pair node is "
                                      "rebuilt only from the DR node an operator promoted (`standby promote --node "
                                      "{source}`)",
    rebuild.Reason.SOURCE_NOT_PRIMARY: "{source} does not accept writes: it was not promoted",
    rebuild.Reason.OTHER_WRITABLE: "{other} accepts writes too: two primaries. Decide which one keeps the data, "
                                   "fence the other (`standby fence --node {other}` there), then retry",
}


def rebuilding(cfg: Config, node: str, source: str) -> rj.Rejoining:
    """``node`` rebuilt from ``source``; the check runs once ``source`` answers as a primary (so writable)."""
    other = cfg.peer_of(node)

    def confirm() -> None:
        follower = cfg.follower(source)
        d = rebuild.may_rebuild(None if follower is None else follower.role, True,
                                pgobs.observe_peer(cfg, other).role is PgRole.PRIMARY)
        if not d.go:
            raise rj.RejoinRefused(_REFUSED[d.reason].format(source=source, other=other))

    try:
        return rj.Rejoining.from_follower(cfg, node, source, confirm)
    except rj.RejoinRefused as e:
        raise OpError(str(e)) from None


STUCK_AFTER_S = 6.0  # a standby just (re)started may still be connecting to its primary
STEADY_READS = 4


async def stuck_after_a_moment(observer: Observer, cfg: Config, node: str) -> bool:
    """Whether a pair rejoin stops this node's server first: it runs, and is no standby streaming from its
    primary, read afresh and given STUCK_AFTER_S to connect. One past the new primary's fork (the hot standby
    of a site lost while a DR node took over) never will; it takes no writes, so the rejoin stops it and
    rewinds it like an old primary (a streaming one is left running, and the rejoin says so). Found by a CI
    run of the road back: beta's rejoin came 40 ms after its agent restarted its server, the agent's reading
    (a server still starting does not answer, and the last reading stands) said "down", so the stuck standby
    was not stopped and the rejoin refused it."""
    deadline, steady = time.monotonic() + STUCK_AFTER_S, 0
    while True:
        await observer.refresh()
        pg = observer.pg
        # A standby past the fork says "streaming" for a moment each time its receiver retries: only a receiver
        # seen streaming STEADY_READS times in a row (2 s) follows its primary.
        steady = steady + 1 if pg.db is DbState.STANDBY and pg.streaming else 0
        if steady >= STEADY_READS or pg.db is DbState.PRIMARY:
            return False  # nothing to rejoin, or refused by the rejoin itself (it still accepts writes)
        if not pgobs.postmaster_running(cfg.pg(node).data_dir):
            return False  # stopped: rewound as it is
        if time.monotonic() >= deadline:
            return True
        await asyncio.sleep(0.5)


def run(cfg: Config, who: rj.Rejoining, event: Callable[..., None]) -> rj.RejoinResult:
    """The rejoin itself (on the PostgreSQL thread), salvage first when ``[salvage]`` names tables."""
    from standby.salvage import salvage_for_rejoin

    return rj.rejoin(cfg, who, state_dir=cfg.state_dir_for(who.node), report=lambda m: event("rejoin_step", detail=m),
                     salvage=salvage_for_rejoin if cfg.salvage.tables else None)


def answer(result: rj.RejoinResult) -> dict[str, Any]:
    return {"method": result.method, "fork_lsn": result.fork_lsn, "old_timeline": result.old_timeline,
            "salvage_report": str(result.salvage_report) if result.salvage_report else None,
            "salvaged_rows": result.salvaged_rows,
            "kept_aside": str(result.kept_aside) if result.kept_aside else None,
            "steps": [[n, round(d, 3)] for n, d in result.steps]}
