"""What reaches the agent from the network: heartbeat replay across restarts, the boot counter,
the API's listen addresses and limits, the token's travel, and the state files' modes.

Agents here are real (built from the example configuration, secrets in a temporary directory)
but never run their loop; heartbeats are really encoded with the shared key and fed to the
agent's own packet handler, as the socket would.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import ipaddress
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby import apiclient, config
from standby.agent import node as node_mod
from standby.agent.heartbeat import Heartbeat, encode
from standby.agent.link import drain
from standby.agent.node import Agent
from standby.agent.store import Store
from standby.api import ApiServer
from standby.cli.status import render
from standby.documents import PAIR_STATUS
from standby.model import DbState, Net, PeerView
from tests.unit.configs import example_with_secrets
from tests.unit.loopback import free_port, running

PRIMARY_IN_SYNC = PeerView(term=4, db=DbState.PRIMARY, services=True, lsn=5_000, sync_ok=True,
                           carrier={Net.PUBLIC: True, Net.PRIVATE: True}, tiebreaker_ok=True)


class _Socket:
    """Hands the agent's packet handler queued datagrams, as a non-blocking UDP socket would."""

    def __init__(self, packets: list[tuple[bytes, str]]) -> None:
        self.packets = list(packets)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.packets:
            raise BlockingIOError
        data, ip = self.packets.pop(0)
        return data, (ip, 8009)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, Any], Path]]:
    raw, _ = example_with_secrets(tmp_path)
    # This machine has no eth0 with the service IP; which addresses are held is not the point here.
    monkeypatch.setattr(node_mod.addresses, "held", lambda sip: False)
    yield raw, tmp_path


def _agent(raw: dict[str, Any]) -> Agent:
    a = Agent(config.parse(raw), "alpha")
    asyncio.run(a._restore())
    return a


def _close(a: Agent) -> None:
    for pool in (a.pg_pool, a.svc_pool, a.probe_pool):
        pool.shutdown(wait=False)


def _beta_heartbeat(a: Agent, boot: int, seq: int, ack: tuple[int, int] | None, net: Net = Net.PRIVATE) -> tuple[bytes, str]:
    packet = encode(Heartbeat(a.cfg.cluster, "beta", boot, seq, net, a.digest, PRIMARY_IN_SYNC, ack), a.key)
    return packet, str(getattr(a.cfg.nodes["beta"], net.value).ip)


def _feed(a: Agent, packets: list[tuple[bytes, str]], net: Net = Net.PRIVATE) -> None:
    drain(_Socket(packets), net, a.link.on_datagram)  # type: ignore[arg-type]


def _recorded(a: Agent) -> None:
    """Wait until the peer boots the receiver asked to write are on disk (the state thread runs in order)."""
    a.state_pool.submit(lambda: None).result(5)


# -- M4: heartbeat replay after the receiver restarts --------------------------------------------


def test_m4_recorded_heartbeats_replayed_after_restart_are_not_the_peers_view(setup: tuple[dict[str, Any], Path]) -> None:
    raw, _ = setup
    first = _agent(raw)
    # beta's run 7 talks to alpha's first run: "primary, you are my synchronous standby".
    recorded = [_beta_heartbeat(first, 7, seq, (first.boot, 1)) for seq in range(1, 6)]
    older_run = [_beta_heartbeat(first, 6, seq, None) for seq in range(900, 905)]
    _feed(first, recorded[:1])  # a new boot: written down before it counts
    _recorded(first)
    _feed(first, recorded[1:2])
    assert first.peer_view == PRIMARY_IN_SYNC and first.heard[Net.PRIVATE] is not None
    _close(first)

    restarted = _agent(raw)  # same state directory: alpha's agent started again
    assert restarted.boot > first.boot
    _feed(restarted, recorded + older_run)
    assert restarted.peer_view is None, "a recording made the restarted agent take the peer's view"
    assert restarted.heard[Net.PRIVATE] is None, "a recording counted as the peer being alive"

    # The live peer soon acknowledges this run; from then on it is heard again, as is a newer run.
    _feed(restarted, [_beta_heartbeat(restarted, 7, 10, None)])
    assert restarted.peer_view is None
    _feed(restarted, [_beta_heartbeat(restarted, 7, 11, (restarted.boot, 1))])
    assert restarted.peer_view == PRIMARY_IN_SYNC and restarted.heard[Net.PRIVATE] is not None
    _close(restarted)


def test_m4_peer_restart_is_heard_once_written_down_and_older_runs_stay_refused(
        setup: tuple[dict[str, Any], Path]) -> None:
    raw, _ = setup
    first = _agent(raw)
    _feed(first, [_beta_heartbeat(first, 7, 1, None)])
    _recorded(first)
    _close(first)
    again = _agent(raw)
    # Both restarted: beta's new run cannot acknowledge alpha's yet, and needs not (it is newer); its
    # first heartbeat starts the write of its boot, the next one after that write is heard. The state
    # thread is held busy so the write is still pending when the first heartbeat is judged (on an idle
    # machine a write on tmpfs could finish before the handler looks, and that heartbeat is rightly heard).
    disk_busy = threading.Event()
    again.state_pool.submit(disk_busy.wait, 10)
    try:
        _feed(again, [_beta_heartbeat(again, 8, 1, None)])
        assert again.peer_view is None and again.receiver.rejected["boot_unrecorded"] == 1
    finally:
        disk_busy.set()
    _recorded(again)
    _feed(again, [_beta_heartbeat(again, 8, 2, None)])
    assert again.peer_view == PRIMARY_IN_SYNC
    _close(again)
    third = _agent(raw)
    _feed(third, [_beta_heartbeat(third, 7, 50, (third.boot, 1))])  # run 7 is over: even with a plausible ack
    assert third.peer_view is None and third.receiver.rejected["replay"] == 1
    _close(third)


# -- L4: a damaged boot counter ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["corrupt", "missing", "empty"])
def test_l4_damaged_boot_counter_still_gives_a_newer_boot(tmp_path: Path, damage: str) -> None:
    store = Store(tmp_path / "state", "alpha")
    # The peer has persisted our run as newer than any small counter: a time-based boot after
    # years of restarts, or a counter that really reached this far.
    first = store.next_boot()
    store.write_liveness(first, clean=True)  # as every decision step of a run does
    second = store.next_boot()
    store.write_liveness(second, clean=True)
    assert second > first
    if damage == "corrupt":
        store.boot_path.write_bytes(b"\x00\xffgarbage")
    elif damage == "missing":
        store.boot_path.unlink()
    else:
        store.boot_path.write_text("")
    third = store.next_boot()
    assert third > second, "with the counter file damaged, the peer would drop every heartbeat as a replay"


def test_l4_boot_counter_and_liveness_both_lost_fall_back_to_the_clock(tmp_path: Path) -> None:
    store = Store(tmp_path / "state", "alpha")
    store.boot_path.write_text("41")
    assert store.next_boot() > 1_600_000_000  # above any counter the peer can have seen by counting
    store.boot_path.write_text("not a number")
    store.live_path.write_text("{")
    assert store.next_boot() > 1_600_000_000


# -- L6: the history and the state directory are root's ------------------------------------------


def test_l6_history_and_state_dir_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "history.jsonl").write_text("")
    (state / "history.jsonl").chmod(0o644)  # written by an older version
    store = Store(state, "alpha")
    store.record("agent_started", boot=1)
    assert stat.S_IMODE(state.stat().st_mode) == 0o711  # no listing or writing by others
    assert stat.S_IMODE(store.history_path.stat().st_mode) == 0o600
    fresh = Store(tmp_path / "other", "alpha")
    fresh.record("agent_started", boot=1)
    assert stat.S_IMODE(fresh.history_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o711


# -- H3: the API's listen addresses, its limits, and its own thread ------------------------------


def test_h3_api_listens_on_private_and_localhost_unless_asked(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    del raw["api"]["listen"]
    cfg = config.parse(raw)
    assert config.api_addresses(cfg, "alpha") == [cfg.nodes["alpha"].private.ip, ipaddress.IPv4Address("127.0.0.1")]
    raw["api"]["listen"] = ["private", "public"]
    assert cfg.nodes["beta"].public.ip in config.api_addresses(config.parse(raw), "beta")
    for bad, key in (({"bind": "0.0.0.0"}, "listen"), ({"listen": ["everywhere"]}, "api.listen[0]"),
                     ({"listen": []}, "api.listen"), ({"listen": ["public", "public"]}, "api.listen"),
                     ({"max_connections": 0}, "api.max_connections"), ({"request_timeout_s": 0}, "api.request_timeout_s")):
        raw["api"] = {"port": 8008, **bad}
        with pytest.raises(config.ConfigError) as e:
            config.parse(raw)
        assert key in str(e.value), str(e.value)


class _AgentLoop:
    """A loop in a thread of its own, standing for the agent's decision loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="agent-loop", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def api(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[ApiServer, str, _AgentLoop]]:
    overrides: dict[str, Any] = dict(getattr(request, "param", {}))
    raw, files = example_with_secrets(tmp_path, free_port())
    raw["followers"] = overrides.pop("followers", [])
    started = overrides.pop("started", True)
    raw["api"].update({"request_timeout_s": 0.5, **overrides})
    agent = Agent(config.parse(raw), "alpha")
    agent.started = started  # as Agent.run sets it once the state is restored and the first look taken
    agent_loop = _AgentLoop()
    server = ApiServer(agent, agent_loop.loop)
    server.start()
    try:
        yield server, files["api.token_file"].read_text().strip(), agent_loop
    finally:
        server.stop()
        agent_loop.close()
        _close(agent)


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def _closed_by_server(s: socket.socket, within_s: float, trickle: bytes = b"") -> bool:
    """Whether the server closes ``s`` while the client idles (or trickles a request byte by byte)."""
    deadline = time.monotonic() + within_s
    s.settimeout(0.1)
    i = 0
    while time.monotonic() < deadline:
        try:
            if trickle:
                s.send(trickle[i % len(trickle):i % len(trickle) + 1])
                i += 1
            if s.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset
            return True
    return False


def test_h3_idle_and_slow_connections_are_cut_off_and_each_serves_one_request(
        api: tuple[ApiServer, str, _AgentLoop]) -> None:
    server, _, _ = api
    port = server.cfg.port
    idle = socket.create_connection(("127.0.0.1", port))
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        assert _closed_by_server(idle, 10), "an idle connection is kept open"
        # A request head that never ends: one byte at a time, forever.
        assert _closed_by_server(slow, 10, trickle=b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 10_000), \
            "a slowly sent request keeps its connection"
    finally:
        idle.close()
        slow.close()
    status, headers = _get(port, "/health")
    assert status == 503 and headers.get("connection", "").lower() == "close"


FOLLOWER_ON_LOOPBACK = {"name": "dr", "role": "warm", "upstream": "primary",
                        "public": {"address": "127.0.1.21/8", "interface": "lo"},
                        "private": {"address": "127.0.0.21/8", "interface": "lo"}}


@pytest.mark.parametrize("api", [{"followers": [FOLLOWER_ON_LOOPBACK]}], indirect=True)
def test_a_followers_status_questions_keep_their_connection_and_no_one_elses_do(
        api: tuple[ApiServer, str, _AgentLoop]) -> None:
    """A follower's agent asks GET /status every step interval: over one kept connection, not one connection
    (and TLS handshake) per question. Every other request, the follower's included, still closes its own."""
    server, _, _ = api
    port = server.cfg.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=("127.0.0.21", 0))
    try:
        seen = set()
        for _ in range(3):
            conn.request("GET", "/status")
            r = conn.getresponse()
            r.read()
            assert r.status == 200 and not r.will_close
            assert conn.sock is not None
            seen.add(conn.sock.getsockname())
        assert len(seen) == 1
        conn.request("GET", "/health")
        r = conn.getresponse()
        r.read()
        assert r.will_close
    finally:
        conn.close()
    assert _get(port, "/status")[1].get("connection", "").lower() == "close"  # not a follower's address


def test_h3_operations_run_on_the_agents_loop_not_the_apis(api: tuple[ApiServer, str, _AgentLoop]) -> None:
    server, token, agent_loop = api
    seen: list[tuple[str, bool]] = []

    async def record(name: str, *args: Any) -> dict[str, Any]:
        seen.append((threading.current_thread().name, asyncio.get_running_loop() is agent_loop.loop))
        return {"recorded": name}

    server.agent.operate = record  # type: ignore[method-assign]
    conn = http.client.HTTPConnection("127.0.0.1", server.cfg.port, timeout=5)
    try:
        conn.request("POST", "/fence", body=b"{}", headers={"Authorization": f"Bearer {token}",
                                                          "Content-Type": "application/json"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert seen == [("agent-loop", True)]
    assert server._thread is not None and server._thread.name == "api" and server._thread is not threading.current_thread()


@pytest.mark.parametrize("api", [{"started": False}], indirect=True)
def test_m4_an_agent_still_restoring_its_state_answers_starting_and_runs_nothing(
        api: tuple[ApiServer, str, _AgentLoop]) -> None:
    """CI run 18: the API answered while the agent was still restoring its state, with the view of a new
    agent (term 0, not fenced, no maintenance): a status, a load balancer or an operation read or acted
    on a state that was not this node's. Until Agent.run has restored it, every path says so and acts on
    nothing."""
    server, token, _ = api
    ran: list[str] = []

    async def record(name: str, *args: Any) -> dict[str, Any]:
        ran.append(name)
        return {}

    server.agent.operate = record  # type: ignore[method-assign]
    port = server.cfg.port
    for path in ("/status", "/metrics", "/primary", "/replica", "/health", "/ui/"):
        status, _ = _get(port, path)
        assert status == 503, f"{path} answered {status} before the state was restored"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/fence", body=b"{}", headers={"Authorization": f"Bearer {token}",
                                                          "Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 503 and "starting" in body, body
    finally:
        conn.close()
    assert ran == []
    assert apiclient.agent_status(server.agent.cfg, "alpha", via=("127.0.0.1",)) is None
    server.agent.started = True
    assert _get(port, "/status")[0] == 200


# -- M8: the token for /status and /metrics, and never in clear over the public network ----------


@pytest.mark.parametrize("api", [{"token_for_status": True}], indirect=True)
def test_m8_status_and_metrics_can_require_the_token(api: tuple[ApiServer, str, _AgentLoop]) -> None:
    server, token, _ = api
    port = server.cfg.port
    assert _get(port, "/status")[0] == 401 and _get(port, "/metrics")[0] == 401
    assert _get(port, "/status", {"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {token}"}
    assert _get(port, "/status", auth)[0] == 200 and _get(port, "/metrics", auth)[0] == 200
    for path in ("/primary", "/replica", "/health"):  # load balancers' checks stay open
        assert _get(port, path)[0] in (200, 503)


def test_m8_status_and_metrics_open_by_default(api: tuple[ApiServer, str, _AgentLoop]) -> None:
    server, _, _ = api
    assert _get(server.cfg.port, "/status")[0] == 200 and _get(server.cfg.port, "/metrics")[0] == 200


def _outbound_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the local address
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if ipaddress.ip_address(ip).is_loopback else ip


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_POST(self) -> None:
        _Recorder.seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("in_clear", [False, True])
def test_m8_client_never_sends_the_token_in_clear_to_a_public_address(tmp_path: Path, in_clear: bool) -> None:
    public = _outbound_address()
    if public is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = free_port()
    raw, files = example_with_secrets(tmp_path, port)
    net = ipaddress.IPv4Interface(f"{public}/24").network
    free = [str(h) for h in net.hosts() if str(h) != public][:3]
    raw["nodes"]["beta"]["public"]["address"] = f"{public}/24"
    raw["nodes"]["beta"]["private"]["address"] = "127.0.0.3/8"  # nothing listens there: refused at once
    raw["nodes"]["alpha"]["public"]["address"] = f"{free[0]}/24"
    raw["service_ips"] = [{"address": f"{free[1]}/24", "interface": "eth0"}]
    raw.pop("reporting", None)
    raw["api"]["token_in_clear"] = in_clear
    cfg = config.parse(raw)
    assert cfg.tls is None
    _Recorder.seen = []
    with running(http.server.HTTPServer((public, port), _Recorder)):
        client = apiclient.AgentApi(cfg)
        if in_clear:
            assert client.post("beta", "/maintenance", {"suspend": True}, timeout_s=5) == {"ok": True}
            assert _Recorder.seen == [f"Bearer {files['api.token_file'].read_text().strip()}"]
        else:
            with pytest.raises(apiclient.ApiError) as e:
                client.post("beta", "/maintenance", {"suspend": True}, timeout_s=5)
            assert "api.token_in_clear" in str(e.value)
            assert _Recorder.seen == [], "the token crossed the public network in clear"


def test_m8_token_may_go_to_loopback_and_private_in_clear_and_anywhere_over_tls(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    cfg = config.parse(raw)
    assert config.token_may_travel(cfg, "127.0.0.1") and config.token_may_travel(cfg, "198.51.100.12")
    assert not config.token_may_travel(cfg, "192.0.2.12") and not config.token_may_travel(cfg, "beta.example")
    raw["tls"] = {"ca_file": "/ca.pem", "cert_file": "/{node}.pem", "key_file": "/{node}.key"}
    assert config.token_may_travel(config.parse(raw), "192.0.2.12")


# -- L6: what standby status says about synchronous_commit ---------------------------------------


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_l6_status_says_clients_can_lower_synchronous_commit(capsys: pytest.CaptureFixture[str], durability: str) -> None:
    render(PAIR_STATUS.decode({"cluster": "c", "mode": "hot", "durability": durability, "observer": "alpha",
                               "observed_at": "now", "primary": None, "nodes": {}, "service_ips": {}, "warnings": [],
                               "reporting": None}))
    out = capsys.readouterr().out
    assert ("synchronous_commit" in out) is (durability == "sync")


# -- a new peer boot is recorded off the event loop --------------------------------------------------


def test_x2_a_new_peer_boot_is_recorded_off_the_loop_and_heard_once_on_disk(setup: tuple[dict[str, Any], Path]) -> None:
    """The receiver fsynced the peer's new boot on the event loop: with another lab keeping the disk
    busy, the write held alpha's loop long enough that it counted a 0.67 s stall and fenced itself
    while the pair started (parallel lab tests). The write runs on the state thread now, and the new
    boot is not acted on before it is on disk, so a restart still refuses its recordings (M4)."""
    raw, _ = setup
    a = _agent(raw)
    release, writers = threading.Event(), []
    real_save = a.store.save_peer_boot

    def slow_save(boot: int) -> None:
        writers.append(threading.get_ident())
        assert release.wait(10), "the test never released the write"
        real_save(boot)

    a.store.save_peer_boot = slow_save  # type: ignore[method-assign]
    feeder = threading.Thread(target=_feed, args=(a, [_beta_heartbeat(a, 8, 1, None)]))
    feeder.start()
    feeder.join(5)
    try:
        assert not feeder.is_alive(), "the heartbeat handler waited for the disk"
        assert writers and writers[0] != feeder.ident, "the boot was written on the handler's own thread"
        assert a.peer_view is None, "a new boot was acted on before it was on disk"
    finally:
        release.set()
        feeder.join(5)
    a.state_pool.submit(lambda: None).result(5)  # the write is done
    assert a.store.peer_boot() == 8
    _feed(a, [_beta_heartbeat(a, 8, 2, None)])
    assert a.peer_view == PRIMARY_IN_SYNC
    _close(a)
