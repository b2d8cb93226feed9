"""The one client of the agents' API, against a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby import apiclient, config
from standby.documents import AGENT_VIEW
from tests.unit.configs import example_with_secrets
from tests.unit.loopback import free_port, running
from tests.unit.test_documents import view


class _Agent(http.server.BaseHTTPRequestHandler):
    status_body: bytes = b""
    posts: list[str] = []  # noqa: RUF012 - one recorder for the test that sets it
    post_body: bytes = b"{}"

    def do_GET(self) -> None:
        self._send(200, self.status_body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).posts.append(self.path)
        self._send(200, self.post_body)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[config.Config, int]]:
    port = free_port()
    raw, _ = example_with_secrets(tmp_path, port)
    raw["nodes"]["beta"]["private"]["address"] = "127.0.0.1/8"  # the client tries the private address first
    with running(http.server.HTTPServer(("127.0.0.1", port), _Agent)):
        yield config.parse(raw), port


def test_status_is_read_as_a_typed_view(agent: tuple[config.Config, int]) -> None:
    cfg, _ = agent
    _Agent.status_body = json.dumps(AGENT_VIEW.encode(view())).encode()
    assert apiclient.agent_status(cfg, "beta", timeout_s=5) == view()


def test_a_status_this_client_cannot_read_is_said_not_hidden(agent: tuple[config.Config, int],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cfg, _ = agent
    doc = AGENT_VIEW.encode(view())
    doc["postgres"]["state"] = "leader"
    _Agent.status_body = json.dumps(doc).encode()
    assert apiclient.agent_status(cfg, "beta", timeout_s=5) is None
    assert "postgres.state" in caplog.text and "beta" in caplog.text


def test_an_operation_answered_with_nonsense_is_not_sent_again_elsewhere(agent: tuple[config.Config, int]) -> None:
    cfg, _ = agent
    _Agent.posts = []
    _Agent.post_body = b"not json"
    with pytest.raises(apiclient.ApiError, match="other than a JSON object"):
        apiclient.AgentApi(cfg).fence("beta")
    assert _Agent.posts == ["/fence"]  # the agent took it: the public address is not asked to fence again


def test_an_operation_result_is_typed(agent: tuple[config.Config, int]) -> None:
    cfg, _ = agent
    _Agent.posts = []
    _Agent.post_body = json.dumps({"checkpoint_lsn": "0/3000028", "timeline": 2}).encode()
    assert apiclient.AgentApi(cfg).demote("beta").checkpoint_lsn == "0/3000028"
    _Agent.post_body = json.dumps({"checkpoint_lsn": "0/3000028"}).encode()
    with pytest.raises(apiclient.ApiError, match="demote result: timeline"):
        apiclient.AgentApi(cfg).demote("beta")
    assert _Agent.posts == ["/switchover/demote", "/switchover/demote"]


class _Proxy(http.server.BaseHTTPRequestHandler):
    asked: list[str] = []  # noqa: RUF012 - one recorder for the test that sets it

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        self.send_error(502)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


def test_the_environments_proxy_is_never_used_for_an_agent(agent: tuple[config.Config, int],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of the new API server (seen in the status page's fetch of the peer, true of every client of the
    agents' API): urllib sent the requests, with the API token, through the http_proxy of the environment
    (an operator's shell, a unit), where the agent is not and the token has no business going."""
    cfg, _ = agent
    proxy_port = free_port()
    _Proxy.asked = []
    _Agent.status_body = json.dumps(AGENT_VIEW.encode(view())).encode()
    _Agent.posts, _Agent.post_body = [], b"{}"
    with running(http.server.HTTPServer(("127.0.0.1", proxy_port), _Proxy)):
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy_port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        urllib.request.install_opener(None)  # urlopen's own opener reads the environment when it is made
        try:
            assert apiclient.agent_status(cfg, "beta", timeout_s=5) == view()
            apiclient.AgentApi(cfg).fence("beta")
        finally:
            urllib.request.install_opener(None)  # not one that knows this proxy, for the tests after this one
    assert _Proxy.asked == [] and _Agent.posts == ["/fence"]
