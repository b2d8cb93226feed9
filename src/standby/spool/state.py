"""What the shipper keeps: its durable progress through the spool, and its status for the agent.

Each file has one encoder and one decoder; a decoder takes any bytes and returns the type or raises
``StateError`` (never anything else), so a damaged file is reported, never a crash. The status and
the agent's view of it (``ShipperStatus``, ``SpoolView``) are documents (``standby.documents``):
`standby status` and /metrics read them too.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from standby.config import Config
from standby.documents import ShipperStatus, ShipPhase, ShipProblem, SpoolView

FORMAT_VERSION = 1
# A status older than this means no shipper is updating it (it writes one at least every second).
STALE_AFTER_S = 30.0


class StateError(ValueError):
    """A state file that cannot be read as its type."""


# -- progress (durable: where shipping resumes) -------------------------------------


@dataclass(frozen=True)
class FilePosition:
    """How far one spool file is done (shipped or set aside), and how to know it is still that file."""

    name: str
    dev: int
    ino: int
    offset: int
    lines: int  # lines before the offset (for the line numbers of set-aside lines)
    head_len: int  # the file's first head_len bytes...
    head: str  # ...have this SHA-256: a new file reusing the inode has other ones


@dataclass(frozen=True)
class Progress:
    files: tuple[FilePosition, ...] = ()  # where shipping resumes
    shipped: int = 0  # inserted by this shipper
    duplicates: int = 0  # their key was in the table already
    rejected: int = 0  # set aside: malformed, or refused by the database
    blank: int = 0  # blank lines, skipped
    # How far lines were handled: ahead of ``files`` by the resend window. Lines set aside or blank
    # before it are not set aside or counted again when the window is sent again.
    handled: tuple[FilePosition, ...] = ()


def encode_progress(p: Progress) -> bytes:
    return json.dumps({"version": FORMAT_VERSION, **asdict(p)}, sort_keys=True).encode()


def decode_progress(raw: bytes) -> Progress:
    d = _object(raw)
    try:
        return Progress(files=_positions(d, "files"), shipped=_int(d, "shipped"), duplicates=_int(d, "duplicates"),
                        rejected=_int(d, "rejected"), blank=_int(d, "blank"), handled=_positions(d, "handled"))
    except (TypeError, AttributeError) as e:
        raise StateError(f"malformed progress: {e}") from None


def _positions(d: dict[str, Any], k: str) -> tuple[FilePosition, ...]:
    return tuple(FilePosition(name=_str(f, "name"), dev=_int(f, "dev"), ino=_int(f, "ino"), offset=_int(f, "offset"),
                              lines=_int(f, "lines"), head_len=_int(f, "head_len"), head=_str(f, "head"))
                 for f in _list(d, k))


# -- status (for `standby status` and /metrics) --------------------------------------


def encode_status(s: ShipperStatus) -> bytes:
    return json.dumps({"version": FORMAT_VERSION, **asdict(s)}, sort_keys=True).encode()


def decode_status(raw: bytes) -> ShipperStatus:
    d = _object(raw)
    try:
        return ShipperStatus(
            node=_str(d, "node"), pid=_int(d, "pid"), updated_at=_num(d, "updated_at"),
            phase=ShipPhase(_str(d, "phase")), backlog_bytes=_int(d, "backlog_bytes"),
            backlog_files=_int(d, "backlog_files"), shipped=_int(d, "shipped"), duplicates=_int(d, "duplicates"),
            rejected=_int(d, "rejected"), blank=_int(d, "blank"), rejects_file=_str(d, "rejects_file"),
            server=_opt_str(d, "server"), disk_free_bytes=None if d.get("disk_free_bytes") is None
            else _int(d, "disk_free_bytes"), last_error=_opt_str(d, "last_error"),
            problems=tuple(ShipProblem(_plain_str(p)) for p in _list(d, "problems")))
    except StateError:
        raise
    except (TypeError, AttributeError, ValueError) as e:  # ValueError: an unknown phase or problem
        raise StateError(f"malformed status: {e}"[:300]) from None


def status_view(cfg: Config, node: str, now: float | None = None) -> SpoolView | None:
    """The shipper's status as the agent shows it (None without [spool]); never raises."""
    if cfg.spool is None:
        return None
    path = cfg.spool_status_file(node)
    try:
        st = decode_status(path.read_bytes())
    except FileNotFoundError:
        return SpoolView(running=False, error=f"no status in {path}: is `standby ship` running?", age_s=None, status=None)
    except (OSError, StateError) as e:
        return SpoolView(running=False, error=f"{path}: {e}", age_s=None, status=None)
    age = (time.time() if now is None else now) - st.updated_at
    return SpoolView(running=age <= STALE_AFTER_S, error=None, age_s=round(age, 3), status=st)


def warnings(node: str, view: SpoolView | None) -> list[str]:
    """What `standby status` says about a node's shipper (its agent's view)."""
    if view is None:
        return []
    st = view.status
    if not view.running or st is None:
        why = view.error or f"its status is {view.age_s} s old"
        return [f"{node}: call records are NOT being shipped ({why})"]
    out = []
    if ShipProblem.DISK_LOW in st.problems:
        out.append(f"{node}: the spool's disk is (nearly) full ({st.disk_free_bytes} B free): "
                   "services cannot append call records")
    if ShipProblem.NOT_SAVED in st.problems:
        out.append(f"{node}: the shipper cannot save its progress ({st.last_error}); lines will be sent "
                   "again (counted as duplicates) after a restart")
    if ShipProblem.SPOOL_UNREADABLE in st.problems:
        out.append(f"{node}: the spool cannot be read: {st.last_error}")
    if ShipProblem.NO_PRIMARY in st.problems:
        out.append(f"{node}: {st.backlog_bytes} B of call records wait for a writable primary ({st.last_error})")
    if st.rejected:
        out.append(f"{node}: {st.rejected} spool lines set aside in {st.rejects_file}")
    return out


def metric_families(view: SpoolView | None) -> list[Metric]:
    """/metrics for the shipper (none without [spool])."""
    if view is None:
        return []
    out: list[Metric] = [GaugeMetricFamily("standby_spool_shipper_up", "1 if the shipper updated its status lately",
                                           value=float(view.running))]
    st = view.status
    if st is None:
        return out
    out.append(GaugeMetricFamily("standby_spool_backlog_bytes", "spool bytes not yet shipped or set aside",
                                 value=st.backlog_bytes))
    out.append(GaugeMetricFamily("standby_spool_backlog_files", "spool files with bytes not yet shipped",
                                 value=st.backlog_files))
    records = CounterMetricFamily("standby_spool_records", "spool lines by outcome", labels=["outcome"])
    for outcome, n in (("shipped", st.shipped), ("duplicates", st.duplicates), ("rejected", st.rejected),
                       ("blank", st.blank)):
        records.add_metric([outcome], n)
    out.append(records)
    problems = GaugeMetricFamily("standby_spool_problem", "1 while the shipper has this problem", labels=["problem"])
    for p in ShipProblem:
        problems.add_metric([p.value], 1.0 if p in st.problems else 0.0)
    out.append(problems)
    if st.disk_free_bytes is not None:
        out.append(GaugeMetricFamily("standby_spool_disk_free_bytes", "free space under the spool",
                                     value=st.disk_free_bytes))
    if view.age_s is not None:
        out.append(GaugeMetricFamily("standby_spool_status_age_seconds", "age of the shipper's status",
                                     value=view.age_s))
    return out


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, durably: written, fsynced, renamed, directory fsynced."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view, done = memoryview(data), 0
        while done < len(data):  # os.write may write less than asked
            done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- strict readers -----------------------------------------------------------------


def _object(raw: bytes) -> dict[str, Any]:
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise StateError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise StateError("not a JSON object")
    if d.get("version") != FORMAT_VERSION:
        raise StateError(f"version {d.get('version')!r}, expected {FORMAT_VERSION}")
    return d


def _int(d: dict[str, Any], k: str) -> int:
    v = d.get(k)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise StateError(f"{k}: expected a whole number >= 0, got {v!r}"[:200])
    return v


def _num(d: dict[str, Any], k: str) -> float:
    v = d.get(k)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (float("inf"), float("-inf")):
        raise StateError(f"{k}: expected a number, got {v!r}"[:200])
    return float(v)


def _plain_str(v: Any) -> str:
    if not isinstance(v, str):
        raise StateError(f"expected text, got {v!r}"[:200])
    return v


def _str(d: dict[str, Any], k: str) -> str:
    return _plain_str(d.get(k))


def _opt_str(d: dict[str, Any], k: str) -> str | None:
    return None if d.get(k) is None else _str(d, k)


def _list(d: dict[str, Any], k: str) -> list[Any]:
    v = d.get(k)
    if not isinstance(v, list):
        raise StateError(f"{k}: expected a list, got {v!r}"[:200])
    return v
