"""The agent's tie-breaker echo on its event loop (issue 13, CPU at rest): one raw socket for the agent's life,
the same question `standby check` asks (the same echo, the same timeout), a reply counting only within that
timeout of its own echo. Real ICMP to this host's loopback, which answers every echo (needs root)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace

import pytest

from standby import config
from standby.agent.policy import policy_for
from standby.agent.probers import Probers
from standby.observe import probes
from tests.unit.configs import EXAMPLE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs root")


def _answered_within(echoer: probes.Echoer, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if echoer.answered():
            return True
        time.sleep(0.005)
    return False


def test_the_loopback_answers_each_echo_once() -> None:
    echoer = probes.Echoer("127.0.0.1", 0.5)
    try:
        for _ in range(3):
            assert echoer.send()
            assert _answered_within(echoer, 0.5)
            assert not echoer.answered()  # that reply is used up: it does not answer the next echo
    finally:
        echoer.close()


def test_a_reply_read_after_its_timeout_does_not_count() -> None:
    """A reader that stalled finds an old reply waiting: it says the tie-breaker answered then, not now."""
    echoer = probes.Echoer("127.0.0.1", 0.05)
    try:
        assert echoer.send()
        time.sleep(0.2)  # the reply is in the socket by now, unread
        assert not echoer.answered()
        assert echoer.send()  # the next echo is answered as usual
        assert _answered_within(echoer, 0.05)
    finally:
        echoer.close()


def test_another_askers_reply_does_not_count() -> None:
    """Every raw ICMP socket sees every echo reply: one to another process (another ident) is not ours."""
    mine, theirs = probes.Echoer("127.0.0.1", 0.5, ident=1111), probes.Echoer("127.0.0.1", 0.5, ident=2222)
    try:
        assert theirs.send()
        mine.sent[theirs.seq] = time.monotonic()  # as if it had sent an echo with that very sequence number
        assert _answered_within(theirs, 0.5)
        assert not mine.answered()
    finally:
        mine.close()
        theirs.close()


def test_a_reply_from_another_address_does_not_count() -> None:
    echoer = probes.Echoer("127.0.0.1", 0.5, ident=3333)
    other = probes.Echoer("127.0.0.2", 0.5, ident=3333)  # the same ident and sequence, another host answering
    try:
        assert other.send()
        assert _answered_within(other, 0.5)
        echoer.sent[other.seq] = time.monotonic()  # as if it had sent that very echo
        assert not echoer.answered()
    finally:
        echoer.close()
        other.close()


def test_each_echo_picks_its_source_address_when_it_leaves() -> None:
    """Not a connected socket: its source would be fixed at connect for the agent's life, and a source that later
    moved away (a service IP let go) would have the tie-breaker answer someone else."""
    echoer = probes.Echoer("127.0.0.1", 0.5)
    try:
        assert echoer.sock.getsockname()[0] == "0.0.0.0"
        with pytest.raises(OSError):
            echoer.sock.getpeername()
    finally:
        echoer.close()


def _prober(address: str) -> Probers:
    cfg = config.load(EXAMPLE)
    cfg = cfg.model_copy(update={"tiebreaker": config.TieBreaker(address=address, port=0)})
    policy = replace(policy_for(cfg, "alpha"), heartbeat_s=0.05)

    async def nothing(*_: object) -> None:
        raise AssertionError("an ICMP tie-breaker is asked on the loop, never on a thread")

    return Probers(cfg, "alpha", policy, None, nothing, nothing, time.monotonic, lambda *a, **k: None)  # type: ignore[arg-type]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_prober_counts_the_answers_on_the_loop_and_closes_its_socket() -> None:
    prober = _prober("127.0.0.1")
    assert prober.tiebreaker_ok() is False

    async def run() -> tuple[int, int, int]:
        stopping, before = asyncio.Event(), _open_fds()
        task = asyncio.create_task(prober.tiebreaker(stopping))
        await asyncio.sleep(0.3)
        during = _open_fds()
        stopping.set()
        await asyncio.wait_for(task, 1)
        return before, during, _open_fds()

    before, during, after = asyncio.run(run())
    assert prober.tiebreaker_ok() is True
    assert during == before + 1 and after == before  # one socket for its life, gone with it


def test_an_echo_that_cannot_leave_is_no_answer() -> None:
    """Not allowed (a broadcast address) as no route would be: the echo cannot even be sent, nothing counts."""
    echoer = probes.Echoer("255.255.255.255", 0.5)
    try:
        assert not echoer.send()
        assert not _answered_within(echoer, 0.1)
    finally:
        echoer.close()


def test_a_reader_that_fails_has_its_prober_start_again_with_a_new_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    prober = _prober("127.0.0.1")
    sockets: list[probes.Echoer] = []
    real = probes.Echoer

    class Failing(real):  # type: ignore[misc,valid-type]
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)
            sockets.append(self)

        def answered(self) -> bool:
            if len(sockets) == 1:
                raise OSError(5, "Input/output error")
            return super().answered()

    async def run() -> None:
        stopping = asyncio.Event()
        with pytest.raises(OSError, match="Input/output"):
            await asyncio.wait_for(prober.tiebreaker(stopping), 2)
        assert sockets[0].sock.fileno() == -1  # closed on the way out
        task = asyncio.create_task(prober.tiebreaker(stopping))  # as the guard starts it again
        await asyncio.sleep(0.3)
        stopping.set()
        await asyncio.wait_for(task, 1)

    monkeypatch.setattr(probes, "Echoer", Failing)
    asyncio.run(run())
    assert len(sockets) == 2 and prober.tiebreaker_ok() is True
