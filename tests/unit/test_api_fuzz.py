"""The HTTP API under random requests: the real server and routes, a real (not started) Agent.

The agent is built from the example configuration with its secrets in a
temporary directory; it never runs its loop, so it observes nothing and
PostgreSQL reads as down. Its ``operate`` is replaced by a recorder: the
fuzz checks which requests reach it, and no random request may really
fence, promote or rejoin anything on this machine.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from standby import config
from standby.agent.node import Agent
from standby.api import MAX_PROMOTE_WAIT_S, ApiServer
from tests.unit.configs import example_with_secrets
from tests.unit.loopback import free_port

TIMEOUT_S = 5.0

KNOWN_PATHS = ["/primary", "/replica", "/health", "/status", "/metrics", "/maintenance", "/switchover/demote",
               "/switchover/promote", "/switchover/follow", "/switchover/resume", "/rejoin", "/promote", "/fence"]
HEALTH_PATHS = ("/primary", "/replica", "/health")
HEALTH_PATHS_B = tuple(p.encode() for p in HEALTH_PATHS)
POST_PATHS = [p for p in KNOWN_PATHS if p not in (*HEALTH_PATHS, "/status", "/metrics")]


@dataclass
class Server:
    agent: Agent
    port: int
    token: str
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    raw, files = example_with_secrets(tmp_path_factory.mktemp("api"), free_port())
    cfg = config.parse(raw)
    agent = Agent(cfg, "alpha")
    srv = Server(agent, cfg.api.port, files["api.token_file"].read_text().strip())

    async def record(name: str, *args: Any) -> dict[str, Any]:
        srv.calls.append((name, args))
        return {"recorded": name}

    agent.operate = record  # type: ignore[method-assign]
    agent.started = True  # as Agent.run sets it once the state is restored

    server = ApiServer(agent, None, addresses=("127.0.0.1",))  # as the agent runs it, on loopback only
    server.start()
    try:
        yield srv
    finally:
        server.stop()
        for pool in (agent.pg_pool, agent.svc_pool, agent.probe_pool):
            pool.shutdown(wait=False)


# -- what a request may look like ---------------------------------------------------------

_PATH_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="#?%")
_segment = st.text(_PATH_CHARS, max_size=12) | st.binary(max_size=12).map(lambda b: quote(b, safe=""))
random_path = st.lists(_segment, min_size=1, max_size=4).map(lambda segs: "/" + "/".join(segs))
paths = st.sampled_from(KNOWN_PATHS) | random_path | st.sampled_from(KNOWN_PATHS).flatmap(
    lambda p: _segment.map(lambda s: p + "/" + s))

lag_values = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(max_size=20),
    st.sampled_from(["", "-1", "1e9", "0x10", "NaN", "inf", "1_000", "٣", "9" * 5000, " 7 ", "+5"]),
)
query_pairs = st.lists(
    st.tuples(st.sampled_from(["lag", "x", ""]) | st.text(max_size=8), lag_values), max_size=3)
queries = query_pairs.map(lambda qs: "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in qs))

methods = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]) | st.text(
    st.characters(min_codepoint=ord("A"), max_codepoint=ord("Z")), min_size=1, max_size=10)

_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80)
auth_values = st.one_of(
    st.none(),
    _header_text,
    _header_text.map(lambda t: "Bearer " + t),
    st.sampled_from(["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "bearer x"]),
)

# Other headers, random names among them; not those that frame the message (a wrong length is a
# client waiting for its own body, not a server fault).
extra_headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Accept", "Accept-Encoding", "Expect", "X-Forwarded-For", "Cookie", "Origin"])
    | st.text(st.characters(min_codepoint=ord("a"), max_codepoint=ord("z")), min_size=1, max_size=12).map(
        lambda n: "X-" + n),
    _header_text, max_size=4)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["suspend", "min_lsn", "timeout_s"]) | st.text(max_size=6), c, max_size=4),
    max_leaves=10)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n),
    st.sampled_from([b'{"suspend": "yes"}', b'{"min_lsn": "0/1", "timeout_s": 1e400}', b"\xff\xfe",
                     b'{"min_lsn": "0/1", "timeout_s": NaN}']),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str | None, bytes | None, bool, dict[str, str]]:
    """(method, path with query, Authorization header, body, use the real token, other headers)."""
    method = draw(methods)
    path = draw(paths)
    q = draw(queries)
    real_token = draw(st.booleans())
    return method, path + (f"?{q}" if q else ""), draw(auth_values), draw(bodies), real_token, draw(extra_headers)


def _check(srv: Server, method: str, target: str, auth: str | None, body: bytes | None, real_token: bool,
           extra: dict[str, str] | None = None) -> None:
    headers: dict[str, str] = dict(extra or {})
    if real_token:
        headers["Authorization"] = f"Bearer {srv.token}"
    elif auth is not None:
        headers["Authorization"] = auth
    calls_before, events_before = len(srv.calls), len(srv.agent.recent)
    status, resp_headers, payload = srv.request(method, target, headers, body)

    # 503 is the health answer HAProxy reads ("not me"), not a failure; nothing else may be 5xx.
    health_check = method in ("GET", "HEAD") and target.split("?")[0] in HEALTH_PATHS
    assert status < 500 or (status == 503 and health_check), f"{method} {target} -> {status}: {payload[:300]!r}"
    assert srv.token.encode() not in payload and not any(srv.token in v for v in resp_headers.values()), \
        "the API token appears in a response"
    if 400 <= status < 500 and method != "HEAD":
        assert payload.strip(), f"{method} {target} -> {status} with an empty body"
        if resp_headers.get("content-type", "").startswith("application/json"):
            assert json.loads(payload).get("error"), payload
    if not real_token and status != 401:
        # Without the token nothing may change, whatever the answer.
        assert len(srv.calls) == calls_before, f"{method} {target} reached Agent.operate without the token"
        assert len(srv.agent.recent) == events_before, f"{method} {target} changed the agent without the token"
    for name, args in srv.calls[calls_before:]:
        if name == "promote":  # the switchover wait must end: a finite, bounded number of seconds
            assert 0 <= args[1] <= MAX_PROMOTE_WAIT_S, args


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(requests())
# Regressions: each crashed the handler with a 500 before the fix in api.py.
@example(("POST", "/maintenance", None, b"[" * 20_000, True, {}))
@example(("POST", "/switchover/promote", None, b"[" * 20_000, True, {}))
@example(("POST", "/switchover/promote", None, b'{"min_lsn": "0/1", "timeout_s": 1e400}', True, {}))
@example(("POST", "/switchover/promote", None, b'{"min_lsn": "0/1", "timeout_s": NaN}', True, {}))
@example(("POST", "/switchover/promote", None, b'{"min_lsn": "0/1", "timeout_s": 1' + b"0" * 400 + b"}", True, {}))
def test_fuzz_every_endpoint(server: Server,
                             req: tuple[str, str, str | None, bytes | None, bool, dict[str, str]]) -> None:
    _check(server, *req)
    # Whatever came before, the server still answers at once.
    status, _, _ = server.request("GET", "/health", {}, None)
    assert status in (200, 503)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(POST_PATHS), auth_values, bodies)
def test_post_without_token_is_401_and_does_nothing(server: Server, path: str, auth: str | None,
                                                     body: bytes | None) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    before = (len(server.calls), len(server.agent.recent), server.agent.suspended)
    status, _, payload = server.request("POST", path, headers, body)
    assert status == 401, (status, payload)
    assert b"token" in payload
    assert (len(server.calls), len(server.agent.recent), server.agent.suspended) == before


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=2000))
@example(b"GET /health HTTP/0.0\n!:")  # CI run 81
def test_raw_garbage_on_the_socket(server: Server, junk: bytes) -> None:
    """Bytes that are not HTTP at all: a 4xx or a closed connection, never a 500, never a hang. Bytes that happen to
    form a request for a health path get that path's answer, 200 or 503 (CI run 81: ``GET /health HTTP/0.0`` with a
    header named ``!``, a request h11 takes, answered 503 by an agent that is not healthy)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as s:
        try:
            s.sendall(junk + b"\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    if answer:
        line = junk.split(b"\n", 1)[0].split(b" ")
        health = len(line) >= 2 and line[0] in (b"GET", b"HEAD") and line[1].split(b"?")[0] in HEALTH_PATHS_B
        status = answer[9:12]
        assert answer.startswith(b"HTTP/1.") and (status[:1] == b"4" or (health and status in (b"200", b"503"))), answer
    status, _, _ = server.request("GET", "/health", {}, None)
    assert status in (200, 503)


def test_real_token_reaches_the_agent(server: Server) -> None:
    """The recorder is really wired in: the same request with the token does reach it."""
    before = len(server.calls)
    status, _, payload = server.request("POST", "/fence", {"Authorization": f"Bearer {server.token}"}, None)
    assert status == 200, payload
    assert server.calls[before:] == [("fence", ())]
    status, _, payload = server.request("POST", "/maintenance", {"Authorization": f"Bearer {server.token}"},
                                        b'{"suspend": false}')
    assert status == 200 and server.agent.suspended is False, payload


def test_bad_lag_names_the_problem(server: Server) -> None:
    status, _, payload = server.request("GET", "/replica?lag=-5", {}, None)
    assert status == 400 and b"lag must be" in payload


def test_token_file_made_readable_while_running_refuses_actions(server: Server) -> None:
    """A token file opened up after start-up: every action is refused (401, nothing done), never a 500."""
    token_file = server.agent.cfg.api.token_file
    assert token_file is not None
    before = (len(server.calls), len(server.agent.recent))
    token_file.chmod(0o644)
    try:
        for path in POST_PATHS:
            status, _, payload = server.request("POST", path, {"Authorization": f"Bearer {server.token}"}, b"{}")
            assert status == 401, (path, status, payload)
            assert server.token.encode() not in payload
    finally:
        token_file.chmod(0o600)
    assert (len(server.calls), len(server.agent.recent)) == before
