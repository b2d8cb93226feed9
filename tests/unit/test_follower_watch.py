"""A follower's watching costs the pair no connection per round: the replication connection and the HTTP
connection to each member are kept between rounds and opened again only after a round failed on them; a
failed or late round still reads as silence. The HTTP side against a real keep-alive server on loopback."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest

from standby import apiclient, config
from standby.agent import followerobs
from standby.agent.followerobs import ANSWER_TIMEOUT_S, Kept, Upstream, Watcher, answered_in_time
from standby.documents import AGENT_VIEW
from tests.unit.configs import example_with_secrets
from tests.unit.loopback import free_port, running
from tests.unit.test_documents import view


class FakeConn:
    def __init__(self, n: int, close_fails: bool = False) -> None:
        self.n, self.closed, self.close_fails = n, False, close_fails

    def close(self) -> None:
        self.closed = True
        if self.close_fails:
            raise OSError("already broken")


def _kept(close_fails: bool = False) -> tuple[Kept[FakeConn], list[FakeConn]]:
    made: list[FakeConn] = []

    def open_() -> FakeConn:
        made.append(FakeConn(len(made), close_fails))
        return made[-1]

    return Kept(open_, FakeConn.close), made


def test_a_kept_connection_serves_every_round_until_one_fails() -> None:
    kept, made = _kept()
    assert [kept.get().n for _ in range(50)] == [0] * 50
    assert kept.opened == 1 and not made[0].closed


def test_a_round_that_failed_closes_the_connection_and_the_next_opens_one() -> None:
    kept, made = _kept()
    kept.get()
    kept.drop()
    assert made[0].closed and kept.opened == 1  # nothing opened until a round needs it
    assert kept.get().n == 1 and kept.opened == 2
    kept.drop()
    kept.drop()  # nothing kept: nothing to close
    assert kept.opened == 2


def test_a_broken_connection_that_fails_to_close_is_dropped_all_the_same() -> None:
    kept, made = _kept(close_fails=True)
    kept.get()
    kept.drop()
    assert made[0].closed and kept.get().n == 1


def test_an_answer_later_than_the_answer_timeout_is_silence() -> None:
    assert answered_in_time(10.0, 10.0 + ANSWER_TIMEOUT_S)
    assert not answered_in_time(10.0, 10.0 + ANSWER_TIMEOUT_S + 0.001)


# -- the watcher's rounds, its questions stood in for -------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeSession:
    """A pair agent's /status: answers (after ``takes_s`` on the clock) or not; counts closes."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.answers, self.takes_s, self.closed = clock, True, 0.0, 0

    def view(self) -> Any:
        self.clock.t += self.takes_s
        return view() if self.answers else None

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Watcher, Clock, list[str]]]:
    """A follower's watcher of alpha whose server answers while ``answers[0]`` is "yes"."""
    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [{"name": "dr", "role": "warm", "upstream": "primary",
                         "public": {"address": "203.0.113.21/24", "interface": "eth0"},
                         "private": {"address": "10.9.0.21/24", "interface": "eth1"}}]
    clock = Clock()
    w = Watcher(config.parse(raw), "dr", 0.2, clock)
    answers = ["yes"]
    opened: list[FakeConn] = []

    def open_() -> FakeConn:
        opened.append(FakeConn(len(opened)))
        return opened[-1]

    def identify_on(conn: FakeConn, node: str, known: object, deadline: float) -> Upstream:
        assert not conn.closed
        if answers[0] != "yes":
            raise psycopg.OperationalError("no answer")
        return Upstream(timeline=1, flush_lsn=100)

    monkeypatch.setattr(followerobs, "identify_on", identify_on)
    w.servers["alpha"] = Kept(open_, FakeConn.close)  # type: ignore[assignment]
    w.agents["alpha"] = FakeSession(clock)  # type: ignore[assignment]
    yield w, clock, answers


def test_rounds_that_answer_keep_one_connection_and_refresh_answered(watched: tuple[Watcher, Clock, list[str]]
                                                                    ) -> None:
    w, clock, _ = watched
    for _ in range(5):
        clock.t += 0.2
        w.poll("alpha")
    views, answered = w.snapshot()
    assert answered["alpha"] == clock.t and views["alpha"].heard_at == clock.t
    assert w.servers["alpha"].opened == 1


def test_a_failed_round_reads_as_silence_and_the_next_reconnects(watched: tuple[Watcher, Clock, list[str]]
                                                                ) -> None:
    w, clock, answers = watched
    w.poll("alpha")
    heard = clock.t
    answers[0] = "no"
    clock.t += 0.2
    w.poll("alpha")
    _, answered = w.snapshot()
    assert answered["alpha"] == heard  # silent: the last answer stands, nothing newer
    answers[0] = "yes"
    clock.t += 0.2
    w.poll("alpha")
    _, answered = w.snapshot()
    assert answered["alpha"] == clock.t and w.servers["alpha"].opened == 2


def test_a_late_agent_answer_is_silence_and_its_connection_is_closed(watched: tuple[Watcher, Clock, list[str]]
                                                                     ) -> None:
    w, _, _ = watched
    session = w.agents["alpha"]
    assert isinstance(session, FakeSession)
    w.poll("alpha")
    views, _ = w.snapshot()
    heard = views["alpha"].heard_at
    session.takes_s = ANSWER_TIMEOUT_S + 0.5
    w.poll("alpha")
    views, _ = w.snapshot()
    assert views["alpha"].heard_at == heard and session.closed == 1


def test_a_stopped_watcher_closes_its_connections(watched: tuple[Watcher, Clock, list[str]]) -> None:
    w, _, _ = watched
    stop = threading.Event()
    stop.set()  # the threads end at once, closing what they keep
    w.servers["alpha"].get()
    w.start(stop)
    w.join(5.0)
    session = w.agents["alpha"]
    assert isinstance(session, FakeSession) and session.closed == 1
    assert w.servers["alpha"].get().n == 1  # the first was closed: a new one


# -- GET /status over one kept connection --------------------------------------------------------------


class _KeepAliveAgent(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps the connection unless told otherwise
    wbufsize = -1  # the answer in one write, flushed after the request (no wait on a delayed ACK)
    connections = 0
    requests: ClassVar[list[dict[str, str]]] = []
    body = b""
    drop_after = 0  # > 0: close the connection after that many answers on it, without saying so

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1
        self.answered = 0

    def do_GET(self) -> None:
        type(self).requests.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)
        self.answered += 1
        if self.drop_after and self.answered >= self.drop_after:
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


Agent = tuple[config.Config, type[_KeepAliveAgent]]


@pytest.fixture
def keepalive_agent(tmp_path: Path) -> Iterator[Agent]:
    """An agent's API on loopback that keeps connections (HTTP/1.1), with the token asked for /status."""
    port = free_port()
    raw, _ = example_with_secrets(tmp_path, port)
    raw["api"]["token_for_status"] = True
    handler = type("Agent", (_KeepAliveAgent,), {"requests": [], "connections": 0,
                                                  "body": json.dumps(AGENT_VIEW.encode(view())).encode()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    with running(httpd):
        yield config.parse(raw), handler


@pytest.fixture
def session(keepalive_agent: Agent) -> Iterator[apiclient.StatusSession[Any]]:
    s = apiclient.StatusSession(keepalive_agent[0], "beta", "127.0.0.1", AGENT_VIEW)
    try:
        yield s
    finally:
        s.close()


def test_many_status_questions_take_one_connection(keepalive_agent: Agent,
                                                   session: apiclient.StatusSession[Any]) -> None:
    assert [session.view() for _ in range(20)] == [view()] * 20
    assert session.connections == 1 and keepalive_agent[1].connections == 1


def test_the_token_and_protocol_go_with_every_kept_question(keepalive_agent: Agent,
                                                            session: apiclient.StatusSession[Any]) -> None:
    cfg, handler = keepalive_agent
    session.view()
    session.view()
    assert cfg.api.token_file is not None
    token = config.read_secret(cfg.api.token_file, "api.token_file")
    assert [r.get("Authorization") for r in handler.requests] == [f"Bearer {token}"] * 2
    assert all(r.get(apiclient.protocol.HEADER) for r in handler.requests)


def test_a_connection_the_agent_closed_is_asked_again_on_a_new_one(keepalive_agent: Agent,
                                                                  session: apiclient.StatusSession[Any]) -> None:
    """The agent's idle timer (or a restart) closed the kept connection: the question is not lost to it."""
    _, handler = keepalive_agent
    handler.drop_after = 1
    assert [session.view() for _ in range(3)] == [view()] * 3
    assert session.connections == 3


def test_an_agent_that_does_not_answer_is_silence_then_a_new_connection(
        keepalive_agent: Agent, session: apiclient.StatusSession[Any]) -> None:
    _, handler = keepalive_agent
    assert session.view() == view()
    handler.body = b"not json"
    assert session.view() is None  # garbled: as good as no answer, and the connection is not trusted again
    handler.body = json.dumps(AGENT_VIEW.encode(view())).encode()
    assert session.view() == view()
    assert session.connections == 2


def test_an_agent_that_is_gone_is_silence(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # nothing listens there
    raw, _ = example_with_secrets(tmp_path, port)
    session = apiclient.StatusSession(config.parse(raw), "beta", "127.0.0.1", AGENT_VIEW, timeout_s=1.0)
    assert session.view() is None and session.view() is None
    assert session.connections == 2
