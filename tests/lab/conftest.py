"""Fixtures for tests that run against a real lab (namespaces + PostgreSQL 15).

Every lab made here is destroyed when its fixture ends, also when the test
failed, and its logs, histories and state are first searched for the lab's
secrets (a leak fails the test); a sweep at session start and end removes labs of this prefix that
their creator abandoned (e.g. a killed test run), never those of a
concurrent run.

With STANDBY_LAB_KEEP_FAILED=DIR, a failed (or errored) test's labs have their
logs, agents' histories and state copied to DIR/<test>/<lab> first.

With STANDBY_LAB_STALLS=FILE, every lab's agents' late event loops (what
agent/stallwatch.py logs) are appended to FILE, one JSON line per agent, passed
tests included: how tests running side by side load each other shows there.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from standby.lab import LAB_BASE, Lab, LabSpec
from standby.lab.netns import NETNS_DIR
from standby.lab.pgnode import STATE_TMPFS_ENV
from standby.lab.topology import PG_BIN, PG_ETC, PG_VERSION

# Overridable so a nested test run can be told apart from this one.
PREFIX = os.environ.get("STANDBY_LAB_TEST_PREFIX", "sbt")
_NAME_RE = re.compile(rf"^{re.escape(PREFIX)}[0-9a-f]{{4}}$")
LOCK_DIR = Path("/run/standby-lab-tests")
# Opt-in: where a failed test's lab files are kept (nothing is kept when unset).
KEEP_FAILED = os.environ.get("STANDBY_LAB_KEEP_FAILED", "")
# Opt-in: where each lab's agents' late event loops are recorded.
STALLS = os.environ.get("STANDBY_LAB_STALLS", "")
_LATE_RE = re.compile(r"event loop ([0-9.]+) s late")
# Only with test files side by side (pytest-xdist workers): every lab of such a run (the CLI's too)
# keeps its agents' state on a tmpfs (see pgnode.STATE_TMPFS_ENV). One process keeps it on disk, as a
# server does: a slow fsync there is a finding (async chaos seed 77), not noise.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ[STATE_TMPFS_ENV] = "1"
_NS_RE = re.compile(rf"^({re.escape(PREFIX)}[0-9a-f]{{4}})-(sw|alpha|beta|client|gamma)$")
# A cluster-layout lab's postgresql-common clusters: /etc/postgresql/15/<lab>-<node>.
_CLUSTER_RE = re.compile(rf"^({re.escape(PREFIX)}[0-9a-f]{{4}})-(alpha|beta)$")


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, PostgreSQL as user postgres)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("arping", "iputils-arping")):
        if not shutil.which(tool):
            return f"{tool} not found (apt-get install {package})"
    if not (PG_BIN / "postgres").exists():
        return f"PostgreSQL 15 not found in {PG_BIN} (apt-get install postgresql-15)"
    return None


def new_lab_name() -> str:
    while True:
        name = PREFIX + secrets.token_hex(2)
        if not (LAB_BASE / name).exists() and not any(
            (NETNS_DIR / f"{name}-{r}").exists() for r in ("sw", "alpha", "beta", "client", "gamma")
        ) and not any((PG_ETC / PG_VERSION / f"{name}-{n}").exists() for n in ("alpha", "beta")):
            return name


def _names_in(directory: Path, pattern: re.Pattern[str]) -> set[str]:
    return {m.group(1) for p in directory.iterdir() if (m := pattern.match(p.name))} if directory.exists() else set()


def existing_test_labs() -> set[str]:
    """Every lab of this prefix present on the machine, by directory, namespace or cluster configuration."""
    names = {p.name for p in LAB_BASE.iterdir() if _NAME_RE.match(p.name)} if LAB_BASE.exists() else set()
    return names | _names_in(NETNS_DIR, _NS_RE) | _names_in(PG_ETC / PG_VERSION, _CLUSTER_RE)


def _lock_path(name: str) -> Path:
    return LOCK_DIR / f"{name}.lock"


def _try_lock(name: str) -> int | None:
    """An exclusive lock on the lab's name, or None when another live test process holds it."""
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(_lock_path(name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _release(name: str, fd: int) -> None:
    _lock_path(name).unlink(missing_ok=True)
    os.close(fd)


def sweep() -> None:
    """Destroy labs of this prefix that no live test process holds.

    Each lab's name stays locked (flock) while a fixture owns it; the kernel
    drops the lock when that process dies, so a killed run's labs are found
    here while a concurrent run's labs are left alone.
    """
    for name in existing_test_labs():
        fd = _try_lock(name)
        if fd is None:
            continue
        try:
            Lab.destroy(name)
        finally:
            _release(name, fd)


@pytest.fixture(scope="session", autouse=True)
def _lab_environment() -> Iterator[None]:
    reason = _missing_prerequisite()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"lab tests cannot run here: {reason}; CI must not pass by skipping them")
        pytest.skip(reason)
    sweep()
    yield
    sweep()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Remember on the test and its module whether any phase failed, for the fixtures' teardown to see (a
    module's shared lab is kept for a failure of one of its own tests, not for one elsewhere in the run)."""
    outcome = yield
    if outcome.get_result().failed:
        item.stash[_FAILED] = True
        module = item.getparent(pytest.Module)
        if module is not None:
            module.stash[_FAILED] = True


_FAILED = pytest.StashKey[bool]()


def _failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test (function-scoped fixture) or one of the module's tests (module-scoped) failed."""
    return request.node.stash.get(_FAILED, False)


def _keep_dir(request: pytest.FixtureRequest) -> Path | None:
    """Where to copy this test's labs before destroying them, or None (kept only on request, only on failure)."""
    if not KEEP_FAILED or not _failed(request):
        return None
    return Path(KEEP_FAILED) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)}-{time.strftime('%Y%m%dT%H%M%S')}"


AGENT_LOG_TAIL = 40


def print_agent_log_tails(lab: Lab) -> None:
    """Each agent's last lines, into the failed test's report: a run whose labs are gone (CI) still says what
    the agents were doing."""
    for role in (*("alpha", "beta"), *lab.spec.followers):
        log = lab.spec.role_dir(role) / "log" / "agent.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-AGENT_LOG_TAIL:]
            print(f"\n--- lab {lab.name}: {role}'s agent.log, last {len(tail)} lines ---\n" + "\n".join(tail))


def record_stalls(lab: Lab, test: str) -> None:
    """Append each agent's late event loops (seconds late) to STALLS; nothing without it."""
    if not STALLS:
        return
    lines = []
    for node in ("alpha", "beta"):
        log = lab.spec.role_dir(node) / "log" / "agent.log"
        if log.exists():
            late = [float(m.group(1)) for m in _LATE_RE.finditer(log.read_text(errors="replace"))]
            lines.append(json.dumps({"test": test, "lab": lab.name, "node": node, "late_s": late,
                                     "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}))
    with open(STALLS, "a") as f:
        f.write("".join(line + "\n" for line in lines))


class LabFactory:
    """Makes uniquely named labs and destroys all of them at teardown."""

    def __init__(self, test: str = "") -> None:
        self.test = test  # the test (or module) the labs are for, as STALLS names it
        self.locks: dict[str, int] = {}
        self.keep: Path | None = None  # set at teardown when the labs' files are to be kept
        self.failed = False  # set at teardown: the agents' log tails go into the report

    def reserve(self) -> str:
        """A fresh name, locked and destroyed at teardown, for a lab built some other way (the CLI)."""
        while True:
            name = new_lab_name()
            fd = _try_lock(name)
            if fd is not None:
                self.locks[name] = fd
                return name

    def __call__(self, durability: str = "sync", followers: tuple[str, ...] = ()) -> Lab:
        # Reserved before building, so a half-built lab is destroyed too.
        return Lab.up(LabSpec(name=self.reserve(), durability=durability, followers=followers))

    def destroy_all(self) -> None:
        """Destroy every lab, after searching its files for its own secrets: a leak fails the test."""
        found: list[str] = []
        for name, fd in list(self.locks.items()):
            try:
                try:
                    lab = Lab(LabSpec(name))
                    leaks = lab.secret_leaks()
                    found += leaks
                    record_stalls(lab, self.test)
                    if self.failed and not leaks:  # never print a file that holds a secret
                        print_agent_log_tails(lab)
                    if self.keep is not None:
                        lab.collect_logs(self.keep / name)
                        print(f"\nlab {name}: logs and histories kept in {self.keep / name}")
                finally:
                    Lab.destroy(name)
            finally:
                _release(name, fd)
                del self.locks[name]
        if found:
            pytest.fail("secret values found in lab files (path:line: secret):\n  " + "\n  ".join(found[:50]),
                        pytrace=False)


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    factory = LabFactory(request.node.nodeid)
    try:
        yield factory
    finally:
        factory.keep, factory.failed = _keep_dir(request), _failed(request)
        factory.destroy_all()


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One lab shared by a module's tests; tests that inject faults heal afterwards."""
    factory = LabFactory(request.node.nodeid)
    try:
        yield factory()
    finally:
        factory.keep, factory.failed = _keep_dir(request), _failed(request)
        factory.destroy_all()
