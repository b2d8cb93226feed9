"""A cached Debian 12 root that boots with systemd as PID 1, and per-node copies of it.

Built once per package list under CACHE_BASE (debootstrap, then the packages installed with the
host's network before anything boots, no service started), and reused by every run after it. Each
node gets its own copy, removed by whoever made it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

CACHE_BASE = Path("/var/cache/standby-tests")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# debootstrap's own set: enough to boot systemd with a bus and configure links.
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2")
# What the README's deploy steps run on a server (step 3 installs the first two; the rest are the
# tools the agent and those steps call: openssl for the secrets, ping for the tie-breaker, arping).
NODE_PACKAGES = ("postgresql-15", "python3-venv", "openssl", "iputils-ping", "iputils-arping", "procps")
# Forbids any service start while packages are installed into a root that is not running.
_POLICY_RC_D = "#!/bin/sh\nexit 101\n"


class RootUnavailable(Exception):
    """The machine cannot build or boot the root; the message says why (the test skips with it)."""


def cache_path() -> Path:
    digest = hashlib.sha256("\n".join((SUITE, *BOOT_PACKAGES, "--", *NODE_PACKAGES)).encode()).hexdigest()[:12]
    return CACHE_BASE / f"{SUITE}-{digest}"


def _run(argv: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(["nice", "-n", "19", "ionice", "-c3", *argv], stdout=out, stderr=subprocess.STDOUT,
                              check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"})
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RootUnavailable(f"{' '.join(argv[:3])}... exited with {proc.returncode} (log {log}):\n" + "\n".join(tail))


def ensure_root() -> Path:
    """The cached root, built first if missing (several minutes, with the network); raises RootUnavailable."""
    target = cache_path()
    if (target / ".complete").exists():
        return target
    for tool in ("debootstrap", "systemd-nspawn"):
        if not shutil.which(tool):
            raise RootUnavailable(f"{tool} not found (apt-get install debootstrap systemd-container)")
    CACHE_BASE.mkdir(parents=True, exist_ok=True)
    with (CACHE_BASE / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and then find it complete
        if (target / ".complete").exists():
            return target
        work = target.with_name(target.name + ".building")
        shutil.rmtree(work, ignore_errors=True)
        log = CACHE_BASE / f"{target.name}.log"
        log.write_text("")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BOOT_PACKAGES)}", SUITE, str(work), MIRROR], log)
        policy = work / "usr/sbin/policy-rc.d"
        policy.write_text(_POLICY_RC_D)
        policy.chmod(0o755)
        # Not booted: a command in the root with the host's network (nspawn mounts /proc, /dev, resolv.conf).
        inside = ["systemd-nspawn", "-q", "-D", str(work), "--register=no", "--keep-unit", "--resolv-conf=copy-host"]
        _run([*inside, "apt-get", "update", "-q"], log)
        _run([*inside, "apt-get", "install", "-y", "-q", "--no-install-recommends", *NODE_PACKAGES], log)
        _run([*inside, "apt-get", "clean"], log)
        policy.unlink()
        # Each container gets its own identity on first boot.
        (work / "etc/machine-id").write_text("")
        (work / ".complete").write_text(" ".join(NODE_PACKAGES) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
    return target


def copy_root(dest: Path) -> Path:
    """A node's own copy of the cached root at ``dest`` (replaced if present)."""
    src = ensure_root()
    remove_copy(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dest)], check=True)
    return dest


def remove_copy(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
