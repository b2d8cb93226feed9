"""The agent facing bad input: forged, malformed and replayed heartbeats, API calls without a
token, and a peer running another configuration."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomli_w

from standby import config, tls
from standby.agent.heartbeat import Heartbeat, encode
from standby.agent.node import config_digest
from standby.lab import Lab, LabError, netns
from standby.lab.pair import STANDBY, agent_state, role_changes, start_pair
from standby.model import DbState, Net, PeerView
from tests.lab.netwatch import http_status


@pytest.fixture(scope="module")
def pair(lab) -> Lab:  # type: ignore[no-untyped-def]
    return start_pair(lab)


def send_udp(lab: Lab, from_node: str, packets: list[bytes], to: str = "192.0.2.11", port: int = 8009) -> None:
    def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in packets:
                s.sendto(p, (to, port))

    netns.call_in(lab.netns(from_node), go)


def rejected(lab: Lab) -> dict[str, int]:
    return agent_state(lab, "alpha")["heartbeats"]["rejected"]


def test_forged_malformed_and_replayed_heartbeats_are_refused(pair: Lab) -> None:
    cfg = pair.config()
    key = config.read_secret(cfg.heartbeat_key_file, "k").encode()  # type: ignore[arg-type]
    before = rejected(pair)
    accepted_before = agent_state(pair, "alpha")["heartbeats"]["accepted"]
    lie = PeerView(term=99, db=DbState.PRIMARY, services=True, lsn=1, sync_ok=True,
                   carrier={Net.PUBLIC: True, Net.PRIVATE: True}, tiebreaker_ok=True)
    forged = encode(Heartbeat(cfg.cluster, "beta", 10**9, 1, Net.PUBLIC, config_digest(cfg), lie), b"wrong key")
    replayed = encode(Heartbeat(cfg.cluster, "beta", 1, 1, Net.PUBLIC, config_digest(cfg), lie), key)
    junk = [b"", b"\x00" * 40, b"{" * 500, json.dumps({"v": 1}).encode() + b"x" * 32, bytes(range(256)) * 8]
    send_udp(pair, "beta", [forged, replayed, *junk])
    send_udp(pair, "client", [forged])  # not even from the peer's address

    def grew() -> dict[str, int]:
        after = rejected(pair)
        return {k: after.get(k, 0) - before.get(k, 0) for k in after}

    def all_counted() -> bool:
        # Unauthenticated junk cannot be told from a forgery: all but the empty packet fail the MAC. And the
        # real peer is still heard: a heartbeat of its own accepted since (one comes every interval; the
        # refusals are counted at once, so without this the look could come first: CI run 70).
        g = grew()
        return (g.get("forged", 0) >= 5 and g.get("replay", 0) >= 1 and g.get("malformed", 0) >= 1
                and g.get("foreign", 0) >= 1
                and agent_state(pair, "alpha")["heartbeats"]["accepted"] > accepted_before)

    try:
        pair.wait_for("alpha's agent to count every packet it refused, and a real one after them", all_counted,
                      timeout_s=15, every_s=0.2)
    except LabError:
        accepted = agent_state(pair, "alpha")["heartbeats"]["accepted"]
        raise AssertionError(f"refused heartbeats counted: {grew()}; accepted {accepted_before} -> {accepted}") from None
    # A lie with a newer term, signed with a wrong key or replayed, changed nothing.
    state = agent_state(pair, "alpha")
    assert state["state"]["fenced"] is False and state["postgres"]["state"] == "primary"
    assert role_changes(pair, "alpha") == []


def _post(pair: Lab, body: bytes, token: str | None) -> tuple[int, dict]:
    cfg = pair.config()

    def go() -> tuple[int, dict]:
        req = urllib.request.Request(tls.api_url(cfg, "192.0.2.11", "/maintenance"), data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=3, context=tls.client_context(cfg)) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    return netns.call_in(pair.netns("client"), go)  # type: ignore[no-any-return]


def test_api_actions_need_the_token(pair: Lab) -> None:
    token = pair.spec.secret("api.token").read_text().strip()
    body = json.dumps({"suspend": True}).encode()
    assert _post(pair, body, None)[0] == 401
    assert _post(pair, body, "not-the-token")[0] == 401
    assert agent_state(pair, "alpha")["suspended"] is False  # nothing happened
    assert _post(pair, b"{not json", token)[0] == 400
    assert _post(pair, body, token) == (200, {"suspended": True})
    assert agent_state(pair, "alpha")["suspended"] is True
    assert _post(pair, json.dumps({"suspend": False}).encode(), token) == (200, {"suspended": False})


def test_health_endpoints_follow_haproxy_conventions(pair: Lab) -> None:
    cfg = pair.config()

    def get(ip: str, path: str) -> int | str:
        return http_status(tls.api_url(cfg, ip, path), tls.client_context(cfg))

    codes = netns.call_in(pair.netns("client"), lambda: {
        (ip, path): get(ip, path)
        for ip in ("192.0.2.11", "192.0.2.12")
        for path in ("/primary", "/replica", "/replica?lag=0", "/replica?lag=-1", "/health", "/metrics")})
    assert codes[("192.0.2.11", "/primary")] == 200 and codes[("192.0.2.12", "/primary")] == 503
    assert codes[("192.0.2.11", "/replica")] == 503 and codes[("192.0.2.12", "/replica")] == 200
    assert codes[("192.0.2.12", "/replica?lag=-1")] == 400
    assert codes[("192.0.2.11", "/health")] == 200 and codes[("192.0.2.12", "/health")] == 200
    assert codes[("192.0.2.11", "/metrics")] == 200


def test_agent_with_another_configuration_is_refused(pair: Lab, tmp_path: Path) -> None:
    data = config.load(pair.config_path).model_dump(mode="json", exclude_none=True)
    data["timings"]["failover_timeout_ms"] += 50
    other = tmp_path / "other.toml"
    other.write_text(tomli_w.dumps(data))
    tmp_path.chmod(0o755)
    pair.stop_agent("beta")
    try:
        res = pair.run("beta", [STANDBY, "agent", "--config", str(other), "--node", "beta"], check=False, timeout=30)
    finally:
        pair.start_agent("beta")
    assert res.returncode == 1
    assert "different configuration" in res.stderr and "identical on both nodes" in res.stderr
