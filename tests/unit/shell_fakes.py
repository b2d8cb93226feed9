"""Fakes for the agent's shell: a clock, an in-memory heartbeat network, PostgreSQL, the kernel.

With these the agent's loop runs in a unit test, without root, sockets or a server: one agent
(alpha) whose peer (beta) is scripted, its heartbeats encoded with the real codec and key. Time
moves only when the test says so, so a stall is a clock jump, not a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.act import addresses, services
from standby.act import postgres as pgact
from standby.agent.heartbeat import Heartbeat, decode, encode
from standby.agent.link import OnDatagram
from standby.agent.node import Agent
from standby.config import ServiceIP
from standby.model import DbState, LocalPg, Lsn, Net, PeerView
from tests.unit.configs import example_with_secrets

INTERVAL_S = 0.15  # the example configuration's heartbeat interval


class FakeClock:
    """Monotonic and wall time that move only when told to."""

    def __init__(self, start: float = 10_000.0) -> None:
        self.t = start

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return 1_800_000_000.0 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class MemoryNet:
    """Both heartbeat networks between alpha and a scripted beta, in memory.

    A path can lose packets (``lost``: both ways, silently; ``one_way``: only alpha's) or be down at
    alpha's end (``unplugged``: alpha's sends fail as on a link without carrier, its carrier reads false).
    """

    def __init__(self) -> None:
        self.to_peer: dict[Net, list[bytes]] = {n: [] for n in Net}
        self.lost: set[Net] = set()
        self.unplugged: set[Net] = set()
        self.one_way: set[Net] = set()  # alpha's packets are lost, beta's still arrive
        self.tiebreaker = True
        self.on_datagram: OnDatagram | None = None

    def open(self, on_datagram: OnDatagram) -> None:
        self.on_datagram = on_datagram

    def close(self) -> None:
        self.on_datagram = None

    def deliver(self, net: Net, packet: bytes, source: str) -> None:
        """A packet from the peer, if the path delivers it."""
        if self.on_datagram is not None and self.delivers(net):
            self.on_datagram(net, packet, source)

    def send(self, net: Net, packet: bytes) -> None:
        if net in self.unplugged:
            raise OSError(101, "Network is unreachable")
        if net not in self.lost and net not in self.one_way:
            self.to_peer[net].append(packet)

    def delivers(self, net: Net) -> bool:
        return net not in self.lost and net not in self.unplugged

    def carriers(self) -> dict[Net, bool]:
        return {n: n not in self.unplugged for n in Net}


@dataclass
class FakePostgres:
    """The local server as the agent's one reader and its actions see it."""

    db: DbState = DbState.PRIMARY
    lsn: int = 1000
    peer_sync: bool = True
    failing_starts: int = 0  # the next starts that fail
    calls: list[str] = field(default_factory=list)  # start, stop, promote
    sync_names: list[str] = field(default_factory=list)  # values set
    follower_slot_calls: int = 0
    follower_slot_roles: list[bool | None] = field(default_factory=list)  # each call's primary: True/False/None
    fence_stops: list[bool] = field(default_factory=list)  # each fence's stop: True when SIGKILL at once

    def read(self) -> tuple[LocalPg, str | None]:
        if self.db is DbState.PRIMARY:
            return LocalPg(DbState.PRIMARY, lsn=self.lsn, peer_sync=self.peer_sync,
                           peer_flush_lsn=self.lsn if self.peer_sync else None), pgact.sync_value("beta")
        if self.db is DbState.STANDBY:
            return LocalPg(DbState.STANDBY, lsn=self.lsn, replay_lsn=self.lsn, streaming=True,
                           upstream_age_s=0.0), ""
        return LocalPg(DbState.DOWN), None

    @property
    def connected(self) -> bool:
        return self.db is not DbState.DOWN

    def start(self) -> None:
        self.calls.append("start")
        if self.failing_starts > 0:
            self.failing_starts -= 1
            raise pgact.PostgresActionError("pg_ctl: could not start server (fake)")
        self.db = DbState.STANDBY

    def stop(self) -> None:
        self.calls.append("stop")
        self.db = DbState.DOWN

    def fence_stop(self, at_once: bool = False) -> None:
        self.fence_stops.append(at_once)
        self.stop()  # the agent runs it on a thread of its own (a subclass's stop is this one too)

    def request_stop(self) -> None:
        self.calls.append("stop_requested")

    def promote(self) -> None:
        self.calls.append("promote")
        self.db = DbState.PRIMARY

    def checkpoint(self) -> bool:
        self.calls.append("checkpoint")
        return self.db is DbState.PRIMARY

    def set_sync_names(self, value: str) -> None:
        self.sync_names.append(value)

    def received_lsn(self) -> Lsn | None:
        return Lsn(self.lsn)

    def ensure_peer_slot(self) -> None:
        pass

    def ensure_follower_slots(self, primary: bool | None) -> None:
        self.follower_slot_calls += 1
        self.follower_slot_roles.append(primary)


class FakeKernel:
    """The service IPs alpha holds."""

    def __init__(self, held: set[str] | None = None) -> None:
        self.held = set(held or ())

    def add(self, sip: ServiceIP) -> bool:
        self.held.add(str(sip.address.ip))
        return True

    def remove(self, sip: ServiceIP) -> bool:
        there = str(sip.address.ip) in self.held
        self.held.discard(str(sip.address.ip))
        return there

    def is_held(self, sip: ServiceIP) -> bool:
        return str(sip.address.ip) in self.held


def view(db: DbState, term: int = 1, services: bool = False, sync_ok: bool = True) -> PeerView:
    return PeerView(term=term, db=db, services=services, lsn=1000, sync_ok=sync_ok,
                    carrier={n: True for n in Net}, tiebreaker_ok=True, eligible=db is DbState.STANDBY)


STANDBY = view(DbState.STANDBY)


class Shell:
    """Alpha's agent wired to the fakes; ``tick`` is one heartbeat interval of its life."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg: FakePostgres,
                 kernel: FakeKernel, clock: FakeClock | None = None, extra: dict[str, Any] | None = None) -> None:
        raw, _ = example_with_secrets(tmp_path)
        raw.pop("reporting")  # its own tests; here it would only add a second address to watch
        raw.update(extra or {})
        self.cfg = config.parse(raw)
        self.monkeypatch, self.pg, self.kernel = monkeypatch, pg, kernel
        self.clock = clock or FakeClock()
        self.net = MemoryNet()
        self.peer_boot, self.peer_seq = 7, 0
        self.agent = self._new_agent()

    def _new_agent(self) -> Agent:
        mp, k = self.monkeypatch, self.kernel
        for name, fn in (("add", k.add), ("remove", k.remove), ("held", k.is_held),
                         ("announce", lambda sip, count=1: None), ("answered_elsewhere", lambda sip: set())):
            mp.setattr(addresses, name, fn)
        mp.setattr(services, "start_all", lambda *a, **kw: [])
        mp.setattr(services, "stop_all", lambda *a, **kw: [])
        mp.setattr(services, "healthy", lambda *a, **kw: (True, []))
        agent = Agent(self.cfg, "alpha", clock=self.clock.monotonic, transport=self.net, db=self.pg)
        agent.observer.read_carriers = self.net.carriers
        return agent

    async def start(self) -> None:
        await self.agent._restore()
        self.agent.link.open()

    def restart(self) -> Agent:
        """A new agent process on the same state directory (the old one died without stopping)."""
        self.close()
        self.agent = self._new_agent()
        return self.agent

    async def tick(self, peer: PeerView | None = STANDBY, advance: float = INTERVAL_S, send: bool = True) -> None:
        """Time passes, alpha sends its heartbeats, beta's arrive where a path delivers, alpha decides."""
        self.clock.advance(advance)
        # An interval is long enough for the state thread to write what it was given (a new peer boot):
        # without this wait a tick's outcome would depend on how fast this machine's threads run.
        self.agent.state_pool.submit(lambda: None).result(5)
        if send:
            self.agent.link.send(self.agent._advertised())
        if self.net.tiebreaker:
            self.agent.probers.tiebreaker_at = self.clock.t
        if peer is not None:
            for net in Net:
                self.net.deliver(net, *self._from_peer(peer, net))
        await self.agent._step()
        await self.agent.executor.drain()

    def _from_peer(self, v: PeerView, net: Net) -> tuple[bytes, str]:
        self.peer_seq += 1
        heard = [decode(p, self.agent.key) for n in Net for p in self.net.to_peer[n]]
        ack = max(((h.boot, h.seq) for h in heard), default=None)
        hb = Heartbeat(self.cfg.cluster, "beta", self.peer_boot, self.peer_seq, net, self.agent.digest, v, ack)
        return encode(hb, self.agent.key), str(getattr(self.cfg.nodes["beta"], net.value).ip)

    def said(self, net: Net = Net.PUBLIC) -> PeerView:
        """What alpha last told beta on ``net``."""
        return decode(self.net.to_peer[net][-1], self.agent.key).view

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        self.agent.disk_pool.submit(lambda: None).result()  # what was queued for the disk is written
        return [e for e in self.agent.store.history() if name is None or e["event"] == name]

    def close(self) -> None:
        a = self.agent
        a.disk_pool.shutdown(wait=True)
        for pool in (a.pg_pool, a.state_pool, a.observe_pool, a.svc_pool, a.probe_pool):
            pool.shutdown(wait=False)


@contextmanager
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg: FakePostgres,
          kernel: FakeKernel | None = None, extra: dict[str, Any] | None = None) -> Iterator[Shell]:
    """``extra``: top-level tables added to the configuration (e.g. ``followers``)."""
    s = Shell(tmp_path, monkeypatch, pg, kernel or FakeKernel(), extra=extra)
    try:
        yield s
    finally:
        s.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
