"""At start, a pair node the DR node superseded fences itself (standby.rebuild.fence_at_start).

Nothing can tell the old site about a DR promotion while it is down; when its hosts come back, their agents
start from the state they had. Two of them hearing each other would restart the old primary's server as a
primary (decide.py: a rebooted primary whose peer is a standby restarts in place), beside the DR node. So
before its first decision, an agent asks each warm follower whether it accepts writes.

It owns: that question (one replication connection per warm follower, side by side, once per start) and
the fence it leads to (the state written fenced before any step; the first step then stops a running
server, FENCE_ENFORCED). It may not: stop anything itself, nor ask again later (a follower promoted while
the pair runs went through `standby promote`, which fences or refuses a pair node that answers).
A follower that does not answer counts as not writable: the check cannot see a DR node across a WAN that
is down, which is why the road back also says to keep beta's agent stopped until alpha is rebuilt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from standby import operations as ops
from standby import rebuild
from standby.agent import followerobs
from standby.agent.store import StateCell
from standby.confbase import FollowerRole
from standby.config import Config
from standby.model import DbState

Run = Callable[..., Awaitable[Any]]


def dr_primaries(cfg: Config) -> tuple[str, ...]:
    """The warm followers whose server accepts writes now (blocking; a few seconds at most)."""
    warm = [f.name for f in cfg.followers if f.role is FollowerRole.WARM]
    if not warm:
        return ()

    def writable(name: str) -> bool:
        try:
            return followerobs.accepts_writes(cfg, name)
        except (psycopg.Error, OSError):
            return False

    with ThreadPoolExecutor(len(warm)) as pool:
        return tuple(n for n, w in zip(warm, pool.map(writable, warm), strict=True) if w)


async def fence_if_superseded(cfg: Config, node: str, cell: StateCell, here: DbState, in_probe: Run,
                              in_state: Run, event: Callable[..., None]) -> None:
    """Before the first step: fence this node if a DR node serves and its server (``here``) is not a standby."""
    if not any(f.role is FollowerRole.WARM for f in cfg.followers):
        return
    d = rebuild.fence_at_start(await in_probe(dr_primaries, cfg), cell.state.fenced, here)
    if d.fence:
        await in_state(cell.save, ops.fenced_by_operator(cell.state))
        event("fenced_superseded", reason=d.reason.value, by=list(d.by),
              detail=f"{', '.join(d.by)} accepts writes (a DR promotion): fenced until `standby rejoin --node {node} "
                     f"--from {d.by[0]}` rebuilds it, or `standby rejoin` once a pair node serves again")
