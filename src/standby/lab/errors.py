"""Exceptions raised by the lab, phrased for the person running it."""

from __future__ import annotations

import subprocess


class LabError(Exception):
    """Any lab failure; the message is meant to be shown as-is."""


class LabExists(LabError):
    pass


class LabMissing(LabError):
    pass


class PrerequisiteMissing(LabError):
    pass


class CommandFailed(LabError, subprocess.CalledProcessError):
    """A command exited non-zero; also a CalledProcessError for callers that expect one."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, argv, stdout, stderr)
        self.argv = argv
        lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
        # Tools often follow the error with context lines; the line naming it is the useful one.
        errors = [ln for ln in lines if "error" in ln.lower()]
        detail = (errors or lines or ["no output"])[0]
        self.message = f"command {' '.join(argv)!r} failed with exit code {returncode}: {detail}"
        Exception.__init__(self, self.message)

    def __str__(self) -> str:
        return self.message
