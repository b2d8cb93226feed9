"""What a lab test runs beside itself: a thread per watcher while its ``with`` block lasts (``Background``), and
what can be watched on the wire without a capture tool: who claims an address over ARP on the client network,
the states a node's TCP sockets pass through, and what a node's write check answers a load balancer, each
from inside one lab namespace."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from standby import tls
from standby.lab import Lab, netns
from standby.lab.topology import interface_for
from standby.model import Net


def http_status(url: str, ctx: ssl.SSLContext | None, timeout_s: float = 3.0) -> int | str:
    """One GET, as a load balancer's check or a person's browser sends it, in the caller's namespace: the HTTP
    status (an error's too), or why there was none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=ctx) as r:
            return r.status  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))


class Background:
    """A thread of the test running ``_run`` while the ``with`` block lasts; ``_run`` ends when ``stop`` is set."""

    stop: threading.Event
    thread: threading.Thread

    def _start(self, name: str, ns: str | None = None) -> None:
        self.stop = threading.Event()
        args = (self._run,) if ns is None else (netns.call_in, ns, self._run)
        self.thread = threading.Thread(target=args[0], args=args[1:], name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


class ArpClaims(Background):
    """The sender MAC of every ARP frame sent from ``ip`` (a gratuitous ARP, or an answer) heard on a packet
    socket in the client's namespace."""

    def __init__(self, lab: Lab, ip: str) -> None:
        self._start("arp-claims", lab.netns("client"))
        self.ip = ipaddress.IPv4Address(ip).packed
        self.senders: list[tuple[float, str]] = []

    def _run(self) -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
            s.settimeout(0.05)
            while not self.stop.is_set():
                try:
                    frame = s.recv(64)
                except TimeoutError:
                    continue
                if len(frame) >= 32 and frame[28:32] == self.ip:  # ARP's sender MAC at 22, sender IP at 28
                    self.senders.append((time.time(), frame[22:28].hex(":")))

    def macs(self) -> set[str]:
        return {mac for _, mac in self.senders}


class TcpStates(Background):
    """Every change of the set of ``node``'s TCP sockets on local ``port`` (local and remote end, state as
    /proc/net/tcp says it), read every few milliseconds: how a session ended, or did not."""

    def __init__(self, lab: Lab, node: str, port: int) -> None:
        self._start("tcp-states", lab.netns(node))
        self.port = f":{port:04X}"
        self.changes: list[tuple[float, tuple[str, ...]]] = []

    def _run(self) -> None:
        proc = Path("/proc/thread-self/net/tcp")  # this thread's namespace (/proc/self is the process's)
        while not self.stop.is_set():
            fields = (line.split() for line in proc.read_text().splitlines()[1:])
            rows = tuple(" ".join(f[1:4]) for f in fields if f[1].endswith(self.port) and f[3] != "0A")  # not the listener
            if not self.changes or self.changes[-1][1] != rows:
                self.changes.append((time.time(), rows))
            time.sleep(0.003)

    def told(self) -> str:
        return "\n".join(f"{t:.3f} {' | '.join(rows) or '-'}" for t, rows in self.changes)


class WriteChecks(Background):
    """``GET /primary`` on ``node``'s public address from the client's namespace, as HAProxy asks it, a new
    connection every few milliseconds: (time, HTTP status or the error) of each answer or failure."""

    def __init__(self, lab: Lab, node: str) -> None:
        self._start("write-checks", lab.netns("client"))
        cfg = lab.config()
        self.url, self.ctx = tls.api_url(cfg, cfg.nodes[node].public.ip, "/primary"), tls.client_context(cfg)
        self.answers: list[tuple[float, int | str]] = []

    def _run(self) -> None:
        while not self.stop.is_set():
            self.answers.append((time.time(), http_status(self.url, self.ctx, timeout_s=0.3)))
            time.sleep(0.005)

    def vouched(self) -> list[float]:
        """When the node said "primary"."""
        return [t for t, got in self.answers if got == 200]


def public_mac(lab: Lab, node: str) -> str:
    return netns.run_in(lab.netns(node), ["cat", f"/sys/class/net/{interface_for(Net.PUBLIC)}/address"]).stdout.strip()
