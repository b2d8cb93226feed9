"""Issue 12, the configuration: `[[followers]]` and `replication.quorum` are read and checked up front;
each bad input of the issue is refused by `standby config check`, naming the key and the fix, and a
file without followers reads (and digests) as before."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from standby import config, protocol
from standby.agent.policy import config_digest
from standby.cli.config_cmd import group as config_group
from standby.config import FollowerRole

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"


def raw() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def follower(name: str, n: int, role: str = "warm", upstream: str = "primary", **extra: Any) -> dict[str, Any]:
    return {"name": name, "role": role, "upstream": upstream,
            "public": {"address": f"203.0.113.{n}/24", "interface": "eth0"},
            "private": {"address": f"10.9.0.{n}/24", "interface": "eth1"}, **extra}


def with_followers(*fs: dict[str, Any], **replication: Any) -> dict[str, Any]:
    d = raw()
    d["followers"] = list(fs)
    d["replication"] = {**d["replication"], **replication}
    return d


def refused(d: dict[str, Any], tmp_path: Path) -> list[str]:
    """The problems of ``d`` as `standby config check` prints them (exit 1 when any), and as config.parse raises."""
    with pytest.raises(config.ConfigError) as e:
        config.parse(d)
    path = tmp_path / "standby.toml"
    path.write_text(_toml(d))
    res = CliRunner().invoke(config_group, ["check", str(path)])
    assert res.exit_code != 0
    for p in e.value.problems:
        assert p in res.output
    return e.value.problems


def _toml(d: dict[str, Any]) -> str:
    from standby.lab.configfile import toml_value

    return "".join(f"{k} = {toml_value(v)}\n" for k, v in d.items())


def test_i12_the_example_is_valid_and_has_no_follower() -> None:
    cfg = config.load(EXAMPLE)
    assert cfg.followers == [] and cfg.replication.quorum == 0


def test_i12_a_file_without_followers_digests_as_before_the_keys() -> None:
    """The keys are at their default: left out of the digest, so a peer of the previous release agrees."""
    cfg = config.parse(raw())
    dumped = cfg.model_dump(mode="json")
    assert dumped["followers"] == [] and dumped["replication"]["quorum"] == 0
    assert {"followers", "replication.quorum"} <= set(protocol.ADDED_CONFIG_KEYS)
    doc = protocol.digest_document(dumped, config.Config)
    assert "followers" not in doc and "quorum" not in doc["replication"]
    assert config_digest(cfg) != config_digest(config.parse(with_followers(follower("dr", 21))))


def test_i12_good_followers_are_read_and_listed(tmp_path: Path) -> None:
    d = with_followers(follower("dr", 21, upstream="standby"),
                       follower("reports", 31, role="reporting",
                                reporting_ip={"address": "203.0.113.120/24", "interface": "eth0"}),
                       quorum=0)
    cfg = config.parse(d)
    assert [(f.name, f.role, f.upstream) for f in cfg.followers] == [
        ("dr", FollowerRole.WARM, "standby"), ("reports", FollowerRole.REPORTING, "primary")]
    path = tmp_path / "standby.toml"
    path.write_text(_toml(d))
    res = CliRunner().invoke(config_group, ["check", str(path)])
    assert res.exit_code == 0, res.output
    assert "follower dr (warm) streams from standby" in res.output
    assert "each commit waits for the hot standby beta" in res.output


def test_i12_a_follower_named_as_the_hot_standby_is_refused(tmp_path: Path) -> None:
    (p,) = refused(with_followers(follower("beta", 21)), tmp_path)
    assert p.startswith("followers[0].name: 'beta' is a node of the hot pair") and "a name of its own" in p


def test_i12_a_cascade_loop_is_refused(tmp_path: Path) -> None:
    ps = refused(with_followers(follower("dr1", 21, upstream="dr2"), follower("dr2", 22, upstream="dr1")), tmp_path)
    assert [p.split(":")[0] for p in ps] == ["followers[0].upstream", "followers[1].upstream"]
    assert "dr1 -> dr2 -> dr1" in ps[0] and "stream from \"primary\"" in ps[0]


def test_i12_two_followers_with_one_address_are_refused(tmp_path: Path) -> None:
    second = follower("dr2", 22)
    second["private"] = follower("x", 21)["private"]
    (p,) = refused(with_followers(follower("dr1", 21), second), tmp_path)
    assert p.startswith("followers[1].private.address: '10.9.0.21' is already used by followers[0].private.address")


def test_i12_a_follower_on_a_service_ip_is_refused(tmp_path: Path) -> None:
    f = follower("dr", 21)
    f["public"] = {"address": "192.0.2.100/24", "interface": "eth0"}  # the example's service IP
    (p,) = refused(with_followers(f), tmp_path)
    assert p.startswith("followers[0].public.address: 192.0.2.100 is already used by service_ips[0].address")


def test_i12_an_unknown_upstream_is_refused(tmp_path: Path) -> None:
    (p,) = refused(with_followers(follower("dr", 21, upstream="gamma")), tmp_path)
    assert p.startswith("followers[0].upstream: 'gamma' names no follower") and '"primary", "standby"' in p


def test_i12_a_pair_node_as_upstream_is_refused(tmp_path: Path) -> None:
    (p,) = refused(with_followers(follower("dr", 21, upstream="alpha")), tmp_path)
    assert p.startswith("followers[0].upstream: 'alpha' names a node of the hot pair") and "\"standby\"" in p


def test_i12_a_quorum_larger_than_its_members_is_refused(tmp_path: Path) -> None:
    (p,) = refused(with_followers(follower("dr", 21), quorum=3), tmp_path)
    assert p.startswith("replication.quorum: '3' must be 0") and "1..2" in p


def test_too_few_wal_senders_for_the_followers_kept_connections_are_refused(tmp_path: Path) -> None:
    """Four followers: each one's stream and its agent's kept connection, the peer's stream and a clone's
    second sender make 10 on a pair node, the default; a fifth needs two more."""
    fs = [follower(f"dr{i}", 20 + i) for i in range(1, 5)]
    assert config.parse(with_followers(*fs)).postgres.max_wal_senders == 10
    (p,) = refused(with_followers(*fs, follower("dr5", 25)), tmp_path)
    assert p.startswith("postgres.max_wal_senders: '10' is too few for 5 follower(s)") and "at least 12" in p
    d = with_followers(*fs, follower("dr5", 25))
    d["postgres"] = {**d["postgres"], "extra_settings": {"max_wal_senders": 11}}
    (p,) = refused(d, tmp_path)
    assert p.startswith("postgres.extra_settings.max_wal_senders: '11'")
    d["postgres"] = {**d["postgres"], "max_wal_senders": 12, "extra_settings": {}}
    assert len(config.parse(d).followers) == 5


def test_i12_a_partial_quorum_under_automatic_failover_is_refused(tmp_path: Path) -> None:
    """ANY 1 of (beta, dr): beta may lack a commit dr acknowledged, and the pair's failover would lose it."""
    (p,) = refused(with_followers(follower("dr", 21), quorum=1), tmp_path)
    assert p.startswith("replication.quorum: 1 of 2") and "set quorum = 2" in p


def test_i12_a_quorum_with_async_is_refused(tmp_path: Path) -> None:
    (p,) = refused(with_followers(follower("dr", 21), quorum=2, durability="async"), tmp_path)
    assert p.startswith("replication.quorum: 2 with durability = \"async\"")


def test_i12_a_full_quorum_says_quorum(tmp_path: Path) -> None:
    d = with_followers(follower("dr", 21), quorum=2)
    assert config.parse(d).replication.quorum == 2
    path = tmp_path / "standby.toml"
    path.write_text(_toml(d))
    res = CliRunner().invoke(config_group, ["check", str(path)])
    assert res.exit_code == 0, res.output
    assert "sync quorum: each commit waits for 2 of beta, dr" in res.output


def test_i12_a_partial_quorum_is_allowed_in_warm_mode() -> None:
    """No automatic failover there: a person promotes, and status says what the promise is."""
    d = with_followers(follower("dr", 21), quorum=1)
    d["mode"] = "warm"
    d.pop("service_ips")
    d.pop("reporting", None)
    assert config.parse(d).replication.quorum == 1
