"""Faults from the client network against what an agent listens to: a flood of connections on its
API, and heartbeats recorded on the wire and played back.

Both run from the lab's client namespace (an outsider on the public network, no token, no key),
are bounded in count and time, and refuse any target outside the lab's own networks, so a chaos
campaign can draw them like any other fault.
"""

from __future__ import annotations

import ipaddress
import resource
import select
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from enum import StrEnum

from standby.lab import netns
from standby.lab.lab import Lab
from standby.lab.topology import PRIVATE_NET, PUBLIC_NET, REMOTE_PUBLIC, Net

LAB_NETWORKS = tuple(ipaddress.ip_network(n) for n in (PUBLIC_NET, PRIVATE_NET, ipaddress.ip_interface(REMOTE_PUBLIC).network))
MAX_CONNECTIONS = 5000
MAX_SECONDS = 120.0
MAX_PACKETS = 10_000
HEARTBEAT_PORT = 8009


class FloodKind(StrEnum):
    IDLE = "idle"  # connects and says nothing
    TLS = "tls"  # completes (or tries) a TLS handshake, then says nothing
    SLOW = "slow"  # sends a request head one byte at a time, never finishing it


@dataclass(frozen=True)
class FloodResult:
    opened: int  # connections the kernel completed (the server may still have turned them away)
    cut_off: int  # closed or reset by the server while held
    failed: int  # connect or handshake refused or timed out
    held_at_end: int  # still open when the flood stopped


def _lab_address(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if not any(ip in n for n in LAB_NETWORKS):
        raise ValueError(f"{address} is not a lab address ({', '.join(map(str, LAB_NETWORKS))}): refusing to flood it")
    return str(ip)


def api_flood(lab: Lab, target: str, port: int = 8008, count: int = 1500, hold_s: float = 20.0,
              kinds: tuple[FloodKind, ...] = tuple(FloodKind), reconnect: bool = True) -> FloodResult:
    """Open ``count`` connections to ``target``:``port`` from the client namespace, cycling through
    ``kinds``, and hold them for ``hold_s`` (re-opening those the server cuts off, if ``reconnect``)."""
    target = _lab_address(target)
    if not 1 <= count <= MAX_CONNECTIONS or not 0 < hold_s <= MAX_SECONDS or not kinds:
        raise ValueError(f"count 1-{MAX_CONNECTIONS}, hold_s up to {MAX_SECONDS:g} s and at least one kind")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:  # this process holds the client ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    return netns.call_in(lab.netns("client"), _flood, target, port, count, hold_s, kinds, reconnect)


def _flood(target: str, port: int, count: int, hold_s: float, kinds: tuple[FloodKind, ...],
           reconnect: bool) -> FloodResult:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # an outsider: no CA, no token
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4096
    held: dict[socket.socket, tuple[FloodKind, int]] = {}
    opened = cut = failed = 0
    deadline = time.monotonic() + hold_s

    def open_one(i: int) -> None:
        nonlocal opened, failed
        kind = kinds[i % len(kinds)]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect((target, port))
            if kind is FloodKind.TLS:
                s = tls.wrap_socket(s, do_handshake_on_connect=True)
            elif kind is FloodKind.SLOW:
                s.send(head[:1])
            s.setblocking(False)
        except OSError:
            s.close()
            failed += 1
            return
        opened += 1
        held[s] = (kind, 1)

    try:
        for i in range(count):
            if time.monotonic() >= deadline:
                break
            open_one(i)
        i = count
        while time.monotonic() < deadline:
            poller = select.poll()  # not select(): descriptors here go past 1024
            by_fd = {s.fileno(): s for s in held}
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            readable = [by_fd[fd] for fd, _ in poller.poll(500)]
            gone = []
            for s in readable:
                try:
                    if s.recv(1024) == b"":
                        gone.append(s)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    gone.append(s)
            for s, (kind, sent) in list(held.items()):
                if kind is FloodKind.SLOW and s not in gone:
                    try:
                        s.send(head[sent % len(head):sent % len(head) + 1])
                        held[s] = (kind, sent + 1)
                    except OSError:
                        gone.append(s)
            for s in set(gone):
                held.pop(s, None)
                s.close()
                cut += 1
                if reconnect and time.monotonic() < deadline:
                    open_one(i)
                    i += 1
    finally:
        remaining = len(held)
        for s in held:
            s.close()
    return FloodResult(opened=opened, cut_off=cut, failed=failed, held_at_end=remaining)


# -- heartbeats recorded and played back ------------------------------------------------------------


def capture_heartbeats(lab: Lab, on: str, sender: str, seconds: float = 3.0, limit: int = 200) -> list[bytes]:
    """The heartbeat payloads ``sender`` sends ``on`` over the public network, as seen on the wire
    at ``on`` (a raw packet socket in its namespace), for ``seconds``."""
    if not 0 < seconds <= MAX_SECONDS or not 0 < limit <= MAX_PACKETS:
        raise ValueError(f"seconds up to {MAX_SECONDS:g}, limit 1-{MAX_PACKETS}")
    src = lab.node(sender).public.ip
    iface = lab.node(on).link(Net.PUBLIC).interface
    return netns.call_in(lab.netns(on), _capture, iface, src, seconds, limit)


def _capture(iface: str, src: str, seconds: float, limit: int) -> list[bytes]:
    eth_p_ip = 0x0800
    out: list[bytes] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(eth_p_ip)) as s:
        s.bind((iface, eth_p_ip))
        s.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(out) < limit:
            try:
                pkt = s.recv(65535)
            except TimeoutError:
                continue
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 8 or pkt[9] != socket.IPPROTO_UDP or socket.inet_ntoa(pkt[12:16]) != src:
                continue
            dport = struct.unpack("!H", pkt[ihl + 2:ihl + 4])[0]
            if dport == HEARTBEAT_PORT:
                out.append(pkt[ihl + 8:])
    return out


def replay_heartbeats(lab: Lab, payloads: list[bytes], to: str, as_from: str) -> int:
    """Send recorded heartbeat ``payloads`` from the client namespace to ``to``'s public address,
    with ``as_from``'s public address as source (the lab's switch does not check sources)."""
    if len(payloads) > MAX_PACKETS:
        raise ValueError(f"at most {MAX_PACKETS} packets")
    dst = _lab_address(lab.node(to).public.ip)
    src = _lab_address(lab.node(as_from).public.ip)
    return netns.call_in(lab.netns("client"), _replay, payloads, src, dst)


def _replay(payloads: list[bytes], src: str, dst: str) -> int:
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for data in payloads:
            udp = struct.pack("!HHHH", HEARTBEAT_PORT, HEARTBEAT_PORT, 8 + len(data), 0) + data  # no UDP checksum
            # The kernel fills in the IP checksum, and the id when it is 0.
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                             socket.inet_aton(src), socket.inet_aton(dst))
            s.sendto(ip + udp, (dst, 0))
            sent += 1
    return sent
