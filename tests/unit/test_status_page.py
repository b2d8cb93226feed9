"""The status page (/ui/) without a lab: its rules as pure functions, and its routes on real aiohttp
servers for two real (not started) agents on loopback addresses, so the peer poller really talks to
the other agent, or to an address that never answers."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.agent.node import Agent
from standby.api import Api, ApiServer
from standby.model import DbState, LocalPg, Net, PeerView
from standby.web.pair import (
    Exposure,
    NodeFacts,
    RiskReason,
    Sampler,
    failover_risk,
    history_tail,
    lag_bytes,
    lag_seconds,
)
from standby.web.server import Limits, listen
from tests.browser import browser_in, text_of
from tests.unit.configs import example_with_secrets
from tests.unit.loopback import free_port

ADDR = {"alpha": ("127.10.0.11", "127.11.0.11"), "beta": ("127.10.0.12", "127.11.0.12")}  # public, private


# -- the rules ------------------------------------------------------------------------------------

def facts(**kw: Any) -> NodeFacts:
    base: dict[str, Any] = dict(db=DbState.PRIMARY, sync=True, hot=True, degraded=False, eligible=False,
                                peer_sync=True, peer_db=DbState.STANDBY, lag_bytes=0)
    return NodeFacts(**{**base, **kw})


@pytest.mark.parametrize(("kw", "exposure", "reason"), [
    ({}, Exposure.NOTHING, RiskReason.SYNC_STANDBY),
    ({"degraded": True, "lag_bytes": 4096}, Exposure.UP_TO_LAG, RiskReason.DEGRADED),
    ({"peer_sync": False}, Exposure.UP_TO_LAG, RiskReason.DEGRADED),
    ({"sync": False, "lag_bytes": 10}, Exposure.UP_TO_LAG, RiskReason.ASYNC),
    ({"peer_db": None}, Exposure.NO_FAILOVER, RiskReason.NO_STANDBY),
    ({"peer_db": DbState.FENCED}, Exposure.NO_FAILOVER, RiskReason.NO_STANDBY),
    ({"db": DbState.STANDBY, "peer_db": DbState.PRIMARY, "eligible": True}, Exposure.NOTHING, RiskReason.SYNC_STANDBY),
    ({"db": DbState.STANDBY, "peer_db": DbState.PRIMARY, "eligible": False}, Exposure.NO_FAILOVER, RiskReason.NOT_ELIGIBLE),
    ({"db": DbState.STANDBY, "peer_db": DbState.PRIMARY, "hot": False, "peer_sync": False, "lag_bytes": 9},
     Exposure.UP_TO_LAG, RiskReason.DEGRADED),
    ({"db": DbState.STANDBY, "peer_db": DbState.PRIMARY, "sync": False, "eligible": True, "lag_bytes": 9},
     Exposure.UP_TO_LAG, RiskReason.ASYNC),
    ({"db": DbState.STANDBY, "peer_db": None}, Exposure.UNKNOWN, RiskReason.NO_PRIMARY_HEARD),
    ({"db": DbState.FENCED}, Exposure.UNKNOWN, RiskReason.NOT_SERVING),
    ({"db": DbState.DOWN}, Exposure.UNKNOWN, RiskReason.NOT_SERVING),
])
def test_failover_risk_names_what_a_failover_now_would_lose(kw: dict[str, Any], exposure: Exposure,
                                                             reason: RiskReason) -> None:
    r = failover_risk(facts(**kw))
    assert (r.exposure, r.reason) == (exposure, reason)


def test_lag_bytes_from_either_side() -> None:
    assert lag_bytes(DbState.STANDBY, 100, None, DbState.PRIMARY, 350) == 250
    assert lag_bytes(DbState.PRIMARY, 350, 100, DbState.STANDBY, 50) == 250  # the primary's own row wins
    assert lag_bytes(DbState.PRIMARY, 350, None, DbState.STANDBY, 300) == 50
    assert lag_bytes(DbState.PRIMARY, 350, None, None, 300) is None  # no standby heard
    assert lag_bytes(DbState.STANDBY, 100, None, None, 350) is None


def test_lag_seconds_is_how_long_ago_the_primary_was_where_the_standby_is() -> None:
    history = [(10.0, 100), (11.0, 200), (12.0, 300), (13.0, 400)]
    assert lag_seconds(history, 400, 400, 13.0) == 0.0
    assert lag_seconds(history, 250, 400, 13.0) == 2.0  # the primary was at 200 (<= 250) last at t=11
    assert lag_seconds(history, 50, 400, 13.0) is None  # older than every sample
    assert lag_seconds(history, None, 400, 13.0) is None


def test_sampler_keeps_the_window_and_computes_lag_seconds() -> None:
    s = Sampler(window_s=5, every_s=1)
    for i in range(10):
        s.add(float(i), primary_lsn=100 * i, standby_lsn=max(0, 100 * (i - 2)), lag=200)
    assert len(s.samples) == 6
    assert s.samples[-1].lag_s == 2.0


def test_history_tail_reads_only_the_end(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    with path.open("w") as f:
        for i in range(5000):
            f.write(json.dumps({"time": f"t{i:05d}", "event": "decision", "n": i, "pad": "x" * 100}) + "\n")
        f.write('{"time": "cut')  # a line cut by a crash
    tail = history_tail(path, limit=20, max_bytes=16 * 1024)
    assert [e["n"] for e in tail] == list(range(4980, 5000))
    assert history_tail(tmp_path / "missing.jsonl") == []


# -- the routes, on two agents ------------------------------------------------------------------------

@dataclass
class Pair:
    agents: dict[str, Agent]
    port: int
    token: str
    loop: asyncio.AbstractEventLoop

    def get(self, host: str, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0
            ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(host, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def pair_json(self, host: str = "127.11.0.11", **kw: Any) -> dict[str, Any]:
        status, _, body = self.get(host, "/ui/pair.json", **kw)
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def wait(self, what: str, fn: Any, timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if v := fn():
                return v
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


def _read_to_end(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(4096):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def loopback_config(d: Path, token_for_status: bool = False) -> tuple[config.Config, str]:
    raw, files = example_with_secrets(d, free_port())
    for n, (pub, priv) in ADDR.items():
        raw["nodes"][n]["public"]["address"] = f"{pub}/16"
        raw["nodes"][n]["private"]["address"] = f"{priv}/16"
        raw["nodes"][n]["state_dir"] = str(d / n)
        (d / n).mkdir(exist_ok=True)
    raw["service_ips"][0]["address"] = "127.10.0.100/16"
    raw["reporting"]["address"] = "127.10.0.101/16"
    raw["tiebreaker"]["address"] = "127.0.0.1"
    raw["api"]["token_for_status"] = token_for_status
    return config.parse(raw), files["api.token_file"].read_text().strip()


class Pairs:
    """Builds alpha's and beta's APIs on their loopback addresses (``serve``: which are served)."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stop = asyncio.Event()
        self.served: list[asyncio.Future[None]] = []
        self.socks: list[socket.socket] = []
        self.agents: list[Agent] = []

    def __call__(self, serve: tuple[str, ...] = ("alpha", "beta"), token_for_status: bool = False) -> Pair:
        cfg, token = loopback_config(self.d, token_for_status)
        agents = {n: Agent(cfg, n) for n in ("alpha", "beta")}
        for a in agents.values():
            a.started = True  # as Agent.run sets it once the state is restored
        self.agents += agents.values()

        for n in serve:  # the agent's own server and routes, on this loop (ApiServer runs them on a thread's)
            socks = [listen(host, cfg.api.port) for host in ADDR[n]]
            self.socks += socks
            server = Api(agents[n]).server(Limits(cfg.api.max_connections, cfg.api.request_timeout_s))
            self.served.append(asyncio.run_coroutine_threadsafe(server.run(socks, self.stop), self.loop))
        return Pair(agents, cfg.api.port, token, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        for f in self.served:
            f.result(10)
        for s in self.socks:
            s.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        for a in self.agents:
            for pool in (a.pg_pool, a.svc_pool, a.probe_pool, a.disk_pool, a.state_pool, a.observe_pool):
                pool.shutdown(wait=False)


@pytest.fixture
def pairs(tmp_path: Path) -> Iterator[Pairs]:
    p = Pairs(tmp_path)
    try:
        yield p
    finally:
        p.close()


def as_primary(a: Agent, lsn: int) -> None:
    a.pg = LocalPg(DbState.PRIMARY, lsn=lsn, peer_sync=True, peer_flush_lsn=lsn - 1000)
    a.state = replace(a.state, term=3, services=True)
    a.event("decision", action="promote", reason="peer_dead", detail="the primary was silent; new term 3", term=3)


def as_standby(a: Agent, primary_lsn: int, lsn: int) -> None:
    a.pg = LocalPg(DbState.STANDBY, lsn=lsn, streaming=True)
    a.state = replace(a.state, term=3, eligible=True)
    a.link.peer_view = PeerView(term=3, db=DbState.PRIMARY, services=True, lsn=primary_lsn, sync_ok=True,
                                carrier={n: True for n in Net}, tiebreaker_ok=True)
    a.heard[Net.PRIVATE] = time.monotonic() + 3600  # heard "now" for the whole test


def test_page_and_its_files_come_from_the_package(pairs: Pairs) -> None:
    pair = pairs()
    status, headers, body = pair.get("127.11.0.11", "/ui/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'src="app.js"' in body and b"http" not in body.lower().replace(b"http-equiv", b"")  # nothing from elsewhere
    assert "script-src 'self'" in headers["content-security-policy"]
    status, headers, body = pair.get("127.11.0.11", "/ui/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"pair.json" in body
    for path in ("/ui/../api.py", "/ui/%2e%2e/api.py", "/ui/nothing.js", "/ui/static/app.js"):
        assert pair.get("127.11.0.11", path)[0] == 404, path
    status, headers, _ = pair.get("127.11.0.11", "/ui")
    assert status == 302 and headers["location"] == "/ui/"


def test_pair_json_carries_both_nodes_and_both_histories(pairs: Pairs) -> None:
    pair = pairs()
    as_standby(pair.agents["alpha"], primary_lsn=50_000, lsn=40_000)
    as_primary(pair.agents["beta"], lsn=50_000)
    first = pair.pair_json()
    assert first["here"]["node"] == "alpha" and first["peer"]["name"] == "beta"
    doc = pair.wait("beta's view through alpha", lambda: (d := pair.pair_json())["peer"]["reachable"] and d)
    here, peer = doc["here"], doc["peer"]["view"]
    assert (here["role"], peer["role"]) == ("standby", "primary")
    assert here["lag_bytes"] == 10_000 and peer["lag_bytes"] == 1000  # each from its own reading
    assert here["risk"]["exposure"] == "nothing" and here["eligible"] is True
    assert peer["services"] is True and peer["service_ips"] == ["127.10.0.100"]
    assert any(e["event"] == "decision" and e["reason"] == "peer_dead" for e in peer["history"])
    assert doc["peer"]["via"] == "private"
    assert doc["samples"] and doc["samples"][-1]["lag_bytes"] == 10_000


def test_unreachable_peer_never_blocks_the_page(pairs: Pairs) -> None:
    pair = pairs(serve=("alpha",))
    # beta's private and public addresses accept connections and never answer: the worst peer.
    hanging = []
    for host in ADDR["beta"]:
        s = socket.socket()
        s.bind((host, pair.port))
        s.listen(1024)
        hanging.append(s)
    try:
        doc = pair.pair_json(timeout=1.0)  # the page answers at once, whatever the peer does
        assert doc["peer"]["reachable"] is None  # not tried yet
        # Each request is answered before the peer attempt (1.5 s an address) could have ended.
        doc = pair.wait("beta reported unreachable",
                        lambda: (d := pair.pair_json(timeout=1.0))["peer"]["reachable"] is False and d)
        assert "private" in doc["peer"]["error"] and "public" in doc["peer"]["error"]
    finally:
        for s in hanging:
            s.close()


def test_with_token_for_status_the_data_needs_the_token_and_the_page_does_not(pairs: Pairs) -> None:
    pair = pairs(token_for_status=True)
    assert pair.get("127.11.0.11", "/ui/")[0] == 200  # the page itself holds no data: it asks for the token
    assert pair.get("127.11.0.11", "/ui/pair.json")[0] == 401
    assert pair.get("127.11.0.11", "/ui/node.json")[0] == 401
    assert pair.get("127.11.0.11", "/ui/pair.json", headers={"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {pair.token}"}
    # The agent sends the token to its peer itself (over the private network): the peer shows.
    doc = pair.wait("beta's view with the token", lambda: (d := pair.pair_json(headers=auth))["peer"]["reachable"] and d)
    assert doc["peer"]["view"]["node"] == "beta"


def test_hostile_clients_do_not_hold_up_the_page(pairs: Pairs) -> None:
    """alpha's API as the agent runs it (ApiServer, its own thread): slow and oversized requests are cut
    off or refused while a person's request is still served."""
    pair = pairs(serve=("beta",))
    a = pair.agents["alpha"]
    server = ApiServer(a, None)
    server.cfg = server.cfg.model_copy(update={"request_timeout_s": 1.0})
    server.start()
    hostile: list[socket.socket] = []
    try:
        for i in range(40):  # slow clients: half a request line each, never finished
            s = socket.create_connection(("127.0.0.1", pair.port), timeout=5)
            s.sendall(b"GET /ui/pair.json HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * i)
            hostile.append(s)
        s = socket.create_connection(("127.0.0.1", pair.port), timeout=5)
        s.sendall(b"GET /ui/pair.json HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n")
        reply = s.recv(100)
        assert reply.split(b" ")[1].startswith(b"4") if reply else True, reply  # refused, never served
        s.close()
        status, _, body = pair.get("127.0.0.1", "/ui/pair.json")
        assert status == 200 and json.loads(body)["here"]["node"] == "alpha"
        assert pair.get("127.0.0.1", "/metrics")[0] == 200
        for s in hostile:  # the slow ones are cut off by the API's request timeout (the socket's 5 s would raise)
            rest = _read_to_end(s)
            assert rest == b"" or rest.split(b" ")[1].startswith(b"4"), rest
    finally:
        for s in hostile:
            s.close()
        server.stop()


@pytest.mark.alone  # a browser loads the machine (tests/gate.py)
def test_page_in_a_browser_asks_for_the_token_and_shouts_when_two_serve(pairs: Pairs) -> None:
    """The page's own logic in Chromium (no lab): the token prompt, and the loud banners a split pair raises."""
    pair = pairs(token_for_status=True)
    as_standby(pair.agents["alpha"], primary_lsn=50_000, lsn=40_000)
    as_primary(pair.agents["beta"], lsn=50_000)
    gen = browser_in(None)
    b = next(gen)
    try:
        b(b.driver.get, f"http://127.11.0.11:{pair.port}/ui/")
        b.wait(None, "the token prompt", lambda d: d.find_element("id", "token-form").is_displayed())

        def give(token: str) -> None:
            b.driver.find_element("id", "token").send_keys(token)
            b.driver.find_element("css selector", "#token-form button").click()

        b(give, "wrong")
        b.wait(None, "the wrong token refused", lambda d: "refused" in text_of(d, "#token-error"))
        b(give, pair.token)
        b.wait(None, "beta primary, seen through alpha", lambda d: text_of(d, "#role-beta") == "PRIMARY")
        kept = b(b.driver.execute_script, "return [sessionStorage.getItem('standby-token'), localStorage.length]")
        assert kept == [pair.token, 0]  # in the tab only
        assert b.text("#banners") == ""
        # Split: alpha is promoted too and both hold the service IPs.
        as_primary(pair.agents["alpha"], lsn=60_000)
        b.wait(None, "the two-primaries and two-holders banners",
               lambda d: "two primaries" in text_of(d, "#banners").lower()
               and "service ips held by alpha and beta" in text_of(d, "#banners").lower())
    finally:
        gen.close()


@pytest.mark.alone  # a browser loads the machine (tests/gate.py)
def test_page_in_a_browser_names_a_primary_heard_only_in_heartbeats(pairs: Pairs) -> None:
    """beta's agent API does not answer but its heartbeats do: the page names beta primary (from them)
    and says its API is unreachable, rather than shouting that no node accepts writes."""
    pair = pairs(serve=("alpha",))
    as_standby(pair.agents["alpha"], primary_lsn=50_000, lsn=40_000)
    gen = browser_in(None)
    b = next(gen)
    try:
        b(b.driver.get, f"http://127.11.0.11:{pair.port}/ui/")
        b.wait(None, "beta unreachable", lambda d: "beta is unreachable" in text_of(d, "#banners"))
        assert b.text("#fact-primary") == "beta"
        assert "no primary" not in b.text("#banners").lower()
        assert b.text("#role-beta") == "UNREACHABLE" and b.text("#heard-beta").startswith("primary, term 3")
    finally:
        gen.close()
