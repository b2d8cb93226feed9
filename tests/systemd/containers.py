"""A Debian root booted with systemd as PID 1 (systemd-nspawn) inside an existing network namespace.

The host runs no systemd, so nothing registers the containers: each is found by the PID of its
systemd, and commands reach it with nsenter (every namespace of that PID: its mounts, host name,
processes and network), as a root shell on that server would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# What a root login on a Debian server would have: nothing of the host's environment leaks in.
SERVER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LANG": "C.UTF-8", "TERM": "dumb"}
# nspawn's exit status when the container asked to be rebooted.
REBOOT_EXIT = 133


class BootFailed(Exception):
    pass


def _ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


class CommandFailed(subprocess.CalledProcessError):
    """A command in a container failed; the message carries its output (a bare exit status explains nothing)."""

    def __init__(self, node: str, argv: list[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(proc.returncode, argv, proc.stdout, proc.stderr)
        self.node = node

    def __str__(self) -> str:
        out = (self.stderr or "").strip() or (self.stdout or "").strip()
        return f"{self.node}: {self.cmd} exited with {self.returncode}: {out[-2000:]}"


@dataclass
class Container:
    name: str  # its host name too
    root: Path
    netns: str  # /run/netns/<netns>: its links and addresses
    log: Path  # the console
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid1: int | None = None

    def boot(self, timeout_s: float = 120) -> None:
        """Start it (again, after a reboot or power-off) and wait until systemd says it is up."""
        if self.proc is not None and self.proc.poll() is None:
            raise BootFailed(f"{self.name} is running already")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "-q", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
                 f"--machine={self.name}", f"--network-namespace-path=/run/netns/{self.netns}",
                 # A server's root may change its own links and addresses (the service IPs).
                 "--capability=CAP_NET_ADMIN", "--console=read-only"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        self.pid1 = None
        while self.pid1 is None:
            if self.proc.poll() is not None:
                raise BootFailed(f"systemd-nspawn for {self.name} exited with {self.proc.returncode}: "
                                 + self.log.read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise BootFailed(f"{self.name}: no systemd under systemd-nspawn (pid {self.proc.pid})")
            self.pid1 = next((pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                              if _ppid(pid) == self.proc.pid and _comm(pid) == "systemd"), None)
            time.sleep(0.1)
        while True:
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BootFailed(f"{self.name} did not finish booting ({state!r}): "
                                 + self.log.read_text(errors="replace")[-2000:])
            time.sleep(0.5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, argv: list[str]) -> list[str]:
        if self.pid1 is None:
            raise BootFailed(f"{self.name} is not booted")
        # In the container's home directory, as a login lands (nsenter's --wd would name the host's).
        return ["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p", "--",
                "/bin/sh", "-c", 'cd "$HOME" && exec "$@"', "sh", *argv]

    def run(self, argv: list[str], check: bool = True, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container, as root in /root; output captured."""
        proc = subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, check=False,
                              env={**SERVER_ENV, **(env or {})})
        if check and proc.returncode != 0:
            raise CommandFailed(self.name, argv, proc)
        return proc

    def shell(self, command: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(["bash", "-c", command], check=check, env=env)

    def wait_exit(self, timeout_s: float = 120) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout_s)
        self.pid1 = None
        return code

    def stop(self) -> None:
        """For clean-up: a clean power-off if it answers, else the power cut."""
        if not self.running:
            return
        try:
            self.run(["systemctl", "poweroff"], check=False, timeout=30)
            self.wait_exit(90)
        except (subprocess.TimeoutExpired, BootFailed):
            if self.pid1 is not None:
                os.kill(self.pid1, signal.SIGKILL)
            assert self.proc is not None
            self.proc.kill()
            self.wait_exit(30)
