"""Issue 13, part 2: the switchover's write pause, step by step, with as little as possible inside it.

On the fake shell: the old primary checkpoints while it still serves (so the shutdown checkpoint in the
pause has little to write), and both agents say how long each step of the pause took. On a fake pair of
agents: the command prints those steps, and its abort paths are unchanged. The figures themselves are
the lab benchmark's (`bench/switchover.py`); nothing here times anything.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

from standby.act import postgres as pgact
from standby.act import switchover as so
from standby.apiclient import ApiError
from standby.documents import Demoted, Promoted
from standby.model import DbState
from tests.unit.shell_fakes import FakeKernel, FakePostgres, run, shell, view

SERVICE_IP = "192.0.2.100"
SHUT_DOWN = {"Database cluster state": "shut down", "Latest checkpoint location": "0/3000028",
             "Latest checkpoint's TimeLineID": "1"}


class Recorded(FakePostgres):
    """The server's calls and the kernel's address removals in one order."""

    def checkpoint(self) -> bool:
        self.calls.append("checkpoint")
        return True


class RecordingKernel(FakeKernel):
    def __init__(self, held: set[str], log: list[str]) -> None:
        super().__init__(held)
        self.log = log

    def remove(self, sip: Any) -> bool:
        self.log.append("remove_ip")
        return super().remove(sip)

    def add(self, sip: Any) -> bool:
        self.log.append("add_ip")
        return super().add(sip)


async def _demote(sh: Any) -> dict[str, Any]:
    """The switchover's first step on a serving primary: maintenance on, then demote."""
    await sh.start()
    await sh.tick()
    await sh.agent.operator.set_maintenance(True)
    return await sh.agent.operator.operate("demote")  # type: ignore[no-any-return]


def test_i13_demote_checkpoints_while_serving_then_pauses_and_names_each_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = Recorded(DbState.PRIMARY)
    monkeypatch.setattr(pgact, "control_data", lambda cfg, node: dict(SHUT_DOWN))
    with shell(tmp_path, monkeypatch, pg, RecordingKernel({SERVICE_IP}, pg.calls)) as sh:
        result = run(_demote(sh))
    # The checkpoint runs while the service IP is still here; the stop's signal goes before the address does
    # (CI run 42: a client waiting for an answer when the address went first never heard of the stop).
    order = [c for c in pg.calls if c in ("checkpoint", "stop_requested", "remove_ip", "stop")]
    assert order == ["checkpoint", "stop_requested", "remove_ip", "stop"], pg.calls
    assert result["checkpoint_lsn"] == "0/3000028"
    names = [name for name, _ in result["steps"]]
    assert names == ["checkpoint while serving", "stop asked: writes paused, clients told", "service IPs released",
                     "PostgreSQL stopped, services too: shutdown checkpoint written and sent", "shutdown checkpoint read"]
    assert all(s >= 0 for _, s in result["steps"])


def test_i13_a_failed_checkpoint_before_the_pause_does_not_stop_the_switchover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoCheckpoint(FakePostgres):
        def checkpoint(self) -> bool:
            return False  # e.g. it ran past the agent's statement timeout

    pg = NoCheckpoint(DbState.PRIMARY)
    monkeypatch.setattr(pgact, "control_data", lambda cfg, node: dict(SHUT_DOWN))
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        result = run(_demote(sh))
    assert pg.db is DbState.DOWN and result["checkpoint_lsn"] == "0/3000028"
    assert result["steps"][0][0] == "checkpoint while serving: not done, the shutdown checkpoint writes it all"


def test_i13_promote_moves_the_ips_right_after_the_promotion_and_names_each_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []

    class Promoting(FakePostgres):
        def promote(self) -> None:
            log.append("promote")
            super().promote()

        def ensure_peer_slot(self) -> None:
            log.append("slot")

    pg = Promoting(DbState.STANDBY)
    with shell(tmp_path, monkeypatch, pg, RecordingKernel(set(), log)) as sh:
        async def go() -> dict[str, Any]:
            await sh.start()
            await sh.tick(view(DbState.PRIMARY, services=True))
            await sh.agent.operator.set_maintenance(True)
            return await sh.agent.operator.operate("promote", "0/3E7", 5.0)  # type: ignore[no-any-return]

        result = run(go())
    assert pg.db is DbState.PRIMARY and result["problems"] == []
    # Nothing between the promotion and the address: the slot the old primary needs later comes after.
    assert log == ["promote", "add_ip", "slot"], log
    names = [name for name, _ in result["steps"]]
    assert names == ["received past the old primary's shutdown checkpoint", f"PostgreSQL promoted (term {result['term']})",
                     "service IPs moved", "services started", "replication slot for the old primary"]


class FakePair:
    """Both agents' APIs as the command sees them: what each call answers, and the calls made."""

    def __init__(self, promote_error: ApiError | None = None, standby_after: DbState = DbState.STANDBY,
                 demote_error: ApiError | None = None, resume_error: ApiError | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.promote_error, self.standby_after = promote_error, standby_after
        self.demote_error, self.resume_error = demote_error, resume_error

    def status(self, cfg: Any, node: str, timeout_s: float = 2.0) -> Any:
        db = DbState.PRIMARY if node == "alpha" else DbState.STANDBY
        if node == "beta" and any(c == ("promote", "beta") for c in self.calls):
            db = self.standby_after
        pg = type("Pg", (), {"state": db, "streaming": True, "unanswered_s": 0.0})()
        return type("View", (), {"postgres": pg, "state": type("S", (), {"promoting": False})()})()

    def api(self, cfg: Any) -> Any:
        pair = self

        class Api:
            def maintenance(self, node: str, suspend: bool) -> None:
                pair.calls.append(("suspend" if suspend else "unsuspend", node))

            def demote(self, node: str) -> Demoted:
                pair.calls.append(("demote", node))
                if pair.demote_error is not None:
                    raise pair.demote_error
                return Demoted("0/3000028", 1, steps=[("checkpoint while serving", 0.05),
                                                     ("stop asked: writes paused, clients told", 0.002)])

            def promote(self, node: str, lsn: str, timeout_s: float) -> Promoted:
                pair.calls.append(("promote", node))
                if pair.promote_error is not None:
                    raise pair.promote_error
                return Promoted(2, "0/30000A0", steps=[("PostgreSQL promoted (term 2)", 0.03),
                                                      ("service IPs moved", 0.001)])

            def follow(self, node: str) -> None:
                pair.calls.append(("follow", node))

            def resume(self, node: str) -> None:
                pair.calls.append(("resume", node))
                if pair.resume_error is not None:
                    raise pair.resume_error

        return Api()


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(**kw: Any) -> FakePair:
        fp = FakePair(**kw)
        monkeypatch.setattr(so, "agent_status", fp.status)
        monkeypatch.setattr(so, "AgentApi", fp.api)
        return fp
    return make


def _cfg(tmp_path: Path) -> Any:
    from standby import config
    from tests.unit.configs import example_with_secrets
    raw, _ = example_with_secrets(tmp_path)
    return config.parse(raw)


def test_i13_switchover_prints_each_agent_step_of_the_pause(tmp_path: Path, pair: Any) -> None:
    fp = pair()
    said: list[str] = []
    out = so.switchover(_cfg(tmp_path), say=said.append)
    assert out.completed and out.new_primary == "beta"
    text = "\n".join(said)
    for line in ("alpha: checkpoint while serving", "alpha: stop asked: writes paused, clients told",
                 "beta: PostgreSQL promoted (term 2)", "beta: service IPs moved"):
        assert line in text, text
    # The agents' steps are printed, not added to the command's own: its total counts each moment once.
    assert [n for n, _ in out.steps if n.startswith("-")] == []
    assert fp.calls == [("suspend", "alpha"), ("suspend", "beta"), ("demote", "alpha"), ("promote", "beta"),
                        ("follow", "alpha"), ("unsuspend", "alpha"), ("unsuspend", "beta")]


def test_i13_switchover_aborts_as_before_when_the_standby_did_not_promote(tmp_path: Path, pair: Any) -> None:
    fp = pair(promote_error=ApiError(409, "did not arrive"))
    with pytest.raises(so.SwitchoverError, match="aborted, nothing lost"):
        so.switchover(_cfg(tmp_path))
    assert ("resume", "alpha") in fp.calls and ("follow", "alpha") not in fp.calls
    assert fp.calls[-2:] == [("unsuspend", "alpha"), ("unsuspend", "beta")]


def test_switchover_whose_clean_stop_fails_says_it_aborted_and_lost_nothing(tmp_path: Path, pair: Any) -> None:
    """Seen in CI (test_roadback's switchover with the standby cut off): under load the walsenders could
    not send the shutdown checkpoint, the fast stop gave way to an immediate one, and the command said only
    "could not be stopped cleanly". Nothing was promoted and the old primary served again: an abort, said
    as one, as when the promotion does not happen."""
    fp = pair(demote_error=ApiError(500, "PostgreSQL did not shut down cleanly (in production)"))
    with pytest.raises(so.SwitchoverError, match="aborted, nothing lost") as e:
        so.switchover(_cfg(tmp_path))
    assert "alpha serves again" in str(e.value) and "in production" in str(e.value)
    assert ("promote", "beta") not in fp.calls and ("resume", "alpha") in fp.calls
    assert fp.calls[-2:] == [("unsuspend", "alpha"), ("unsuspend", "beta")]


@pytest.mark.parametrize("demote_fails", [True, False])
def test_switchover_abort_never_says_serves_again_when_the_old_primary_did_not_resume(
        tmp_path: Path, pair: Any, demote_fails: bool) -> None:
    fp = pair(resume_error=ApiError(0, "connection refused"),
              **({"demote_error": ApiError(500, "stop failed")} if demote_fails else
                 {"promote_error": ApiError(409, "did not arrive")}))
    with pytest.raises(so.SwitchoverError) as e:
        so.switchover(_cfg(tmp_path))
    assert "serves again" not in str(e.value) and "alpha did not resume" in str(e.value), str(e.value)
    assert "standby status" in str(e.value)
    assert ("resume", "alpha") in fp.calls


def test_i13_switchover_leaves_the_old_primary_stopped_when_the_standby_may_have_promoted(
        tmp_path: Path, pair: Any) -> None:
    fp = pair(promote_error=ApiError(0, "connection reset"), standby_after=DbState.PRIMARY)
    with pytest.raises(so.SwitchoverError, match="stays stopped"):
        so.switchover(_cfg(tmp_path))
    assert ("resume", "alpha") not in fp.calls


def test_i13_switchover_steps_are_functions_of_at_most_60_lines() -> None:
    tree = ast.parse(inspect.getsource(so))
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)  # type: ignore[operator]
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > 60}  # type: ignore[operator]
    assert long == {}


# -- issue 13, part 3: the agent's own footprint ----------------------------------------------------

def test_i13_the_respawn_supervisor_loads_nothing_but_the_standard_library() -> None:
    """`agent --respawn` replaces itself with this module; what it imports stays beside every agent."""
    import subprocess
    import sys

    probe = ("import sys, standby.supervisor; "
             "print(' '.join(sorted(m for m in sys.modules if not m.startswith('_'))))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                text=True).stdout.split())
    ours = {m for m in loaded if m.split(".")[0] == "standby"}
    assert ours == {"standby", "standby.supervisor"}
    third_party = {m.split(".")[0] for m in loaded} & {"click", "psycopg", "pydantic", "aiohttp", "pyroute2",
                                                       "prometheus_client"}
    assert third_party == set()
    assert "importlib.metadata" not in loaded  # the package's version is read only when asked for


def test_i13_the_agent_command_imports_no_other_commands_module() -> None:
    """The agent runs for a node's whole life: the lab, the demo, the status and salvage commands'
    imports are not its to hold."""
    import subprocess
    import sys

    probe = ("import sys, click; from standby.cli.main import cli; "
             "cli.get_command(click.Context(cli), 'agent'); "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('standby.'))))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                text=True).stdout.split())
    assert {"standby.cli.agent", "standby.agent.node"} <= loaded
    assert {m for m in loaded if m.startswith(("standby.cli", "standby.lab"))} == {
        "standby.cli", "standby.cli.agent", "standby.cli.common", "standby.cli.main"}, loaded


def test_i13_every_command_is_still_reachable_by_its_name() -> None:
    import click

    from standby.cli.main import cli

    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert {"agent", "fence", "history", "switchover", "switchback", "rejoin", "lab", "status"} <= set(names)
    for name in names:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None and cmd.name == name
    lab = cli.get_command(ctx, "lab")
    assert isinstance(lab, click.Group)
    assert {"softswitch", "load", "verify", "report", "chaos", "up", "down"} <= set(lab.list_commands(ctx))


def test_i13_metrics_give_the_decision_steps_own_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from standby.api import _Collector

    class SlowRead(FakePostgres):
        """Each observation of the server takes 0.03 s on the agent's clock."""

        clock: Any = None

        def read(self) -> Any:
            self.clock.advance(0.03)
            return super().read()

    pg = SlowRead(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        pg.clock = sh.clock

        async def go() -> None:
            await sh.start()
            for _ in range(3):
                await sh.tick()

        run(go())
        families = {f.name: f for f in _Collector(sh.agent).collect()}
    samples = {s.labels["quantile"]: s.value for s in families["standby_decision_step_seconds"].samples}
    assert set(samples) == {"0.5", "0.99", "1"}
    assert samples["1"] >= 0.03  # the step waited for its observation of PostgreSQL


def test_i13_the_carriers_are_read_without_setting_up_an_iproute_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision loop reads both carriers every step: one netlink request each, the same answer."""
    import socket

    from pyroute2 import IPRoute

    from standby.act import addresses

    def with_iproute(interface: str) -> bool:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=interface)
            if not found:
                return False
            (link,) = ipr.get_links(found[0])
            return bool(link.get_attr("IFLA_OPERSTATE") == "UP" and link.get_attr("IFLA_CARRIER") == 1)

    names = [name for _, name in socket.if_nameindex()] + ["no-such-if0", "a-name-longer-than-any-link"]
    expected = {name: with_iproute(name) for name in names}

    def refused(*a: Any, **kw: Any) -> Any:
        raise AssertionError("an IPRoute was set up for a carrier read")

    from standby import netlink

    monkeypatch.setattr(netlink, "IPRoute", refused)
    assert {name: addresses.carrier(name) for name in names} == expected


def test_i13_held_reads_the_addresses_as_pyroute2_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """held() asks netlink on a plain socket (the agent's idle memory, issue 13): the same answer as pyroute2's
    dump for every address of this machine, one that is not there, and a missing interface."""
    import socket

    from pyroute2 import IPRoute

    from standby import netlink
    from standby.act import addresses
    from standby.confbase import ServiceIP

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        present = [(names[a["index"]], a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                   for a in ipr.get_addr(family=socket.AF_INET)]
    assert present, "this machine has no IPv4 address at all (not even on lo)"

    def refused(*a: Any, **kw: Any) -> Any:
        raise AssertionError("an IPRoute was set up for a read")

    monkeypatch.setattr(netlink, "IPRoute", refused)
    for interface, ip, prefix in present:
        assert addresses.held(ServiceIP(address=f"{ip}/{prefix}", interface=interface)), (interface, ip)
        assert not addresses.held(ServiceIP(address="192.0.2.254/24", interface=interface)), interface
    other = next(n for n in names.values() if n != present[0][0]) if len(names) > 1 else None
    if other is not None and not any(i == other and a == present[0][1] for i, a, _ in present):
        assert not addresses.held(ServiceIP(address=f"{present[0][1]}/32", interface=other))  # held elsewhere
    with pytest.raises(RuntimeError, match="does not exist"):
        addresses.held(ServiceIP(address="192.0.2.254/24", interface="no-such-if0"))


def test_i13_addresses_are_added_and_removed_as_ip_addr_does_in_a_namespace_of_their_own() -> None:
    """add/remove on a plain netlink socket, run in a new network namespace (`unshare --net`: nothing of this
    machine's is touched), checked against `ip -4 addr`."""
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a network namespace of its own")
    code = (
        "import subprocess\n"
        "from standby.act import addresses as a\n"
        "from standby.confbase import ServiceIP\n"
        "sip = ServiceIP(address='192.0.2.10/24', interface='lo')\n"
        "shown = lambda: subprocess.run(['ip', '-4', '-o', 'addr', 'show', 'dev', 'lo'], capture_output=True, "
        "text=True, check=True).stdout\n"
        "steps = [a.held(sip), a.add(sip), '192.0.2.10/24' in shown(), a.held(sip), a.add(sip), a.remove(sip),\n"
        "         '192.0.2.10' in shown(), a.held(sip), a.remove(sip)]\n"
        "try:\n"
        "    a.add(ServiceIP(address='192.0.2.10/24', interface='no-such-if0'))\n"
        "    steps.append('added to a missing interface')\n"
        "except RuntimeError as e:\n"
        "    steps.append(str(e))\n"
        "print(steps)\n"
    )
    got = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str([False, True, True, True, False, True, False, False, False,
                                      "interface no-such-if0 does not exist on this node"]), got.stdout


@pytest.mark.parametrize("operation", ["demote", "promote"])
def test_i13_the_service_ips_move_without_waiting_for_a_service_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str) -> None:
    """A health check (a second, on a busy node) running on the services' thread does not hold the
    address inside the write pause: the old primary lets go of it, the new one takes it, meanwhile."""
    import asyncio
    import threading

    pg = FakePostgres(DbState.PRIMARY if operation == "demote" else DbState.STANDBY)
    monkeypatch.setattr(pgact, "control_data", lambda cfg, node: dict(SHUT_DOWN))
    kernel = FakeKernel({SERVICE_IP} if operation == "demote" else set())
    with shell(tmp_path, monkeypatch, pg, kernel) as sh:
        checking = threading.Event()

        async def go() -> bool:
            await sh.start()
            await sh.tick(None if operation == "demote" else view(DbState.PRIMARY, services=True))
            await sh.agent.operator.set_maintenance(True)
            sh.agent.svc_pool.submit(checking.wait, 10)  # a service command under way
            args = () if operation == "demote" else ("0/3E7", 5.0)
            op = asyncio.ensure_future(sh.agent.operator.operate(operation, *args))
            def moved() -> bool:
                return (SERVICE_IP in kernel.held) != (operation == "demote")

            # Until it moved, or for at least 8 s while the service command holds its thread (less its 10 s,
            # so a move that waited for the command is never taken for one that did not).
            for _ in range(800):
                if moved() or op.done():
                    break
                await asyncio.sleep(0.01)
            went = moved()
            checking.set()
            await op
            return went

        assert run(go()), "the address waited for the service command"


def test_i13_the_announcement_leaves_without_registering_a_receive_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gratuitous ARP only sends: its socket asks for no protocol, so the kernel registers no receive
    hook (and waits for no RCU grace period) before the new holder's first announcement leaves."""
    import socket

    from standby.observe import probes

    opened: list[tuple[int, int, int]] = []
    sent: list[bytes] = []

    class Recorded:
        def __init__(self, family: int, kind: int, proto: int) -> None:
            opened.append((family, kind, proto))

        def __enter__(self) -> Recorded:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, addr: Any) -> None:
            pass

        def send(self, data: bytes) -> int:
            sent.append(data)
            return len(data)

    monkeypatch.setattr(probes, "_mac", lambda interface: b"\x02\x00\x00\x00\x00\x01")
    monkeypatch.setattr(probes.socket, "socket", Recorded)
    probes.gratuitous_arp("eth9", "192.0.2.100", 2)
    assert opened == [(socket.AF_PACKET, socket.SOCK_RAW, 0)]
    assert len(sent) == 4 and all(p[12:14] == b"\x08\x06" for p in sent)  # ARP frames, request and reply each


def test_i13_suspending_automatic_failover_does_not_hold_the_agents_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The maintenance file is fsynced: on a busy disk that took 0.75 s, and with the loop held that long
    the primary saw itself stalled and fenced at the first step of a switchover. The loop runs meanwhile."""
    import asyncio
    import threading

    from standby.agent import maintenance

    writing, let_go, written = threading.Event(), threading.Event(), threading.Event()
    real_write = maintenance._atomic_write

    def slow_write(*a: Any, **kw: Any) -> None:
        writing.set()
        let_go.wait(5)
        real_write(*a, **kw)
        written.set()

    monkeypatch.setattr(maintenance, "_atomic_write", slow_write)
    with shell(tmp_path, monkeypatch, FakePostgres(DbState.PRIMARY), FakeKernel({SERVICE_IP})) as sh:
        async def go() -> bool:
            await sh.start()
            op = asyncio.ensure_future(sh.agent.operator.set_maintenance(True))
            await asyncio.sleep(0)
            ran = False
            for _ in range(100):  # the loop goes on while the file is being written
                if writing.is_set() and not written.is_set():
                    ran = True
                    break
                await asyncio.sleep(0.01)
            let_go.set()
            await op
            return ran and sh.agent.operator.suspended

        assert run(go())
