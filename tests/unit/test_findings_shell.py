"""The agent shell's safety findings: its executor, its observation sources, maintenance, ARP probes.

The decisions are scripted here (the decision core has its own tests); what is checked is what the
shell does with them. The kernel's addresses are a fake with the real one's semantics (add of a
present address and remove of an absent one are no-ops), slowed down so that overlaps would show.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import shutil
import subprocess
import time
import tracemalloc  # noqa: F401  (pytest reports unraisable errors through it: loaded before descriptors run out)
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from standby import config
from standby import status as status_mod
from standby.act import switchover as switchover_mod
from standby.agent import node as node_mod
from standby.agent.node import Agent
from standby.config import ServiceIP
from standby.decide import State, stall_limit
from standby.documents import MaintenanceView
from standby.model import Action, ActionKind, DbState, LocalPg, Net, Observation, Reason
from standby.observe import probes
from tests.unit.configs import EXAMPLE, example_with_secrets
from tests.unit.test_documents import view as agent_view


class FakeKernel:
    """The service IPs this node holds, with the time each change takes, and a log of what ran when."""

    def __init__(self, add_s: float = 0.0, remove_s: float = 0.0, probe_s: float = 0.0) -> None:
        self.held: set[str] = set()
        self.add_s, self.remove_s, self.probe_s = add_s, remove_s, probe_s
        self.fail_add: set[str] = set()
        self.fail_remove: set[str] = set()
        self.log: list[str] = []

    def _op(self, name: str, secs: float) -> None:
        time.sleep(secs)
        self.log.append(name)

    def add(self, sip: ServiceIP) -> bool:
        addr = str(sip.address.ip)
        self._op("add", self.add_s)
        if addr in self.fail_add:
            raise OSError(24, "Too many open files")
        new = addr not in self.held
        self.held.add(addr)
        return new

    def remove(self, sip: ServiceIP) -> bool:
        addr = str(sip.address.ip)
        self._op("remove", self.remove_s)
        if addr in self.fail_remove:
            raise OSError(24, "Too many open files")
        there = addr in self.held
        self.held.discard(addr)
        return there

    def is_held(self, sip: ServiceIP) -> bool:
        return str(sip.address.ip) in self.held

    def answered_elsewhere(self, sip: ServiceIP) -> set[str]:
        time.sleep(self.probe_s)
        return set()


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel()
    monkeypatch.setattr(node_mod.addresses, "add", k.add)
    monkeypatch.setattr(node_mod.addresses, "remove", k.remove)
    monkeypatch.setattr(node_mod.addresses, "held", k.is_held)
    monkeypatch.setattr(node_mod.addresses, "announce", lambda sip, count=1: None)
    monkeypatch.setattr(node_mod.addresses, "answered_elsewhere", k.answered_elsewhere)
    monkeypatch.setattr(node_mod.services, "start_all", lambda *a, **kw: [])
    monkeypatch.setattr(node_mod.services, "stop_all", lambda *a, **kw: [])
    return k


SECOND_IP = {"address": "192.0.2.102/24", "interface": "eth0"}


def make_agent(tmp_path: Path, **raw_changes: Any) -> Agent:
    raw, _ = example_with_secrets(tmp_path)
    raw["service_ips"] = [*raw["service_ips"], SECOND_IP]
    raw.update(raw_changes)
    return Agent(config.parse(raw), "alpha")


def observation(now: float) -> Observation:
    return Observation(now=now, gap=0.0, pg=LocalPg(DbState.PRIMARY), peer=None,
                       heard={n: None for n in Net}, carrier={n: True for n in Net}, tiebreaker_ok=True,
                       services_healthy=None)


def script(agent: Agent, monkeypatch: pytest.MonkeyPatch,
           steps: list[tuple[dict[str, Any], list[ActionKind]]]) -> None:
    """Each decision step returns the next scripted (state changes, actions); observation is a formality."""
    todo = list(steps)

    def fake_decide(s: State, o: Observation, p: Any) -> tuple[State, list[Action]]:
        changes, kinds = todo.pop(0)
        return replace(s, **changes), [Action(k, Reason.ISOLATED) for k in kinds]

    async def fake_observe(now: float) -> Observation:
        return observation(now)

    monkeypatch.setattr(node_mod, "decide", fake_decide)
    monkeypatch.setattr(agent, "_observe", fake_observe)
    monkeypatch.setattr(agent.db, "stop", lambda: None)
    monkeypatch.setattr(agent.sync_keeper, "reconcile", lambda: None)


async def run_steps(agent: Agent, n: int, pause_s: float) -> None:
    for _ in range(n):
        await agent._step()
        await asyncio.sleep(pause_s)
    await agent.executor.drain()  # what the steps started finishes (a sleep here was a guess at how long)


def holds(agent: Agent, k: FakeKernel) -> bool:
    return any(k.is_held(s) for s in agent.cfg.service_ips)


# -- H5: a role's actions run one at a time, in decision order -------------------------------


def test_h5_take_after_release_waits_for_it_and_state_matches_the_kernel(
        tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Release (slow), take, release again, in quick succession: one at a time, the last decision wins."""
    agent = make_agent(tmp_path)
    kernel.held = {"192.0.2.100", "192.0.2.102"}
    kernel.remove_s = 0.2
    agent.state = State(services=True)
    script(agent, monkeypatch, [({"services": False}, [ActionKind.RELEASE_SERVICES]),
                                ({"services": True}, [ActionKind.TAKE_SERVICES]),
                                ({"services": False}, [ActionKind.RELEASE_SERVICES]),
                                ({}, [])])
    asyncio.run(run_steps(agent, 4, 0.05))
    assert kernel.log[-1] == "remove", kernel.log  # nothing added after the last release
    assert not holds(agent, kernel) and agent.state.services is False


def test_h5_fenced_node_never_ends_up_holding_the_service_ips(
        tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chaos seed 91, fault #11: fence + release, then a take 0.44 s later (the release still running)."""
    agent = make_agent(tmp_path)
    kernel.held = {"192.0.2.100", "192.0.2.102"}
    kernel.remove_s, kernel.probe_s = 0.3, 0.5
    agent.state = State(services=True, was_primary=True)
    script(agent, monkeypatch, [({"services": False, "fenced": True}, [ActionKind.FENCE, ActionKind.RELEASE_SERVICES]),
                                ({"services": True}, [ActionKind.TAKE_SERVICES]),
                                ({}, [])])
    asyncio.run(run_steps(agent, 3, 0.05))
    assert not holds(agent, kernel), "the fenced node kept the service IPs"
    assert agent.state.services is False


def test_h5_failed_take_leaves_nothing_held_and_says_so(
        tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(tmp_path)
    kernel.fail_add = {"192.0.2.102"}  # the second address cannot be added
    script(agent, monkeypatch, [({"services": True}, [ActionKind.TAKE_SERVICES]), ({}, [])])
    asyncio.run(run_steps(agent, 2, 0.05))
    assert not holds(agent, kernel), "half a take left an address behind"
    assert agent.state.services is False, "state claims the service role the kernel does not hold"


def test_h5_release_removes_every_address_even_when_one_fails(
        tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A release tries every address; the state then says what the kernel still holds."""
    agent = make_agent(tmp_path)
    kernel.held = {"192.0.2.100", "192.0.2.102"}
    kernel.fail_remove = {"192.0.2.100"}
    agent.state = State(services=True)
    script(agent, monkeypatch, [({"services": False}, [ActionKind.RELEASE_SERVICES]), ({}, [])])
    asyncio.run(run_steps(agent, 2, 0.05))
    assert kernel.held == {"192.0.2.100"}, "an error on one address stopped the release of the others"
    assert agent.state.services is True, "state says released while the kernel still holds an address"


def test_h5_release_removes_addresses_the_state_does_not_know_of(
        tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(tmp_path)
    kernel.held = {"192.0.2.102"}
    agent.state = State(services=False)
    script(agent, monkeypatch, [({}, [ActionKind.RELEASE_SERVICES]), ({}, [])])
    asyncio.run(run_steps(agent, 2, 0.05))
    assert kernel.held == set() and agent.state.services is False


# -- L2: an ARP probe that failed is "unknown", never "nobody answers" -------------------------


def test_l2_probe_that_cannot_be_sent_is_an_error_not_silence() -> None:
    """The real probe on an interface this host does not have: it asked nobody, so it must not say 'free'."""
    with pytest.raises(probes.ProbeError):
        probes.arp_holders("nosuchif0", "192.0.2.100")


def test_l2_failed_probe_blocks_the_take_like_an_answer(
        tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(tmp_path)

    def broken(sip: ServiceIP) -> set[str]:
        raise probes.ProbeError(105, "No buffer space available")

    monkeypatch.setattr(node_mod.addresses, "answered_elsewhere", broken)
    script(agent, monkeypatch, [({"services": True}, [ActionKind.TAKE_SERVICES]), ({}, [])])
    asyncio.run(run_steps(agent, 2, 0.05))
    assert not holds(agent, kernel) and agent.state.services is False
    refused = [e for e in agent.store.history() if e["event"] == "take_refused"]
    assert refused and refused[-1]["reason"] == "ARP probe failed"
    assert agent.ip_elsewhere is True  # the next decisions see a possible holder, as after an answer


# -- H3: the agent's loop survives its own errors -----------------------------------------------


def _exhaust_descriptors() -> tuple[list[int], tuple[int, int]]:
    """Lower this process's descriptor limit to just above what is open, then use up the rest (for real)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 16, old[1]))
    held: list[int] = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE
    return held, old


def _give_back(held: list[int], old: tuple[int, int]) -> None:
    for fd in held:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


# pyroute2 half-builds an event loop before netlink fails; its destructor then complains.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_h3_observing_without_descriptors_reads_last_known_and_is_recorded_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE on netlink (the carrier read) and on the PostgreSQL socket: unknown/last known, not a crash."""
    agent = make_agent(tmp_path)
    agent.carrier = {Net.PUBLIC: True, Net.PRIVATE: True}
    agent.pg, agent.observer.seen = LocalPg(DbState.PRIMARY, lsn=1), True

    async def go() -> list[Observation]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(agent.probe_pool, lambda: None)  # worker threads exist before the limit
        await loop.run_in_executor(agent.pg_pool, lambda: None)
        held, old = _exhaust_descriptors()
        try:
            return [await agent._observe(time.monotonic()) for _ in range(3)]
        finally:
            _give_back(held, old)

    seen = asyncio.run(go())
    assert all(o.carrier == {Net.PUBLIC: True, Net.PRIVATE: True} for o in seen)
    assert all(o.pg.db is DbState.PRIMARY for o in seen)
    # In the agent's recent events (its history file may not be writable without a descriptor either).
    failures = [e for e in agent.recent if e["event"] == "observation_failed"]
    # Once each, not once per step; PostgreSQL could not even be looked for, which is no evidence it is down.
    assert sorted(e["source"] for e in failures) == ["carrier", "postgres"], failures


def test_h3_a_failing_step_is_retried_and_does_not_end_the_agent(
        tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(tmp_path)
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OSError(errno.EMFILE, "Too many open files")
        if calls >= 4:
            agent.stop()

    monkeypatch.setattr(agent, "_step", step)
    monkeypatch.setattr(agent.link, "open", lambda: None)
    asyncio.run(asyncio.wait_for(agent.run(), 20))
    assert calls >= 4
    events = [e["event"] for e in agent.store.history()]
    assert events.count("step_failed") == 1 and events[-1] == "agent_stopped"
    assert agent.store.read_liveness() is not None and agent.store.read_liveness().clean  # type: ignore[union-attr]


# -- M3: a slow primary is not a crashed one ------------------------------------------------------


class UnansweringConn:
    """A connection to a server that is there but does not answer in time."""

    closed = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    def execute(self, *a: Any, **kw: Any) -> Any:
        if "statement_timeout" in str(a[0]):
            return None
        raise self.error

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def postmaster(tmp_path: Path) -> Any:
    """A live process named postgres, recorded in the data directory's postmaster.pid."""
    exe = tmp_path / "bin" / "postgres"
    exe.parent.mkdir()
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "600"])
    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "postmaster.pid").write_text(f"{proc.pid}\n{data}\n")
    try:
        yield data, proc
    finally:
        proc.kill()
        proc.wait()


def _observe_once(agent: Agent) -> Observation:
    async def go() -> Observation:
        await agent._observe(time.monotonic())
        await asyncio.sleep(0.3)  # a slow read is picked up by the next step
        return await agent._observe(time.monotonic())
    return asyncio.run(go())


def _agent_with_data_dir(tmp_path: Path, data: Path) -> Agent:
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"]["data_dir"] = str(data)
    agent = Agent(config.parse(raw), "alpha")
    agent.pg = LocalPg(DbState.PRIMARY, lsn=1234)
    return agent


@pytest.mark.parametrize("error", [
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    psycopg.OperationalError("connection failed: FATAL:  sorry, too many clients already"),
], ids=["statement-timeout", "too-many-clients"])
def test_m3_a_running_server_that_does_not_answer_keeps_the_last_observation(
        tmp_path: Path, postmaster: Any, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    data, _ = postmaster
    agent = _agent_with_data_dir(tmp_path, data)
    monkeypatch.setattr(node_mod.pgobs, "connect_local", lambda *a, **kw: UnansweringConn(error))
    o = _observe_once(agent)
    assert o.pg.db is DbState.PRIMARY and o.pg.lsn == 1234
    failed = [e for e in agent.recent if e["event"] == "observation_failed" and e["source"] == "postgres"]
    assert len(failed) == 1, agent.recent


@pytest.mark.parametrize("pidfile", ["absent", "dead pid", "killed, not yet reaped"])
def test_m3_a_server_that_is_not_running_reads_as_down(
        tmp_path: Path, postmaster: Any, monkeypatch: pytest.MonkeyPatch, pidfile: str) -> None:
    """"killed, not yet reaped": a SIGKILLed postmaster is a zombie until its parent reaps it, which an
    init that reaps orphans once a second left for 1-2 s; the failover bench's PostgreSQL crash took
    1.7-2.7 s to fail over instead of 0.4 s (failover bench, 2026-12-01)."""
    data, proc = postmaster
    proc.kill()
    if pidfile == "killed, not yet reaped":
        _wait_until_zombie(proc.pid)
    else:
        proc.wait()
    if pidfile == "absent":
        (data / "postmaster.pid").unlink()
    agent = _agent_with_data_dir(tmp_path, data)

    def refused(*a: Any, **kw: Any) -> Any:
        raise psycopg.OperationalError("connection failed: No such file or directory")

    monkeypatch.setattr(node_mod.pgobs, "connect_local", refused)
    assert _observe_once(agent).pg.db is DbState.DOWN


def _wait_until_zombie(pid: int) -> None:
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the killed process never became a zombie"
        time.sleep(0.01)


# -- L5: the decision loop's own gap is a stall too ----------------------------------------------


def test_l5_a_late_decision_step_counts_as_a_stall(
        tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat sender ran on time, the decision loop did not (blocked 1 s): the step must see the gap."""
    agent = make_agent(tmp_path)
    seen: list[float] = []

    def fake_decide(s: State, o: Observation, p: Any) -> tuple[State, list[Action]]:
        seen.append(o.gap)
        return s, []

    monkeypatch.setattr(node_mod, "decide", fake_decide)
    monkeypatch.setattr(node_mod.pgobs, "connect_local", lambda *a, **kw: UnansweringConn(
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout")))
    monkeypatch.setattr(agent.observer, "read_carriers", lambda: {n: True for n in Net})

    async def go() -> None:
        await agent._step()
        await asyncio.sleep(1.0)
        agent.link.restart_gaps()  # the sender was on time
        await agent._step()

    asyncio.run(go())
    limit = stall_limit(agent.policy)
    assert seen[-1] > limit, f"a {seen[-1]:.2f}s gap seen after a 1s pause (stall limit {limit:.2f}s)"


# -- M1: maintenance has a deadline, is shown, and a failed switchover leaves none behind --------


def _capture_policy(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    suspended: list[bool] = []

    def fake_decide(s: State, o: Observation, p: Any) -> tuple[State, list[Action]]:
        suspended.append(p.suspended)
        return s, []

    async def fake_observe(now: float) -> Observation:
        return observation(now)

    monkeypatch.setattr(node_mod, "decide", fake_decide)
    monkeypatch.setattr(agent, "_observe", fake_observe)
    monkeypatch.setattr(agent.sync_keeper, "reconcile", lambda: None)
    return suspended


def test_m1_maintenance_ends_by_itself_at_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _ = example_with_secrets(tmp_path)
    raw["timings"]["maintenance_timeout_s"] = 120
    agent = Agent(config.parse(raw), "alpha")
    clock = [1000.0]
    agent.maintenance.mono = lambda: clock[0]
    suspended = _capture_policy(agent, monkeypatch)
    asyncio.run(agent.set_maintenance(True))
    recorded = json.loads((tmp_path / "state" / "maintenance").read_text())
    assert recorded["until"] - recorded["since"] == 120 and recorded["by"]
    asyncio.run(agent._step())
    clock[0] += 119
    asyncio.run(agent._step())
    clock[0] += 2
    asyncio.run(agent._step())
    assert suspended == [True, True, False]
    assert not agent.suspended and not (tmp_path / "state" / "maintenance").exists()
    assert [e["event"] for e in agent.recent].count("maintenance_expired") == 1


def test_m1_a_restarted_agent_keeps_only_what_is_left(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    first = Agent(config.parse(raw), "alpha")
    asyncio.run(first.set_maintenance(True))
    wall = [time.time()]
    again = Agent(config.parse(raw), "alpha")
    again.maintenance.wall = lambda: wall[0]
    again.maintenance.load()
    assert again.suspended
    wall[0] += config.parse(raw).timings.maintenance_timeout_s + 1  # the agent was down past the deadline
    again.maintenance.load()
    assert not again.suspended


@pytest.mark.parametrize("bad", [0, -5, 10 * 86_400])
def test_m1_maintenance_timeout_is_validated(tmp_path: Path, bad: int) -> None:
    raw, _ = example_with_secrets(tmp_path)
    raw["timings"]["maintenance_timeout_s"] = bad
    with pytest.raises(config.ConfigError) as e:
        config.parse(raw)
    assert "timings.maintenance_timeout_s" in str(e.value)


class FakeApi:
    """Both agents' action endpoints; beta's agent stops answering after alpha was suspended."""

    def __init__(self, cfg: config.Config) -> None:
        self.suspended = {"alpha": False, "beta": False}

    def maintenance(self, node: str, suspend: bool, timeout_s: float = 120) -> None:
        if node == "beta" and suspend:
            raise switchover_mod.ApiError(0, "beta's agent does not answer (timed out)")
        self.suspended[node] = suspend

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the switchover went on to {name}")


def test_m1_switchover_failing_half_way_leaves_no_maintenance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _ = example_with_secrets(tmp_path)
    cfg = config.parse(raw)
    apis: list[FakeApi] = []
    monkeypatch.setattr(switchover_mod, "AgentApi", lambda c: apis.append(FakeApi(c)) or apis[-1])
    monkeypatch.setattr(switchover_mod, "roles", lambda c: ("alpha", "beta", {}))
    with pytest.raises(switchover_mod.ApiError):
        switchover_mod.switchover(cfg)
    assert apis[0].suspended == {"alpha": False, "beta": False}


def test_m1_status_shows_maintenance_loudly_with_who_and_until() -> None:
    cfg = config.load(EXAMPLE)
    agent = replace(agent_view(), suspended=True,
                    maintenance=MaintenanceView("api", "2026-12-01T14:00:00Z", "2026-12-01T14:10:00Z", 420))
    warnings = status_mod._agent_warnings(cfg, status_mod.Observations("alpha", {}, (), agents={"alpha": agent,
                                                                                                "beta": None}))
    loud = [w for w in warnings if "MAINTENANCE" in w]
    assert loud and "2026-12-01T14:10:00Z" in loud[0] and "api" in loud[0], warnings
