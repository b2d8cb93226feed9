"""What an agent keeps: its persisted decision state, its liveness record, its history.

- The state (term, fenced, ...) is written with fsync before the action it
  allows, so a promotion's term is on disk before PostgreSQL accepts writes.
- The liveness record is rewritten in place every decision (without fsync), so
  a restarted agent knows how long nobody decided for this node. It carries
  the kernel's boot id: the monotonic clock starts afresh at every boot, so a
  record from an earlier boot says nothing.
- The history is JSON lines, one per decision or action, newest last. It and
  the directory are for root only (0600, 0700): it names addresses, LSNs and
  operator actions.
- The peer's newest heartbeat boot is written (with fsync) only when it
  changes, so replay protection survives a restart without a write per packet.

It owns: those files in the state directory, and the current state shared by the agent's parts
(StateCell). It may not: decide what the state becomes (standby.decide and standby.operations do),
nor write anything outside the state directory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from standby.decide import PERSISTED, State  # what survives a restart is declared once, next to State
from standby.documents import HISTORY, HistoryRecord

log = logging.getLogger("standby.store")


def _private_dir(path: Path) -> None:
    # Nobody else may list or write it (history, state); others may pass through it, because
    # PostgreSQL, running as its own account, writes its log into a directory of its own in here.
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o066:
        path.chmod(0o711)  # made by an older version, or by hand


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _atomic_write(path: Path, data: bytes, sync: bool) -> None:
    _private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Liveness:
    pid: int
    boot: int
    last_decision: float  # time.monotonic()
    clean: bool  # the agent stopped on purpose (or never acted)
    kernel_boot: str


def _read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@functools.cache
def kernel_boot_id() -> str:
    """The running kernel's boot id: read once, it cannot change while this process lives."""
    return _read_boot_id()


class _Rewritten:
    """A small record rewritten in place at every decision: one write to an open file, where a new file and
    a rename each time were the agent's largest CPU cost at rest (lab profile, 150 ms interval).

    One pwrite of a few hundred bytes at offset 0 is all or nothing when the process dies (it is in the
    page cache then); a host crash changes the kernel's boot id, which voids the record anyway. Each
    record is padded with spaces (JSON ignores them) to the longest the file ever held, so no tail of an
    older, longer one is left behind; the file is never truncated, so it is never empty either.
    """

    MIN_BYTES = 256

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:  # removed meanwhile: a new file
                os.close(self._fd)
                self._fd = None
            if self._fd is None:
                _private_dir(self.path.parent)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._size = max(self.MIN_BYTES, os.fstat(self._fd).st_size)
            self._size = max(self._size, len(data))
            os.pwrite(self._fd, data.ljust(self._size), 0)


def _persisted(state: State) -> dict[str, Any]:
    return {k: getattr(state, k) for k in PERSISTED}


class Store:
    def __init__(self, state_dir: Path, node: str) -> None:
        self.state_path = state_dir / "agent-state.json"
        self.history_path = state_dir / "history.jsonl"
        self.boot_path = state_dir / "boot"
        self.live_path = state_dir / "alive"
        self._live = _Rewritten(self.live_path)
        self.maint_path = state_dir / "maintenance"
        self.peer_boot_path = state_dir / "peer-boot"
        self.node = node
        self.history_lost = 0  # entries not written (disk full, ...)
        self._on_disk: dict[str, Any] | None = None  # the persisted fields this process last read or wrote
        _private_dir(state_dir)

    # -- persisted state ----------------------------------------------------

    def load_state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        return {k: raw[k] for k in PERSISTED if k in raw}

    def restored(self, now: float, services: bool) -> State:
        """What a new agent run starts from: the persisted fields, watching from ``now`` (silence before it
        is no evidence), and the service role as the kernel's addresses say (a stale claim is never re-asserted)."""
        state = State(**self.load_state(), watching_since=now, services=services)
        self._on_disk = _persisted(state)
        return state

    def save_state(self, state: State) -> None:
        data = _persisted(state)
        # Unknown until the write has returned: one that raises after its rename (the directory's fsync)
        # may have landed, and whatever the file now says is written again by the next step.
        self._on_disk = None
        _atomic_write(self.state_path, json.dumps(data, sort_keys=True).encode(), sync=True)
        self._on_disk = data

    def unsaved(self, state: State) -> bool:
        """Do ``state``'s persisted fields differ from what this process last read or wrote? After a write
        that failed nobody knows what the file says: it differs, so the next step's write tries again."""
        return self._on_disk != _persisted(state)

    def next_boot(self) -> int:
        """A counter that grows with every agent start: heartbeats of older runs are replays.

        The peer refuses any boot below the newest it accepted, for good (it persists it), so a
        lost or damaged counter must never start again low: the next boot is above the counter
        file, above the copy in the liveness record, and at least the wall clock in seconds (which
        is above any counter a damaged file could have held, and only matters when both copies are
        gone; the copies cover a clock set back).
        """
        live = self._raw_liveness()
        copies = [_read_int(self.boot_path), live.get("boot") if isinstance(live.get("boot"), int) else None]
        n = max([c + 1 for c in copies if c is not None and c >= 0] + [int(time.time())])
        _atomic_write(self.boot_path, str(n).encode(), sync=True)
        return n

    def peer_boot(self) -> int:
        """The peer's newest heartbeat boot accepted by any earlier run (-1: none recorded)."""
        n = _read_int(self.peer_boot_path)
        return n if n is not None and n >= 0 else -1

    def save_peer_boot(self, boot: int) -> None:
        _atomic_write(self.peer_boot_path, str(boot).encode(), sync=True)

    # -- liveness -------------------------------------------------------------

    def _raw_liveness(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.live_path.read_text())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def read_liveness(self) -> Liveness | None:
        raw = self._raw_liveness()
        try:
            live = Liveness(**{f.name: raw[f.name] for f in fields(Liveness)})
        except (KeyError, TypeError):
            return None
        return live if live.kernel_boot == kernel_boot_id() else None

    def unattended_for(self, now: float) -> float:
        """How long nobody decided for this node: since the last decision of an agent that died without
        saying goodbye (the new agent treats it like a stall); 0 after a clean stop."""
        live = self.read_liveness()
        return max(0.0, now - live.last_decision) if live is not None and not live.clean else 0.0

    def write_liveness(self, boot: int, clean: bool, now: float | None = None) -> None:
        """``now``: the agent's monotonic clock at its last decision (default: this process's)."""
        live = Liveness(os.getpid(), boot, time.monotonic() if now is None else now, clean, kernel_boot_id())
        self._live.write(json.dumps(asdict(live)).encode())

    # -- history ----------------------------------------------------------------

    def entry(self, event: str, **detail: Any) -> dict[str, Any]:
        """A history entry, stamped now (written by ``append``, possibly later and on another thread)."""
        return HISTORY.encode(HistoryRecord.now(self.node, event, detail))

    def append(self, entry: dict[str, Any]) -> None:
        try:
            fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                if os.fstat(fd).st_mode & 0o077:
                    os.fchmod(fd, 0o600)  # written by an older version
                f.write(json.dumps(entry, default=str) + "\n")
        except OSError as e:
            # A full disk must not stop the agent deciding: count what is lost, say so once.
            self.history_lost += 1
            if self.history_lost == 1:
                log.error("cannot write %s (%s): history entries are dropped until it can", self.history_path, e)

    def record(self, event: str, **detail: Any) -> dict[str, Any]:
        entry = self.entry(event, **detail)
        self.append(entry)
        return entry

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.history_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines[-limit:] if limit else lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash
        return out


class StateCell:
    """The agent's current decision state, shared by its parts: replaced whole, never changed in place.

    ``save`` is the one way to change a persisted field: on disk (fsync) first, then in memory, so what a
    change allows never runs ahead of it. It blocks; callers run it off the event loop.
    """

    def __init__(self, store: Store, state: State | None = None) -> None:
        self.store = store
        self.state = state or State()

    def save(self, new: State) -> None:
        self.store.save_state(new)
        self.state = new
