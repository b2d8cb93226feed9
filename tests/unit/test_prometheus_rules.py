"""The alerting rules (etc/prometheus/standby-rules.yml) and the Grafana dashboard, without a lab:
promtool validates the rules and runs them against recorded series (tests/unit/prometheus/), and every
series they or the dashboard name is one the agent exports."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from standby import config
from standby.agent.node import Agent
from standby.api import Api
from standby.model import DbState, LocalPg, Net, PeerView
from tests.packages import need
from tests.unit.configs import example_with_secrets

ROOT = Path(__file__).parents[2]
RULES = ROOT / "etc" / "prometheus" / "standby-rules.yml"
RULE_TESTS = Path(__file__).parent / "prometheus" / "standby-rules-test.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "standby-dashboard.json"
SERIES = re.compile(r"\b(?:standby|process|python_gc)_[a-z_]+\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("promtool", "prometheus"), *args], check=False, capture_output=True,
                          text=True, timeout=120)


def test_rules_are_valid() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_raise_the_expected_alerts_from_recorded_series() -> None:
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("alert", "old", "new"), [
    ("StandbyNoEligibleStandby", "standby_info{mode=\"hot\"}) == 0", "standby_info{mode=\"hot\"}) > 0"),
    ("StandbyAgentDown", "up{job=\"standby\"} == 0", "up{job=\"standby\"} == 1"),
    ("StandbyDegraded", "standby_role{state=\"primary\"} == 1)", "standby_role{state=\"primary\"} >= 0)"),
])
def test_a_wrong_rule_fails_the_recorded_series(tmp_path: Path, alert: str, old: str, new: str) -> None:
    """The recorded series do check the rules: each of these edits is caught."""
    text = RULES.read_text()
    assert old in text, f"{alert}: expression changed; update this test"
    (tmp_path / "etc" / "prometheus").mkdir(parents=True)
    (tmp_path / "etc" / "prometheus" / RULES.name).write_text(text.replace(old, new))
    tests = tmp_path / "tests" / "unit" / "prometheus"
    tests.mkdir(parents=True)
    (tests / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    r = promtool("test", "rules", str(tests / RULE_TESTS.name))
    assert r.returncode != 0 and alert in r.stdout + r.stderr, r.stdout + r.stderr


def exported_series(tmp_path: Path) -> set[str]:
    """The series names a real (not started) agent exports once it is a standby hearing its primary."""
    raw, _ = example_with_secrets(tmp_path, 18008)
    a = Agent(config.parse(raw), "beta")
    try:
        a.pg = LocalPg(DbState.STANDBY, lsn=1000, streaming=True)
        a.link.peer_view = PeerView(term=1, db=DbState.PRIMARY, services=True, lsn=5000, sync_ok=True,
                                    carrier={n: True for n in Net}, tiebreaker_ok=True)
        a.heard[Net.PRIVATE] = time.monotonic()
        text = generate_latest(Api(a).registry).decode()
    finally:
        for pool in (a.pg_pool, a.svc_pool, a.probe_pool, a.disk_pool, a.state_pool, a.observe_pool):
            pool.shutdown(wait=False)
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_series_the_rules_and_dashboard_name_is_exported(tmp_path: Path) -> None:
    exported = exported_series(tmp_path)
    named = set(SERIES.findall(RULES.read_text())) | set(SERIES.findall(DASHBOARD.read_text()))
    assert {"standby_eligible", "standby_lag_bytes", "standby_info"} <= named
    assert named - exported == set(), f"named but not exported: {sorted(named - exported)}"


def test_every_dashboard_panel_has_a_prometheus_query() -> None:
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["type"] == "prometheus", p["title"]
