"""bench/agent.py's own input: the heartbeat interval it measures at is one the product would accept."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import agent as bench_agent  # bench/agent.py


def test_the_interval_the_goal_names_is_accepted() -> None:
    assert bench_agent.parse_args(["--heartbeat-ms", "200"]).heartbeat_ms == 200
    assert bench_agent.parse_args([]).heartbeat_ms is None  # the product's default, as configured


@pytest.mark.parametrize(("ms", "names"), [("10", "greater than or equal to 20"), ("300", "failover_timeout_ms")])
def test_an_interval_the_default_timings_refuse_is_refused_with_the_reason(
        ms: str, names: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_agent.parse_args(["--heartbeat-ms", ms])
    err = capsys.readouterr().err
    assert f"--heartbeat-ms {ms}" in err and names in err, err
