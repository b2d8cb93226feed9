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


def test_the_calibration_gives_what_the_renderers_read() -> None:
    import benchlib
    import machine as bench_machine  # bench/machine.py

    c = benchlib.calibrate(0.001, rounds=2, pages=8)
    assert set(c) == {"sleep_s", "page_after_sleep_us", "page_warm_us", "handoff_us"}
    assert c["sleep_s"] == 0.001 and c["page_after_sleep_us"] > 0 and c["page_warm_us"] > 0 and c["handoff_us"] > 0
    doc = {"standby": "x", "machine": {"cores": 2, "loadavg_at_start": [0.0, 0.0, 0.0]}, "figures": [c]}
    assert "1 ms" in bench_machine.render(doc)


def test_the_floor_process_lives_for_the_block_only() -> None:
    with bench_agent.floor_process(0.05) as pid:
        assert Path(f"/proc/{pid}").exists()
        assert bench_agent.cpu_split_s(pid) is not None
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
