"""Which client sessions through a service IP are still open (standby.act.sessions), from /proc/net/tcp."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from standby.act import sessions

SERVICE = ipaddress.IPv4Address("192.0.2.100")
HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _line(local: str, state: str) -> str:
    return f"   0: {local} 0B0200C0:D431 {state} 00000000:00000000 00:00000000 00000000   114        0 1 1 0 20 4 30 10 -1\n"


def test_counts_only_open_sessions_on_the_service_ip_and_port() -> None:
    text = HEADER + "".join([
        _line("640200C0:1538", "01"),  # 192.0.2.100:5432, ESTABLISHED
        _line("640200C0:1538", "08"),  # CLOSE_WAIT: the client closed, this side has not
        _line("640200C0:1538", "04"),  # FIN_WAIT1: this side's FIN is out
        _line("640200C0:1538", "0A"),  # LISTEN
        _line("640200C0:1F90", "01"),  # another port
        _line("0B0200C0:1538", "01"),  # the node's own address
    ])
    assert sessions.open_sessions(text, [SERVICE], 5432) == 2
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
