"""Actions on a PostgreSQL server: settings, roles, pg_hba, slots, clone, start/stop.

Each function is idempotent and says whether it changed anything, so bootstrap
(and later the agent) can report "nothing to do" truthfully.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import psycopg
from psycopg import sql

from standby import layout as layout_module
from standby import tls
from standby.config import Config, read_secret
from standby.documents import NODE_FACTS, NodeFacts
from standby.layout import ClusterRef, Layout, LayoutError, settings_of
from standby.observe.postgres import FACTS_SCHEMA, kill_pending, peer_dsn
from standby.topology import SlotSeen, slot_plan, slots_to_release, sync_plan

HBA_BEGIN = "# BEGIN standby (managed; edits inside this block are overwritten)"
HBA_END = "# END standby"
STANDBY_PASSFILE = "standby.pgpass"  # in the data directory: the WAL receiver's password


class PostgresActionError(RuntimeError):
    pass


def run_as(user: str, argv: list[str], env: Mapping[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run argv as the OS user that owns the cluster (never through a shell); the caller reads the return code."""
    full = argv if pwd.getpwuid(os.geteuid()).pw_name == user else ["runuser", "-u", user, "--", *argv]
    return subprocess.run(full, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                          check=False)


# Files in the data directory (and pg_hba.conf) belong to the PostgreSQL account, which can plant
# links there. Root reading or writing through such a link would turn that account into root, so
# these files are read and written by a process running as that account: a planted link then
# reaches only what the account could reach anyway. The write goes to a temporary file renamed
# over the name (a rename replaces a link, it never writes through it). A fixed script: the paths
# and the mode are its arguments, the content comes on stdin.
_WRITE = 'umask 077 && cat > "$1" && chmod "$2" "$1" && sync "$1" && mv -f -T "$1" "$3"'


def _as_user(user: str, argv: list[str], data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    pw = pwd.getpwnam(user)
    same = os.geteuid() == pw.pw_uid
    # LC_ALL=C: a missing file is told apart by the tools' message. The caller reads the return code.
    return subprocess.run(argv, input=data, capture_output=True, timeout=60, cwd="/", check=False,
                          env={**os.environ, "LC_ALL": "C"},
                          user=None if same else pw.pw_uid, group=None if same else pw.pw_gid,
                          extra_groups=None if same else [])


def write_as(user: str, path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` as ``user`` (an existing file keeps its mode)."""
    try:
        st = os.lstat(path)  # never follows: a link's target stays unknown to root
        if stat.S_ISREG(st.st_mode):
            mode = stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.standby-new")
    res = _as_user(user, ["sh", "-c", _WRITE, "sh", str(tmp), f"{mode:o}", str(path)], text.encode())
    if res.returncode != 0:
        why = res.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise PostgresActionError(f"writing {path} as {user} failed: {' '.join(why)} "
                                  f"(the file and its directory must belong to {user})")


def read_as(user: str, path: Path) -> str | None:
    """``path`` as ``user`` reads it, or None if it does not exist."""
    res = _as_user(user, ["cat", "--", str(path)])
    if res.returncode != 0:
        why = res.stderr.decode(errors="replace").strip()
        if "No such file" in why:
            return None
        raise PostgresActionError(f"reading {path} as {user} failed: {why}")
    return res.stdout.decode(errors="replace")


def _read_as(user: str, path: Path) -> str:
    try:
        return read_as(user, path) or ""
    except PostgresActionError:
        return ""


def _bin(cfg: Config, node: str, name: str) -> str:
    return str(cfg.pg(node).bin_dir / name)


class Launcher(StrEnum):
    """What starts the PostgreSQL server, so that it lives outside the agent's own unit.

    Under systemd the agent's unit kills what is left in its cgroup when the agent exits
    (KillMode=mixed): a server started as the agent's child would die with every
    `systemctl restart standby`. A postgresql-common cluster is started the distribution's way
    (its own unit under systemd, pg_ctlcluster without), which also keeps it out of that unit.
    """

    SYSTEMD_RUN = "systemd-run"  # a transient unit of its own; its output goes to the journal
    PG_CTL = "pg_ctl"  # no systemd as PID 1 (the lab, plain containers): a detached server
    CLUSTER_UNIT = "postgresql@"  # a cluster under systemd: the distribution's unit, via systemctl
    PG_CTLCLUSTER = "pg_ctlcluster"  # a cluster without systemd: pg_ctlcluster detaches it


class LaunchWhy(StrEnum):
    SYSTEMD_BOOTED = "systemd is PID 1: a transient unit keeps the server out of the agent's cgroup"
    NO_SYSTEMD = "systemd is not PID 1: pg_ctl detaches the server"
    NO_SYSTEMD_RUN = "systemd is PID 1 but systemd-run is missing: pg_ctl (the server dies with the agent's unit)"
    CLUSTER_SYSTEMD = "a postgresql-common cluster under systemd: its postgresql@ unit"
    CLUSTER_NO_SYSTEMD = "a postgresql-common cluster without systemd: pg_ctlcluster detaches the server"


@dataclass(frozen=True)
class HostFacts:
    systemd_booted: bool  # /run/systemd/system exists (sd_booted(3))
    systemd_run: str | None  # its path, if installed


def host_facts() -> HostFacts:
    return HostFacts(Path("/run/systemd/system").is_dir(), shutil.which("systemd-run"))


def choose_launcher(facts: HostFacts, cluster: bool = False) -> tuple[Launcher, LaunchWhy]:
    if cluster:
        if facts.systemd_booted:
            return Launcher.CLUSTER_UNIT, LaunchWhy.CLUSTER_SYSTEMD
        return Launcher.PG_CTLCLUSTER, LaunchWhy.CLUSTER_NO_SYSTEMD
    if not facts.systemd_booted:
        return Launcher.PG_CTL, LaunchWhy.NO_SYSTEMD
    if facts.systemd_run is None:
        return Launcher.PG_CTL, LaunchWhy.NO_SYSTEMD_RUN
    return Launcher.SYSTEMD_RUN, LaunchWhy.SYSTEMD_BOOTED


def unit_name(node: str) -> str:
    return f"standby-postgresql-{node}.service"


def log_dir(cfg: Config, node: str) -> Path:
    return cfg.state_dir_for(node) / "postgresql-log"


# Without systemd the server's own collector writes the log, one file per hour of the day,
# each truncated when its hour comes round again: at most a day of log, 24 files. PostgreSQL
# cannot bound one file by size (a size rotation into the same name appends) nor delete old
# files, so the bound is in time. Under systemd the journal holds it (journald's own limits).
LOG_FILENAME = "postgresql-%H.log"


def collector_settings(cfg: Config, node: str) -> dict[str, str]:
    return {"logging_collector": "on", "log_directory": str(log_dir(cfg, node)), "log_filename": LOG_FILENAME,
            "log_rotation_age": "60", "log_rotation_size": "0", "log_truncate_on_rotation": "on"}


def log_path(cfg: Config, node: str) -> Path:
    """The server log being written now (without systemd; under systemd: journalctl -u the unit)."""
    cluster = cfg.pg(node).cluster
    if cluster is not None:
        # pg_ctlcluster's log: where the cluster's "log" link points (pg_createcluster -l), else its default.
        custom = ClusterRef.parse(cluster).config_dir(layout_module.ETC_ROOT) / "log"
        if custom.is_symlink():
            return Path(os.readlink(custom))
        return Path("/var/log/postgresql") / f"postgresql-{cluster.replace('/', '-')}.log"
    d = log_dir(cfg, node)
    files = sorted(d.glob("postgresql-*.log"), key=lambda p: p.stat().st_mtime) if d.is_dir() else []
    return files[-1] if files else d / "postgresql-00.log"


def _own_dir(path: Path, user: str) -> None:
    """A directory of ``user`` in a root-owned parent (no link followed: O_NOFOLLOW, then fchown)."""
    path.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        pw = pwd.getpwnam(user)
        os.fchown(fd, pw.pw_uid, pw.pw_gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def layout(cfg: Config, node: str) -> Layout:
    """``node``'s layout on this host; a cluster that is not there is refused before anything changes."""
    try:
        return cfg.layout(node)
    except LayoutError as e:
        raise PostgresActionError(str(e)) from None


def require_layout(cfg: Config, node: str) -> Layout:
    """``layout``, and for a cluster its directories belong to postgres.os_user: checked before a
    command that changes anything (never before a stop: a fence must not wait on it)."""
    lay = layout(cfg, node)
    user = cfg.pg(node).os_user
    for path, key in ((lay.config_dir, "its configuration directory"), (lay.data_dir, "data_directory")):
        try:
            uid = os.lstat(path).st_uid
        except FileNotFoundError:
            continue  # an empty standby's data directory is made by the clone
        if lay.is_cluster and uid != pwd.getpwnam(user).pw_uid:
            raise PostgresActionError(f"{path} ({key} of cluster {lay.cluster}) does not belong to {user} "
                                      f"(postgres.os_user): run `chown -R {user}: {path}`, or set postgres.os_user")
    return lay


def _cluster_args(lay: Layout) -> list[str]:
    assert lay.cluster is not None
    return [lay.cluster.version, lay.cluster.name]


def start_argv(cfg: Config, node: str, launcher: Launcher, timeout_s: int) -> list[str]:
    pg = cfg.pg(node)
    if launcher is Launcher.CLUSTER_UNIT:
        return ["systemctl", "start", layout(cfg, node).cluster.unit]  # type: ignore[union-attr]
    if launcher is Launcher.PG_CTLCLUSTER:
        # The cluster's own log (/var/log/postgresql) and options (pg_ctl.conf): the distribution's way.
        return ["pg_ctlcluster", *_cluster_args(layout(cfg, node)), "start", "--", "-t", str(timeout_s)]
    if launcher is Launcher.SYSTEMD_RUN:
        return ["systemd-run", f"--unit={unit_name(node)}", f"--description=PostgreSQL of standby node {node}",
                "--collect", "--property=Type=notify", f"--property=User={pg.os_user}",
                # A fast shutdown if anyone stops the unit itself; the agent stops it with pg_ctl.
                "--property=KillMode=mixed", "--property=KillSignal=SIGINT", "--property=Restart=no",
                f"--property=TimeoutStartSec={timeout_s}", "--property=TimeoutStopSec=60",
                "--property=LimitNOFILE=65536", "--property=OOMScoreAdjust=-500",
                "--", _bin(cfg, node, "postgres"), "-D", str(pg.data_dir)]
    opts = " ".join(f"-c {k}={shlex.quote(v)}" for k, v in collector_settings(cfg, node).items())
    return [_bin(cfg, node, "pg_ctl"), "-D", str(pg.data_dir), "-o", opts, "-l", str(_startup_log(cfg, node)), "-w",
            "-t", str(timeout_s), "start"]


def _startup_log(cfg: Config, node: str) -> Path:
    # What the server says before its collector runs (a bad setting, a port in use): small.
    return log_dir(cfg, node) / "startup.log"


def start(cfg: Config, node: str, timeout_s: int = 60) -> Launcher:
    pg = cfg.pg(node)
    lay = layout(cfg, node)
    # A postmaster killed a moment ago (a stop escalated to SIGKILL) is a zombie until reaped, and PostgreSQL
    # refuses to start beside a lock file whose PID answers (CI run 60: a switchover's follow, 1.1 s after).
    wait_reaped(pg.data_dir)  # still a zombie after the wait: PostgreSQL's own refusal is the error below
    launcher, _why = choose_launcher(host_facts(), lay.is_cluster)
    if lay.is_cluster:
        # Run as root: pg_ctlcluster switches to the cluster's owner itself (and refuses a wrong one).
        res = subprocess.run(start_argv(cfg, node, launcher, timeout_s), capture_output=True, text=True,
                             timeout=timeout_s + 10, check=False, env={**os.environ, "LC_ALL": "C"})
        if res.returncode != 0:
            raise PostgresActionError(f"starting cluster {lay.cluster} failed: "
                                      f"{(res.stderr.strip() or res.stdout.strip())[-800:]}")
        return launcher
    if launcher is Launcher.SYSTEMD_RUN:
        res = subprocess.run(start_argv(cfg, node, launcher, timeout_s), capture_output=True, text=True,
                             timeout=timeout_s + 10, check=False)
        if res.returncode != 0:
            tail = subprocess.run(["journalctl", "-u", unit_name(node), "-n", "5", "--no-pager", "-o", "cat"],
                                  capture_output=True, text=True, timeout=10, check=False).stdout.strip().splitlines()
            raise PostgresActionError(f"starting {unit_name(node)} failed: {res.stderr.strip()}; "
                                      f"journal: {' | '.join(tail)}")
        return launcher
    cfg.state_dir_for(node).mkdir(parents=True, exist_ok=True)
    _own_dir(log_dir(cfg, node), pg.os_user)
    startup = _startup_log(cfg, node)
    res = run_as(pg.os_user, start_argv(cfg, node, launcher, timeout_s), timeout=timeout_s + 10)
    if res.returncode != 0:
        tail = _read_as(pg.os_user, startup).splitlines()[-5:]
        raise PostgresActionError(f"pg_ctl start failed: {res.stderr.strip() or res.stdout.strip()}; log: {' | '.join(tail)}")
    return launcher


class StopMode(StrEnum):
    """pg_ctl's shutdown modes."""

    SMART = "smart"  # waits for every client to disconnect
    FAST = "fast"  # disconnects clients, writes a shutdown checkpoint
    IMMEDIATE = "immediate"  # no checkpoint: the next start recovers from the WAL


def stop_argv(lay: Layout, facts: HostFacts, mode: StopMode, timeout_s: int) -> list[str]:
    """How a cluster is stopped. Under systemd a fast or smart stop goes through its unit (which
    stops fast); an immediate one cannot, so it bypasses the unit (left failed until the next start)."""
    if lay.cluster is None:
        raise ValueError("stop_argv is for clusters; a plain data directory stops with pg_ctl")
    if facts.systemd_booted and mode is not StopMode.IMMEDIATE:
        return ["systemctl", "stop", lay.cluster.unit]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", "-m", mode.value, *_cluster_args(lay), "stop",
            "--", "-t", str(timeout_s)]


STOP_POLL_S = 0.01


def stop(cfg: Config, node: str, mode: StopMode = StopMode.FAST, timeout_s: int = 60) -> None:
    pg = cfg.pg(node)
    lay = layout(cfg, node)
    if lay.is_cluster:
        res = subprocess.run(stop_argv(lay, host_facts(), mode, timeout_s), capture_output=True, text=True,
                             timeout=timeout_s + 10, check=False, env={**os.environ, "LC_ALL": "C"})
        if res.returncode != 0 and running_pid(lay.data_dir) is not None:
            raise PostgresActionError(f"stopping cluster {lay.cluster} failed: {res.stderr.strip()}")
        return
    # pg_ctl only signals (-W); the wait is ours: pg_ctl -w looks every 100 ms, and a switchover's
    # write pause waits for this stop.
    res = run_as(pg.os_user, [_bin(cfg, node, "pg_ctl"), "-D", str(pg.data_dir), "-m", mode.value, "-W",
                              "stop"], timeout=timeout_s + 10)
    if res.returncode != 0 and "is the server running" not in res.stderr:
        raise PostgresActionError(f"pg_ctl stop failed: {res.stderr.strip()}")
    deadline = time.monotonic() + timeout_s
    while running_pid(pg.data_dir) is not None:
        if time.monotonic() >= deadline:
            raise PostgresActionError(f"PostgreSQL did not stop ({mode.value}) within {timeout_s}s")
        time.sleep(STOP_POLL_S)


def request_fast_stop(cfg: Config, node: str) -> int | None:
    """Ask the local postmaster for a fast shutdown (SIGINT) and return at once; its PID, or None if
    no server runs. From that signal on the server ends every session and takes no new commit.

    No process is spawned and nothing waits: this is the first move of a fence, made before the
    decision is on disk (see standby.act.fence). ``stop`` then waits for the end and escalates.
    """
    pid = running_pid(cfg.pg(node).data_dir)
    if pid is None:
        return None
    try:
        # The file may name a PID that another program has since been given: signal only a postgres.
        if not _is_postgres(pid):
            return None
        os.kill(pid, signal.SIGINT)
    except (ProcessLookupError, FileNotFoundError):
        return None
    return pid


def kill_server(cfg: Config, node: str, timeout_s: float = 10.0) -> None:
    """SIGKILL the postmaster and its children: a power cut for this server, when even an immediate
    shutdown does not finish (its processes are then gone; the next start recovers from the WAL)."""
    pid = running_pid(cfg.pg(node).data_dir)
    if pid is None or not _is_postgres(pid):
        return  # none, or a lock file left naming a PID another program has since been given
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)  # no new child between the look for them and their kill
    children = []
    for proc_stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(proc_stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(proc_stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    for child in children:
        # Each child leads a process group of its own (PostgreSQL's setsid), which holds what it started: an
        # archive_command, a COPY ... PROGRAM. One just forked may not lead it yet: then the child alone.
        try:
            os.killpg(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    # A postmaster waiting on a hung disk (state D: its fast-shutdown signal had it write its lock file) holds
    # the SIGKILL until the disk returns, and then ends without running again: it serves nobody from the
    # moment it has it, and waiting for its end would hold the fence for as long as the disk hangs.
    while (left := running_pid(cfg.pg(node).data_dir)) is not None and not kill_pending(left):
        if time.monotonic() >= deadline:
            raise PostgresActionError(f"the postmaster {pid} survived SIGKILL for {timeout_s:g}s")
        time.sleep(0.05)


def _lock_lines(data_dir: Path) -> list[bytes] | None:
    """postmaster.pid's lines, or None. Not through a link: the file is the PostgreSQL account's, this may
    run as root."""
    try:
        fd = os.open(data_dir / "postmaster.pid", os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read(4096).split(b"\n")
    except OSError:
        return None


def _lock_pid(data_dir: Path) -> int | None:
    lines = _lock_lines(data_dir)
    try:
        return None if lines is None else int(lines[0])
    except ValueError:
        return None


def _zombie(status: str) -> bool:
    """A /proc/PID/status of a process that exited and was not reaped by its parent yet: it holds nothing."""
    return "\nState:\tZ" in status


def running_pid(data_dir: Path) -> int | None:
    """PID of the postmaster using ``data_dir``, if one is alive (one killed that waits on a hung disk to end is:
    its files are not free yet; kill_server counts it as stopped)."""
    pid = _lock_pid(data_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return None
    return None if _zombie(status) else pid


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster")
    except OSError:
        return False


def stopped_by_signal(pid: int) -> bool:
    """Is the process stopped (SIGSTOP, a debugger's hold)? It acts on no signal but SIGKILL and SIGCONT."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


def server_stopping(data_dir: Path) -> bool:
    """Has the postmaster of ``data_dir`` begun to shut down? Its lock file's status line (the 8th) says
    "stopping" from the moment it got the signal; read from the file, so a stuck server cannot hold it up."""
    lines = _lock_lines(data_dir)
    return lines is not None and len(lines) > 7 and lines[7].strip() == b"stopping"


def control_data(cfg: Config, node: str) -> dict[str, str]:
    """pg_controldata of a (stopped) data directory, as a dict of its lines."""
    pg = cfg.pg(node)
    res = run_as(pg.os_user, [_bin(cfg, node, "pg_controldata"), "-D", str(pg.data_dir)], timeout=30)
    if res.returncode != 0:
        raise PostgresActionError(f"pg_controldata failed: {res.stderr.strip()}")
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in res.stdout.splitlines()) if v}


def awaits_wal_from_source(cfg: Config, node: str) -> bool:
    """Whether the stopped data directory was left by pg_rewind or a base backup and not yet started:
    it holds a backup_label and becomes consistent only with WAL from the server it came from, so
    it must start as a standby of that server, never on its own."""
    return (cfg.pg(node).data_dir / "backup_label").exists()


RECOVERY_ERROR_LINES = 4  # of a failed single-user recovery's output, into the error
REAP_WAIT_S = 5.0  # an init that reaps orphans lazily does so about once a second


def wait_reaped(data_dir: Path, timeout_s: float = REAP_WAIT_S) -> bool:
    """Wait, bounded, until the lock file no longer names a zombie; False if one is still there.

    A killed postmaster stays a zombie until its parent reaps it, and PostgreSQL takes any PID that
    answers kill(pid, 0) for the lock file's live owner: a crash recovery started a moment after the
    kill refused with "lock file already exists" (chaos seed 201). The lock file is never removed
    here: its shared-memory key is how PostgreSQL finds backends the dead postmaster left running.
    """
    deadline = time.monotonic() + timeout_s
    while _lock_names_zombie(data_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _lock_names_zombie(data_dir: Path) -> bool:
    pid = _lock_pid(data_dir)
    try:
        return pid is not None and _zombie(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return False


def ensure_clean_shutdown(cfg: Config, node: str) -> bool:
    """Finish crash recovery of a stopped data directory, isolated (single-user mode, no network).

    pg_rewind's dry run and a clean hand-over need a cleanly shut down target;
    a crashed primary is not. Returns True if recovery had to run.
    """
    state = control_data(cfg, node).get("Database cluster state", "")
    if state in ("shut down", "shut down in recovery"):
        return False
    if awaits_wal_from_source(cfg, node):
        # Recovered alone, it would end recovery on its own and write WAL its source never had:
        # the next start as a standby then reads a spliced history (chaos seed 103).
        return False
    pg = cfg.pg(node)
    wait_reaped(pg.data_dir)  # still a zombie after the wait: PostgreSQL's own refusal is the error below
    # A single-user server refuses standby mode, and a rejoin that failed half-way may
    # already have written standby.signal: set it aside for the recovery, then put it back.
    signals = [pg.data_dir / n for n in ("standby.signal", "recovery.signal") if (pg.data_dir / n).exists()]
    for f in signals:
        f.rename(f.with_name(f.name + ".aside"))
    try:
        res = subprocess.run(
            # A cluster's postgresql.conf is in /etc: -D names it there, and it names the data directory.
            ["runuser", "-u", pg.os_user, "--", _bin(cfg, node, "postgres"), "--single", "-F", "-c",
             "exit_on_error=false", "-c", "archive_mode=off", "-D", str(layout(cfg, node).config_dir), "template1"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=3600, check=False)
    finally:
        for f in signals:
            f.with_name(f.name + ".aside").rename(f)
    if res.returncode != 0:
        # The FATAL line and its DETAIL/HINT: the last line alone was once a preloaded library's
        # farewell, which hid why recovery had failed.
        said = " | ".join(line.strip() for line in res.stderr.strip().splitlines()[-RECOVERY_ERROR_LINES:])
        raise PostgresActionError(f"crash recovery of {pg.data_dir} failed (exit {res.returncode}): {said}")
    return True


# -- settings -------------------------------------------------------------

def ensure_settings(conn: psycopg.Connection, wanted: Mapping[str, str], lay: Layout | None = None,
                    os_user: str = "postgres") -> tuple[list[str], list[str]]:
    """ALTER SYSTEM what differs (a cluster: its conf.d file). Returns (changed, needing_restart).

    A value counts as in place only when it is both running and persisted in a
    configuration file: a value given on the command line would be lost at the
    next restart by anyone else.
    """
    if lay is not None and lay.is_cluster:
        return _ensure_cluster_settings(conn, wanted, lay, os_user)
    changed, restart = _differing(conn, wanted)
    for name in changed:
        conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(wanted[name])))
    if changed:
        conn.execute("SELECT pg_reload_conf()")
    return changed, restart


def _differing(conn: psycopg.Connection, wanted: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(names not persisted with the wanted value, names whose running value needs a restart)."""
    changed, restart = [], []
    for name, value in wanted.items():
        row = conn.execute("SELECT setting, context FROM pg_settings WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise PostgresActionError(f"unknown PostgreSQL setting {name!r}")
        persisted = conn.execute("SELECT setting FROM pg_file_settings WHERE name = %s ORDER BY seqno DESC LIMIT 1",
                                 (name,)).fetchone()
        if persisted is None or not _same(persisted[0], value):
            changed.append(name)
        if not _same(row[0], value) and row[1] == "postmaster":
            restart.append(name)
    return changed, restart


def _ensure_cluster_settings(conn: psycopg.Connection, wanted: Mapping[str, str], lay: Layout,
                             os_user: str) -> tuple[list[str], list[str]]:
    changed, restart = _differing(conn, wanted)
    if not changed:
        return changed, restart
    write_settings_file(lay, os_user, {n: wanted[n] for n in changed})
    # ALTER SYSTEM's file is read last: a value left there (a clone brings the primary's) would win.
    in_auto = {r[0] for r in conn.execute("SELECT name FROM pg_file_settings WHERE sourcefile = %s",
                                          (str(lay.auto_conf),))}
    for name in changed:
        if name in in_auto:
            conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
    still, _ = _differing(conn, {n: wanted[n] for n in changed})
    if still:
        raise PostgresActionError(
            f"{lay.settings_file} is written but {', '.join(still)} still come(s) from another file: its "
            f"postgresql.conf ({lay.conf_file}) must keep include_dir = 'conf.d' with nothing after it setting them")
    conn.execute("SELECT pg_reload_conf()")
    return changed, restart


def _setting_line(name: str, value: str) -> str:
    return f"{name} = '{value.replace(chr(39), chr(39) * 2)}'"


def write_settings_file(lay: Layout, os_user: str, settings: Mapping[str, str]) -> None:
    """Merge ``settings`` into the cluster's conf.d file of standby's settings (as the cluster's owner)."""
    current = settings_of(read_as(os_user, lay.settings_file) or "")
    merged = {**current, **settings}
    body = ["# Managed by standby (`standby bootstrap` and rejoin rewrite it); the cluster's own settings",
            "# belong in postgresql.conf or another conf.d file.", *(_setting_line(k, v) for k, v in merged.items())]
    write_as(os_user, lay.settings_file, "\n".join(body) + "\n", 0o644)


def _same(current: str, wanted: str) -> bool:
    # List settings come back quoted from files ('"/run/pg"'); compare the values.
    def norm(v: str) -> str:
        return ",".join(p.strip().strip('"') for p in str(v).split(",")).lower()

    return norm(current) == norm(wanted)


def primary_settings(cfg: Config, node: str, has_checksums: bool) -> dict[str, str]:
    pg = cfg.pg(node)
    wanted = {
        "wal_level": "replica",
        "max_wal_senders": str(pg.max_wal_senders),
        "max_replication_slots": str(max(pg.max_wal_senders, 4)),
        "hot_standby": "on",
        "wal_keep_size": str(pg.wal_keep_size_mb),  # base unit: MB
        # A standby that never comes back must not fill the primary's disk.
        "max_slot_wal_keep_size": str(pg.max_slot_wal_keep_size_mb),
        "port": str(pg.port),
        "unix_socket_directories": str(pg.socket_dir),
        "listen_addresses": "*",
        "password_encryption": "scram-sha-256",
    }
    if cfg.pg(node).cluster is not None:
        # A cluster's port and socket are its postgresql.conf's (pg_ctlcluster and pg_lsclusters read
        # them there); `standby check` says when they differ from the configuration.
        del wanted["port"], wanted["unix_socket_directories"]
    if not has_checksums:
        # pg_rewind needs hint-bit changes in WAL unless pages carry checksums.
        wanted["wal_log_hints"] = "on"
    # Written on the primary too: a clone copies them, and a primary becomes a standby after a failover.
    wanted.update(reporting_settings(cfg))
    wanted.update(tls.server_settings(cfg, node))
    wanted.update({k: _pg_value(v) for k, v in pg.extra_settings.items()})
    return wanted


def reporting_settings(cfg: Config) -> dict[str, str]:
    """The hot-standby settings of [reporting] (nothing without it: PostgreSQL's defaults stay)."""
    rep = cfg.reporting
    if rep is None:
        return {}
    return {
        "hot_standby_feedback": _pg_value(rep.hot_standby_feedback),
        "max_standby_streaming_delay": str(rep.max_standby_streaming_delay_ms),  # base unit: ms
    }


def _pg_value(v: object) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


# -- replication role -----------------------------------------------------

def ensure_replication_role(conn: psycopg.Connection, cfg: Config, node: str) -> list[str]:
    """The replication role with a SCRAM password, allowed to monitor and to set sync names."""
    pg = cfg.pg(node)
    user = pg.replication_user
    password = read_secret(pg.replication_password_file, "postgres.replication_password_file")
    done: list[str] = []
    with conn.cursor() as cur:
        row = cur.execute("SELECT rolreplication, rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s", (user,)).fetchone()
        verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()
        if row is None:
            # The verifier is computed client-side so the clear password never reaches server logs.
            cur.execute(sql.SQL("CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(verifier)))
            done.append(f"created role {user}")
        else:
            if not (row[0] and row[1]):
                cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN REPLICATION").format(sql.Identifier(user)))
                done.append(f"gave role {user} LOGIN REPLICATION")
            if not _scram_matches(row[2], password):
                cur.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(user), sql.Literal(verifier)))
                done.append(f"set {user}'s SCRAM password from {pg.replication_password_file}")
        # What the peer's agent and tools need over this role, and nothing a
        # replication connection could not already read: monitoring, the sync
        # setting, a checkpoint and file access for pg_rewind, and reading rows
        # to compare what an old primary alone had (salvage).
        grants = [
            ("pg_has_role(%s, 'pg_monitor', 'MEMBER')", sql.SQL("GRANT pg_monitor TO {}")),
            ("pg_has_role(%s, 'pg_checkpoint', 'MEMBER')", sql.SQL("GRANT pg_checkpoint TO {}")),
            ("pg_has_role(%s, 'pg_read_all_data', 'MEMBER')", sql.SQL("GRANT pg_read_all_data TO {}")),
            ("has_function_privilege(%s, 'pg_ls_dir(text, boolean, boolean)', 'EXECUTE')",
             sql.SQL("GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean) TO {}")),
            ("has_function_privilege(%s, 'pg_stat_file(text, boolean)', 'EXECUTE')",
             sql.SQL("GRANT EXECUTE ON FUNCTION pg_stat_file(text, boolean) TO {}")),
            ("has_function_privilege(%s, 'pg_read_binary_file(text)', 'EXECUTE')",
             sql.SQL("GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO {}")),
            ("has_function_privilege(%s, 'pg_read_binary_file(text, bigint, bigint, boolean)', 'EXECUTE')",
             sql.SQL("GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean) TO {}")),
            ("has_parameter_privilege(%s, 'synchronous_standby_names', 'ALTER SYSTEM')",
             sql.SQL("GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names TO {}")),
            ("has_function_privilege(%s, 'pg_reload_conf()', 'EXECUTE')",
             sql.SQL("GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {}")),
        ]
        for probe, grant in grants:
            if not cur.execute(f"SELECT {probe}", (user,)).fetchone()[0]:  # type: ignore[index]
                cur.execute(grant.format(sql.Identifier(user)))
                done.append(grant.format(sql.Identifier(user)).as_string(conn))
    return done


def _scram_matches(stored: str | None, password: str) -> bool:
    """Does a stored SCRAM-SHA-256 verifier belong to ``password``?"""
    import base64
    import hashlib
    import hmac

    if not stored or not stored.startswith("SCRAM-SHA-256$"):
        return False
    try:
        _, rest = stored.split("$", 1)
        params, keys = rest.split("$", 1)
        iterations, salt_b64 = params.split(":")
        stored_key_b64, _server_key_b64 = keys.split(":")
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt_b64), int(iterations))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key_b64))
    except (ValueError, TypeError):
        return False


# -- pg_hba.conf ----------------------------------------------------------

def hba_block(cfg: Config, node: str) -> list[str]:
    """Replication (and monitoring) for the replication role, from the peer's private address only; and from
    each follower's private address replication (any of them may stream from either pair node) and the
    server's own database, not the application's: a follower past a fork is rewound from the new primary,
    and pg_rewind reads the primary's files over such a connection (act.rejoin).
    A follower's own block (written when it is rejoined or promoted) lets the other followers stream from it (a
    cascade) and the pair's nodes be rebuilt from it after a DR promotion."""
    pg = cfg.pg(node)
    dbs = dict.fromkeys([pg.database, cfg.salvage.database])  # salvage compares rows in the app's database
    # With [tls], hostssl: a peer connection without TLS matches no line and is refused.
    kind = "hostssl" if cfg.tls else "host"

    def line(db: str, ip: object) -> str:
        return f"{kind:<8}{db:<15} {pg.replication_user:<15} {ip}/32{'':<6} scram-sha-256"

    if node not in cfg.nodes:
        # The pair's nodes too: after a DR promotion they are rebuilt from this follower (standby.rebuild),
        # as a rejoin does it (replication, pg_rewind over its database, salvage comparing rows).
        pair = [rule for n in cfg.nodes.values() for rule in (line("replication", n.private.ip),
                                                               *(line(db, n.private.ip) for db in dbs))]
        return [HBA_BEGIN, *(line("replication", f.private.ip) for f in cfg.followers if f.name != node), *pair,
                HBA_END]
    peer_ip = cfg.nodes[cfg.peer_of(node)].private.ip
    return [
        HBA_BEGIN,
        line("replication", peer_ip),
        *(line(db, peer_ip) for db in dbs),
        *(rule for f in cfg.followers for rule in (line("replication", f.private.ip), line(pg.database, f.private.ip))),
        HBA_END,
    ]


def ensure_hba(conn: psycopg.Connection, cfg: Config, node: str) -> bool:
    """Put the managed block at the top of pg_hba.conf (first match wins). True if changed."""
    path = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
    os_user = cfg.pg(node).os_user
    lines = (read_as(os_user, path) or "").splitlines()
    if HBA_BEGIN in lines and HBA_END in lines:
        b, e = lines.index(HBA_BEGIN), lines.index(HBA_END)
        rest = lines[:b] + lines[e + 1 :]
    else:
        rest = lines
    new = hba_block(cfg, node) + rest
    if new == lines:
        return False
    write_as(os_user, path, "\n".join(new) + "\n")
    # hostssl lines are errors while this session still sees ssl = off: a reload
    # that just turned it on reaches the session a moment later.
    deadline = time.monotonic() + (5 if cfg.tls else 0)
    while True:
        errors = [r[0] for r in conn.execute("SELECT error FROM pg_hba_file_rules WHERE error IS NOT NULL")]
        if not errors or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if errors:
        hint = ""
        if cfg.tls and conn.execute("SHOW ssl").fetchone()[0] != "on":  # type: ignore[index]
            hint = ("; PostgreSQL did not turn ssl on: its log names the certificate or key it could not load "
                    f"(the key must belong to {cfg.pg(node).os_user}, mode 600)")
        raise PostgresActionError(f"{path} has errors after editing: {'; '.join(errors)}{hint}")
    conn.execute("SELECT pg_reload_conf()")
    return True


def set_hba_file(path: Path, cfg: Config, node: str) -> None:
    """Same block, written to a stopped server's file (used on a fresh clone)."""
    os_user = cfg.pg(node).os_user
    lines = (read_as(os_user, path) or "").splitlines()
    if HBA_BEGIN in lines and HBA_END in lines:
        b, e = lines.index(HBA_BEGIN), lines.index(HBA_END)
        lines = lines[:b] + lines[e + 1 :]
    write_as(os_user, path, "\n".join(hba_block(cfg, node) + lines) + "\n")


# -- slots ----------------------------------------------------------------

def ensure_slot(conn: psycopg.Connection, name: str, reserve: bool = True) -> bool:
    """A physical slot ``name``; ``reserve`` False: it pins no WAL until a replica first streams through it."""
    exists = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
    if exists:
        return False
    conn.execute("SELECT pg_create_physical_replication_slot(%s, %s)", (name, reserve))
    return True


def follower_slots(cfg: Config, node: str) -> list[str]:
    """The slots ``node`` keeps for followers (topology.slot_plan without the pair's peer, whose slot is
    reserved and made where it is needed). Kept on either pair node, also in recovery (PostgreSQL allows
    physical slots there): a slot is no WAL, and none is copied by replication, so a standby promoted by
    a failover has them already."""
    peer = cfg.slot_name(cfg.peer_of(node)) if node in cfg.nodes else None
    return [s for s in slot_plan(cfg.topology(), node).slots if s != peer]


def ensure_follower_slots(conn: psycopg.Connection, cfg: Config, node: str) -> list[str]:
    """Create the missing follower slots, unreserved; returns the ones created."""
    return [name for name in follower_slots(cfg, node) if ensure_slot(conn, name, reserve=False)]


def release_follower_slots(conn: psycopg.Connection, cfg: Config, node: str, primary: bool) -> list[str]:
    """Drop and make again, unreserved, the follower slots that pin WAL here for nothing
    (topology.slots_to_release says which and why); returns the ones released. A slot a WAL sender took
    meanwhile refuses the drop: it is left as it is, and looked at again next time."""
    rows = conn.execute("SELECT slot_name, active, restart_lsn IS NOT NULL, coalesce(wal_status = 'lost', false) "
                        "FROM pg_replication_slots WHERE slot_type = 'physical'").fetchall()
    seen = [SlotSeen(str(n), bool(a), bool(r), bool(lost)) for n, a, r, lost in rows]
    released = []
    for name in slots_to_release(cfg.topology(), node, primary, seen):
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        except psycopg.errors.ObjectInUse:
            continue
        ensure_slot(conn, name, reserve=False)
        released.append(name)
    return released


# -- facts table ----------------------------------------------------------

def ensure_facts_table(conn: psycopg.Connection, replication_user: str) -> bool:
    """A tiny replicated table where each node records its versions and capacity.

    Living in the database makes the facts visible on both nodes without
    any extra daemon: the standby reads the primary's row from its replica.
    """
    exists = conn.execute("SELECT to_regclass(%s)", (f"{FACTS_SCHEMA}.node_facts",)).fetchone()[0]  # type: ignore[index]
    if exists:
        return False
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(FACTS_SCHEMA)))
    conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {}.node_facts (
        node text PRIMARY KEY, standby_version text NOT NULL, pg_major int NOT NULL, pg_version text NOT NULL,
        cpus int NOT NULL, memory_bytes bigint NOT NULL, hostname text NOT NULL, updated_at timestamptz NOT NULL)""").format(
        sql.Identifier(FACTS_SCHEMA)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(FACTS_SCHEMA), sql.Identifier(replication_user)))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON {}.node_facts TO {}").format(
        sql.Identifier(FACTS_SCHEMA), sql.Identifier(replication_user)))
    return True


def write_facts(conn: psycopg.Connection, facts: NodeFacts) -> None:
    row = NODE_FACTS.encode(facts)
    cols = list(row)
    conn.execute(
        sql.SQL("INSERT INTO {}.node_facts ({}) VALUES ({}) ON CONFLICT (node) DO UPDATE SET {}").format(
            sql.Identifier(FACTS_SCHEMA),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in cols[1:]),
        ),
        [row[c] for c in cols],
    )


# -- clone ----------------------------------------------------------------

@contextmanager
def passfile(cfg: Config, node: str, peer: str) -> Iterator[Path]:
    """A libpq password file readable only by the cluster's OS user."""
    pg = cfg.pg(node)
    password = read_secret(pg.replication_password_file, "postgres.replication_password_file")
    ppg = cfg.pg(peer)
    d = Path(tempfile.mkdtemp(prefix="standby-pass-"))
    try:
        f = d / "pgpass"
        f.write_text(pgpass_line(str(cfg.link(peer).ip), ppg.port, pg.replication_user, password))
        f.chmod(0o600)
        shutil.chown(d, pg.os_user)
        shutil.chown(f, pg.os_user)
        yield f
    finally:
        shutil.rmtree(d, ignore_errors=True)


def pgpass_line(host: str, port: int, user: str, password: str) -> str:
    esc = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"{host}:{port}:*:{user}:{esc}\n"


def clone(cfg: Config, node: str, peer: str, timeout_s: int = 3600) -> None:
    """pg_basebackup from the peer over the private network, into an empty data dir."""
    pg = cfg.pg(node)
    data = pg.data_dir
    _clone_target(data, pg.os_user)
    with passfile(cfg, node, peer) as pf:
        res = run_as(pg.os_user, [
            _bin(cfg, node, "pg_basebackup"), "-d", peer_dsn(cfg, peer), "-D", str(data), "-X", "stream",
            "-S", cfg.slot_name(node), "--checkpoint=fast", "--no-password",
        ], env={"PGPASSFILE": str(pf), "PGCONNECT_TIMEOUT": "5"}, timeout=timeout_s)
    if res.returncode != 0:
        # Leave nothing half-copied behind: an empty directory is the honest state.
        for child in data.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        raise PostgresActionError(f"pg_basebackup from {peer} failed: {res.stderr.strip()}")


def _clone_target(data: Path, user: str) -> None:
    """An empty data directory of ``user``: made here, or already that account's (never chown a link's target)."""
    data.parent.mkdir(parents=True, exist_ok=True)
    try:
        data.mkdir(mode=0o700)
        made = True
    except FileExistsError:
        made = False
    pw = pwd.getpwnam(user)
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if made:
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
        elif os.fstat(fd).st_uid != pw.pw_uid:
            raise PostgresActionError(f"{data} exists but does not belong to {user}: chown {user}: it, or point "
                                      "postgres.data_dir at a directory of that account")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def standby_conninfo(cfg: Config, node: str, peer: str) -> str:
    """``node``'s primary_conninfo: stream from ``peer``, password from the data directory's passfile."""
    return peer_dsn(cfg, peer, passfile=cfg.pg(node).data_dir / STANDBY_PASSFILE, application_name=node,
                    connect_timeout=2, keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=3)


def configure_as_standby(cfg: Config, node: str, peer: str) -> None:
    """Point a stopped data directory at ``peer`` (the pair's peer, or the primary a follower was rejoined to):
    conninfo, slot, standby.signal, local settings."""
    pg = cfg.pg(node)
    data = pg.data_dir
    password = read_secret(pg.replication_password_file, "postgres.replication_password_file")
    write_as(pg.os_user, data / STANDBY_PASSFILE,
             pgpass_line(str(cfg.link(peer).ip), cfg.pg(peer).port, pg.replication_user, password))
    lay = layout(cfg, node)
    # A clone of a plain primary carries its settings in postgresql.auto.conf; a cluster's live in
    # /etc, which no clone copies: this node must hold them itself to serve as a primary later.
    own = primary_settings(cfg, node, _has_checksums(cfg, node)) if lay.is_cluster else {}
    settings = {
        **own,
        "primary_conninfo": standby_conninfo(cfg, node, peer),
        "primary_slot_name": cfg.slot_name(node),
        **({} if lay.is_cluster else {"port": str(pg.port), "unix_socket_directories": str(pg.socket_dir)}),
        "hot_standby": "on",
        "synchronous_standby_names": "",
        **reporting_settings(cfg),
        # A clone (or a rewind) brings the peer's certificate paths along: serve this node's own.
        **tls.server_settings(cfg, node),
    }
    auto = data / "postgresql.auto.conf"
    text = read_as(pg.os_user, auto)
    # Whatever goes elsewhere is taken out of ALTER SYSTEM's file too, which is read last and would win.
    kept = [ln for ln in text.splitlines() if ln.split("=", 1)[0].strip() not in settings] if text else []
    if lay.is_cluster:
        write_settings_file(lay, pg.os_user, settings)
        write_as(pg.os_user, auto, "".join(f"{ln}\n" for ln in kept))
    else:
        write_as(pg.os_user, auto, "\n".join(kept + [_setting_line(k, v) for k, v in settings.items()]) + "\n")
    write_as(pg.os_user, data / "standby.signal", "")
    for stale in ("postmaster.pid", "postmaster.opts"):
        (data / stale).unlink(missing_ok=True)
    set_hba_file(lay.hba_file, cfg, node)


def _has_checksums(cfg: Config, node: str) -> bool:
    try:
        return control_data(cfg, node).get("Data page checksum version", "0") != "0"
    except PostgresActionError:
        return False  # unknown: wal_log_hints then goes on, which costs little and keeps rewind possible


def wait_streaming(cfg: Config, node: str, timeout_s: float = 30) -> str:
    """Wait until the local standby's WAL receiver streams; returns its status."""
    from standby.observe.postgres import connect_local

    deadline = time.monotonic() + timeout_s
    status = "not started"
    while time.monotonic() < deadline:
        try:
            with connect_local(cfg, node) as conn:
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
                status = row[0] if row else "no WAL receiver"
                if status == "streaming":
                    return status
        except psycopg.OperationalError as e:
            status = str(e).strip().splitlines()[0]
        time.sleep(0.2)
    raise PostgresActionError(f"the standby on {node} is not streaming after {timeout_s:.0f}s (last: {status})")


def set_sync_names(conn: psycopg.Connection, value: str) -> bool:
    current = conn.execute("SHOW synchronous_standby_names").fetchone()[0]  # type: ignore[index]
    if current == value:
        return False
    conn.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(value)))
    conn.execute("SELECT pg_reload_conf()")
    return True


def sync_value(standby_node: str) -> str:
    return f'"{standby_node}"'


def sync_names(cfg: Config, standby_node: str) -> str:
    """synchronous_standby_names while commits wait (sync, not degraded): the hot standby, or the quorum
    replication.quorum asks for (topology.sync_plan; without followers and quorum, sync_value)."""
    return sync_plan(cfg.topology(), standby_node, True, cfg.replication.quorum).value

