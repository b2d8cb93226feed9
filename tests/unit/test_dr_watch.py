"""agent/superseded.DrWatch, the running primary's question to the warm followers (decide.py rule 7), against
fake connections: one kept connection per warm follower, a question that hangs (a cut WAN) neither held for
longer than a round nor asked again meanwhile, a broken connection replaced at the next round."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from standby import config
from standby.agent import followerobs
from standby.agent.superseded import DrWatch, judged
from standby.model import DrSeen
from tests.unit.configs import example_with_secrets
from tests.unit.test_followers_config import follower


class Server:
    """A warm follower's server as the kept connection sees it."""

    def __init__(self) -> None:
        self.in_hot_standby = "on"
        self.hang = threading.Event()  # set: questions wait until ``go`` is set
        self.go = threading.Event()
        self.down = False
        self.opened = self.asked = self.closed = 0

    def connect(self, cfg: config.Config, name: str) -> Conn:
        if self.down:
            raise psycopg.OperationalError("connection timed out")
        self.opened += 1
        return Conn(self)


class Conn:
    def __init__(self, server: Server) -> None:
        self.server = server

    def execute(self, query: str) -> Conn:
        assert query == "SHOW in_hot_standby"
        self.server.asked += 1
        if self.server.hang.is_set():
            assert self.server.go.wait(5)
        if self.server.down:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return self

    def fetchone(self) -> tuple[Any, ...]:
        return (self.server.in_hot_standby.encode(),)  # a walsender answers untyped: bytes

    def close(self) -> None:
        self.server.closed += 1


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DrWatch, Server]]:
    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("gamma", 21), follower("delta", 31, role="reporting")]
    server = Server()
    monkeypatch.setattr(followerobs, "connect", server.connect)
    # A round's wait: what a question that hangs costs each round here, and what an answer on a loaded machine
    # has (an answer later than that reads as silence, and the assertions below would say CLEAR wrongly).
    monkeypatch.setattr(followerobs, "ANSWER_TIMEOUT_S", 1.0)
    watch = DrWatch(config.parse(raw))
    yield watch, server
    server.go.set()
    watch.close()


def test_rule7_only_warm_followers_are_asked_over_one_kept_connection(world: tuple[DrWatch, Server]) -> None:
    watch, server = world
    assert list(watch.warm) == ["gamma"]  # delta reports: it is never promoted
    assert [asyncio.run(watch.seen()) for _ in range(3)] == [DrSeen.CLEAR] * 3
    server.in_hot_standby = "off"
    assert asyncio.run(watch.seen()) is DrSeen.WRITABLE
    assert (server.opened, server.asked) == (1, 4)


def test_rule7_a_question_into_a_cut_wan_reads_as_silent_and_is_not_asked_again_meanwhile(
        world: tuple[DrWatch, Server]) -> None:
    watch, server = world
    asyncio.run(watch.seen())
    server.hang.set()
    assert [asyncio.run(watch.seen()) for _ in range(3)] == [DrSeen.UNKNOWN] * 3
    assert server.asked == 2  # the one that hangs, and no pile of threads behind it
    server.hang.clear()
    server.go.set()  # the link is back: the hung question comes back, and the next round asks again
    server.in_hot_standby = "off"
    deadline = time.monotonic() + 5
    while asyncio.run(watch.seen()) is not DrSeen.WRITABLE:  # silent until the hung question has come back
        assert time.monotonic() < deadline, "never asked again after the link came back"
        time.sleep(0.05)
    assert server.asked == 3 and server.opened == 1


def test_rule7_a_broken_connection_is_dropped_and_the_next_round_opens_another(world: tuple[DrWatch, Server]) -> None:
    watch, server = world
    asyncio.run(watch.seen())
    server.down = True
    assert asyncio.run(watch.seen()) is DrSeen.UNKNOWN and server.closed == 1
    assert asyncio.run(watch.seen()) is DrSeen.UNKNOWN  # cannot connect either
    server.down = False
    assert asyncio.run(watch.seen()) is DrSeen.CLEAR and server.opened == 2


def test_rule7_one_writable_follower_is_enough_and_silence_is_never_clear() -> None:
    assert judged([False, True, None]) is DrSeen.WRITABLE
    assert judged([False, None]) is DrSeen.UNKNOWN
    assert judged([False, False]) is DrSeen.CLEAR
    assert judged([]) is DrSeen.CLEAR  # no warm follower: the question is never asked (probers.dr)


def test_rule7_closing_leaves_a_connection_whose_question_still_runs_to_its_thread(
        world: tuple[DrWatch, Server]) -> None:
    watch, server = world
    asyncio.run(watch.seen())
    server.hang.set()
    asyncio.run(watch.seen())  # a question hangs in a thread, on the kept connection
    watch.close()
    assert server.closed == 0, "closed under a call in progress"
    server.down = True
    server.go.set()  # the question fails in its thread, which drops the connection itself
    deadline = time.monotonic() + 5
    while server.closed == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
