"""Prometheus for real: the distribution's server on the lab's client network scrapes both agents (HTTPS,
verified against the lab's CA) with etc/prometheus/standby-rules.yml loaded; every Grafana panel's query
returns data, and cutting the standby's links fires "no eligible standby"."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby.lab import Lab, LabError, netns
from standby.lab.pair import start_pair
from tests.packages import need

ROOT = Path(__file__).parents[2]
RULES = ROOT / "etc" / "prometheus" / "standby-rules.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "standby-dashboard.json"
PORT = 9090  # on the client namespace's loopback: no other test's Prometheus can be there
FIRES_WITHIN_S = 90  # the rules' own `for` (15 s, 30 s) plus scrapes and evaluations: only bounds a failing test


class Prometheus:
    def __init__(self, lab: Lab, d: Path) -> None:
        self.ns = lab.netns("client")
        cfg = lab.config()
        targets = [f"{lab.node(n).public.ip}:{cfg.api.port}" for n in ("alpha", "beta")]
        scrape: dict[str, Any] = {"job_name": "standby", "scrape_interval": "1s", "scrape_timeout": "900ms",
                                  "static_configs": [{"targets": targets}]}
        if cfg.tls is not None:
            scrape |= {"scheme": "https", "tls_config": {"ca_file": str(cfg.tls.ca_file)}}
        # JSON is YAML: no YAML library needed to write Prometheus' configuration.
        (d / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)], "scrape_configs": [scrape]}, indent=1))
        self.log = (d / "prometheus.log").open("w")
        binary = need("prometheus", "prometheus")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, binary, f"--config.file={d / 'prometheus.yml'}",
             f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{PORT}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{PORT}/api/v1/{path}?{urllib.parse.urlencode(params)}"

        def get() -> Any:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.loads(r.read())["data"]
            except (urllib.error.URLError, OSError):
                return None

        return netns.call_in(self.ns, get)

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return [] if data is None else list(data["result"])

    def firing(self) -> set[str]:
        data = self.api("alerts")
        return set() if data is None else {a["labels"]["alertname"] for a in data["alerts"] if a["state"] == "firing"}


@pytest.fixture
def prometheus(lab: Lab, tmp_path: Path) -> Iterator[Prometheus]:
    p = Prometheus(lab, tmp_path)
    try:
        yield p
    finally:
        p.stop()
        lab.heal()


def panel_queries() -> list[tuple[str, str]]:
    """Each Grafana panel's expression as Grafana would send it with every pair selected."""
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "15s")
            out.append((p["title"], re.sub(r"\$\{?cluster\}?", ".+", expr)))
    return out


def test_prometheus_scrapes_both_agents_and_alerts_when_no_standby_is_eligible(lab: Lab, prometheus: Prometheus) -> None:
    start_pair(lab)
    lab.wait_for("Prometheus scraping both agents",
                 lambda: len([r for r in prometheus.query('up{job="standby"} == 1')]) == 2, timeout_s=60)
    # Rates need a few scrapes, and a scrape timed out on a busy machine delays one: every panel gets data.
    pending: list[str] = []

    def every_panel_has_data() -> bool:
        pending[:] = [title for title, expr in panel_queries() if "ALERTS" not in expr and not prometheus.query(expr)]
        return not pending

    try:
        lab.wait_for("every Grafana panel with data", every_panel_has_data, timeout_s=45, every_s=1.0)
    except LabError:
        raise AssertionError(f"Grafana panels without data: {pending}") from None
    # Start-up raised some (no agent, no primary yet): a healthy pair resolves them all.
    lab.wait_for("no alert firing on the healthy pair", lambda: prometheus.firing() == set(), timeout_s=30)
    eligible = prometheus.query("standby_eligible * on (instance) group_left (node) standby_info == 1")
    assert {r["metric"]["node"] for r in eligible} == {"beta"}

    # The standby's cables are cut: it can neither stream nor be scraped, and nothing else says it is eligible.
    for net in ("public", "private"):
        lab.link("beta", net, up=False)

    lab.wait_for('the "no eligible standby" alert', lambda: "StandbyNoEligibleStandby" in prometheus.firing(),
                 timeout_s=FIRES_WITHIN_S)
    lab.wait_for("beta's agent named down", lambda: "StandbyAgentDown" in prometheus.firing(), timeout_s=FIRES_WITHIN_S)
    assert "StandbyNoPrimary" not in prometheus.firing()  # alpha still serves (it reaches the tie-breaker)
    alerts = [t for t, e in panel_queries() if "ALERTS" in e]
    assert all(prometheus.query(e) for t, e in panel_queries() if t in alerts), "the alerts panel shows nothing"
