"""Fast link-level probes for the agent: ICMP echo to the tie-breaker, ARP for the service IPs.

Both use raw sockets (the agent runs as root) so a probe costs microseconds,
not a process start, and can be repeated every heartbeat.
"""

from __future__ import annotations

import fcntl
import ipaddress
import math
import os
import select
import socket
import struct
import time
from collections.abc import Callable

from standby.config import Config, TieBreaker

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(address: str, timeout_s: float, ident: int | None = None) -> bool:
    """One echo request; True if a matching reply arrives within the timeout."""
    ident = (os.getpid() if ident is None else ident) & 0xFFFF
    seq = int(time.monotonic() * 1000) & 0xFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.setblocking(False)
        try:
            s.sendto(_echo_request(ident, seq), (address, 0))
        except OSError:
            return False  # no route: the link is down
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([s], [], [], left)
            if not ready:
                return False
            data, (src, _) = s.recvfrom(1500)
            if _echo_reply_seq(data, src, address, ident) == seq:
                return True
    return False


SOL_RAW, ICMP_FILTER = 255, 1  # a raw socket's option: a bit per ICMP type it is not to receive (linux/icmp.h)
_ONLY_ECHO_REPLIES = struct.pack("=I", 0xFFFFFFFF & ~1)  # type 0, echo reply, is the only one let through


class Echoer:
    """One raw ICMP socket kept open, asking one address again and again: the agent's tie-breaker on its event
    loop, where a socket made and a thread woken per echo cost more CPU at rest than the echo itself.

    ``send`` asks (a new sequence number each time); ``answered`` reads every reply waiting and says whether one
    answers an echo sent at most ``timeout_s`` before it is read. A reply read later than that does not count:
    after a stall of the reader it would say the tie-breaker answers now when it answered long ago."""

    def __init__(self, address: str, timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 ident: int | None = None) -> None:
        self.address, self.timeout_s, self.clock = address, timeout_s, clock
        self.ident = (os.getpid() if ident is None else ident) & 0xFFFF
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            self.sock.setsockopt(SOL_RAW, ICMP_FILTER, _ONLY_ECHO_REPLIES)
        except OSError:
            pass  # an older kernel: the replies are told apart below anyway, only more of them are read
        # Not connected, though that would keep other hosts' echo replies (a monitoring pinger's, a flood's) off the
        # event loop: a connected socket keeps the source address chosen at connect for its whole life, and one that
        # later moves away (a service IP let go, a renumbered interface) would have the answers sent elsewhere and
        # the tie-breaker read as lost. Each send here picks its source as the per-echo socket did.
        self.sock.setblocking(False)
        self.seq = 0
        self.sent: dict[int, float] = {}  # sequence -> when it left, for the echoes that may still count

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self) -> bool:
        """Ask once; False when the echo could not leave (no route: the link is down)."""
        now = self.clock()
        self.sent = {q: t for q, t in self.sent.items() if now - t <= self.timeout_s}
        self.seq = (self.seq + 1) & 0xFFFF
        try:
            self.sock.sendto(_echo_request(self.ident, self.seq), (self.address, 0))
        except OSError:
            return False
        self.sent[self.seq] = now
        return True

    def answered(self) -> bool:
        now, found = self.clock(), False
        while True:
            try:
                data, (src, _) = self.sock.recvfrom(1500)
            except (BlockingIOError, InterruptedError):
                return found
            except OSError:  # an error the socket held (reported once): no answer in it, nothing more to read now
                return found
            seq = _echo_reply_seq(data, src, self.address, self.ident)
            if seq is not None and now - self.sent.pop(seq, -math.inf) <= self.timeout_s:
                found = True

    def close(self) -> None:
        self.sock.close()


def _echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"standby-tiebreaker"
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def _echo_reply_seq(data: bytes, src: str, address: str, ident: int) -> int | None:
    """The sequence number of an echo reply from ``address`` to this ``ident``; None for anything else."""
    ihl = (data[0] & 0x0F) * 4 if data else 0
    if src != address or len(data) < ihl + 8:
        return None
    typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
    return rseq if typ == 0 and rid == ident else None


def tcp_connect(address: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tiebreaker_timeout_s(cfg: Config) -> float:
    """How long the agent waits for one tie-breaker answer: within two heartbeats, at most half a second."""
    return min(0.5, 2 * cfg.timings.heartbeat_interval_ms / 1000)


def tiebreaker_target(tb: TieBreaker) -> str:
    return f"{tb.address} (TCP port {tb.port})" if tb.port else f"{tb.address} (ICMP echo)"


def tiebreaker_answers(cfg: Config, tries: int = 1) -> bool:
    """The agent's tie-breaker probe: a TCP connection to the configured port, or (port 0) one raw
    ICMP echo, each given ``tiebreaker_timeout_s``; True if any of ``tries`` answers. Raises
    ProbeError when an echo could not even be sent from here (a raw socket needs root)."""
    tb = cfg.tiebreaker
    if tb is None:
        raise ValueError("no [tiebreaker] configured")
    timeout = tiebreaker_timeout_s(cfg)
    for _ in range(tries):
        if tb.port:
            if tcp_connect(str(tb.address), tb.port, timeout):
                return True
            continue
        try:
            if icmp_echo(str(tb.address), timeout):
                return True
        except OSError as e:
            raise ProbeError(e.errno, f"ICMP echo to {tb.address} could not be sent: {e.strerror or e}") from e
    return False


def _mac(interface: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", interface.encode()[:15]))  # SIOCGIFHWADDR
    return info[18:24]


def _arp(op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
    eth = BROADCAST + sender_mac + struct.pack("!H", ETH_P_ARP)
    return eth + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)


class ProbeError(OSError):
    """The probe could not be sent or its answers not read: it says nothing about who is there."""


# Three duplicate-address probes (RFC 5227's count) 100 ms apart: an ARP reply is normally back in well
# under a millisecond, but a loaded or virtualized host may answer tens of milliseconds late, and any
# one frame may be lost. 300 ms in all still fits well inside a failover.
ARP_TRIES = 3
ARP_TIMEOUT_S = 0.3


def arp_holders(interface: str, address: str, timeout_s: float = ARP_TIMEOUT_S, tries: int = ARP_TRIES) -> set[str]:
    """MAC addresses (other than ours) that answer for ``address`` on the link.

    Sent as duplicate-address detection (sender IP 0.0.0.0) so that asking
    does not itself teach anyone's ARP cache a new owner. Raises ProbeError when
    the question could not be asked or the answers not read: "nobody answered"
    must never stand in for "could not ask".
    """
    target = ipaddress.IPv4Address(address).packed
    found: set[str] = set()
    try:
        mine = _mac(interface)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
            s.bind((interface, 0))
            s.setblocking(False)
            for _ in range(tries):
                s.send(_arp(1, mine, b"\0\0\0\0", b"\0" * 6, target))
                deadline = time.monotonic() + timeout_s / tries
                while (left := deadline - time.monotonic()) > 0:
                    ready, _, _ = select.select([s], [], [], left)
                    if not ready:
                        break
                    frame = s.recv(128)
                    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
                        continue
                    op = struct.unpack("!H", frame[20:22])[0]
                    sha, spa = frame[22:28], frame[28:32]
                    if op == 2 and spa == target and sha != mine:
                        found.add(sha.hex(":"))
    except OSError as e:
        raise ProbeError(e.errno, f"ARP probe for {address} on {interface} failed: {e.strerror or e}") from e
    return found


def gratuitous_arp(interface: str, address: str, count: int = 3) -> None:
    """Announce that ``address`` now lives at this interface's MAC (replies and requests both)."""
    ip = ipaddress.IPv4Address(address).packed
    mac = _mac(interface)
    # Protocol 0: a socket that only sends registers no receive hook, whose registration waits for the
    # kernel's RCU grace period (about 10 ms) before the first announcement could leave.
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        s.bind((interface, 0))
        for _ in range(count):
            s.send(_arp(1, mac, ip, b"\0" * 6, ip))
            s.send(_arp(2, mac, ip, BROADCAST, ip))
