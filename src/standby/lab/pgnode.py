"""One PostgreSQL 15 server per lab node, run as the `postgres` OS user inside the node's namespace."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from standby.act.postgres import StopMode
from standby.lab import netns
from standby.lab.errors import LabError, PrerequisiteMissing
from standby.lab.topology import (
    APP_DB,
    APP_ROLE,
    PG_BIN,
    PG_ETC,
    PG_OS_USER,
    PG_PORT,
    PG_SUPERUSER,
    PRIVATE_NET,
    PUBLIC_NET,
    NodeLayout,
)

START_TIMEOUT_S = 60
# Opt-in (the test suite sets it): each agent's state directory on a tmpfs of its own. Test labs side by
# side share one disk, and an agent fsyncs its peer's new boot on its event loop: beside another lab's
# initdb and clone that took 0.67 s, a stall the agent rightly fenced for. A lab never crashes the kernel,
# so the page cache keeps what the agent wrote as surely as the disk would.
STATE_TMPFS_ENV = "STANDBY_LAB_STATE_TMPFS"


def check_prerequisites(bin_dir: Path = PG_BIN) -> None:
    missing = [b for b in ("initdb", "pg_ctl", "postgres", "pg_isready") if not (bin_dir / b).exists()]
    if missing:
        raise PrerequisiteMissing(
            f"PostgreSQL 15 binaries not found in {bin_dir} ({', '.join(missing)}); "
            "install them with: apt-get install postgresql-15"
        )
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise PrerequisiteMissing(
            f"OS user {PG_OS_USER!r} does not exist; install PostgreSQL with: apt-get install postgresql-15"
        ) from None
    if not shutil.which("runuser"):
        raise PrerequisiteMissing("runuser not found; install it with: apt-get install util-linux")


def _chown_postgres(path: Path, mode: int) -> None:
    pw = pwd.getpwnam(PG_OS_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, mode)


# A lab server's dynamic shared memory in files under its data directory (pg_dynshmem), not in the host's
# /dev/shm: a server killed with SIGKILL (a crashed host) cannot remove its segments, and those go with the
# data directory when the lab does.
LAB_DSM_TYPE = "mmap"


def prepare_dirs(node: NodeLayout) -> None:
    """Create the node's directories; pgdata stays empty until initdb or a clone fills it."""
    node.dir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(node.dir, 0o755)
    for path, mode in ((node.pgdata, 0o700), (node.socket_dir, 0o755), (node.log_dir, 0o755)):
        path.mkdir(exist_ok=True)
        # The server itself writes its pgdata, socket and log file.
        _chown_postgres(path, mode)
    node.state_dir.mkdir(mode=0o755, exist_ok=True)
    if os.environ.get(STATE_TMPFS_ENV) == "1" and not os.path.ismount(node.state_dir):
        # Unmounted with the lab (Lab.destroy unmounts everything below its root).
        netns.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs", str(node.state_dir)])


def _as_postgres(node: NodeLayout, argv: list[str]) -> list[str]:
    return netns.in_netns(node.netns, ["runuser", "-u", PG_OS_USER, "--", *argv])


def _initdb_options() -> list[str]:
    return ["-U", PG_SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
            "--locale=C.UTF-8"]


def _cluster(node: NodeLayout) -> list[str]:
    assert node.cluster is not None
    return node.cluster.split("/", 1)


def config_dir(node: NodeLayout) -> Path:
    """Where the node's postgresql.conf and pg_hba.conf are: /etc in the cluster layout."""
    return PG_ETC.joinpath(*_cluster(node)) if node.cluster else node.pgdata


def create_cluster(node: NodeLayout) -> None:
    """The node's postgresql-common cluster, its data, socket and log in the lab's directories.

    Not started at boot (start.conf manual): the node's agent starts it, inside its namespace.
    """
    netns.run(["pg_createcluster", "-u", PG_OS_USER, "-d", str(node.pgdata), "-s", str(node.socket_dir),
               "-l", str(node.log_dir / "postgresql.log"), "-p", str(PG_PORT), "--start-conf", "manual",
               "-o", "listen_addresses=*", "-o", "ssl=off", "-o", f"dynamic_shared_memory_type={LAB_DSM_TYPE}",
               *_cluster(node), "--", *_initdb_options()],
              stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C.UTF-8"})


def drop_cluster(node_cluster: str) -> None:
    """Remove a lab node's cluster (stopping it first) if it exists; for a lab being torn down."""
    version, name = node_cluster.split("/", 1)
    if not (PG_ETC / version / name).exists():
        return
    netns.run(["pg_dropcluster", "--stop", version, name], check=False, stdin=subprocess.DEVNULL)
    # The files go regardless: pg_dropcluster fails on a server the caller already killed, and removes only
    # the files it made, so standby's conf.d/standby.conf would keep the directory (and a later lab drawing
    # the same name would start with these settings).
    shutil.rmtree(PG_ETC / version / name, ignore_errors=True)


def initdb(node: NodeLayout) -> None:
    if node.cluster:
        create_cluster(node)
        return
    netns.run(
        _as_postgres(
            node,
            [
                str(PG_BIN / "initdb"),
                "-D", str(node.pgdata),
                "-U", PG_SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
                # A lab "crash" kills processes, never the kernel: the page cache survives it, so the
                # fsync of a fresh cluster buys nothing here and cost half of initdb's time.
                "--no-sync",
            ],
        )
    )
    # Settings both nodes share (a clone copies this file). The socket
    # directory differs per node, so it is passed at start instead.
    with open(node.pgdata / "postgresql.conf", "a") as f:
        f.write(f"\n# standby lab\nlisten_addresses = '*'\nport = {PG_PORT}\n"
                f"dynamic_shared_memory_type = {LAB_DSM_TYPE}\n")


def _proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return {k: v.strip() for k, v in (ln.split(":", 1) for ln in text.splitlines() if ":" in ln)}


def _lock_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    # A standalone backend writes its pid negated.
    first = first.lstrip("-")
    return int(first) if first.isdigit() else None


def postmaster_pid(node: NodeLayout) -> int | None:
    return _lock_pid(node.pgdata / "postmaster.pid")


def running(node: NodeLayout) -> bool:
    """True when the postmaster named in postmaster.pid is alive."""
    pid = postmaster_pid(node)
    if pid is None:
        return False
    st = _proc_status(pid)
    # A killed postmaster lingers as a zombie until its parent reaps it.
    return st.get("Name") in ("postgres", "postmaster") and not st.get("State", "").startswith("Z")


def _remove_zombie_locks(node: NodeLayout) -> None:
    """Drop lock files naming a dead-but-unreaped server.

    The server treats any pid that still answers kill(pid, 0) as alive, and a
    zombie does, so after a crash it would refuse to start until the zombie is
    reaped, which some init processes do only lazily.
    """
    for lock in (node.pgdata / "postmaster.pid", node.socket_dir / f".s.PGSQL.{PG_PORT}.lock"):
        pid = _lock_pid(lock)
        if pid is not None and _proc_status(pid).get("State", "").startswith("Z"):
            lock.unlink(missing_ok=True)


def start(node: NodeLayout) -> None:
    if running(node):
        return
    if not (node.pgdata / "PG_VERSION").exists():
        raise LabError(f"node {node.name}: {node.pgdata} holds no database cluster yet (clone it first)")
    _remove_zombie_locks(node)
    if node.cluster:
        netns.run(netns.in_netns(node.netns, ["pg_ctlcluster", *_cluster(node), "start"]),
                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return
    opts = f"-c unix_socket_directories='{node.socket_dir}' -c port={PG_PORT}"
    netns.run(
        _as_postgres(
            node,
            [
                str(PG_BIN / "pg_ctl"),
                "-D", str(node.pgdata),
                "-l", str(node.log_dir / "postgresql.log"),
                "-o", opts,
                "-w", "-t", str(START_TIMEOUT_S),
                "start",
            ],
        ),
        # The postmaster must not inherit our pipes: output goes to its log file.
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(node: NodeLayout, mode: StopMode = StopMode.FAST) -> None:
    if not running(node):
        return
    # pg_ctl reads pgdata only; running it from the root namespace is enough.
    if node.cluster:
        netns.run(["pg_ctlcluster", "-m", mode.value, *_cluster(node), "stop"], stdin=subprocess.DEVNULL)
        return
    netns.run(
        ["runuser", "-u", PG_OS_USER, "--", str(PG_BIN / "pg_ctl"), "-D", str(node.pgdata),
         "-m", mode.value, "-w", "-t", str(START_TIMEOUT_S), "stop"]
    )


def connect(node: NodeLayout, dbname: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
    kw.setdefault("connect_timeout", 5)
    return psycopg.connect(
        host=str(node.socket_dir), port=PG_PORT, user=PG_SUPERUSER, dbname=dbname, **kw
    )


def create_app(node: NodeLayout, password: str) -> None:
    """The sample softswitch's role and database, reachable from both networks."""
    with connect(node, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(APP_ROLE), sql.Literal(password))
        )
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(APP_DB), sql.Identifier(APP_ROLE)))
        allow_app(node)
        conn.execute("SELECT pg_reload_conf()")


def allow_app(node: NodeLayout) -> None:
    """The softswitch's clients in the node's pg_hba.conf. A clone copies a plain data directory's file,
    never a cluster's (it is in /etc): each cluster gets them here."""
    with open(config_dir(node) / "pg_hba.conf", "a") as f:
        f.write("\n# standby lab: the sample softswitch's clients\n")
        for net in (PUBLIC_NET, PRIVATE_NET):
            f.write(f"host {APP_DB} {APP_ROLE} {net} scram-sha-256\n")


def release_shared_memory(node: NodeLayout) -> None:
    """Remove the System V segment of a killed server, which would outlive its data directory."""
    try:
        lines = (node.pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return
    if len(lines) < 7 or len(lines[6].split()) != 2:
        return
    shmid = lines[6].split()[1]
    try:
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except FileNotFoundError:
        return
    for row in table:
        cols = row.split()
        # columns: key shmid perms size cpid lpid nattch ...
        if len(cols) > 6 and cols[1] == shmid and cols[6] == "0":
            netns.run(["ipcrm", "-m", shmid], check=False)
