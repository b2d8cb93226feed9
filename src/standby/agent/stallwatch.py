"""Says in the log where the agent's event loop was stuck when it misses its beat by far.

A stalled loop is a safety input: a primary whose loop stalls past the stall limit fences itself,
and both nodes may end up waiting for a person. The log should then tell why: a watcher thread
notes the loop's lateness and the loop thread's stack while it is late. Owns one daemon thread and,
unless handed a beat the loop keeps anyway, one repeating loop callback; it may not change what the
agent decides or does.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

from standby.agent import priority

log = logging.getLogger("standby.agent.stall")


class StallWatch:
    # The beat: by default a callback on the loop ten times a second (each wakes the loop and the watcher thread).
    # The agent hands over its heartbeat sender's last send instead (``beat``, every ``beat_every_s``): that
    # already runs on the loop every interval, so watching costs the loop no wake-up of its own. A stall is
    # told once it passes late_s plus the watcher's own period.
    def __init__(self, loop: asyncio.AbstractEventLoop, late_s: float = 0.25, every_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, beat: Callable[[], float | None] | None = None,
                 beat_every_s: float | None = None) -> None:
        self.loop, self.late_s, self.every_s, self.clock = loop, late_s, every_s, clock
        self.source = beat  # None: the watch beats on the loop itself; a source answering None: nothing to watch now
        self.beat_every_s = every_s if beat_every_s is None else beat_every_s
        self.beat = clock()
        self.loop_thread: int | None = None
        self.stopping = threading.Event()
        self.told_beat = -1.0  # the beat whose stall was logged (once per stall)
        self.reported = 0  # stalls logged

    def start(self) -> None:
        self.loop.call_soon_threadsafe(self._first_beat)
        threading.Thread(target=self._watch, name="stall-watch", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    def _first_beat(self) -> None:
        self.loop_thread = threading.get_ident()
        if self.source is None:
            self._beat()

    def _beat(self) -> None:
        self.beat = self.clock()
        if not self.stopping.is_set():
            self.loop.call_later(self.every_s, self._beat)

    def _watch(self) -> None:
        # As urgent as the loop: a starved watcher would report nothing or the wrong place.
        priority.follow()
        while not self.stopping.wait(self.every_s):
            self.check()

    def check(self) -> bool:
        """Log once per stall, with the loop thread's stack as it is now; True when it logged."""
        beat = self.beat if self.source is None else self.source()
        if beat is None:
            return False
        late = self.clock() - beat - self.beat_every_s
        if late <= self.late_s or beat == self.told_beat:
            return False
        self.told_beat = beat
        frame = sys._current_frames().get(self.loop_thread) if self.loop_thread is not None else None
        where = "".join(traceback.format_stack(frame)[-10:]) if frame is not None else "(loop not started)\n"
        log.warning("event loop %.2f s late; the loop thread is in:\n%s", late, where.rstrip())
        self.reported += 1
        return True
