"""The agent's loop watcher: a late loop is logged once per stall, with where the loop thread is."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from standby.agent.stallwatch import StallWatch


def test_a_blocked_loop_is_logged_with_the_blocking_call(caplog: pytest.LogCaptureFixture) -> None:
    """With a real loop and thread. On a loaded machine the loop may also be late on its own before or
    after the block (the suite under load once saw a second report), so this asserts only that the
    block was told, with where the loop was; told once per stall is the clocked test below."""
    def blocking_call_in_the_loop() -> None:
        time.sleep(1.0)

    async def main() -> StallWatch:
        watch = StallWatch(asyncio.get_running_loop(), late_s=0.2, every_s=0.02)
        watch.start()
        await asyncio.sleep(0.1)
        blocking_call_in_the_loop()
        await asyncio.sleep(0.2)
        watch.stop()
        return watch

    with caplog.at_level(logging.WARNING, logger="standby.agent.stall"):
        watch = asyncio.run(main())
    assert watch.reported >= 1
    told = [r.getMessage() for r in caplog.records]
    assert any("late" in m and "blocking_call_in_the_loop" in m for m in told), told


def test_a_loop_on_time_is_never_logged() -> None:
    now = [0.0]
    watch = StallWatch(asyncio.new_event_loop(), late_s=0.25, every_s=0.05, clock=lambda: now[0])
    watch.beat = 0.0
    now[0] = 0.29  # 0.24 s late: under the bound
    assert not watch.check()
    now[0] = 0.31
    assert watch.check()
    now[0] = 0.8
    assert not watch.check()  # the same stall is told once
    watch.beat = 0.9
    now[0] = 1.3
    assert watch.check()  # a new one is told again
    watch.loop.close()


def test_i13_on_a_senders_beat_a_blocked_loop_is_logged_with_the_blocking_call(caplog: pytest.LogCaptureFixture) -> None:
    """The agent's way: the watch reads the heartbeat sender's last send instead of beating on the loop."""
    def blocking_call_in_the_loop() -> None:
        time.sleep(1.0)

    sent = [time.monotonic()]

    async def sender() -> None:
        while True:
            sent[0] = time.monotonic()
            await asyncio.sleep(0.02)

    async def main() -> StallWatch:
        watch = StallWatch(asyncio.get_running_loop(), late_s=0.2, every_s=0.02, beat=lambda: sent[0],
                           beat_every_s=0.02)
        task = asyncio.get_running_loop().create_task(sender())
        watch.start()
        await asyncio.sleep(0.1)
        blocking_call_in_the_loop()
        await asyncio.sleep(0.2)
        watch.stop()
        task.cancel()
        return watch

    with caplog.at_level(logging.WARNING, logger="standby.agent.stall"):
        watch = asyncio.run(main())
    assert watch.reported >= 1
    assert any("late" in r.getMessage() and "blocking_call_in_the_loop" in r.getMessage() for r in caplog.records)
