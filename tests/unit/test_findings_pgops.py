"""The systemd unit, PostgreSQL outside the agent's unit, one fence routine (H2, L3, L4, M7).

The fence tests fake only the edges (PostgreSQL's role, pg_ctl, addresses); the state file, the
corrupt file, the full disk and the planted links are real.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner

from standby import config
from standby.act import addresses, fence, services, sessions
from standby.act import postgres as pgact
from standby.agent.store import Store
from standby.decide import State
from standby.model import DbState, PgRole
from standby.observe import postgres as pgobs

from .configs import example_with_secrets

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "etc" / "standby.service"
VENV_STANDBY = ROOT / ".venv" / "bin" / "standby"


# -- H2: the unit ---------------------------------------------------------------------------------


def _unit() -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(UNIT.read_text())
    return p


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_h2_unit_verifies_with_this_checkouts_binary(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a warning once its binary exists.

    verify fails on a missing ExecStart binary but only warns (exit 0) on an unknown key, so the
    copy points at this checkout's binary and any output at all fails the test.
    """
    shipped = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True)
    assert shipped.returncode != 0 and "/usr/local/bin/standby" in shipped.stderr  # verify does check paths
    assert VENV_STANDBY.exists(), "run ./dev setup first"
    copy = tmp_path / "standby.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/standby", str(VENV_STANDBY)))
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_h2_unit_restarts_forever_and_is_hardened(tmp_path: Path) -> None:
    u = _unit()
    assert u["Unit"]["StartLimitIntervalSec"] == "0"  # RestartSec=0.2 would meet 5 starts in 10 s
    s = u["Service"]
    assert s["Restart"] == "always" and float(s["RestartSec"]) <= 1
    assert int(s["LimitNOFILE"]) >= 65536
    assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict" and s["ProtectHome"] == "yes"
    caps = set(s["CapabilityBoundingSet"].split())
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"} <= caps
    assert "CAP_SYS_ADMIN" not in caps
    writable = [p.lstrip("-") for p in s["ReadWritePaths"].split()]
    raw, _ = example_with_secrets(tmp_path)
    example = config.parse({**raw, "state_dir": "/var/lib/standby"})
    for needed in (example.state_dir_for("alpha"), example.pg("alpha").data_dir):
        assert any(needed == Path(w) or Path(w) in needed.parents for w in writable), needed


def test_h2_launcher_is_a_transient_unit_under_systemd() -> None:
    assert pgact.choose_launcher(pgact.HostFacts(True, "/usr/bin/systemd-run"))[0] is pgact.Launcher.SYSTEMD_RUN
    assert pgact.choose_launcher(pgact.HostFacts(False, "/usr/bin/systemd-run"))[0] is pgact.Launcher.PG_CTL
    assert pgact.choose_launcher(pgact.HostFacts(True, None)) == (pgact.Launcher.PG_CTL, pgact.LaunchWhy.NO_SYSTEMD_RUN)


def test_h2_transient_unit_runs_the_server_as_its_account(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    cfg = config.parse(raw)
    argv = pgact.start_argv(cfg, "alpha", pgact.Launcher.SYSTEMD_RUN, 60)
    assert argv[0] == "systemd-run" and f"--unit={pgact.unit_name('alpha')}" in argv
    assert "--property=User=postgres" in argv and "--property=Type=notify" in argv
    assert argv[argv.index("--") + 1:] == [str(cfg.pg("alpha").bin_dir / "postgres"), "-D", str(cfg.pg("alpha").data_dir)]


# -- L3: the server log and a full disk -----------------------------------------------------------


def test_l3_server_log_is_bounded_without_systemd(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    cfg = config.parse(raw)
    opts = pgact.start_argv(cfg, "alpha", pgact.Launcher.PG_CTL, 60)
    o = opts[opts.index("-o") + 1]
    for setting in ("logging_collector=on", "log_truncate_on_rotation=on", "log_rotation_age=60",
                    f"log_filename={pgact.LOG_FILENAME}"):
        assert f"-c {setting}" in o
    # The file name cycles (hour of the day): a rotation reuses, and truncates, an old file.
    assert "%H" in pgact.LOG_FILENAME and not any(x in pgact.LOG_FILENAME for x in ("%Y", "%m", "%d", "%j"))
    # pg_ctl's own -l file gets only what the server says before its collector runs.
    assert opts[opts.index("-l") + 1] != str(cfg.state_dir_for("alpha") / "postgresql.log")


@pytest.fixture
def full_disk() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    d = Path(tempfile.mkdtemp(prefix="standby-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], check=True)
    try:
        fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)
        d.rmdir()


def test_l3_history_on_a_full_disk_does_not_raise(full_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(full_disk, "alpha")
    for i in range(3):
        entry = store.record("decision", n=i)
        assert entry["n"] == i
    assert store.history_lost == 3
    assert sum("history entries are dropped" in r.getMessage() for r in caplog.records) == 1


# -- one fence routine, L4 --------------------------------------------------------------------------


class Edges:
    """What the fence touches outside the state directory, recorded in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Store, role: PgRole, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.running = role is not PgRole.STOPPED

        def remove(sip: Any) -> bool:
            self.calls.append(("remove", sip.address))
            return True

        def stop(cfg: Any, node: str, mode: str = "fast", timeout_s: int = 60) -> None:
            try:
                fenced = json.loads(store.state_path.read_text()).get("fenced")
            except (OSError, ValueError, AttributeError):
                fenced = None
            self.calls.append(("stop", (mode, fenced)))
            if mode in fail:
                raise subprocess.TimeoutExpired(["pg_ctl"], timeout_s) if mode == "fast" else pgact.PostgresActionError("hung")
            self.running = False

        def kill(cfg: Any, node: str, timeout_s: float = 10.0) -> None:
            self.calls.append(("kill", None))
            self.running = False

        def fenced_on_disk() -> Any:
            try:
                return json.loads(store.state_path.read_text()).get("fenced")
            except (OSError, ValueError, AttributeError):
                return None

        def signal(cfg: Any, node: str) -> int | None:
            self.calls.append(("signal", fenced_on_disk()))
            return 4242 if self.running else None

        def wait_ended(ips: Any, port: int) -> int:
            self.calls.append(("wait", port))
            return 0

        monkeypatch.setattr(fence, "running_primary", lambda d: self.running and role is PgRole.PRIMARY)
        monkeypatch.setattr(pgact, "request_fast_stop", signal)
        monkeypatch.setattr(sessions, "wait_ended", wait_ended)
        monkeypatch.setattr(addresses, "remove", remove)
        monkeypatch.setattr(services, "stop_all", lambda svcs, node: [])
        monkeypatch.setattr(pgobs, "observe_local", lambda cfg, node: SimpleNamespace(role=role))
        monkeypatch.setattr(pgact, "stop", stop)
        monkeypatch.setattr(pgact, "kill_server", kill)

    def kinds(self) -> list[str]:
        """The calls in order, repeated removals (service and reporting IPs) as one."""
        out: list[str] = []
        for k, _ in self.calls:
            if not (k == "remove" and out[-1:] == ["remove"]):
                out.append(k)
        return out


def _node(tmp_path: Path, state: str | None, clean: bool = False) -> tuple[Path, config.Config, Store]:
    raw, _ = example_with_secrets(tmp_path)
    path = tmp_path / "standby.toml"
    path.write_text(tomli_w.dumps(raw))
    cfg = config.parse(raw)
    store = Store(cfg.state_dir_for("alpha"), "alpha")
    if state is not None:
        store.state_path.write_text(state)
    store.write_liveness(7, clean=clean)
    return path, cfg, store


def _fence_cli(path: Path) -> Any:
    from standby.cli.agent import fence_command

    return CliRunner().invoke(fence_command, ["--config", str(path), "--node", "alpha", "--if-unclean"])


def test_fence_records_fenced_before_the_stop_and_escalates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fence --if-unclean` on a primary whose stops hang: fenced on disk first, then fast, immediate, SIGKILL."""
    path, _cfg, store = _node(tmp_path, json.dumps({"term": 3, "was_primary": True, "peer_could_promote": True}))
    edges = Edges(monkeypatch, store, PgRole.PRIMARY, fail=("fast", "immediate"))
    res = _fence_cli(path)
    assert res.exit_code == 0, res.output
    # Fenced on disk, the stop's signal and the clients told (ci42 below), the addresses, the escalation.
    assert edges.kinds() == ["signal", "wait", "remove", "stop", "stop", "kill"]
    assert edges.calls[0] == ("signal", True)  # fenced before the stop begins
    assert [c[1] for c in edges.calls if c[0] == "stop"] == [("fast", True), ("immediate", True)]
    assert not edges.running
    saved = json.loads(store.state_path.read_text())
    assert saved["fenced"] is True and saved["term"] == 3
    assert store.history()[-1]["event"] == "fenced" and store.history()[-1]["stopped_by"] == "kill"


def test_ci42_fence_of_a_running_primary_tells_its_clients_before_the_addresses_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI run 42: the unit's fence removed the service IP, then stopped the server; a client waiting for its
    INSERT's answer never heard of it (nothing can leave from a removed address) and waited for good.
    Now: "fenced" on disk, the stop's signal, the sessions through the service IPs ended, then the addresses."""
    path, cfg, store = _node(tmp_path, json.dumps({"term": 3, "was_primary": True, "peer_could_promote": True}))
    edges = Edges(monkeypatch, store, PgRole.PRIMARY)
    res = _fence_cli(path)
    assert res.exit_code == 0, res.output
    assert edges.kinds() == ["signal", "wait", "remove", "stop"] and not edges.running
    assert edges.calls[0] == ("signal", True) and edges.calls[1] == ("wait", cfg.pg("alpha").port)
    assert "clients through the service IPs told" in res.output


@pytest.mark.parametrize("role", [PgRole.STANDBY, PgRole.STOPPED])
def test_ci42_fence_asks_no_stop_before_the_addresses_of_a_standby_or_a_stopped_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: PgRole) -> None:
    """Only a running primary's sessions are ended first; a standby is kept as before, addresses first."""
    path, _cfg, store = _node(tmp_path, json.dumps({"term": 3, "was_primary": True, "peer_could_promote": True}))
    edges = Edges(monkeypatch, store, role)
    res = _fence_cli(path)
    assert res.exit_code == 0, res.output
    assert edges.kinds()[:1] == ["remove"] and "signal" not in edges.kinds()


def test_ci42_fence_asks_no_stop_first_when_the_plan_keeps_the_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer could not have been promoted: the server is kept, so it is not signalled first either."""
    path, _cfg, store = _node(tmp_path, json.dumps({"term": 3, "was_primary": True, "peer_could_promote": False}))
    edges = Edges(monkeypatch, store, PgRole.PRIMARY)
    res = _fence_cli(path)
    assert res.exit_code == 0, res.output
    assert edges.kinds() == ["remove"] and edges.running


@pytest.mark.parametrize("state", ['{"term": 3, "fenced": true}', '{"term": ', '{"term": 3, "was_primary": true, '
                                   '"peer_could_promote": true}'])
def test_ci42_a_signalled_server_is_stopped_to_the_end_though_it_no_longer_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    """Once signalled, a server asked "are you a primary?" answers "shutting down" (read as stopped): the plan
    stays the one its files gave before the signal, and the stop escalates as always (a fence cut short, a
    damaged state, an unclean death)."""
    path, _cfg, store = _node(tmp_path, state)
    edges = Edges(monkeypatch, store, PgRole.PRIMARY, fail=("fast",))
    monkeypatch.setattr(pgobs, "observe_local", lambda cfg, node: SimpleNamespace(role=PgRole.STOPPED))
    res = _fence_cli(path)
    assert res.exit_code == 0, res.output
    assert edges.kinds() == ["signal", "wait", "remove", "stop", "stop"] and not edges.running


def test_ci42_running_primary_is_read_from_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid: list[int | None] = [None]
    monkeypatch.setattr(pgact, "running_pid", lambda d: pid[0])
    assert not fence.running_primary(tmp_path)  # nothing runs
    pid[0] = 4242
    assert fence.running_primary(tmp_path)
    (tmp_path / "standby.signal").touch()
    assert not fence.running_primary(tmp_path)  # a standby's


def test_fence_agent_escalates_through_the_same_routine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's FENCE action: a fast stop that times out (pg_ctl itself hung) escalates too."""
    from standby.agent.node import Agent

    _path, cfg, store = _node(tmp_path, None)
    edges = Edges(monkeypatch, store, PgRole.PRIMARY, fail=("fast",))
    Agent(cfg, "alpha").db.stop()
    assert [c[1][0] for c in edges.calls if c[0] == "stop"] == ["fast", "immediate"] and not edges.running


def test_fence_plan_finishes_a_fence_cut_short() -> None:
    """A crash between "fenced" on disk and the end of the stop: the next fence stops the server."""
    p = fence.plan(True, False, State(fenced=True), DbState.PRIMARY)
    assert p.stop_postgres and p.why is fence.Why.ALREADY_FENCED_RUNNING
    assert not fence.plan(True, False, State(fenced=True), DbState.DOWN).stop_postgres
    # A rejoin starts the standby before it clears "fenced": that standby is kept.
    assert not fence.plan(True, False, State(fenced=True), DbState.STANDBY).stop_postgres
    assert fence.plan(True, True, State(was_primary=True), DbState.PRIMARY).why is fence.Why.CLEAN_STOP
    assert not fence.plan(True, False, State(was_primary=True, peer_could_promote=False), DbState.PRIMARY).stop_postgres


@pytest.mark.parametrize("damage", ['{"term": 4, "fenced": fal', "", "[1, 2]", '{"term": "4", "fenced": false}',
                                    '{"term": 4, "fenced": 0}', "\x00\x00\x00"])
def test_l4_corrupt_state_fence_if_unclean_stops_a_running_primary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   damage: str) -> None:
    path, _cfg, store = _node(tmp_path, damage)
    edges = Edges(monkeypatch, store, PgRole.PRIMARY)
    res = _fence_cli(path)
    assert res.exit_code == 0, res.output
    assert edges.kinds() == ["signal", "wait", "remove", "stop"] and not edges.running
    assert "cannot be read" in res.output and "unreadable" in res.output
    assert store.state_path.read_text() == damage  # kept as found, for a person to look at
    assert store.history()[-1]["reason"] == fence.Why.STATE_UNREADABLE_PRIMARY.name.lower()


def test_l4_corrupt_state_keeps_a_standby_and_drops_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _cfg, store = _node(tmp_path, '{"term": ')
    edges = Edges(monkeypatch, store, PgRole.STANDBY)
    res = _fence_cli(path)
    assert res.exit_code == 0, res.output
    assert edges.kinds() == ["remove"] and edges.running


def test_l4_damaged_liveness_record_counts_as_unclean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _cfg, store = _node(tmp_path, json.dumps({"term": 2, "was_primary": True, "peer_could_promote": True}),
                              clean=True)
    store.live_path.write_text('{"pid": 1, "boot"')
    edges = Edges(monkeypatch, store, PgRole.PRIMARY)
    res = _fence_cli(path)
    assert res.exit_code == 0, res.output
    assert edges.kinds() == ["signal", "wait", "remove", "stop"] and not edges.running


# -- M7: links planted in the data directory ------------------------------------------------------


@pytest.fixture
def pg_owned_data_dir() -> Iterator[tuple[Path, Path]]:
    """(a data directory owned by postgres, a root-owned directory of victims), both cleaned up."""
    if os.geteuid() != 0:
        pytest.skip("needs root (files of two accounts)")
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres account (apt-get install postgresql-15)")
    base = Path(tempfile.mkdtemp(prefix="standby-m7-"))
    base.chmod(0o755)
    data, victims = base / "data", base / "root"
    data.mkdir(mode=0o700)
    os.chown(data, pw.pw_uid, pw.pw_gid)
    victims.mkdir(mode=0o755)
    try:
        yield data, victims
    finally:
        shutil.rmtree(base)


NAMES = ("postgresql.auto.conf", "standby.signal", pgact.STANDBY_PASSFILE, "pg_hba.conf")


def test_m7_configure_as_standby_follows_no_planted_link(tmp_path: Path, pg_owned_data_dir: tuple[Path, Path]) -> None:
    data, victims = pg_owned_data_dir
    before = {}
    for name in NAMES:
        victim = victims / name
        victim.write_text(f"root's own {name}\n")
        victim.chmod(0o644)
        os.symlink(victim, data / name)  # what a compromised postgres account can do
        before[name] = (victim.read_text(), os.stat(victim))
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"]["data_dir"] = str(data)
    cfg = config.parse(raw)
    pgact.configure_as_standby(cfg, "alpha", "beta")
    pg_uid = pwd.getpwnam("postgres").pw_uid
    for name in NAMES:
        victim = victims / name
        st = os.stat(victim)
        assert victim.read_text() == before[name][0], name
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644), name
        # The link was replaced by the account's own file (it read the target only as itself could).
        own = data / name
        assert not own.is_symlink() and own.stat().st_uid == pg_uid, name
    assert "primary_conninfo" in (data / "postgresql.auto.conf").read_text()


def test_m7_clone_does_not_chown_through_a_link(tmp_path: Path, pg_owned_data_dir: tuple[Path, Path]) -> None:
    data, victims = pg_owned_data_dir
    target = data / "main"
    os.symlink(victims, target)  # the data directory itself replaced by a link to a root directory
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"]["data_dir"] = str(target)
    cfg = config.parse(raw)
    with pytest.raises(pgact.PostgresActionError, match="does not belong to postgres"):
        pgact.clone(cfg, "alpha", "beta", timeout_s=5)
    st = os.stat(victims)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)


# -- the lab's supervisor behaves like the unit -----------------------------------------------------


def _pids_of(name: str) -> list[int]:
    """Processes whose argv[0] is ``name`` (or starts with it, when it ends with '-')."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv0 = cmdline.read_bytes().split(b"\0", 1)[0].decode(errors="replace")
            if argv0 == name or (name.endswith("-") and argv0.startswith(name)):
                out.append(int(cmdline.parent.name))
        except OSError:
            continue
    return out


def test_h2_respawn_kills_the_agents_leftovers_but_not_a_detached_server(tmp_path: Path) -> None:
    """`agent --respawn` as the unit: KillMode=mixed on the agent's leftovers (its process group),
    never on a server that pg_ctl detached into a session of its own; then fence --if-unclean."""
    tag = f"standby-test-{os.getpid()}-{tmp_path.name}"
    leftover, server, fenced = f"{tag}-leftover", f"{tag}-server", tmp_path / "fenced"
    # The "agent" leaves a child behind in its group, detaches a "server", and dies uncleanly.
    agent = ["bash", "-c", f'(exec -a {leftover} sleep 300) & setsid bash -c "exec -a {server} sleep 300" & sleep 0.3; exit 1']
    fence_cmd = ["sh", "-c", f"echo unclean >> {fenced}"]
    # As `agent --respawn` runs it once it has replaced itself.
    sup = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-m", "standby.supervisor", json.dumps(agent),
                            json.dumps(fence_cmd)], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (fenced.exists() and _pids_of(server)):
            time.sleep(0.1)
        assert fenced.exists(), "fence --if-unclean did not run after the unclean exit"
        assert _pids_of(server), "the detached server was killed"
        time.sleep(0.5)
        assert len(fenced.read_text().splitlines()) >= 1
        # Every round's leftover was killed before the fence ran (at most the current round's may live).
        assert len(_pids_of(leftover)) <= 1
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=10)
        assert _pids_of(leftover) == []
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()
        for pid in _pids_of(f"{tag}-"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- a failed crash recovery says why ---------------------------------------------------------------


def _crashed_with_single_user_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       request: pytest.FixtureRequest, script: str) -> config.Config:
    """A data directory left by a crash (not shut down, not waiting for its source), and a `postgres` that
    runs ``script`` (sh) in its place when single-user recovery calls it."""
    raw, _ = example_with_secrets(tmp_path)
    data = tmp_path / "pgdata"
    data.mkdir()
    # runuser runs it as postgres, who cannot enter pytest's 0700 temporary directories.
    bin_dir = Path(tempfile.mkdtemp(prefix="standby-fake-bin-"))
    bin_dir.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(bin_dir, ignore_errors=True))
    fake = bin_dir / "postgres"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    raw["postgres"].update(data_dir=str(data), bin_dir=str(bin_dir))
    monkeypatch.setattr(pgact, "control_data", lambda *a: {"Database cluster state": "in production"})
    monkeypatch.setattr(pgact, "awaits_wal_from_source", lambda *a: False)
    return config.parse(raw)


def test_chaos_seed_205_failed_crash_recovery_names_postgres_own_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Seed 205 (sync): a rejoin failed with "crash recovery ... failed: ['libfaketime: sem_name was
    ...']", the last stderr line of the single-user server, written by a preloaded library at exit:
    the operator saw no reason. The error carries PostgreSQL's own lines."""
    cfg = _crashed_with_single_user_postgres(
        tmp_path, monkeypatch, request,
        "echo 'FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use' >&2\n"
        "echo 'HINT:  Terminate any old server processes associated with data directory' >&2\n"
        "echo 'libfaketime: sem_name was /faketime_sem_1, created locally: false' >&2\n"
        "exit 1\n")
    with pytest.raises(pgact.PostgresActionError) as e:
        pgact.ensure_clean_shutdown(cfg, "alpha")
    assert "pre-existing shared memory block" in str(e.value) and "Terminate any old server" in str(e.value)
    assert "exit 1" in str(e.value)


def _zombie() -> subprocess.Popen[bytes]:
    """A real child that has exited and is not reaped yet: what a killed postmaster is until its parent waits."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while "\nState:\tZ" not in Path(f"/proc/{child.pid}/status").read_text():
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    return child


def _recovery_with_a_zombie_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
                                 zombie: int) -> config.Config:
    """A lock file naming ``zombie``, and a single-user `postgres` that refuses as PostgreSQL does while that
    PID answers (a zombie's /proc entry stays until it is reaped)."""
    cfg = _crashed_with_single_user_postgres(
        tmp_path, monkeypatch, request,
        f"if [ -e /proc/{zombie} ]; then\n"
        f"  echo 'FATAL:  lock file \"postmaster.pid\" already exists' >&2\n"
        f"  echo 'HINT:  Is another postmaster (PID {zombie}) running in data directory?' >&2\n"
        "  exit 1\nfi\nexit 0\n")
    data = cfg.pg("alpha").data_dir
    (data / "postmaster.pid").write_text(f"{zombie}\n{data}\n1700000000\n5432\n")
    return cfg


def test_chaos_seed_201_crash_recovery_waits_for_a_killed_postmaster_to_be_reaped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Seed 201 (sync): PostgreSQL killed on the primary; its agent's rejoin ran crash recovery 1.1 s
    later and it refused, "lock file postmaster.pid already exists ... (PID 8968)": the killed
    postmaster, not yet reaped by an init that does so about once a second. The rejoin failed once
    and converged only on its retry. Recovery now waits for the reaping (bounded)."""
    child = _zombie()
    cfg = _recovery_with_a_zombie_lock(tmp_path, monkeypatch, request, child.pid)
    reaper = threading.Timer(0.4, child.wait)
    reaper.start()
    try:
        assert pgact.ensure_clean_shutdown(cfg, "alpha") is True
    finally:
        reaper.cancel()
        child.wait()
    assert (cfg.pg("alpha").data_dir / "postmaster.pid").exists(), "the lock file is never removed"


def test_chaos_seed_201_the_wait_is_bounded_and_a_zombie_never_reaped_still_fails_loudly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    child = _zombie()
    try:
        cfg = _recovery_with_a_zombie_lock(tmp_path, monkeypatch, request, child.pid)
        monkeypatch.setattr(pgact.wait_reaped, "__defaults__", (0.2,))
        started = time.monotonic()
        with pytest.raises(pgact.PostgresActionError, match="lock file"):
            pgact.ensure_clean_shutdown(cfg, "alpha")
        assert time.monotonic() - started < 3
        assert pgact.wait_reaped(cfg.pg("alpha").data_dir, timeout_s=0.1) is False
    finally:
        child.wait()
    assert pgact.wait_reaped(cfg.pg("alpha").data_dir, timeout_s=0.1) is True  # reaped: nothing to wait for


def test_ci60_a_start_right_after_a_killed_postmaster_waits_for_it_to_be_reaped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """CI run 60 (`tests/lab/test_cluster_layout.py::test_cluster_layout_switchover_and_back`): the old primary's
    fast stop hung past the shutdown checkpoint, its agent escalated to SIGKILL, and the switchover's `follow`
    started the server 1.1 s later: "lock file ... already exists ... (PID 9388)", the killed postmaster, a
    zombie its init had not reaped yet. The switchover failed and the old primary fenced itself. Every start now
    waits for that reaping first (bounded), as crash recovery does since seed 201."""
    child = _zombie()
    cfg = _recovery_with_a_zombie_lock(tmp_path, monkeypatch, request, child.pid)
    pg_ctl = Path(cfg.pg("alpha").bin_dir) / "pg_ctl"  # refuses as PostgreSQL does while the PID answers
    pg_ctl.write_text(f"#!/bin/sh\nif [ -e /proc/{child.pid} ]; then echo 'pg_ctl: could not start server' >&2; "
                      "exit 1; fi\nexit 0\n")
    pg_ctl.chmod(0o755)
    monkeypatch.setattr(pgact, "choose_launcher", lambda *a: (pgact.Launcher.PG_CTL, None))
    monkeypatch.setattr(pgact, "_own_dir", lambda *a: None)
    reaper = threading.Timer(0.4, child.wait)
    reaper.start()
    try:
        assert pgact.start(cfg, "alpha") is pgact.Launcher.PG_CTL
    finally:
        reaper.cancel()
        child.wait()
