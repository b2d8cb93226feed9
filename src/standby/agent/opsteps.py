"""What every operator operation uses around its steps: their timing, its refusal, the address hook, the
first move of a clean stop.

It owns: the record of an operation's timed steps, the error an operation refuses with, how the
address-change hook is built and run (never through a shell), and the stop's signal with the wait for
the sessions it ends (stop_asked). It may not decide, nor change the agent's state.
"""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

from standby.act import sessions
from standby.agent.localdb import Database
from standby.config import Config, for_node
from standby.laps import Laps


class Marks(Laps):
    """An operation's steps: each one's name and the seconds since the previous one (or the start)."""

    def __init__(self) -> None:
        super().__init__(digits=4)

    def mark(self, name: str) -> None:
        self.lap(name)

    def detail(self) -> list[list[Any]]:
        """For the history: each step with the monotonic time it ended (this host's clock, so that a
        measurement on the same host can line the steps up with what clients saw)."""
        return [[name, s, round(end, 4)] for (name, s), end in zip(self.steps, self.ends, strict=True)]


class OpError(Exception):
    """An operator's request (switchover step, rejoin) that cannot be done now; nothing was changed."""


def hook_argv(cfg: Config, node: str) -> list[str] | None:
    """The address-change hook for ``node``: placeholders filled in per argument, never parsed by a shell."""
    if not cfg.address_change_hook:
        return None
    address = str(cfg.link(node, "public").ip)  # a pair node's or a warm follower's (a DR promotion)
    return [for_node(a, node).replace("{address}", address) for a in cfg.address_change_hook]


def run_hook(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run {argv[0]}: {e}"
    return f"exit {res.returncode}"


async def stop_asked(cfg: Config, node: str, db: Database, in_pg: Callable[..., Awaitable[Any]]) -> str:
    """A primary's clean stop begins with its signal, before the service IPs go: every session is told
    while its client can still hear it (standby.act.sessions), and from then on the server takes no new
    session and no new commit. The step's name, for the operation's record."""
    db.request_stop()
    left = await in_pg(sessions.told, cfg, node)
    return ("stop asked: writes paused, clients told" if not left else
            f"stop asked: writes paused, {left} client session(s) still open")
