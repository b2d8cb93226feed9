"""Issue 11: agents one release apart interoperate; another protocol major is refused with a clear
message, never misread (standby.protocol has the rule).

Heartbeats through the real codec and receiver; the API through the real server (an agent that does not
run its loop) and the real client against a stand-in agent that answers with a chosen header.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import http.server
import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from standby import apiclient, config, protocol
from standby.agent.heartbeat import Receiver, view_to_dict
from standby.api import ApiServer
from standby.documents import AGENT_VIEW, HeartbeatCounts
from standby.model import DbState, Net, PeerView
from standby.status import Observations, assemble
from tests.unit.test_apiclient import _Agent, agent  # noqa: F401 - agent: a stand-in agent on loopback
from tests.unit.test_documents import view
from tests.unit.test_findings_surface import _AgentLoop, api  # noqa: F401 - api: a real agent's API on a free port
from tests.unit.test_status_rules import EXAMPLE, primary, standby

KEY = b"k" * 32
VIEW = PeerView(term=3, db=DbState.PRIMARY, services=True, lsn=12345, sync_ok=True,
                carrier={Net.PUBLIC: True, Net.PRIVATE: True}, tiebreaker_ok=True)


def packet(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return raw + hmac.new(KEY, raw, hashlib.sha256).digest()


def body(seq: int, **changes: Any) -> dict[str, Any]:
    return {"v": protocol.MAJOR, "cluster": "c", "from": "alpha", "boot": 1, "seq": seq, "net": "public",
            "digest": "d", "view": view_to_dict(VIEW), **changes}


# -- heartbeats ----------------------------------------------------------------------------------


def test_i11_heartbeat_of_an_older_release_of_the_same_major_is_accepted() -> None:
    """What a 1.0 agent sends: no acknowledgement, no reporting or eligibility fields."""
    old = body(1)
    old.pop("ack", None)
    for field in ("reporting", "reporting_epoch", "reporting_ack", "eligible"):
        del old["view"][field]
    r = Receiver(KEY, "c", "alpha", "d")
    hb = r.accept(packet(old), Net.PUBLIC)
    assert hb is not None and hb.view.eligible and not hb.view.reporting and r.peer_protocol is None


def test_i11_heartbeat_of_a_newer_minor_is_accepted_its_new_fields_ignored() -> None:
    newer = body(1, hints={"anything": 1})
    newer["view"]["weight"] = 0.5
    assert Receiver(KEY, "c", "alpha", "d").accept(packet(newer), Net.PUBLIC) is not None


@pytest.mark.parametrize("major", [protocol.MAJOR + 1, protocol.MAJOR - 1])
def test_i11_heartbeat_of_another_major_is_refused_as_protocol_not_read(major: int) -> None:
    r = Receiver(KEY, "c", "alpha", "d")
    # Fields of another shape: a reader of this major would call it malformed, or worse, read it.
    other = body(1, v=major, view={"role": "primary"}, boot="one")
    assert r.accept(packet(other), Net.PUBLIC) is None
    assert r.rejected == {"protocol": 1} and r.accepted == 0 and r.peer_protocol == major
    assert r.accept(packet(body(2)), Net.PUBLIC) is not None  # upgraded: heard again, nothing left to say
    assert r.peer_protocol is None


def test_i11_status_says_which_side_speaks_which_protocol_and_where_to_read_on() -> None:
    counts = HeartbeatCounts(accepted=0, rejected={"protocol": 12}, sent={}, send_errors={}, protocol=1, peer_protocol=2)
    agents = {"alpha": view(heartbeats=counts), "beta": None}
    doc = assemble(config.load(EXAMPLE), Observations("alpha", {"alpha": primary(), "beta": standby()}, (),
                                                      agents=agents))
    said = [w for w in doc.warnings if "protocol" in w]
    assert said == ["alpha refuses beta's heartbeats: beta's agent speaks protocol 2, alpha's agent 1: they cannot work "
                    "together; upgrade standby on the older side (alpha's agent) to the other's release "
                    "(see README 'Upgrades')"]


def test_i11_an_agent_view_without_the_protocol_fields_is_protocol_1() -> None:
    doc = AGENT_VIEW.encode(view())
    for field in ("protocol", "peer_protocol"):
        del doc["heartbeats"][field]
    got = AGENT_VIEW.decode(doc).heartbeats
    assert got.protocol == 1 and got.peer_protocol is None


# -- the API's answers ---------------------------------------------------------------------------


def _request(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_i11_every_api_answer_says_its_protocol(api: tuple[ApiServer, str, _AgentLoop]) -> None:  # noqa: F811
    server, _, _ = api
    for method, path in (("GET", "/health"), ("GET", "/status"), ("GET", "/nowhere"), ("POST", "/fence")):
        _, headers, _ = _request(server.cfg.port, method, path, {})
        assert headers.get(protocol.HEADER.lower()) == protocol.header_value(), (method, path)


def test_i11_an_operation_in_another_major_is_refused_and_not_run(api: tuple[ApiServer, str, _AgentLoop]) -> None:  # noqa: F811
    server, token, _ = api
    ran: list[str] = []

    async def record(name: str, *args: Any) -> dict[str, Any]:
        ran.append(name)
        return {"recorded": name}

    server.agent.operate = record  # type: ignore[method-assign]
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, _, answer = _request(server.cfg.port, "POST", "/fence", {**auth, protocol.HEADER: "2.0"})
    assert status == 409 and "the client speaks protocol 2, this node 1" in json.loads(answer)["error"]
    assert _request(server.cfg.port, "POST", "/fence", {**auth, protocol.HEADER: "x"})[0] == 409
    assert ran == []
    assert _request(server.cfg.port, "POST", "/fence", auth)[0] == 200  # no header: a client before 1.1
    assert _request(server.cfg.port, "POST", "/fence", {**auth, protocol.HEADER: "1.9"})[0] == 200
    assert ran == ["fence", "fence"]


# -- the client ----------------------------------------------------------------------------------


@pytest.fixture
def answering(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], list[str | None]]:
    """Makes the stand-in agent answer with a Standby-Protocol header (None: none at all, as before 1.1);
    gives the headers its requests came with."""
    seen: list[str | None] = []
    monkeypatch.setattr(_Agent, "status_body", json.dumps(AGENT_VIEW.encode(replace(view(), node="beta"))).encode())
    monkeypatch.setattr(_Agent, "post_body", b"{}")

    def answer_with(header: str | None) -> list[str | None]:
        def end_headers(self: _Agent) -> None:
            seen.append(self.headers.get(protocol.HEADER))
            if header is not None:
                self.send_header(protocol.HEADER, header)
            http.server.BaseHTTPRequestHandler.end_headers(self)

        monkeypatch.setattr(_Agent, "end_headers", end_headers)
        return seen

    return answer_with


@pytest.mark.parametrize("header", [None, "1.0", "1.1", "1.7"])
def test_i11_client_reads_an_agent_of_the_same_major_or_without_the_header(
        agent: tuple[config.Config, int], answering: Callable[[str | None], list[str | None]],  # noqa: F811
        header: str | None) -> None:
    cfg, _ = agent
    seen = answering(header)
    got = apiclient.agent_status(cfg, "beta", timeout_s=5)
    assert got is not None and got.node == "beta"
    assert apiclient.AgentApi(cfg).post("beta", "/fence", timeout_s=5) == {}
    assert seen == [protocol.header_value()] * 2  # the client says its own


@pytest.mark.parametrize(("header", "says"), [
    ("2.0", "beta's agent speaks protocol 2, this node 1"),
    ("0.9", "beta's agent speaks protocol 0, this node 1"),
    ("one", "beta's agent announces a protocol this node (1) cannot read"),
])
def test_i11_client_refuses_an_agent_of_another_major_saying_so(
        agent: tuple[config.Config, int], answering: Callable[[str | None], list[str | None]],  # noqa: F811
        caplog: pytest.LogCaptureFixture, header: str, says: str) -> None:
    cfg, _ = agent
    seen = answering(header)
    assert apiclient.agent_status(cfg, "beta", timeout_s=5) is None
    assert says in caplog.text and "README 'Upgrades'" in caplog.text
    with pytest.raises(apiclient.ApiError, match=re.escape(says)):
        apiclient.AgentApi(cfg).post("beta", "/fence", timeout_s=5)
    assert len(seen) == 2  # asked once each, not again on the public address
