"""TLS on the lab: replication and the agents' API run over TLS verified against the lab's CA."""

from __future__ import annotations

import json
import shutil
import ssl
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import tomli_w

from standby import tls
from standby.lab import Lab, netns
from standby.lab import tls as labtls
from standby.lab.pair import start_pair
from standby.observe.postgres import peer_conninfo
from tests.lab.netwatch import http_status

STANDBY = str(Path(sys.executable).with_name("standby"))
ALPHA_PRIV, ALPHA_PUB, SERVICE = "198.51.100.11", "192.0.2.11", "192.0.2.100"


@pytest.fixture(scope="module")
def pair(lab: Lab) -> Lab:
    return start_pair(lab)


def _walsender_ssl(lab: Lab) -> list[tuple[str, bool]]:
    with lab.pg_connect("alpha", autocommit=True) as p:
        return p.execute("SELECT application_name, ssl FROM pg_stat_ssl JOIN pg_stat_replication USING (pid)").fetchall()


def _sb(lab: Lab, node: str, cfg: Path, *args: str) -> str:
    res = lab.run(node, [STANDBY, *args, "--config", str(cfg), "--node", node], check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_tls_turned_on_for_a_running_pair(lab: Lab, tmp_path: Path) -> None:
    """Runs first, before the agents start: a pair bootstrapped in the clear moves to TLS by re-running bootstrap."""
    import tomllib

    data = tomllib.loads(lab.config_path.read_text())
    del data["tls"]
    plain = tmp_path / "plain.toml"
    plain.write_text(tomli_w.dumps(data))
    _sb(lab, "alpha", plain, "bootstrap", "--restart")
    _sb(lab, "beta", plain, "bootstrap")
    assert _walsender_ssl(lab) == [("beta", False)]

    assert "ssl" in _sb(lab, "alpha", lab.config_path, "bootstrap")
    out = _sb(lab, "beta", lab.config_path, "bootstrap")
    assert "primary_conninfo" in out and "ssl_cert_file" in out
    lab.wait_for("beta to stream over TLS", lambda: _walsender_ssl(lab) == [("beta", True)], timeout_s=30)
    assert "[changed]" not in _sb(lab, "beta", lab.config_path, "bootstrap")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing in the lab."""
    return labtls.make_ca(tmp_path_factory.mktemp("other-ca"), "stranger")


def test_the_standbys_walsender_connection_is_ssl(pair: Lab) -> None:
    assert _walsender_ssl(pair) == [("beta", True)]
    with pair.pg_connect("beta", autocommit=True) as s:
        conninfo = s.execute("SELECT conninfo FROM pg_stat_wal_receiver").fetchone()[0]
    assert "sslmode=verify-full" in conninfo and "sslrootcert=" in conninfo


def _connect_from_beta(pair: Lab, **override: Any) -> str:
    """Connect to alpha's PostgreSQL from beta's namespace as beta would, with ``override``; the outcome."""
    info = {**peer_conninfo(pair.config(), "alpha"), **override}

    def go() -> str:
        try:
            with psycopg.connect(**info, autocommit=True) as c:  # type: ignore[arg-type]
                return "ssl" if c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] else "plain"
        except psycopg.OperationalError as e:
            return str(e)

    return netns.call_in(pair.netns("beta"), go)  # type: ignore[no-any-return]


def test_a_peer_connection_without_tls_is_refused(pair: Lab) -> None:
    assert _connect_from_beta(pair) == "ssl"
    # A physical replication connection in the clear, from the peer's own private address.
    refused = _connect_from_beta(pair, sslmode="disable", replication="true")
    assert "no pg_hba.conf entry for replication connection" in refused and "198.51.100.12" in refused
    assert "no encryption" in refused
    refused = _connect_from_beta(pair, sslmode="disable")
    assert "no pg_hba.conf entry" in refused and "no encryption" in refused


def test_a_server_certificate_from_another_ca_is_refused(pair: Lab, other_ca: Path) -> None:
    refused = _connect_from_beta(pair, sslrootcert=str(other_ca))
    assert "certificate verify failed" in refused


def _get(pair: Lab, url: str, ctx: ssl.SSLContext | None, where: str = "client") -> int | str:
    return netns.call_in(pair.netns(where), http_status, url, ctx)


def test_the_api_answers_over_https_verified_by_the_lab_ca(pair: Lab, other_ca: Path) -> None:
    cfg = pair.config()
    lab_ca = tls.client_context(cfg)
    assert _get(pair, f"https://{ALPHA_PUB}:8008/primary", lab_ca) == 200
    assert _get(pair, f"https://{ALPHA_PRIV}:8008/primary", lab_ca, where="beta") == 200  # as the peer dials it
    assert pair.agent_status("beta") is not None  # the lab's own helper goes through the same context
    # Plain HTTP gets no answer an HTTP client accepts.
    assert not isinstance(_get(pair, f"http://{ALPHA_PUB}:8008/primary", None), int)
    stranger = ssl.create_default_context(cafile=str(other_ca))
    assert "CERTIFICATE_VERIFY_FAILED" in str(_get(pair, f"https://{ALPHA_PUB}:8008/primary", stranger))
    # The API does not listen on the service IP (api.listen names the node's own addresses), and the
    # service IP is not a name in alpha's certificate either: no verified answer through it.
    via_service = str(_get(pair, f"https://{SERVICE}:8008/primary", lab_ca))
    assert "CERTIFICATE_VERIFY_FAILED" in via_service or "refused" in via_service.lower(), via_service


def test_status_cli_reads_both_agents_over_https(pair: Lab) -> None:
    res = pair.run("beta", [STANDBY, "status", "--json", "--config", str(pair.config_path), "--node", "beta"], check=False)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["primary"] == "alpha"
    assert all(doc["nodes"][n]["agent"] is not None for n in ("alpha", "beta")), doc["nodes"]


def _config_with_tls(pair: Lab, tmp_path: Path, **tls_table: str) -> Path:
    import tomllib

    data = tomllib.loads(pair.config_path.read_text())
    data["tls"].update(tls_table)
    path = tmp_path / "standby.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_bad_tls_files_are_named_before_anything_changes(pair: Lab, tmp_path: Path) -> None:
    missing = _config_with_tls(pair, tmp_path, cert_file=str(tmp_path / "{node}.crt"))
    res = pair.run("alpha", [STANDBY, "bootstrap", "--config", str(missing), "--node", "alpha"], check=False)
    assert res.returncode != 0
    assert f"tls.cert_file: file {tmp_path / 'alpha.crt'} does not exist" in res.stderr, res.stderr

    loose = tmp_path / "alpha.key"
    shutil.copy(pair.spec.tls_dir / "alpha.key", loose)
    loose.chmod(0o644)
    readable = _config_with_tls(pair, tmp_path, key_file=str(tmp_path / "{node}.key"))
    for argv in (["bootstrap"], ["agent"]):
        res = pair.run("alpha", [STANDBY, *argv, "--config", str(readable), "--node", "alpha"], check=False, timeout=30)
        assert res.returncode != 0
        assert f"tls.key_file: secret file {loose} is readable by group or others (mode 644)" in res.stderr, res.stderr
        assert f"chmod 600 {loose}" in res.stderr
