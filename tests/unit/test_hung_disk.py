"""A hung disk under more than the WAL (adversarial read of the hung-disk rule, finding 4): in the usual layout
the data directory, the WAL and the agent's state file share one disk.

- The fast-shutdown signal has the postmaster write its lock file, so it waits on the disk too (state D), holding
  the fence's SIGKILL: the kill waited for its end, gave up after 10 s, and the node said "fencing" for as long
  as the disk hung, so the database never moved. A process that holds a SIGKILL never runs again (the kernel
  acts on it the moment the call returns): it counts as stopped, and the server as down.
- The fence's state write waited on the disk: a decision that only takes away now goes on after HUNG_S,
  held in memory (as for a write that fails, F2), and no second write queues behind the hung one.

The first part on real processes in state D: an ext4 in a file behind a loop device, frozen with fsfreeze."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.act import fence
from standby.agent import statewrite
from standby.agent.statewrite import StateWriter
from standby.decide import State
from standby.observe import postgres as pgobs
from tests.unit.configs import example_with_secrets


@pytest.fixture
def frozen_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system whose every write waits until the test ends (then thawed and unmounted)."""
    if (os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("fsfreeze") is None
            or not Path("/dev/loop-control").exists()):
        pytest.skip("needs root, loop devices, mkfs.ext4 and fsfreeze (./dev setup installs the tools)")
    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True, capture_output=True)
    try:
        subprocess.run(["fsfreeze", "--freeze", str(mnt)], check=True, capture_output=True)
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(mnt)], check=False, capture_output=True)
        # Lazily: a process still on it (a test that failed half-way) must not keep it mounted, nor the test waiting.
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
        # The loop device goes with the last reference to the file system (the mount's autoclear): a process that
        # waited on it may hold one a moment longer, and so does every process another test started meanwhile in
        # a network namespace of its own (its copy of the mounts), until it ends. Marked to go, never left held.
        deadline = time.monotonic() + 2
        while _loop_devices(image) and time.monotonic() < deadline:
            time.sleep(0.1)
        for dev in _loop_devices(image):
            subprocess.run(["losetup", "--detach", dev], check=False, capture_output=True)


def _loop_devices(image: Path) -> list[str]:
    out = subprocess.run(["losetup", "--associated", str(image)], capture_output=True, text=True, check=False).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line]


def _in_d_state(pid: int, timeout_s: float = 5.0, steady_s: float = 0.3) -> bool:
    """Whether ``pid`` waits in state D and stays there for ``steady_s``: a process just started on cold caches is
    in D for a moment while its program is read from disk (CI run of stop 41 took that for the write's wait)."""
    deadline, since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if _field(Path(f"/proc/{pid}/stat"), 0) != "D":
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= steady_s:
            return True
        time.sleep(0.02)
    return False


def _stand_in(tmp_path: Path, script: str) -> subprocess.Popen[bytes]:
    """A process named as a postmaster is (the command name is what the agent checks) running ``script``."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    name = tmp_path / "bin" / "postgres"
    if not name.exists():
        name.symlink_to(shutil.which("sh") or "/bin/sh")
    return subprocess.Popen([str(name), "-c", script])


def _children(pid: int) -> list[int]:
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
            if _field(p, 1) == str(pid)]


def _session_leaders(pid: int) -> list[int]:
    return [c for c in _children(pid) if _field(Path(f"/proc/{c}/stat"), 3) == str(c)]


def _field(stat: Path, i: int) -> str | None:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[i]
    except (OSError, IndexError):
        return None


def test_finding_4_a_postmaster_waiting_on_a_hung_disk_is_killed_and_counts_as_stopped(
        tmp_path: Path, frozen_disk: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"]["data_dir"] = str(data)
    cfg = config.parse(raw)
    # The stand-in's child (a backend) leads a group of its own, as PostgreSQL's children do, with a process of
    # its own in it (an archive_command); then the stand-in writes to the hung disk, as a postmaster writes its
    # lock file at a shutdown signal.
    server = _stand_in(tmp_path, f"setsid sh -c 'sleep 60 & wait' & sleep 0.3; echo lock > {frozen_disk}/postmaster.pid")
    kept: list[int] = []
    try:
        # The backend is the child leading a session of its own (the other child, for a moment, is the sleep).
        deadline = time.monotonic() + 5
        while len(kept := [*(b := _session_leaders(server.pid)), *(_children(b[0]) if b else [])]) < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(kept) == 2, kept
        assert _in_d_state(server.pid), "the write did not wait on the frozen disk"
        (data / "postmaster.pid").write_text(f"{server.pid}\n{data}\n")
        assert pgobs.postmaster_running(data) and not pgobs.kill_pending(server.pid)
        t0 = time.monotonic()
        assert fence.stop_postgres(cfg, "alpha", at_once=True) is fence.StopStep.KILL  # raised after 10 s before
        assert time.monotonic() - t0 < 5.0
        assert pgobs.kill_pending(server.pid)  # still there, in state D, never to run again
        assert server.poll() is None and not pgobs.postmaster_running(data)  # the agent reads the server down
        deadline = time.monotonic() + 5
        while any(_field(Path(f"/proc/{p}/stat"), 0) not in (None, "Z") for p in kept) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_field(Path(f"/proc/{p}/stat"), 0) in (None, "Z") for p in kept), "a child or its own survived"
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(frozen_disk)], check=False, capture_output=True)
        for child in _children(server.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child, signal.SIGKILL)  # its group: whatever it started too
        for p in kept:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        server.kill()
        assert server.wait(10) == -signal.SIGKILL  # the write returned, and the process ended at once


def test_a_lock_file_naming_another_program_kills_nothing(tmp_path: Path) -> None:
    """Second read, finding 12: the kill is now a fence's first and only step; a lock file left naming a PID that
    another program has since been given must not have that program killed."""
    data = tmp_path / "data"
    data.mkdir()
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"]["data_dir"] = str(data)
    cfg = config.parse(raw)
    other = subprocess.Popen(["sleep", "60"])
    try:
        (data / "postmaster.pid").write_text(f"{other.pid}\n{data}\n")
        fence.stop_postgres(cfg, "alpha", at_once=True)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(5)


def test_a_process_that_only_sleeps_has_no_kill_pending() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not pgobs.kill_pending(sleeper.pid)
        os.kill(sleeper.pid, signal.SIGSTOP)  # stopped, not killed: it acts on SIGKILL at once, never holds it
        assert not pgobs.kill_pending(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait(5)
    assert not pgobs.kill_pending(sleeper.pid)  # gone


class _SlowDisk:
    """A store whose state writes wait until let go; counts the writes begun."""

    def __init__(self) -> None:
        self.go, self.begun, self.written = threading.Event(), 0, []  # type: ignore[var-annotated]

    def save_state(self, state: State) -> None:
        self.begun += 1
        self.go.wait(30)
        self.written.append(state)


def _writer(disk: _SlowDisk) -> tuple[StateWriter, ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)

    async def in_state(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return StateWriter(disk, in_state), pool  # type: ignore[arg-type]


def test_finding_4_a_fence_goes_on_past_a_hung_state_write_and_no_second_write_queues_behind_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statewrite, "HUNG_S", 0.2)
    disk = _SlowDisk()
    writer, pool = _writer(disk)
    fenced, newer = State(term=3, fenced=True), State(term=3, fenced=True, resumable=True)

    async def go() -> None:
        with pytest.raises(TimeoutError):
            await writer.write(fenced, takes_away_only=True)  # the fence goes on in memory
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await writer.write(newer, takes_away_only=True)  # the one in flight hangs: no wait, nothing queued
        assert time.monotonic() - t0 < statewrite.HUNG_S and disk.begun == 1
        disk.go.set()  # the disk comes back: the write in flight returns, and a later step writes the newest state
        for _ in range(500):
            if disk.written:
                break
            await asyncio.sleep(0.01)
        await writer.write(newer, takes_away_only=True)
        assert disk.written == [fenced, newer]  # in order: the newest last

    try:
        asyncio.run(go())
    finally:
        disk.go.set()
        pool.shutdown(wait=True)


def test_a_decision_that_gives_something_waits_for_its_record_however_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statewrite, "HUNG_S", 0.1)
    disk = _SlowDisk()
    writer, pool = _writer(disk)
    promoting = State(term=4, promoting=True)

    async def go() -> None:
        task = asyncio.ensure_future(writer.write(promoting, takes_away_only=False))
        await asyncio.sleep(0.5)  # five times HUNG_S: still waiting, no error
        assert not task.done()
        disk.go.set()
        await task
        assert disk.written == [promoting]

    try:
        asyncio.run(go())
    finally:
        disk.go.set()
        pool.shutdown(wait=True)
