"""The heartbeat link: this node's heartbeats out on both networks, the peer's in, and the acknowledgements.

It owns: the transport (UDP sockets bound to each network's interface, or a fake), sending a view
every interval with a fresh sequence number and the acknowledgement of the peer's newest message,
accepting the peer's messages through the replay-proof receiver (agent.heartbeat), and what that
tells: when the peer was last heard on each network, its last word, when it last confirmed hearing
us, and the gaps in this node's own sending (a stall).
It may not: decide or act on what it hears (the link never acts), nor build the view it sends (the
loop hands it over).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from standby.agent.heartbeat import Heartbeat, Receiver, encode
from standby.config import Config
from standby.model import Net, PeerView

IP_FREEBIND = 15  # linux/in.h; not exported by the socket module
OnDatagram = Callable[[Net, bytes, str], None]  # network, packet, sender's address


class Transport(Protocol):
    def open(self, on_datagram: OnDatagram) -> None: ...
    def send(self, net: Net, packet: bytes) -> None:
        """Raises OSError when the packet cannot leave (the link is down)."""
    def close(self) -> None: ...


class UdpTransport:
    """One UDP socket per network, bound to this node's address and interface, read by the event loop."""

    def __init__(self, cfg: Config, node: str) -> None:
        self.cfg, self.node, self.peer = cfg, node, cfg.peer_of(node)
        self.sockets: dict[Net, socket.socket] = {}

    def open(self, on_datagram: OnDatagram) -> None:
        loop = asyncio.get_running_loop()
        for net in Net:
            link = getattr(self.cfg.nodes[self.node], net.value)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # bind even while the link is down
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.interface.encode())
            s.bind((str(link.ip), self.cfg.heartbeat_port))
            s.setblocking(False)
            loop.add_reader(s.fileno(), drain, s, net, on_datagram)
            self.sockets[net] = s

    def send(self, net: Net, packet: bytes) -> None:
        s = self.sockets.get(net)
        if s is None:
            raise OSError(errno.ENOTCONN, f"no socket open on the {net.value} network")
        s.sendto(packet, (str(getattr(self.cfg.nodes[self.peer], net.value).ip), self.cfg.heartbeat_port))

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for s in self.sockets.values():
            loop.remove_reader(s.fileno())
            s.close()
        self.sockets.clear()


def drain(s: socket.socket, net: Net, on_datagram: OnDatagram) -> None:
    """Hand over what the socket has queued, a few at a time (the loop has other work)."""
    for _ in range(16):
        try:
            data, addr = s.recvfrom(4096)
        except OSError:  # nothing more to read (or the socket is gone)
            return
        on_datagram(net, data, addr[0])


class HeartbeatLink:
    def __init__(self, cfg: Config, node: str, key: bytes, digest: str, transport: Transport,
                 clock: Callable[[], float]) -> None:
        self.cfg, self.node, self.peer = cfg, node, cfg.peer_of(node)
        self.key, self.digest, self.transport, self.clock = key, digest, transport, clock
        self.receiver = Receiver(key, cfg.cluster, self.peer, digest)
        self.boot = 0
        self.seq = 0
        self.heard: dict[Net, float | None] = {n: None for n in Net}
        self.peer_view: PeerView | None = None
        # Send times of our recent messages, by seq, to read the peer's
        # acknowledgements (decide.unheard); a few seconds' worth is plenty.
        self.sent_at: dict[int, float] = {}
        self.heard_me: float | None = None
        self.sent: dict[str, int] = {n.value: 0 for n in Net}
        self.send_errors: dict[str, int] = {n.value: 0 for n in Net}
        self.last_send = clock()
        self.max_send_gap = 0.0
        self.sending = False  # the sender loop runs (agent.stallwatch watches the loop through its sends)

    def start(self, boot: int, peer_boot: int, save_peer_boot: Callable[[int], Future[None]]) -> None:
        """This run's boot; replay protection continues from the peer's newest boot seen by earlier runs
        (``save_peer_boot`` writes a newer one on another thread)."""
        self.boot = boot
        self.receiver.restore(peer_boot, save_peer_boot)

    def open(self) -> None:
        self.transport.open(self.on_datagram)

    def close(self) -> None:
        self.transport.close()

    def on_datagram(self, net: Net, data: bytes, source: str) -> None:
        if source != str(getattr(self.cfg.nodes[self.peer], net.value).ip):
            self.receiver.rejected["foreign"] += 1  # only the peer's own address may speak here
            return
        hb = self.receiver.accept(data, net)
        if hb is None:
            return
        newest = self.receiver.is_newest(hb)  # acknowledged even if not trusted yet: that is how trust comes
        if not self.receiver.trusted(hb, self.boot):
            self.receiver.rejected["unconfirmed"] += 1  # maybe a recording from before our restart
            return
        self.heard[net] = self.clock()
        if hb.ack is not None and hb.ack[0] == self.boot and (t := self.sent_at.get(hb.ack[1])) is not None:
            self.heard_me = t if self.heard_me is None else max(self.heard_me, t)
        if newest:
            self.peer_view = hb.view

    def send(self, view: PeerView) -> None:
        """One heartbeat on each network; a network that cannot send is counted, the other still goes."""
        now = self.clock()
        self.max_send_gap = max(self.max_send_gap, now - self.last_send)
        self.last_send = now
        newest = self.receiver.newest
        ack = newest if newest[0] >= 0 else None
        for net in Net:
            self.seq += 1
            self.sent_at[self.seq] = now
            self.sent_at.pop(self.seq - 512, None)
            packet = encode(Heartbeat(self.cfg.cluster, self.node, self.boot, self.seq, net, self.digest, view, ack),
                            self.key)
            try:
                self.transport.send(net, packet)
                self.sent[net.value] += 1
            except OSError:
                self.send_errors[net.value] += 1  # link down: the peer will notice the silence

    async def sender(self, view: Callable[[], PeerView], interval_s: float, stopping: asyncio.Event) -> None:
        self.sending = True
        try:
            while not stopping.is_set():
                self.send(view())
                await asyncio.sleep(interval_s)  # the agent's shut-down cancels this task; no wait on `stopping` per beat
        finally:
            self.sending = False

    def take_send_gap(self) -> float:
        """The longest this node went without sending since the last call (a stall shows here first)."""
        gap = self.pending_gap()
        self.max_send_gap = 0.0
        return gap

    def pending_gap(self) -> float:
        """What the next ``take_send_gap`` would return, without taking it (the API's checks read it)."""
        return max(self.max_send_gap, self.clock() - self.last_send)

    def restart_gaps(self) -> None:
        """Start-up is not a stall: count gaps from now."""
        self.last_send, self.max_send_gap = self.clock(), 0.0

    def quiet_since(self, watching_since: float) -> float:
        """When the peer was last heard on any network (or since when this node has been watching)."""
        return max([t for t in self.heard.values() if t is not None] + [watching_since])
