"""The lab softswitch's health command, run by the agent once a second on the serving node.

Finding: the command went through the lab's CLI and imported the whole lab (aiohttp, psycopg,
pydantic), ~0.5 s of CPU per check: a quarter of this two-core machine in every lab, test and demo.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from standby.lab import configfile
from standby.lab.topology import LabSpec
from tests.unit.loopback import running

HEAVY = ("aiohttp", "psycopg", "pydantic", "click", "standby.lab.lab", "standby.lab.softswitch")


@contextmanager
def serving(status: int) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"ok" if status == 200 else b"no writable database"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with running(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"


def _health_argv() -> list[str]:
    return list(configfile.softswitch_service(LabSpec(name="sbtunit"))["health"])


def test_lab_health_check_imports_nothing_but_the_standard_library() -> None:
    argv = _health_argv()
    assert argv[:3] == [sys.executable, "-m", "standby.lab.health"], argv
    probe = ("import runpy, sys\n"
             "sys.argv = ['health', '-q', 'http://127.0.0.1:9/health']\n"
             "try:\n    runpy.run_module('standby.lab.health', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in {'aiohttp', 'psycopg', 'pydantic', 'click'}"
             " or m in ('standby.lab.lab', 'standby.lab.softswitch')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"the health check imported {out.stdout.strip()}"


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_lab_health_check_exit_code_says_whether_it_answered_200(status: int, code: int) -> None:
    with serving(status) as url:
        argv = [*_health_argv()[:-1], url]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == code, res.stderr


def test_lab_health_check_of_a_closed_port_is_unhealthy_and_bad_usage_says_how() -> None:
    res = subprocess.run([sys.executable, "-m", "standby.lab.health", "http://127.0.0.1:9/health"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and res.stderr.startswith("unhealthy:")
    res = subprocess.run([sys.executable, "-m", "standby.lab.health"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "usage" in res.stderr
    res = subprocess.run([sys.executable, "-m", "standby.lab.health", "--timeout", "x", "u"], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2 and "--timeout" in res.stderr
