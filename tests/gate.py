"""Tests side by side under pytest-xdist, except those marked ``alone``, which run with no other test beside them.

A test is marked ``alone`` when another test next to it would spoil it or be spoiled by it: it loads the
machine on purpose (a connection flood, a busy primary, a browser, a booted systemd) so that a neighbour's
agents could stall past their fencing limit, or it reads host-wide state another test changes at the same
moment (a copy of /etc while clusters come and go).

The workers of one run share a readers-writer lock made of two flock(2) files in a directory the
controller makes: every test holds ``room`` shared, an ``alone`` test holds it exclusively. Each test
passes through ``door`` on its way in, and an ``alone`` test keeps it while it runs, so that once it
waits no new test can start on the other workers and it is not starved. Alone tests in a row on one
worker (a module marked alone) keep both locks from one to the next. The lock covers a test's
setup and teardown too, so a module's lab is built and destroyed inside it. A run without workers
has nothing to share and takes no lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

GATE_ENV = "STANDBY_TEST_GATE_DIR"
MARK = "alone"


class Gate:
    def __init__(self, directory: Path) -> None:
        self.door, self.room = directory / "door", directory / "room"
        self._kept: tuple[int, int] | None = None  # (door, room) an alone test left locked for the next

    @contextmanager
    def enter(self, alone: bool, keep: bool = False) -> Iterator[None]:
        """Hold the room for one test. ``keep``: the next test on this worker is alone; if this one is alone
        too, the next takes the locks over as they are: a test started on the other worker in between would
        make it wait that test out while this worker idles (a lab test: up to a minute)."""
        held, self._kept = self._kept, None
        if held is not None and not alone:
            self._release(held)
            held = None
        fds = held or self._acquire(alone)
        try:
            yield
        finally:
            if alone and keep:
                self._kept = fds
            else:
                self._release(fds)

    def _acquire(self, alone: bool) -> tuple[int, int]:
        door = os.open(self.door, os.O_RDWR | os.O_CREAT, 0o600)
        room = os.open(self.room, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(door, fcntl.LOCK_EX)
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
            if not alone:
                fcntl.flock(door, fcntl.LOCK_UN)
        except BaseException:
            self._release((door, room))
            raise
        return door, room

    @staticmethod
    def _release(fds: tuple[int, int]) -> None:
        for fd in fds:
            os.close(fd)  # closing drops the locks


_GATE = pytest.StashKey[Gate]()
_MADE = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARK}: runs with no other test beside it under pytest-xdist (see tests/gate.py)")
    if hasattr(config, "workerinput"):
        directory = os.environ.get(GATE_ENV)
        if directory:
            config.stash[_GATE] = Gate(Path(directory))
    elif getattr(config.option, "dist", "no") != "no":
        # The controller, before it starts its workers: they inherit the environment.
        made = Path(tempfile.mkdtemp(prefix="standby-test-gate-"))
        config.stash[_MADE] = made
        os.environ[GATE_ENV] = str(made)


def pytest_unconfigure(config: pytest.Config) -> None:
    made = config.stash.get(_MADE, None)
    if made is not None:
        os.environ.pop(GATE_ENV, None)
        shutil.rmtree(made, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    gate = item.config.stash.get(_GATE, None)
    if gate is None:
        yield
        return
    alone = item.get_closest_marker(MARK) is not None
    with gate.enter(alone, keep=nextitem is not None and nextitem.get_closest_marker(MARK) is not None):
        yield
