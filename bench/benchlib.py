"""What every benchmark script shares, so that each keeps only what it measures: a lab's life (built
fresh, torn down on error, Ctrl-C and SIGTERM), names for labs that do not collide with a live run's,
the load generator and the CPU it costs, statistics, the machine's facts, and writing the results."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from standby import __version__
from standby.lab import Lab, LabSpec, netns, pgnode
from standby.lab.checker import Outcome, read_history
from standby.lab.errors import LabError
from standby.lab.topology import ALL_ROLES, LAB_BASE, SERVICE_IP

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STANDBY = str(Path(sys.executable).with_name("standby"))
SERVICE_URL = f"http://{SERVICE_IP.split('/')[0]}:8080"
CLK_TCK = os.sysconf("SC_CLK_TCK")

Log = Callable[[str], None]


class BenchError(Exception):
    """The run cannot go on; the message says what failed."""


# What one run of a series can fail with (the lab, PostgreSQL, a command, a result it could not
# read): recorded with the run, and the series goes on.
RUN_FAILURES: tuple[type[Exception], ...] = (BenchError, LabError, psycopg.Error, OSError, subprocess.SubprocessError,
                                             ValueError, KeyError, TypeError)


# --------------------------------------------------------------------------- results


def begin(kind: str, params: Any, **fields: Any) -> tuple[dict[str, Any], str, Log]:
    """A benchmark's results document (what ran, where, the load at start), its time stamp and its log."""
    from dataclasses import asdict
    from datetime import UTC, datetime

    t_start = time.monotonic()
    started = datetime.now(UTC)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    doc: dict[str, Any] = {
        "benchmark": kind, "started_utc": started.isoformat(timespec="seconds"), "standby": __version__,
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()),
                    "other_labs_at_start": other_labs()},
        "parameters": asdict(params), "complete": False, **fields,
    }
    return doc, started.strftime("%Y%m%dT%H%M%SZ"), log


def end(kind: str, doc: dict[str, Any], stamp: str, t_start: float, render: Callable[[dict[str, Any]], str]) -> Path:
    """Close a benchmark's document (time taken, load at the end), write it, print its figures and where."""
    doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
    doc["machine"]["loadavg_at_end"] = list(os.getloadavg())
    path = write_results(kind, doc, stamp)
    print(render(doc))
    print(f"\nwritten to {path} (and {path.with_name(kind + '-latest.json')})")
    return path


def write_results(kind: str, doc: dict[str, Any], stamp: str) -> Path:
    """``results/KIND-STAMP.json`` and ``results/KIND-latest.json``, each replaced atomically
    (an interrupted write keeps the previous run's file)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, default=str) + "\n"
    path = RESULTS_DIR / f"{kind}-{stamp}.json"
    for target in (path, RESULTS_DIR / f"{kind}-latest.json"):
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return path


def calibrate(sleep_s: float, rounds: int = 20, pages: int = 1000) -> dict[str, float]:
    """What this machine charges that hour for work done in short bursts between sleeps (how an agent, a WAL
    sender, any periodic process works), in CPU microseconds of the process itself:

    - ``page_after_sleep_us``: reading one byte in each of ``pages`` 4 kB pages already in use, per page, right
      after a sleep of ``sleep_s``; ``page_warm_us``: the same read again at once. On the virtual machine these
      benchmarks ran on, a page read after a 200 ms sleep cost 20-30 us against 0.1 us warm (after 10 ms: 2 us),
      charged to the process as its own CPU: a periodic process's CPU there is mostly the pages it touches.
    - ``handoff_us``: an event loop handing a no-op to a worker thread and taking the answer, after the sleep.
    """
    import asyncio  # only the calibration needs it
    from concurrent.futures import ThreadPoolExecutor

    buf = bytearray(pages * 4096)
    step = range(0, len(buf), 4096)

    def read() -> int:
        return sum(buf[i] for i in step)

    read()
    cold = warm = 0.0
    for _ in range(rounds):
        time.sleep(sleep_s)
        c0 = time.process_time()
        read()
        c1 = time.process_time()
        read()
        cold, warm = cold + c1 - c0, warm + time.process_time() - c1
    pool = ThreadPoolExecutor(1)

    async def handoffs() -> float:
        loop, spent = asyncio.get_running_loop(), 0.0
        for _ in range(rounds):
            await asyncio.sleep(sleep_s)
            c0 = time.process_time()
            await loop.run_in_executor(pool, int)
            spent += time.process_time() - c0
        return spent

    try:
        handoff = asyncio.run(handoffs())
    finally:
        pool.shutdown()
    per_page = 1e6 / (rounds * pages)
    return {"sleep_s": sleep_s, "page_after_sleep_us": round(cold * per_page, 2),
            "page_warm_us": round(warm * per_page, 3), "handoff_us": round(1e6 * handoff / rounds)}


def calibration_line(doc: dict[str, Any], after_what: str) -> str:
    """The document's ``calibration`` (before and after, from ``calibrate``) in one line, for a renderer."""
    return (f"calibration, CPU us after a sleep of {after_what} (benchlib.calibrate): a page read / warm / a thread "
            "hand-off: " + ", ".join(f"{k} {c['page_after_sleep_us']} / {c['page_warm_us']} / {c['handoff_us']}"
                                     for k, c in doc.get("calibration", {}).items()))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank: always a value that was observed (with 5 runs, p95 is the maximum)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": percentile(values, 0.50), "p95": percentile(values, 0.95),
            "p99": percentile(values, 0.99), "max": max(values) if values else None}


# --------------------------------------------------------------------------- a lab's life


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the lab is torn down either way."""

    def handler(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def fresh_lab(spec: LabSpec, log: Log | None = None) -> Iterator[Lab]:
    """A new lab for the ``with`` block, torn down after it whatever happened (Lab.up removes what
    it built if it fails itself)."""
    if log:
        log(f"lab {spec.name} up")
    lab = Lab.up(spec)
    try:
        yield lab
    finally:
        # A second Ctrl-C or a SIGTERM must not cut the teardown short and leave servers behind.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if log:
                log(f"lab {spec.name} down")
            # Agents first: a live agent restarts the PostgreSQL that the teardown stops (its crash
            # recovery), and the teardown's pg_ctl then waits a full minute for a server that is back.
            for node in ("alpha", "beta"):
                try:
                    lab.stop_agent(node)
                except (LabError, OSError):
                    pass
            lab.down()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)


def run_on_one_lab(kind: str, params: Any, prefix: str, body: Callable[[Lab, dict[str, Any], Log, Callable[[], None]], None],
                   render: Callable[[dict[str, Any]], str]) -> int:
    """A one-lab benchmark's frame: its document (phases filled by ``body``, which may save what it has so
    far with its last argument), a fresh lab named PREFIXn torn down whatever happens, Ctrl-C or SIGTERM
    ending it with what was measured so far (exit 130)."""
    t_start = time.monotonic()
    doc, stamp, log = begin(kind, params, phases={})

    def save() -> None:
        write_results(kind, doc, stamp)

    code = 0
    name = LabNames(prefix).next()
    doc["lab"] = name
    with sigterm_as_interrupt():
        try:
            with fresh_lab(LabSpec(name)) as lab:
                log(f"{name}: pair up")
                body(lab, doc, log, save)
                doc["complete"] = True
        except KeyboardInterrupt:
            log("interrupted; results so far are written")
            code = 130
    end(kind, doc, stamp, t_start, render)
    return code


def _netns_names() -> list[str]:
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [ln.split()[0] for ln in res.stdout.splitlines() if ln.strip()]


def other_labs(besides: str = "") -> list[str]:
    """Labs on this machine (by their namespaces): they compete for the same cores."""
    return sorted({ns.rsplit("-", 1)[0] for ns in _netns_names()} - {besides})


def _owner_alive(name: str) -> bool:
    """Whether the process that built a lab of this name is still running (another bench run)."""
    try:
        pid = int(json.loads((LAB_BASE / name / "lab.json").read_text())["owner_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return pid != os.getpid() and Path(f"/proc/{pid}").exists()


def _exists(name: str) -> bool:
    return (LAB_BASE / name).exists() or any(netns.exists(f"{name}-{r}") for r in ("sw", "alpha", "beta", "client"))


class LabNames:
    """PREFIX1, PREFIX2, ...: a leftover of a killed run is removed; a live run's lab is skipped."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0

    def next(self) -> str:
        while True:
            self.n += 1
            name = f"{self.prefix}{self.n}"
            if not _exists(name):
                return name
            if not _owner_alive(name):
                Lab.destroy(name)
                return name


# --------------------------------------------------------------------------- the load and what it costs
#
# The lab shares the machine's cores with whatever else runs there (other labs, test suites).
# Each run records how much CPU went to this lab and how much to everything else, so a figure
# taken on a busy machine can be recognised as such.


@dataclass(frozen=True)
class CpuMark:
    wall: float
    busy_s: float  # the whole machine, steal excluded
    steal_s: float  # taken by the hypervisor for other guests
    lab_s: dict[int, float]  # per process in this lab's namespaces
    own_s: float  # this script and the children it has waited for (the load generator)


def _host_cpu_s() -> tuple[float, float]:
    # /proc/stat "cpu": user nice system idle iowait irq softirq steal (guest time is inside user)
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK


def process_cpu_s(pid: int) -> float | None:
    try:
        # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_mark(lab: Lab) -> CpuMark:
    lab_s: dict[int, float] = {}
    for role in ALL_ROLES:
        for pid in netns.pids(lab.netns(role)):
            if (t := process_cpu_s(pid)) is not None:
                lab_s[pid] = t
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, steal = _host_cpu_s()
    own = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    return CpuMark(time.monotonic(), busy, steal, lab_s, own)


def cpu_between(a: CpuMark, b: CpuMark) -> dict[str, float]:
    """Average cores busy between two marks: this lab's, everything else's, and steal."""
    wall = b.wall - a.wall
    # A process that exited in between takes its time with it: "other" is an upper bound.
    lab = sum(t - a.lab_s.get(pid, 0.0) for pid, t in b.lab_s.items()) + (b.own_s - a.own_s)
    busy = b.busy_s - a.busy_s
    return {"wall_s": wall, "busy_cores": busy / wall, "lab_cores": lab / wall,
            "other_cores": max(0.0, busy - lab) / wall, "steal_cores": (b.steal_s - a.steal_s) / wall}


def run_load(lab: Lab, workdir: Path, label: str, load_args: Sequence[str]) -> dict[str, Any]:
    """One `standby lab load` from the client namespace; returns its summary plus CPU use."""
    out = workdir / f"{label}.jsonl"
    before = cpu_mark(lab)
    res = lab.run("client", [STANDBY, "lab", "load", "--url", SERVICE_URL, *load_args, "--out", str(out)],
                  check=False)
    after = cpu_mark(lab)
    summary = out.with_name(out.name + ".summary.json")
    if res.returncode != 0 or not summary.exists():
        raise BenchError(f"load {label!r} failed (exit {res.returncode}): {res.stderr.strip()}")
    doc: dict[str, Any] = json.loads(summary.read_text())
    doc["cpu"] = cpu_between(before, after)
    return doc


def load_figures(s: dict[str, Any]) -> dict[str, Any]:
    """The parts of a load summary worth keeping, in ms where it is a latency."""

    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1000

    return {
        "calls_per_s": s["ack_per_s"],
        "attempts": s["attempts"], "ack": s["ack"], "failed": s["failed"], "indeterminate": s["indeterminate"],
        "skipped_slots": s["skipped_slots"],
        "elapsed_s": s["t_end"] - s["t_start"],
        "call_latency_ms": {"p50": ms(s["ack_latency_p50_s"]), "p99": ms(s["ack_latency_p99_s"])},
        "cpu": s["cpu"],
    }  # fmt: skip


# --------------------------------------------------------------------------- the machine

# Recorded alongside the figures: they decide what a commit waits for and how much WAL it writes.
PG_SETTINGS = ("synchronous_commit", "fsync", "wal_sync_method", "full_page_writes", "wal_level",
               "shared_buffers", "max_wal_size", "wal_writer_delay", "wal_receiver_status_interval")


def softswitch_pool_size(lab: Lab) -> int:
    """Database connections the service uses: it bounds how many commits can wait at once."""
    argv = next(s.start for s in lab.config().services if s.name == "softswitch")
    if "--pool-size" in argv:
        return int(argv[argv.index("--pool-size") + 1])
    from standby.cli.lab_workload import start_cmd

    default = next(p.default for p in start_cmd.params if p.name == "pool_size")
    assert isinstance(default, int)
    return default


def machine_facts(lab: Lab, name: str) -> dict[str, Any]:
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), platform.processor() or None)
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(lab.root)],
                            capture_output=True, text=True, check=False).stdout.strip() or None
    with lab.pg_connect("alpha", autocommit=True) as conn:
        version = _show(conn, "server_version")
        settings = {k: _show(conn, k) for k in PG_SETTINGS}
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_mb": mem_kb // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "standby": __version__,
        "postgresql": version,
        "postgresql_settings": settings,
        "softswitch_pool_size": softswitch_pool_size(lab),
        "lab_filesystem": fstype,
        "loadavg_at_start": list(os.getloadavg()),
        # Other labs on the machine compete for the same cores and make the figures lower.
        "other_labs_running": other_labs(besides=name),
    }


def _show(conn: Any, setting: str) -> str:
    row = conn.execute(f"SHOW {setting}").fetchone()
    return str(row[0]) if row else ""


# --------------------------------------------------------------------------- what one server costs
#
# One PostgreSQL server's CPU, apart from everything else the lab runs beside it in its namespace
# (softswitch, agent), read two ways:
# - a cgroup v2 of its own (cpu.stat usage_usec): every process moved in, and every backend the
#   postmaster forks afterwards, counted to the microsecond, exited backends included; needs a
#   writable cgroup2 mount (no controller has to be enabled: cpu.stat is always there);
# - its process tree in /proc: the postmaster's own time plus what it reaped (cutime/cstime: the
#   backends that exited, each with what it reaped) plus its live children's; every PostgreSQL
#   process is the postmaster's child. Clock ticks (10 ms each), so coarser.


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat a process tree's CPU needs; times in clock ticks."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int  # children waited for, with what they had waited for
    cstime: int

    @property
    def with_reaped(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


def parse_proc_stat(text: str) -> ProcStat:
    """One /proc/PID/stat line. The command name may hold spaces and parentheses: split at the last ')'."""
    head, rest = text.rsplit(")", 1)
    f = rest.split()  # state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    return ProcStat(int(head.split("(", 1)[0]), int(f[1]), int(f[11]), int(f[12]), int(f[13]), int(f[14]))


def tree_ticks(root: int, stats: Iterable[ProcStat]) -> int | None:
    """CPU ticks of ``root`` and its children, live or exited (None: ``root`` is not among ``stats``)."""
    by_pid = {s.pid: s for s in stats}
    if root not in by_pid:
        return None
    return by_pid[root].with_reaped + sum(s.with_reaped for s in by_pid.values() if s.ppid == root)


def parse_cpu_stat(text: str) -> dict[str, int]:
    """A cgroup v2 cpu.stat: ``key value`` per line."""
    return {k: int(v) for k, v in (ln.split() for ln in text.splitlines() if ln.strip())}


@dataclass(frozen=True)
class LinkBytes:
    rx: int
    tx: int


def parse_net_dev(text: str) -> dict[str, LinkBytes]:
    """/proc/net/dev (of one namespace): bytes each interface received and sent, loopback left out."""
    out: dict[str, LinkBytes] = {}
    for line in text.splitlines()[2:]:  # two header lines
        name, _, counters = line.partition(":")
        f = counters.split()
        if name.strip() and name.strip() != "lo" and len(f) >= 9:
            out[name.strip()] = LinkBytes(int(f[0]), int(f[8]))  # 8 receive columns, then transmit
    return out


def tx_between(a: dict[str, LinkBytes], b: dict[str, LinkBytes]) -> int:
    """Bytes sent between two readings on the interfaces present in both."""
    return sum(b[d].tx - a[d].tx for d in a.keys() & b.keys())


def per_call(total: float | None, calls: int) -> float | None:
    return None if total is None or calls <= 0 else total / calls


def ratio(value: float | None, base: float | None) -> float | None:
    """``value`` over ``base`` (e.g. sync's CPU per call over no standby's); None when either is unknown."""
    return None if value is None or not base else value / base


def _cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] == "cgroup2":
            return Path(f[1])
    return None


class ServerCgroup:
    """A cgroup v2 of one server's processes, for its CPU time (a ``with`` block). On exit the processes
    still in it go back to the root cgroup and the directory is removed."""

    def __init__(self, name: str) -> None:
        root = _cgroup2_root()
        if root is None:
            raise OSError("no cgroup2 file system is mounted")
        self.root = root
        self.path = root / "standby-bench" / name

    def __enter__(self) -> ServerCgroup:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def attach(self, pids: Iterable[int]) -> None:
        for pid in pids:
            try:
                (self.path / "cgroup.procs").write_text(f"{pid}\n")
            except ProcessLookupError:
                continue  # exited meanwhile

    def usage_s(self) -> float:
        return parse_cpu_stat((self.path / "cpu.stat").read_text())["usage_usec"] / 1e6

    def __exit__(self, *exc: object) -> None:
        for _ in range(3):  # a backend forked while moving the others out lands in this cgroup too
            left = [p for p in (self.path / "cgroup.procs").read_text().split() if p]
            for pid in left:
                try:
                    (self.root / "cgroup.procs").write_text(f"{pid}\n")
                except OSError:
                    pass
            try:
                self.path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        try:
            self.path.parent.rmdir()  # only if no other run's cgroup is in it
        except OSError:
            pass


def open_server_cgroup(name: str, log: Log | None = None) -> ServerCgroup | None:
    """A ServerCgroup, or None (said in the log) where this machine does not let us make one."""
    try:
        cg = ServerCgroup(name).__enter__()
        cg.usage_s()
        return cg
    except (OSError, KeyError, ValueError) as e:
        if log:
            log(f"no cgroup v2 for {name} ({e}); CPU from the process tree only")
        return None


def _all_stats() -> list[ProcStat]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out.append(parse_proc_stat((d / "stat").read_text()))
            except (OSError, ValueError, IndexError):
                continue  # exited while listing
    return out


def postmaster_pid(lab: Lab, node: str) -> int | None:
    return pgnode.postmaster_pid(lab.node(node))


def server_pids(root: int, stats: Iterable[ProcStat]) -> list[int]:
    return [s.pid for s in stats if s.pid == root or s.ppid == root]


# The titles PostgreSQL gives its own processes ("postgres: [CLUSTER: ]walwriter"); anything else under
# the postmaster is a client's backend ("postgres: USER DB HOST(PORT) STATE").
SERVER_PROCESSES = ("walsender", "walwriter", "checkpointer", "background writer", "autovacuum launcher",
                    "autovacuum worker", "logical replication launcher", "archiver", "walreceiver", "startup")


def process_kind(title: str) -> str:
    """A server child's kind from its title: one of SERVER_PROCESSES (spaces as '_') or 'backend'."""
    body = title.replace("\0", " ").strip().removeprefix("postgres:").strip()
    first = body.split(" ", 1)[0]
    if first.endswith(":"):  # cluster_name is set: "postgres: 15/main: checkpointer"
        body = body.split(" ", 1)[1] if " " in body else ""
    for kind in SERVER_PROCESSES:
        if body == kind or body.startswith(kind + " "):
            return kind.replace(" ", "_")
    return "backend"


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class ServerMark:
    postmaster: int | None
    tree_s: float | None
    cgroup_s: float | None
    wall: float
    # Per live child: its kind and own CPU ticks; the postmaster's own and its reaped children's ticks.
    children: dict[int, tuple[str, int]] = field(default_factory=dict)
    own_ticks: int = 0
    reaped_ticks: int = 0


def server_children(root: int, stats: Iterable[ProcStat]) -> tuple[dict[int, tuple[str, int]], int, int]:
    by_pid = {s.pid: s for s in stats}
    if root not in by_pid:
        return {}, 0, 0
    top = by_pid[root]
    kids = {s.pid: (process_kind(_title(s.pid)), s.utime + s.stime) for s in by_pid.values() if s.ppid == root}
    return kids, top.utime + top.stime, top.cutime + top.cstime


def cpu_by_process(a: ServerMark, b: ServerMark) -> dict[str, float] | None:
    """CPU seconds between two marks per kind of server process ('postmaster'; 'exited': children that
    ended in between, whatever they were). None when the server restarted in between."""
    if a.postmaster is None or a.postmaster != b.postmaster:
        return None
    out: dict[str, float] = {"postmaster": (b.own_ticks - a.own_ticks) / CLK_TCK}
    gone = 0
    for pid, (kind, ticks) in b.children.items():
        before = a.children.get(pid)
        used = ticks - before[1] if before is not None and before[0] == kind else ticks
        out[kind] = out.get(kind, 0.0) + used / CLK_TCK
    for pid, (kind, ticks) in a.children.items():
        if pid not in b.children or b.children[pid][0] != kind:  # ended (its pid perhaps taken by another)
            gone += ticks  # counted in the postmaster's reaped ticks from its start, not from the mark
    out["exited"] = (b.reaped_ticks - a.reaped_ticks - gone) / CLK_TCK
    return out


class ServerMeter:
    """CPU of one node's PostgreSQL server; with a cgroup, every mark (re)attaches the server's processes,
    so a server started or restarted after the cgroup was made is counted from its next mark on."""

    def __init__(self, lab: Lab, node: str, cgroup: ServerCgroup | None) -> None:
        self.lab, self.node, self.cgroup = lab, node, cgroup

    def mark(self) -> ServerMark:
        pid, stats = postmaster_pid(self.lab, self.node), _all_stats()
        ticks = None if pid is None else tree_ticks(pid, stats)
        if self.cgroup is not None and pid is not None:
            self.cgroup.attach(server_pids(pid, stats))
        children, own, reaped = ({}, 0, 0) if pid is None else server_children(pid, stats)
        return ServerMark(pid, None if ticks is None else ticks / CLK_TCK,
                          self.cgroup.usage_s() if self.cgroup else None, time.monotonic(), children, own, reaped)


def server_cpu_between(a: ServerMark, b: ServerMark) -> dict[str, Any]:
    """CPU seconds the server used between two marks, both ways; a restart in between makes the tree's
    figure meaningless (``same_postmaster`` False)."""
    same = a.postmaster is not None and a.postmaster == b.postmaster

    def diff(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else y - x

    cg = diff(a.cgroup_s, b.cgroup_s)
    tree = diff(a.tree_s, b.tree_s) if same else None
    return {"source": "cgroup" if cg is not None else "tree", "cpu_s": cg if cg is not None else tree,
            "cgroup_s": cg, "tree_s": tree, "same_postmaster": same, "wall_s": b.wall - a.wall}


def pin_server(lab: Lab, node: str, cpu: int) -> list[int]:
    """Pin a node's running server (postmaster and children, every thread) to one core; backends forked
    later inherit it. Returns the pids pinned."""
    pid = postmaster_pid(lab, node)
    if pid is None:
        raise BenchError(f"{node}'s server is not running: nothing to pin")
    pinned = []
    for p in server_pids(pid, _all_stats()):
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                os.sched_setaffinity(int(task.name), {cpu})
            pinned.append(p)
        except (ProcessLookupError, FileNotFoundError):
            continue
    return pinned


def link_bytes(lab: Lab, role: str) -> dict[str, LinkBytes]:
    """Byte counters of the links inside a namespace (a node's public and private veth ends)."""
    res = lab.run(role, ["cat", "/proc/net/dev"])
    return parse_net_dev(res.stdout)


def wal_lsn(lab: Lab, node: str = "alpha") -> int:
    """The primary's current WAL position, as a byte count."""
    with lab.pg_connect(node, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
    assert row is not None
    return int(row[0])


def history_latency_ms(path: Path) -> dict[str, float | int | None]:
    """Per-call latency (send to answer) of the acknowledged calls in a load run's history, in ms."""
    lat = [(a.t_done - a.t_send) * 1000 for a in read_history(path) if a.outcome is Outcome.ACK and a.t_done]
    return {**distribution(lat), "mean": sum(lat) / len(lat) if lat else None}
