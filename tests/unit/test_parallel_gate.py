"""Issue 10: the suite runs its tests side by side under pytest-xdist, and a test marked `alone` never has
another beside it (tests/gate.py). Checked on a real nested run with two workers: each test writes when
it started and ended, and the intervals are compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

_CONFTEST = "from tests.gate import pytest_configure, pytest_runtest_protocol, pytest_unconfigure  # noqa: F401\n"

_RECORD = '''
import json, os, pathlib, time

def record(name, seconds):
    start = time.monotonic()
    time.sleep(seconds)
    line = json.dumps({"name": name, "start": start, "end": time.monotonic()})
    with open(pathlib.Path(os.environ["GATE_TEST_OUT"]), "a") as f:
        f.write(line + "\\n")
'''

_ALONE = '''
import pytest
from record import record

@pytest.mark.alone
def test_alone():
    record("alone", 1.5)
'''

_BESIDE = '''
import pytest
from record import record

@pytest.mark.parametrize("i", range(8))
def test_beside(i):
    record(f"beside{i}", 0.5)
'''


_ALONE_SEVERAL = '''
import pytest
from record import record

pytestmark = pytest.mark.alone

@pytest.mark.parametrize("i", range(3))
def test_alone(i):
    record(f"alone{i}", 0.6)
'''


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _run(tmp_path: Path, alone: str, dist: str, passed: int) -> list[dict[str, float]]:
    """A nested pytest run with two workers over an alone file and eight short tests; their intervals."""
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    (tmp_path / "record.py").write_text(_RECORD)
    (tmp_path / "test_alone.py").write_text(alone)
    (tmp_path / "test_beside.py").write_text(_BESIDE)
    out = tmp_path / "intervals.jsonl"
    env = {**os.environ, "GATE_TEST_OUT": str(out), "PYTHONPATH": os.pathsep.join((str(ROOT), str(tmp_path)))}
    env.pop("STANDBY_TEST_GATE_DIR", None)  # this run's own gate, not the outer run's
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", dist,
                          "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0 and f"{passed} passed" in res.stdout, res.stdout + res.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_x1_an_alone_test_has_no_other_beside_it_and_the_rest_run_side_by_side(tmp_path: Path) -> None:
    runs = _run(tmp_path, _ALONE, "load", 9)
    (alone,) = [r for r in runs if r["name"] == "alone"]
    beside = [r for r in runs if r["name"] != "alone"]
    assert len(beside) == 8
    assert not [r["name"] for r in beside if _overlap(r, alone)], runs
    # The others did run two at a time: the gate holds back only beside an alone test.
    assert any(_overlap(a, b) for i, a in enumerate(beside) for b in beside[i + 1:]), runs


def test_x1_alone_tests_in_a_row_on_one_worker_keep_the_room_between_them(tmp_path: Path) -> None:
    """CI run 24's wall time (20.5 min) had each of the systemd file's six alone tests wait for whatever test
    the other worker had started in the gap after the one before (a lab test: up to a minute) while this
    worker idled. A worker whose next test is alone too keeps the room: nothing starts between them."""
    runs = _run(tmp_path, _ALONE_SEVERAL, "loadfile", 11)
    alone = sorted((r for r in runs if r["name"].startswith("alone")), key=lambda r: r["start"])
    beside = [r for r in runs if r["name"].startswith("beside")]
    assert len(alone) == 3 and len(beside) == 8
    block = {"start": alone[0]["start"], "end": alone[-1]["end"]}
    assert not [r["name"] for r in beside if _overlap(r, block)], runs
