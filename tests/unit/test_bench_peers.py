"""bench/peers/figures.py: the summary of the side-by-side host crashes and the peers' configuration text.

The figures themselves come from the lab (bench/peers/run.py); here only what is computed from them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

FIGURES = Path(__file__).resolve().parents[2] / "bench" / "peers" / "figures.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers_figures", FIGURES)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


fig = _load()


def run(tool: str, first: float | None, lost: int | None = 0, dual: int = 0, error: str | None = None) -> dict[str, Any]:
    return {"tool": tool, "first_ack_s": first, "lost": lost, "dual_samples": dual, "error": error}


def test_peers_ratio_of_medians_is_against_standby() -> None:
    runs = [run("standby", 1.0), run("standby", 1.4), run("standby", 1.2),
            run("keepalived", 4.8), run("keepalived", 4.0), run("keepalived", 6.0)]
    s = fig.summarise(runs, ["standby", "keepalived"])
    assert s["standby"]["first_ack_s"] == {"n": 3, "p50": 1.2, "max": 1.4}
    assert s["keepalived"]["first_ack_s"]["p50"] == 4.8
    assert s["keepalived"]["ratio_of_medians"] == pytest.approx(4.0)
    assert s["standby"]["ratio_of_medians"] == pytest.approx(1.0)


def test_peers_lost_writes_are_counted_per_failover() -> None:
    runs = [run("patroni", 20.0, lost=0), run("patroni", 21.0, lost=3), run("patroni", 22.0, lost=0, dual=2)]
    s = fig.summarise(runs, ["patroni"])["patroni"]
    assert s["lost_total"] == 3
    assert s["lost_per_failover"] == pytest.approx(1.0)
    assert s["lost_max"] == 3
    assert s["dual_samples_total"] == 2


def test_peers_failed_rounds_count_as_errors_not_as_figures() -> None:
    # A round that never got checked says nothing about loss; one whose writes never came back has no
    # first ack but was checked.
    runs = [run("keepalived", 4.0), run("keepalived", None, lost=None, error="timed out"),
            run("keepalived", None, lost=2)]
    s = fig.summarise(runs, ["keepalived"])["keepalived"]
    assert (s["rounds"], s["errors"], s["no_ack"]) == (3, 1, 1)
    assert s["first_ack_s"]["n"] == 1
    assert s["lost_total"] == 2
    assert s["ratio_of_medians"] is None  # no standby rounds to compare with


def test_peers_render_names_every_tool_and_its_version() -> None:
    s = fig.summarise([run("standby", 1.2), run("patroni", 21.0)], ["standby", "patroni"])
    text = fig.render(s, {"standby": "standby 0.1.0", "patroni": "patroni 4.1.5"})
    rows = {ln.split()[0]: ln for ln in text.splitlines()[3:]}
    assert "17.5" in rows["patroni"] and "patroni 4.1.5" in rows["patroni"]
    assert "1.200" in rows["standby"]


def test_peers_patroni_timings_are_its_documented_minimums() -> None:
    assert fig.PatroniTimings().problems() == []
    assert fig.PatroniTimings(ttl=19).problems()
    assert fig.PatroniTimings(retry_timeout=2).problems()
    assert fig.PatroniTimings(loop_wait=0).problems()
    assert fig.PatroniTimings(ttl=20, loop_wait=10, retry_timeout=6).problems()  # 10 + 12 > 20


def test_peers_patroni_conf_is_json_with_sync_mode_and_private_replication() -> None:
    node = fig.PatroniNode("beta", "192.0.2.12", "198.51.100.12", "/d", "/s", "/w")
    doc = json.loads(fig.patroni_conf("pgbench", node, "192.0.2.1:2379", "/bin", 5432, ("rep", "pw"),
                                      fig.PatroniTimings(), ["local all all trust"]))
    dcs = doc["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"], dcs["synchronous_mode"]) == (20, 1, 3, True)
    assert doc["postgresql"]["connect_address"] == "198.51.100.12:5432"
    assert doc["postgresql"]["authentication"]["replication"] == {"username": "rep", "password": "pw"}
    assert doc["bootstrap"]["pg_hba"] == ["local all all trust"]


def test_peers_keepalived_conf_carries_the_service_ip_to_the_peer() -> None:
    text = fig.keepalived_conf(fig.VrrpNode("beta", "192.0.2.12", "192.0.2.11", 100, False), "pub0",
                               "192.0.2.100/24", "/n.sh", 1.0)
    assert "state BACKUP" in text and "priority 100" in text and "advert_int 1\n" in text
    assert "unicast_peer {\n    192.0.2.11\n  }" in text
    assert "192.0.2.100/24 dev pub0" in text and "notify /n.sh" in text
    assert text.count("{") == text.count("}")


def test_peers_promote_script_promotes_only_a_standby_on_master() -> None:
    text = fig.promote_script(["psql", "-Atq"], "/log")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    gate = lines.index('[ "$3" = MASTER ] || exit 0')
    promote = next(i for i, ln in enumerate(lines) if "pg_promote" in ln)
    assert gate < promote
    assert "pg_is_in_recovery()" in text and "synchronous_standby_names = ''" in text


def test_peers_vip_manager_follows_its_own_member_name() -> None:
    text = fig.vip_manager_conf("pgbench", "alpha", "192.0.2.100/24", "pub0", "192.0.2.1:2379", 100)
    assert "trigger-key: /service/pgbench/leader" in text and "trigger-value: alpha" in text
    assert "ip: 192.0.2.100" in text and "netmask: 24" in text
