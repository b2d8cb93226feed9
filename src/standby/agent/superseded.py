"""At start, a pair node the DR node superseded fences itself (standby.rebuild.fence_at_start).

Nothing can tell the old site about a DR promotion while it is down; when its hosts come back, their agents
start from the state they had. Two of them hearing each other would restart the old primary's server as a
primary (decide.py: a rebooted primary whose peer is a standby restarts in place), beside the DR node. So
before its first decision, an agent asks each warm follower whether it accepts writes.

It owns: that question (one replication connection per warm follower, side by side) and the fence at start
it leads to (the state written fenced before any step; the first step then stops a running server,
FENCE_ENFORCED). At start a follower that does not answer counts as not writable; later, while a rebooted
primary's restart is in question, the decision itself waits for every warm follower to answer (``dr_seen``,
asked by agent.probers; decide: finding DR-restart), since across a WAN that is down a DR node may be
serving. It may not: stop anything itself, nor ask while the pair runs (a follower promoted then went
through `standby promote`, which fences or refuses a pair node that answers).
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
from standby.config import Config
from standby.model import DbState, DrSeen

Run = Callable[..., Awaitable[Any]]


def _warm_answers(cfg: Config) -> dict[str, bool | None]:
    """Each warm follower: whether its server accepts writes, None when it does not answer (blocking; side by
    side, a few seconds at most)."""
    warm = cfg.warm_followers()
    if not warm:
        return {}

    def writable(name: str) -> bool | None:
        try:
            return followerobs.accepts_writes(cfg, name)
        except (psycopg.Error, OSError):
            return None

    with ThreadPoolExecutor(len(warm)) as pool:
        return dict(zip(warm, pool.map(writable, warm), strict=True))


def dr_primaries(cfg: Config) -> tuple[str, ...]:
    """The warm followers whose server accepts writes now."""
    return tuple(n for n, w in _warm_answers(cfg).items() if w)


def dr_seen(cfg: Config) -> DrSeen:
    """The warm followers for the decision (Observation.dr): one writable, else one silent, else clear."""
    answers = _warm_answers(cfg).values()
    if any(answers):
        return DrSeen.WRITABLE
    return DrSeen.UNKNOWN if any(a is None for a in answers) else DrSeen.CLEAR


async def fence_if_superseded(cfg: Config, node: str, cell: StateCell, here: DbState, in_probe: Run,
                              in_state: Run, event: Callable[..., None]) -> None:
    """Before the first step: fence this node if a DR node serves and its server (``here``) is not a standby."""
    if not cfg.warm_followers():
        return
    d = rebuild.fence_at_start(await in_probe(dr_primaries, cfg), cell.state.fenced, here)
    if d.fence:
        await in_state(cell.save, ops.fenced_by_operator(cell.state))
        event("fenced_superseded", reason=d.reason.value, by=list(d.by),
              detail=f"{', '.join(d.by)} accepts writes (a DR promotion): fenced until `standby rejoin --node {node} "
                     f"--from {d.by[0]}` rebuilds it, or `standby rejoin` once a pair node serves again")
