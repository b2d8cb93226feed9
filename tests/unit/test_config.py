"""The configuration is validated up front and every error names the key and the fix."""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from standby import config
from standby.cli.config_cmd import group as config_group

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"


@pytest.fixture
def data() -> dict:
    d = tomllib.loads(EXAMPLE.read_text())
    d.pop("reporting", None)  # its own tests below (rdata): the others stay about what they name
    return d


@pytest.fixture
def rdata() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def problems(d: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        config.parse(d, "test.toml")
    return e.value.problems


def test_example_is_valid() -> None:
    cfg = config.load(EXAMPLE)
    assert cfg.mode is config.Mode.HOT
    assert cfg.peer_of("alpha") == "beta"
    assert cfg.slot_name("beta") == "standby_beta"


def test_missing_key_named(data: dict) -> None:
    del data["cluster"]
    assert problems(data) == ["cluster: missing; this key is required"]


def test_wrong_type_named_with_value(data: dict) -> None:
    data["postgres"]["port"] = "fivefourthreetwo"
    (p,) = problems(data)
    assert p.startswith("postgres.port:") and "fivefourthreetwo" in p


def test_unknown_key_is_an_error(data: dict) -> None:
    data["replication"]["durabilty"] = "sync"
    (p,) = problems(data)
    assert p.startswith("replication.durabilty: unknown key")


def test_two_nodes_one_address(data: dict) -> None:
    data["nodes"]["beta"]["private"]["address"] = "198.51.100.11/24"
    (p,) = problems(data)
    assert "nodes.beta.private.address" in p and "nodes.alpha.private.address" in p


def test_service_ip_outside_subnet_in_hot_mode(data: dict) -> None:
    data["service_ips"][0]["address"] = "203.0.113.5/24"
    ps = problems(data)
    assert all(p.startswith("service_ips[0].address: 203.0.113.5/24 is outside") for p in ps)
    assert len(ps) == 2  # one per node


def test_warm_mode_nodes_in_two_subnets_without_service_ip(data: dict) -> None:
    data["mode"] = "warm"
    data["nodes"]["beta"]["public"]["address"] = "203.0.113.12/24"
    data["service_ips"] = []
    cfg = config.parse(data)
    assert cfg.mode is config.Mode.WARM


def test_warm_mode_rejects_floating_ip_across_subnets(data: dict) -> None:
    data["mode"] = "warm"
    data["nodes"]["beta"]["public"]["address"] = "203.0.113.12/24"
    (p,) = problems(data)
    assert p.startswith("service_ips[0].address") and "cannot float" in p


def test_fence_must_be_shorter_than_failover(data: dict) -> None:
    data["timings"]["fence_timeout_ms"] = 1500
    (p,) = problems(data)
    assert "fence_timeout_ms" in p and "shorter" in p


def test_service_command_must_be_argument_list(data: dict) -> None:
    data["services"][0]["start"] = "systemctl start kamailio"
    (p,) = problems(data)
    assert p.startswith("services[0].start:")


def test_exactly_two_nodes(data: dict) -> None:
    data["nodes"]["gamma"] = copy.deepcopy(data["nodes"]["beta"])
    (p,) = problems(data)
    assert p.startswith("nodes:") and "exactly two" in p


def test_preferred_primary_must_be_a_node(data: dict) -> None:
    data["preferred_primary"] = "gamma"
    (p,) = problems(data)
    assert p.startswith("preferred_primary:")


def test_node_name_resolution(data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config.parse(data)
    monkeypatch.delenv(config.NODE_ENV, raising=False)
    with pytest.raises(config.ConfigError, match="--node"):
        config.resolve_node(cfg, None)
    monkeypatch.setenv(config.NODE_ENV, "beta")
    assert config.resolve_node(cfg, None) == "beta"
    with pytest.raises(config.ConfigError, match="not in the configuration"):
        config.resolve_node(cfg, "gamma")


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text("hunter2\n")
    f.chmod(0o644)
    with pytest.raises(config.ConfigError, match="chmod 600") as e:
        config.read_secret(f, "postgres.replication_password_file")
    assert "hunter2" not in str(e.value)
    f.chmod(0o600)
    assert config.read_secret(f, "x") == "hunter2"


def test_config_check_cli(tmp_path: Path, data: dict) -> None:
    runner = CliRunner()
    ok = runner.invoke(config_group, ["check", str(EXAMPLE)])
    assert ok.exit_code == 0 and "valid" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('cluster = "softswitch"', 'cluster = ""'))
    res = runner.invoke(config_group, ["check", str(bad)])
    assert res.exit_code == 2 and "cluster:" in res.output
    before = sorted(os.listdir(tmp_path))
    runner.invoke(config_group, ["check", str(tmp_path / "missing.toml")])
    assert sorted(os.listdir(tmp_path)) == before  # validating touches nothing


def test_broken_toml_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text("cluster = \n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(f)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20))
def test_any_input_gives_valid_config_or_config_error(junk: object) -> None:
    """No input makes the loader crash with anything but a ConfigError."""
    base = tomllib.loads(EXAMPLE.read_text())
    for key in ("cluster", "nodes", "postgres", "timings", "service_ips"):
        d = copy.deepcopy(base)
        d[key] = junk
        try:
            config.parse(d)
        except config.ConfigError as e:
            assert e.problems


# -- [reporting] ------------------------------------------------------------------


def test_reporting_valid_and_optional(rdata: dict) -> None:
    assert config.parse(rdata).reporting is not None  # the example has one
    del rdata["reporting"]
    assert config.parse(rdata).reporting is None
    rdata["reporting"] = {"hot_standby_feedback": False}  # settings only, no floating address
    cfg = config.parse(rdata)
    assert cfg.reporting is not None and cfg.reporting.floating() is None


def test_reporting_address_must_be_its_own(rdata: dict) -> None:
    rdata["reporting"]["address"] = "192.0.2.100/24"
    (p,) = problems(rdata)
    assert p.startswith("reporting.address:") and "service_ips[0].address" in p
    rdata["reporting"]["address"] = "192.0.2.12/24"
    (p,) = problems(rdata)
    assert "nodes.beta.public.address" in p


def test_reporting_address_in_the_public_subnet(rdata: dict) -> None:
    rdata["reporting"]["address"] = "198.51.100.101/24"  # the private network
    (p,) = problems(rdata)
    assert p.startswith("reporting.address:") and "public subnet" in p


def test_reporting_address_and_interface_together(rdata: dict) -> None:
    del rdata["reporting"]["interface"]
    (p,) = problems(rdata)
    assert p.startswith("reporting:") and "give both or neither" in p


def test_reporting_fallback_and_bounds(rdata: dict) -> None:
    rdata["reporting"]["fallback"] = "elsewhere"
    (p,) = problems(rdata)
    assert p.startswith("reporting.fallback:") and "elsewhere" in p
    rdata["reporting"]["fallback"] = "primary"
    rdata["reporting"]["max_standby_streaming_delay_ms"] = -2
    (p,) = problems(rdata)
    assert p.startswith("reporting.max_standby_streaming_delay_ms:")


def test_reporting_settings_reach_postgres(rdata: dict) -> None:
    from standby.act.postgres import primary_settings, reporting_settings

    rdata["reporting"].update(hot_standby_feedback=False, max_standby_streaming_delay_ms=-1)
    cfg = config.parse(rdata)
    assert reporting_settings(cfg) == {"hot_standby_feedback": "off", "max_standby_streaming_delay": "-1"}
    assert primary_settings(cfg, "alpha", True)["hot_standby_feedback"] == "off"
    del rdata["reporting"]
    assert "hot_standby_feedback" not in primary_settings(config.parse(rdata), "alpha", True)


def test_dsn_for_reporting_and_writes(rdata: dict) -> None:
    from standby.cli.dsn import libpq_dsn

    cfg = config.parse(rdata)
    rep = libpq_dsn(cfg, "reporting", "cdr", None, 3, uri=False, keepalives=False)
    assert rep == ("host=192.0.2.12,192.0.2.11 port=5432 dbname=cdr target_session_attrs=prefer-standby "
                   "connect_timeout=3")
    wr = libpq_dsn(cfg, "writes", "cdr", "app", 2, uri=True, keepalives=False)
    assert wr == "postgresql://app@192.0.2.11:5432,192.0.2.12:5432/cdr?target_session_attrs=read-write&connect_timeout=2"
    assert "password" not in rep + wr


def test_ci42_dsn_tells_every_client_to_notice_a_silent_server(rdata: dict) -> None:
    """A client waiting for an answer from a host that crashed hears nothing: every format carries the
    keepalives and tcp_user_timeout by default, as libpq itself reads them."""
    from psycopg.conninfo import conninfo_to_dict

    from standby.cli.dsn import KEEPALIVES, Format, libpq_dsn

    cfg = config.parse(rdata)
    want = dict(KEEPALIVES)
    assert want["keepalives"] == "1" and int(want["tcp_user_timeout"]) > 0
    for fmt in (Format.LIBPQ, Format.URI):
        parsed = conninfo_to_dict(libpq_dsn(cfg, "writes", "cdr", "app", 2, fmt=fmt))
        assert {k: parsed[k] for k in want} == want, fmt
        assert parsed["target_session_attrs"] == "read-write"
    kam = libpq_dsn(cfg, "writes", "cdr", "app", 2, fmt=Format.KAMAILIO)
    (con_param,) = [x for x in kam.splitlines() if x.startswith("modparam")]
    assert all(f"{k}={v}" in con_param.split('"')[-2].split(";") for k, v in KEEPALIVES)


def test_digest_unchanged_without_reporting(rdata: dict) -> None:
    """A pair still running an older version (no [reporting] in its model) computes the same digest."""
    import hashlib
    import json

    from standby import protocol
    from standby.agent.node import config_digest

    del rdata["reporting"]
    cfg = config.parse(rdata)
    dumped = protocol.digest_document(cfg.model_dump(mode="json"), config.Config)  # keys added since: left out
    older = {k: v for k, v in dumped.items() if k not in ("reporting", "tls")}
    assert config_digest(cfg) == hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()


def test_reporting_address_cannot_float_across_warm_subnets(rdata: dict) -> None:
    rdata["mode"] = "warm"
    rdata["nodes"]["beta"]["public"]["address"] = "203.0.113.12/24"
    rdata["service_ips"] = []
    (p,) = problems(rdata)
    assert p.startswith("reporting.address:") and "standby dsn --for reporting" in p
    del rdata["reporting"]["address"], rdata["reporting"]["interface"]
    assert config.parse(rdata).reporting is not None  # the settings alone are fine


# -- [tls] ---------------------------------------------------------------------

def _tls_files(d: Path) -> dict[str, str]:
    """A [tls] table over real files, per-node cert and key through {node}."""
    d.mkdir(exist_ok=True)
    (d / "ca.crt").write_text("ca\n")
    for node in ("alpha", "beta"):
        (d / f"{node}.crt").write_text("cert\n")
        (d / f"{node}.key").write_text("key\n")
        (d / f"{node}.key").chmod(0o600)
    return {"ca_file": str(d / "ca.crt"), "cert_file": str(d / "{node}.crt"), "key_file": str(d / "{node}.key")}


def test_tls_absent_keeps_plain_behaviour(data: dict) -> None:
    from standby import tls
    from standby.act.postgres import hba_block, primary_settings

    cfg = config.parse(data)
    assert cfg.tls is None and tls.check(cfg, "alpha") is None
    assert tls.libpq_params(cfg) == {} and tls.client_context(cfg) is None
    assert tls.api_url(cfg, "192.0.2.11", "/status") == "http://192.0.2.11:8008/status"
    assert all(not ln.startswith("hostssl") for ln in hba_block(cfg, "alpha"))
    assert "ssl" not in primary_settings(cfg, "alpha", True)


def test_tls_node_paths_settings_and_hba(tmp_path: Path, data: dict) -> None:
    from standby import tls
    from standby.act.postgres import hba_block, primary_settings
    from standby.observe.postgres import peer_dsn

    data["tls"] = _tls_files(tmp_path)
    cfg = config.parse(data)
    f = tls.check(cfg, "beta")
    assert f is not None and f.cert_file == tmp_path / "beta.crt" and f.key_file == tmp_path / "beta.key"
    s = primary_settings(cfg, "alpha", True)
    assert (s["ssl"], s["ssl_cert_file"], s["ssl_key_file"]) == ("on", str(tmp_path / "alpha.crt"), str(tmp_path / "alpha.key"))
    rules = [ln.split() for ln in hba_block(cfg, "alpha") if not ln.startswith("#")]
    assert rules and {(r[0], r[3]) for r in rules} == {("hostssl", "198.51.100.12/32")}  # the peer's private address
    dsn = peer_dsn(cfg, "alpha", application_name="beta")
    assert f"sslmode=verify-full sslrootcert={tmp_path / 'ca.crt'}" in dsn and "host=198.51.100.11" in dsn
    assert tls.api_url(cfg, "192.0.2.11", "/status") == "https://192.0.2.11:8008/status"


def test_tls_missing_file_named_with_fix(tmp_path: Path, data: dict) -> None:
    from standby import tls

    data["tls"] = _tls_files(tmp_path)
    (tmp_path / "beta.crt").unlink()
    cfg = config.parse(data)  # the files are checked where they are used, on the node that uses them
    assert tls.check(cfg, "alpha") is not None
    with pytest.raises(config.ConfigError) as e:
        tls.check(cfg, "beta")
    (p,) = e.value.problems
    assert p.startswith("tls.cert_file:") and str(tmp_path / "beta.crt") in p and "does not exist" in p


def test_tls_key_readable_by_others_is_refused(tmp_path: Path, data: dict) -> None:
    from standby import tls

    data["tls"] = _tls_files(tmp_path)
    (tmp_path / "alpha.key").chmod(0o644)
    with pytest.raises(config.ConfigError) as e:
        tls.check(config.parse(data), "alpha")
    (p,) = e.value.problems
    assert p.startswith("tls.key_file:") and "mode 644" in p and f"chmod 600 {tmp_path / 'alpha.key'}" in p


def test_tls_table_validated(tmp_path: Path, data: dict) -> None:
    data["tls"] = {**_tls_files(tmp_path), "ca_file": str(tmp_path / "{node}-ca.crt")}
    (p,) = problems(data)
    assert p.startswith("tls.ca_file:") and "without {node}" in p
    data["tls"] = {"ca_file": "/x/ca.crt", "cert_file": "/x/{node}.crt"}
    assert problems(data) == ["tls.key_file: missing; this key is required"]
    data["tls"] = {**_tls_files(tmp_path), "verify": False}
    (p,) = problems(data)
    assert p.startswith("tls.verify: unknown key")


# -- home addresses ([nodes.NAME] home_address: standby.homeaddr) -------------------------------------------


def _homes(d: dict, alpha: str | None = "192.0.2.21/24", beta: str | None = "192.0.2.22/24") -> dict:
    for name, addr in (("alpha", alpha), ("beta", beta)):
        if addr is not None:
            d["nodes"][name]["home_address"] = addr
    return d


def test_home_addresses_are_read_on_the_public_interface(data: dict) -> None:
    cfg = config.parse(_homes(data))
    home = cfg.nodes["beta"].home()
    assert home is not None and str(home.address) == "192.0.2.22/24" and home.interface == "eth0"


def test_home_address_on_one_node_only_names_the_other(data: dict) -> None:
    (p,) = problems(_homes(data, beta=None))
    assert p.startswith("nodes.beta.home_address: missing while nodes.alpha.home_address is given")


def test_home_address_is_refused_in_warm_mode(data: dict) -> None:
    data["mode"] = "warm"
    assert any(p.startswith("nodes.alpha.home_address: a warm standby never takes over")
               for p in problems(_homes(data)))


def test_home_address_must_be_an_address_of_its_own(data: dict) -> None:
    (p,) = problems(_homes(data, beta="192.0.2.100/24"))  # the service IP
    assert p.startswith("nodes.beta.home_address: 192.0.2.100 is already used by service_ips[0].address")
    (p,) = problems(_homes(data, alpha="192.0.2.21/24", beta="192.0.2.21/24"))
    assert p.startswith("nodes.beta.home_address: 192.0.2.21 is already used by nodes.alpha.home_address")


def test_home_address_outside_the_public_subnet_is_named(data: dict) -> None:
    (p,) = problems(_homes(data, beta="203.0.113.22/24"))
    assert p.startswith("nodes.beta.home_address: 203.0.113.22/24 is outside the public subnet of alpha, beta")


def test_digest_unchanged_without_home_addresses(data: dict) -> None:
    """A pair upgraded one node at a time: a file without home addresses digests as before the key."""
    cfg = config.parse(data)
    assert all("home_address" not in n for n in cfg.model_dump(mode="json")["nodes"].values())
    with_homes = config.parse(_homes(data))
    assert with_homes.model_dump(mode="json")["nodes"]["alpha"]["home_address"] == "192.0.2.21/24"


def test_r4_home_address_on_the_reporting_ip_or_a_followers_address_is_named(rdata: dict) -> None:
    """The second reader's finding R4: both collisions used to pass the check."""
    (p,) = problems(_homes(rdata, beta=rdata["reporting"]["address"]))
    assert p.startswith("nodes.beta.home_address: 192.0.2.101 is already used by reporting.address")
    d = _homes(rdata)
    d.pop("reporting")
    d["followers"] = [{"name": "gamma", "role": "reporting", "public": {"address": "192.0.2.21/24", "interface": "eth0"},
                       "private": {"address": "198.51.100.13/24", "interface": "eth1"}}]
    assert any(p.startswith("followers[0].public.address: 192.0.2.21 is already used by nodes.alpha.home_address")
               for p in problems(d))
