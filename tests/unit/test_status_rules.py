"""The rules that turn observations into status and preflight findings."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.documents import PAIR_STATUS
from standby.model import CheckItem, Lsn, PgRole, SyncState, Verdict
from standby.observe.postgres import PgObservation, ReplicaInfo
from standby.observe.system import NodeFacts
from standby.preflight import Seen, evaluate
from standby.status import IpHolders, Observations, assemble

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def status_json(cfg: config.Config, o: Observations) -> dict[str, Any]:
    """`standby status --json`: the document as scripts read it."""
    return PAIR_STATUS.encode(assemble(cfg, o))


@pytest.fixture
def cfg() -> config.Config:
    return config.load(EXAMPLE)


def primary(node: str = "alpha", lsn: int = 5000, sync: SyncState = SyncState.SYNC, lag_s: float | None = 0.002) -> PgObservation:
    rep = ReplicaInfo("beta", "198.51.100.12", "streaming", sync, Lsn(lsn), Lsn(lsn), Lsn(lsn - 100), lag_s)
    return PgObservation(node=node, role=PgRole.PRIMARY, observed_at=NOW, version="15.18", version_num=150018,
                         timeline=1, current_lsn=Lsn(lsn), replicas=(rep,), wal_log_hints=True, data_checksums=False)


def standby(node: str = "beta", replay: int = 4900, receiver: str = "streaming") -> PgObservation:
    return PgObservation(node=node, role=PgRole.STANDBY, observed_at=NOW, version="15.18", version_num=150018,
                         timeline=1, receive_lsn=Lsn(replay), replay_lsn=Lsn(replay), receiver_status=receiver,
                         upstream="198.51.100.11", wal_log_hints=True, data_checksums=False)


def test_lsn_roundtrip_and_difference() -> None:
    a = Lsn.parse("16/B374D848")
    assert a is not None and str(a) == "16/B374D848"
    assert Lsn.parse("16/B374D850") - a == 8  # type: ignore[operator]
    assert Lsn.parse("") is None


def test_healthy_pair(cfg: config.Config) -> None:
    doc = status_json(cfg, Observations("alpha", {"alpha": primary(), "beta": standby()},
                                     (IpHolders("192.0.2.100", ("alpha",), True),)))
    assert doc["primary"] == "alpha"
    assert doc["nodes"]["beta"]["postgres"]["lag_bytes"] == 100
    assert doc["nodes"]["beta"]["postgres"]["sync_state"] == "sync"
    assert doc["nodes"]["alpha"]["service_ips"] == ["192.0.2.100"]
    assert doc["warnings"] == []


def test_two_holders_of_a_service_ip_is_loud(cfg: config.Config) -> None:
    doc = status_json(cfg, Observations("alpha", {"alpha": primary(), "beta": standby()},
                                     (IpHolders("192.0.2.100", ("alpha", "beta"), True),)))
    assert any("192.0.2.100" in w and w.isupper() for w in doc["warnings"])
    assert doc["nodes"]["beta"]["service_ips"] == ["192.0.2.100"]


def test_dual_primary_is_reported(cfg: config.Config) -> None:
    doc = status_json(cfg, Observations("alpha", {"alpha": primary(), "beta": primary("beta")}, ()))
    assert doc["primary"] is None
    assert any(w.startswith("DUAL PRIMARY") for w in doc["warnings"])


def test_sync_configured_but_async_standby_warns(cfg: config.Config) -> None:
    doc = status_json(cfg, Observations("alpha", {"alpha": primary(sync=SyncState.ASYNC), "beta": standby()},
                                     (IpHolders("192.0.2.100", ("alpha",), True),)))
    assert any("not protected" in w for w in doc["warnings"])


def test_standby_not_streaming_warns(cfg: config.Config) -> None:
    doc = status_json(cfg, Observations("beta", {"alpha": primary(), "beta": standby(receiver="waiting")},
                                     (IpHolders("192.0.2.100", ("alpha",), True),)))
    assert any("not streaming" in w for w in doc["warnings"])


def seen(cfg: config.Config, peer_major: int = 15, peer_version: str = "0.1.0", peer_cpus: int = 2,
         reach: bool = True) -> Seen:
    mine = NodeFacts("alpha", "0.1.0", 15, "15.18", 2, 8 << 30, "a", NOW)
    peer_facts = NodeFacts("beta", peer_version, peer_major, "15.18", peer_cpus, 8 << 30, "b", NOW)
    return Seen("alpha", mine, None, peer_facts, {"alpha": primary(), "beta": standby()},
                {"public": reach, "private": reach, "tiebreaker": True})


def verdict(items: list[CheckItem], name: str) -> Verdict:
    (item,) = [i for i in items if i.name == name]
    return item.verdict


def test_preflight_all_good(cfg: config.Config) -> None:
    items = evaluate(cfg, seen(cfg))
    assert all(i.verdict is Verdict.PASS for i in items), [i for i in items if i.verdict is not Verdict.PASS]


def test_preflight_version_mismatch_fails(cfg: config.Config) -> None:
    assert verdict(evaluate(cfg, seen(cfg, peer_version="0.3.0")), "standby version") is Verdict.FAIL


def test_preflight_smaller_standby_warns(cfg: config.Config) -> None:
    assert verdict(evaluate(cfg, seen(cfg, peer_cpus=1)), "capacity") is Verdict.WARN


def test_preflight_unreachable_peer_fails(cfg: config.Config) -> None:
    items = evaluate(cfg, seen(cfg, reach=False))
    assert verdict(items, "public network to beta") is Verdict.FAIL
    assert verdict(items, "private network to beta") is Verdict.FAIL


def test_preflight_shared_interface_warns(cfg: config.Config) -> None:
    data = cfg.model_dump(mode="json")
    data["nodes"]["alpha"]["private"]["interface"] = "eth0"
    c2 = config.parse(data)
    items = [i for i in evaluate(c2, seen(c2)) if i.name == "separate replication interface"]
    assert {i.node: i.verdict for i in items} == {"alpha": Verdict.WARN, "beta": Verdict.PASS}


def test_preflight_names_tls_file_problems(cfg: config.Config) -> None:
    data = cfg.model_dump(mode="json")
    data["tls"] = {"ca_file": "/x/ca.crt", "cert_file": "/x/{node}.crt", "key_file": "/x/{node}.key"}
    c2 = config.parse(data)
    assert not [i for i in evaluate(cfg, seen(cfg)) if i.name == "tls files"]  # no [tls]: nothing to check
    ok = evaluate(c2, seen(c2))
    assert verdict(ok, "tls files") is Verdict.PASS
    s = dataclasses.replace(
        seen(c2), tls_problems=["tls.cert_file: file /x/alpha.crt does not exist; create it (PEM) or fix the path"])
    (item,) = [i for i in evaluate(c2, s) if i.name == "tls files"]
    assert item.verdict is Verdict.FAIL and "tls.cert_file" in item.reason and item.node == "alpha"


def test_home_addresses_show_who_holds_each_and_warn_when_doubled_or_held_by_nobody(cfg: config.Config) -> None:
    sips = (IpHolders("192.0.2.100", ("beta",), True),)
    adopted = Observations("beta", {"alpha": standby("alpha"), "beta": primary("beta")}, sips,
                           homes={"alpha": IpHolders("192.0.2.21", ("beta",), True),
                                  "beta": IpHolders("192.0.2.22", ("beta",), True)})
    doc = status_json(cfg, adopted)
    assert doc["home_addresses"]["alpha"] == {"address": "192.0.2.21", "holders": ["beta"], "arp_probed": True}
    assert not [w for w in doc["warnings"] if "home address" in w.lower()]
    doubled = dataclasses.replace(adopted, homes={"alpha": IpHolders("192.0.2.21", ("alpha", "beta"), True)})
    assert "HOME ADDRESS 192.0.2.21 (ALPHA'S) IS HELD BY ALPHA AND BETA" in status_json(cfg, doubled)["warnings"]
    nobody = dataclasses.replace(adopted, homes={"alpha": IpHolders("192.0.2.21", (), False)})
    assert any(w.startswith("home address 192.0.2.21 (alpha's) is held by no node seen from here")
               for w in status_json(cfg, nobody)["warnings"])
    assert status_json(cfg, dataclasses.replace(adopted, homes={}))["home_addresses"] == {}
