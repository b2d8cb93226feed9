"""Which client sessions through a service IP are still open (standby.act.sessions), from /proc/net/tcp."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from pathlib import Path

import pytest

from standby import config
from standby.act import postgres as pgact
from standby.act import sessions
from standby.model import DbState
from tests.unit.configs import example_with_secrets
from tests.unit.shell_fakes import FakeKernel, FakePostgres, run, shell

SERVICE = ipaddress.IPv4Address("192.0.2.100")
HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _line(local: str, state: str) -> str:
    return f"   0: {local} 0B0200C0:D431 {state} 00000000:00000000 00:00000000 00000000   114        0 1 1 0 20 4 30 10 -1\n"


def test_counts_only_open_sessions_on_the_service_ip_and_port() -> None:
    text = HEADER + "".join([
        _line("640200C0:1538", "01"),  # 192.0.2.100:5432, ESTABLISHED
        _line("640200C0:1538", "08"),  # CLOSE_WAIT: the client closed, this side has not
        _line("640200C0:1538", "04"),  # FIN_WAIT1: this side's FIN is out, not acknowledged (CI run 44)
        _line("640200C0:1538", "05"),  # FIN_WAIT2: the client acknowledged it
        _line("640200C0:1538", "06"),  # TIME_WAIT
        _line("640200C0:1538", "0A"),  # LISTEN
        _line("640200C0:1F90", "01"),  # another port
        _line("0B0200C0:1538", "01"),  # the node's own address
    ])
    assert sessions.open_sessions(text, [SERVICE], 5432) == 3
    assert sessions.open_sessions(text, [], 5432) == 0
    assert sessions.open_sessions(HEADER + "garbage\n" + _line("zz:1538", "01"), [SERVICE], 5432) == 0


def test_reads_this_kernels_sockets_and_waits_for_a_close() -> None:
    """A real accepted connection on 127.0.0.1 counts until this side closes it (the byte order is the kernel's)."""
    loopback = ipaddress.IPv4Address("127.0.0.1")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            assert sessions.wait_ended([loopback], port, timeout_s=0.05) == 1
            accepted.close()
            assert sessions.wait_ended([loopback], port, timeout_s=2.0) == 0
            assert client.recv(1) == b""  # the client heard the close


def test_nothing_to_read_is_nothing_to_wait_for(tmp_path: Path) -> None:
    assert sessions.wait_ended([SERVICE], 5432, proc=tmp_path / "absent") == 0


# -- the server's own word that it is stopping, and the release that waits on it ------------------


def _lock_file(data_dir: Path, status: str) -> None:
    data_dir.mkdir(exist_ok=True)
    # postmaster.pid: pid, data directory, start time, port, socket directory, listen address, shared memory key,
    # status (padded to 8 characters by PostgreSQL)
    (data_dir / "postmaster.pid").write_text(f"4242\n{data_dir}\n1764800000\n5432\n/run/postgresql\n*\n  1 2\n{status}\n")


def test_server_stopping_is_the_lock_files_status_line(tmp_path: Path) -> None:
    assert not pgact.server_stopping(tmp_path)  # no server
    _lock_file(tmp_path, "ready   ")
    assert not pgact.server_stopping(tmp_path)
    _lock_file(tmp_path, "stopping")
    assert pgact.server_stopping(tmp_path)
    (tmp_path / "postmaster.pid").write_text("4242\n")  # a server still writing its file at start-up
    assert not pgact.server_stopping(tmp_path)


def _release_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operate: str | None,
                   says_stopping: bool) -> tuple[list[str], object, bool]:
    """Runs a primary's shell whose server, once signalled, goes on running for 0.3 s, its lock file saying
    "stopping" meanwhile or not yet (``says_stopping``: a postmaster reads its signals from its own loop, and
    a thawed one had more to do first); then either freezes it for 2 s (the agent's own fence) or runs the
    operation ``operate``. Returns the order in which the stop was asked, the sessions were waited for and
    the service IP removed ("stop_requested fenced" when the state on disk said fenced at the signal); the
    operation's result; whether the state on disk says fenced at the end."""
    order: list[str] = []
    state_path: list[Path] = []

    class Kernel(FakeKernel):
        def remove(self, sip: object) -> bool:
            order.append("remove_ip")
            return super().remove(sip)  # type: ignore[arg-type]

    class Slow(FakePostgres):
        def request_stop(self) -> None:
            fenced = json.loads(state_path[0].read_text()).get("fenced") if state_path[0].exists() else False
            order.append("stop_requested fenced" if fenced else "stop_requested")
            super().request_stop()

        def stop(self) -> None:
            time.sleep(0.3)  # a fast shutdown takes a moment: the release runs meanwhile, on its own thread
            super().stop()

    pg = Slow(DbState.PRIMARY)
    monkeypatch.setattr(pgact, "server_stopping", lambda d: says_stopping and "stop_requested" in pg.calls)
    monkeypatch.setattr(pgact, "running_pid", lambda d: None if "stop" in pg.calls else 4242)
    monkeypatch.setattr(sessions, "wait_ended", lambda ips, port: order.append("wait") or 0)
    with shell(tmp_path, monkeypatch, pg, Kernel({str(SERVICE)})) as sh:
        state_path.append(sh.agent.store.state_path)

        async def go() -> object:
            await sh.start()
            for _ in range(5):
                await sh.tick()
            if operate is not None:
                return await sh.agent.operator.operate(operate)
            await sh.tick(advance=2.0, send=False)  # frozen: the fence of a running primary
            await sh.tick()
            await sh.tick()
            return None

        result = run(go())
    return order, result, json.loads(sh.agent.store.state_path.read_text())["fenced"]


def test_ci42_the_agents_fence_tells_the_clients_before_its_release_removes_the_ips(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's own fence of a running primary (a stall here): its server is signalled when the fence is
    decided; the release that follows waits for the sessions before the service IP goes."""
    order, _, fenced = _release_order(tmp_path, monkeypatch, None, says_stopping=True)
    assert fenced
    assert order.index("stop_requested") < order.index("wait") < order.index("remove_ip"), order


def test_ci_stop37_the_fences_release_waits_for_the_sessions_before_the_server_says_stopping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop 37's CI: the thawed primary's fence signalled its server; the release, decided in the same step,
    found the postmaster alive and not yet "stopping", waited for nothing and removed the service IP 0.12 s
    after the decision (no "sessions_left_open"; the socket stayed in FIN_WAIT1 for the 20 s watched). The
    backend's goodbye, sent 27 ms after the decision into the thawed host's network (back a moment after its
    processes), was lost; its retransmission could not leave the removed address, and the client waited for
    good. A release on a node its decision fenced waits whatever the lock file says."""
    order, _, fenced = _release_order(tmp_path, monkeypatch, None, says_stopping=False)
    assert fenced
    assert order.index("stop_requested") < order.index("wait") < order.index("remove_ip"), order


def test_ci_stop37_an_operators_fence_tells_the_clients_before_the_service_ip_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fence asked of the agent by a person (`standby promote --force` asks it of the other node's agent)
    let go of the service IPs first and stopped the server after: every session through them was ended by a
    server that could no longer send from the address (the CI run 42 pattern). Not urgent, so in
    standby.act.fence's order: "fenced" on disk before the signal."""
    order, result, fenced = _release_order(tmp_path, monkeypatch, "fence", says_stopping=False)
    assert result == {"fenced": "alpha"} and fenced
    assert order.index("stop_requested fenced") < order.index("wait") < order.index("remove_ip"), order


def test_told_unless_running_on_waits_for_nothing_while_the_server_runs_on(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config.parse(example_with_secrets(tmp_path)[0])
    waited: list[int] = []
    monkeypatch.setattr(sessions, "wait_ended", lambda ips, port: waited.append(port) or 3)
    monkeypatch.setattr(pgact, "server_stopping", lambda d: False)
    monkeypatch.setattr(pgact, "running_pid", lambda d: 4242)  # running on, not stopping: its sessions stay
    assert sessions.told_unless_running_on(cfg, "alpha") == 0 and waited == []
    monkeypatch.setattr(pgact, "server_stopping", lambda d: True)
    assert sessions.told_unless_running_on(cfg, "alpha") == 3 and waited == [cfg.pg("alpha").port]


def test_ci54_a_release_after_the_server_has_already_stopped_still_waits_for_its_goodbyes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI run 54: the fence's fast stop was over (postmaster.pid gone) before the release looked, so the release
    saw no server "stopping", waited for nothing and removed the service IP 130 ms after the decision; a backend's
    goodbye still unacknowledged (its first copy lost to the thawed host's network) could no longer be sent
    again, and the client waited for good. A stopped server's sockets are goodbyes in flight: waited for."""
    cfg = config.parse(example_with_secrets(tmp_path)[0])
    waited: list[int] = []
    monkeypatch.setattr(sessions, "wait_ended", lambda ips, port: waited.append(port) or 1)
    monkeypatch.setattr(pgact, "server_stopping", lambda d: False)
    monkeypatch.setattr(pgact, "running_pid", lambda d: None)  # stopped: no live postmaster
    assert sessions.told_unless_running_on(cfg, "alpha") == 1 and waited == [cfg.pg("alpha").port]
