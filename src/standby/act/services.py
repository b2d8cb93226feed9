"""The configured services: start, stop and health-check them, never through a shell."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from standby.config import Placement, Service


@dataclass(frozen=True)
class CommandResult:
    service: str
    which: str
    ok: bool
    detail: str


def run(svc: Service, which: str, node: str) -> CommandResult:
    """Run one of a service's commands (start/stop/health); ``ok`` is exit code 0 within its timeout."""
    argv = svc.argv(which, node)
    if argv is None:
        return CommandResult(svc.name, which, True, "no command configured")
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=svc.timeout_s, stdin=subprocess.DEVNULL,
                             check=False)
    except subprocess.TimeoutExpired:
        return CommandResult(svc.name, which, False, f"timed out after {svc.timeout_s:g}s")
    except OSError as e:
        return CommandResult(svc.name, which, False, f"cannot run {argv[0]}: {e.strerror}")
    out = (res.stderr.strip() or res.stdout.strip()).splitlines()
    return CommandResult(svc.name, which, res.returncode == 0,
                         f"exit {res.returncode}" + (f": {out[-1]}" if out else ""))


def start_all(services: list[Service], node: str, placement: Placement | None = None) -> list[CommandResult]:
    """Start the services (of one placement, if given), in order."""
    return [run(s, "start", node) for s in services if placement is None or s.placement is placement]


def stop_all(services: list[Service], node: str, placement: Placement | None = None) -> list[CommandResult]:
    # Stop in reverse order of start, so dependents go first.
    return [run(s, "stop", node) for s in reversed(services) if placement is None or s.placement is placement]


def healthy(services: list[Service], node: str) -> tuple[bool, list[CommandResult]]:
    results = [run(s, "health", node) for s in services if s.health is not None]
    return all(r.ok for r in results), results
