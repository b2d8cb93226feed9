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


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_x1_an_alone_test_has_no_other_beside_it_and_the_rest_run_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    (tmp_path / "record.py").write_text(_RECORD)
    (tmp_path / "test_alone.py").write_text(_ALONE)
    (tmp_path / "test_beside.py").write_text(_BESIDE)
    out = tmp_path / "intervals.jsonl"
    env = {**os.environ, "GATE_TEST_OUT": str(out), "PYTHONPATH": os.pathsep.join((str(ROOT), str(tmp_path)))}
    env.pop("STANDBY_TEST_GATE_DIR", None)  # this run's own gate, not the outer run's
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "load",
                          "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0 and "9 passed" in res.stdout, res.stdout + res.stderr
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    (alone,) = [r for r in runs if r["name"] == "alone"]
    beside = [r for r in runs if r["name"] != "alone"]
    assert len(beside) == 8
    assert not [r["name"] for r in beside if _overlap(r, alone)], runs
    # The others did run two at a time: the gate holds back only beside an alone test.
    assert any(_overlap(a, b) for i, a in enumerate(beside) for b in beside[i + 1:]), runs
