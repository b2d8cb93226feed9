"""At start, a pair node the DR node superseded fences itself (standby.rebuild.fence_at_start).

Nothing can tell the old site about a DR promotion while it is down; when its hosts come back, their agents
start from the state they had. Two of them hearing each other would restart the old primary's server as a
primary (decide.py: a rebooted primary whose peer is a standby restarts in place), beside the DR node. So
before its first decision, an agent asks each warm follower whether it accepts writes.

It owns: that question (one replication connection per warm follower, side by side) and the fence at start
it leads to (the state written fenced before any step; the first step then stops a running server,
FENCE_ENFORCED). At start a follower that does not answer counts as not writable; later, while a rebooted
primary's restart is in question, the decision itself waits for every warm follower to answer (finding
DR-restart), since across a WAN that is down a DR node may be serving; a running primary fences itself
when one accepts writes (decide.py rule 7: promoted by a person while the WAN was cut), and a running hot
standby promotes nothing while one does (finding DR-window). Those questions are
``DrWatch``'s, asked by agent.probers: one kept replication connection per warm follower, so a primary that
asks at least once a second costs each follower no new backend or handshake per question.
It may not: stop anything itself (the decision fences), nor decide what an answer means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
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


class DrWatch:
    """Whether a warm follower accepts writes, asked over one kept connection each, on threads of its own
    (the agent's probe threads time the tie-breaker and ARP: a WAN that drops everything must not hold
    them). A round waits ANSWER_TIMEOUT_S at most; a follower whose last question has not come back yet is
    not asked again meanwhile, and reads as not answering."""

    def __init__(self, cfg: Config) -> None:
        self.warm = cfg.warm_followers()
        self.kept: dict[str, followerobs.Kept[psycopg.Connection]] = {
            n: followerobs.Kept(partial(followerobs.connect, cfg, n), _close) for n in self.warm}
        self._pool = ThreadPoolExecutor(len(self.warm), thread_name_prefix="dr-watch") if self.warm else None
        self._pending: dict[str, Future[bool]] = {}

    def _ask(self, name: str) -> bool:
        try:
            return followerobs.writable_on(self.kept[name].get())
        except BaseException:
            self.kept[name].drop()  # the next question opens a new one
            raise

    async def answers(self) -> dict[str, bool | None]:
        """Each warm follower: accepts writes, or None when it does not answer in time."""
        if self._pool is None:
            return {}
        asked: dict[str, Future[bool]] = {}
        for n in self.warm:
            if n not in self._pending or self._pending[n].done():
                self._pending[n] = asked[n] = self._pool.submit(self._ask, n)
        if asked:
            waiting = [asyncio.wrap_future(f) for f in asked.values()]
            for w in waiting:  # a failed question is read below (None): its error needs no other reader
                w.add_done_callback(lambda w: w.cancelled() or w.exception())
            await asyncio.wait(waiting, timeout=followerobs.ANSWER_TIMEOUT_S)
        out: dict[str, bool | None] = {}
        for n in self.warm:
            f = asked.get(n)
            out[n] = f.result() if f is not None and f.done() and f.exception() is None else None
        return out

    async def seen(self) -> DrSeen:
        return judged((await self.answers()).values())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for n, k in self.kept.items():
            # A connection whose question still runs is left to its thread (it drops it when the question fails):
            # freeing libpq's connection under a call in progress on another thread is not safe.
            if (f := self._pending.get(n)) is None or f.done():
                k.drop()


def _close(conn: psycopg.Connection) -> None:
    conn.close()


def judged(answers: Iterable[bool | None]) -> DrSeen:
    """The warm followers for the decision (Observation.dr): one writable, else one silent, else clear."""
    got = list(answers)
    if any(got):
        return DrSeen.WRITABLE
    return DrSeen.UNKNOWN if any(a is None for a in got) else DrSeen.CLEAR


def dr_primaries(cfg: Config) -> tuple[str, ...]:
    """The warm followers whose server accepts writes now."""
    return tuple(n for n, w in _warm_answers(cfg).items() if w)


async def fence_if_superseded(cfg: Config, node: str, cell: StateCell, here: DbState, in_probe: Run,
                              in_state: Run, event: Callable[..., None]) -> None:
    """Before the first step: fence this node if a DR node serves and its server (``here``) is not a standby."""
    if not cfg.warm_followers():
        return
    d = rebuild.fence_at_start(await in_probe(dr_primaries, cfg), cell.state.fenced, here)
    if d.fence:
        await in_state(cell.save, ops.fenced_by_operator(cell.state, dr_serves=True))
        event("fenced_superseded", reason=d.reason.value, by=list(d.by),
              detail=f"{', '.join(d.by)} accepts writes (a DR promotion): fenced until `standby rejoin --node {node} "
                     f"--from {d.by[0]}` rebuilds it, or `standby rejoin` once a pair node serves again")
