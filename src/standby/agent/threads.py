"""How the agent's parts call what blocks: a function run on one of the agent's worker threads, awaited.

It owns: the ``Run`` shape the parts take (``await run(fn, *args)``) and making one from a thread pool.
It may not: choose the thread; the agent wires each part to its pool (see node.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]


def runner(pool: ThreadPoolExecutor) -> Run:
    """Runs a blocking function on ``pool``'s thread, awaited from the event loop."""
    async def run(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    return run
