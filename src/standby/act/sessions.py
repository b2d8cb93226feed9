"""Client sessions that reached this node's PostgreSQL through a service IP: ended before the address goes.

Why (CI run 42, and a lab experiment that reproduced it): a client that has sent a query and waits for
its answer sends nothing more. If the address is removed first, the server's answer, and then the
"terminating connection" and the FIN of the stop that follows, can no longer leave (the kernel will not
send from an address this node no longer has), so the client waits for good: a libpq client without TCP
keepalives hung for as long as it was watched, a Kamailio worker would hang with it. Stopping the server
first, while the address is still here, tells every session it is over; the address goes once their
sockets have said so.

This module only reads: which of this namespace's TCP sockets on the service IPs and PostgreSQL's port
have not yet had their close acknowledged by the client, from /proc/net/tcp (service IPs are IPv4,
see standby.act.addresses). The caller signals the server.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from pathlib import Path

from standby.act import postgres as pgact
from standby.config import Config

PROC_TCP = Path("/proc/net/tcp")
# The states in which the client has not yet acknowledged this end's FIN (include/net/tcp_states.h):
# ESTABLISHED and CLOSE_WAIT (not sent), FIN_WAIT1, CLOSING and LAST_ACK (sent, not acknowledged). A FIN
# merely sent is not enough: lost once (CI run 44: a thawed host's network came back a moment after its
# processes), its retransmission could not leave once the address was gone.
OPEN_STATES = frozenset({"01", "08", "04", "0B", "09"})
WAIT_S = 1.0  # a backend ends within milliseconds of the stop signal; one stuck in the kernel does not hold the address


def _local_endpoint(field: str) -> tuple[ipaddress.IPv4Address, int]:
    """/proc/net/tcp's "0100007F:1538": the address as the kernel stores it (network order read as a
    little-endian word on x86, hence the reversal), the port in plain hex."""
    addr, port = field.split(":")
    return ipaddress.IPv4Address(bytes.fromhex(addr)[::-1]), int(port, 16)


def open_sessions(text: str, ips: Iterable[ipaddress.IPv4Address], port: int) -> int:
    """How many sockets in ``text`` (the contents of /proc/net/tcp) are local to one of ``ips`` at ``port``
    and not yet closed with the client's acknowledgement."""
    wanted = set(ips)
    count = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] not in OPEN_STATES:
            continue
        try:
            ip, p = _local_endpoint(fields[1])
        except ValueError:
            continue
        if p == port and ip in wanted:
            count += 1
    return count


def wait_ended(ips: Iterable[ipaddress.IPv4Address], port: int, timeout_s: float = WAIT_S,
               proc: Path = PROC_TCP) -> int:
    """Wait until no session through ``ips`` to ``port`` is open on this side, at most ``timeout_s``;
    the number still open then (0: every client was told)."""
    ips = list(ips)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            left = open_sessions(proc.read_text(), ips, port)
        except OSError:
            return 0  # nothing to read: nothing to wait for (not Linux, or /proc not mounted)
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def told(cfg: Config, node: str) -> int:
    """``wait_ended`` for ``node``'s server: its port, the pair's service IPs."""
    return wait_ended([s.address.ip for s in cfg.service_ips], cfg.pg(node).port)


def told_unless_running_on(cfg: Config, node: str, stop_decided: bool = False) -> int:
    """Before a release removes the service IPs: if the local server's stop was decided (a fence: its signal
    went out with the decision), or it is shutting down or already down, wait for its sessions (``told``); 0
    when it runs on (a server that keeps running keeps its sessions, and nothing is waited for).
    Already down counts (CI run 54): a fast stop can be over before the release looks, and its backends'
    goodbyes may still wait for the client's acknowledgement, or to be sent again, which they cannot be once
    the address is gone. Decided counts whatever the lock file says (stop 37's CI): a postmaster reads its
    signals from its own loop, and a thawed one had not yet written "stopping" when the release looked."""
    if stop_decided:
        return told(cfg, node)
    data_dir = cfg.pg(node).data_dir
    runs_on = pgact.running_pid(data_dir) is not None and not pgact.server_stopping(data_dir)
    return 0 if runs_on else told(cfg, node)
