"""H2 for real: the shipped unit under a booted systemd, and `systemctl restart` of it.

A container (systemd-nspawn) boots this host's own /usr with systemd as its PID 1. Inside it the
shipped unit, hardening included, runs the agent's real start path (`standby.act.postgres.start`)
in place of the whole agent (which would need a peer), against a real PostgreSQL 15. Restarting
the unit must leave that server running; the control shows that a server started as the unit's
child (what pg_ctl alone gives) dies with it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from tests.packages import need

# Alone (tests/gate.py): it boots a whole systemd, a burst of load beside another test's agents, and
# copies the host's /etc while other tests' labs would add and drop their clusters there.
pytestmark = pytest.mark.alone

ROOT = Path(__file__).parents[2]
VENV_PY = ROOT / ".venv" / "bin" / "python"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATA = "/var/lib/postgresql/15/sbtest"
LAUNCH = """import os, time
from standby import config
from standby.act import postgres as p
cfg = config.load("/etc/standby/standby.toml")
if os.environ.get("FORCE_PG_CTL"):  # the control: what starting the server as a child gives
    p.host_facts = lambda: p.HostFacts(False, None)
if p.running_pid(cfg.pg("alpha").data_dir) is None:
    print("started with", p.start(cfg, "alpha").value, flush=True)
time.sleep(10**6)
"""


class Container:
    def __init__(self, root: Path, proc: subprocess.Popen[bytes]) -> None:
        self.root, self.proc = root, proc

    def pid1(self) -> int | None:
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except FileNotFoundError:
            return None
        return int(kids[0]) if kids else None

    def run(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        pid = self.pid1()
        assert pid is not None, "the container is gone"
        res = subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "sh", "-c", script],
                             check=False, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{script!r} failed: {res.stdout}{res.stderr}")
        return res

    def postmaster(self) -> int | None:
        """The postmaster's pid if it is alive (inside the container's pid namespace)."""
        res = self.run(f"head -1 {DATA}/postmaster.pid 2>/dev/null", check=False)
        pid = res.stdout.strip()
        if not pid.isdigit():
            return None
        alive = self.run(f"test -d /proc/{pid} && ! grep -q '^State:.*Z' /proc/{pid}/status", check=False)
        return int(pid) if alive.returncode == 0 else None


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a container)"
    if not (PG_BIN / "postgres").exists():
        return f"PostgreSQL 15 not found in {PG_BIN} (apt-get install postgresql-15)"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "systemd is not installed (apt-get install systemd)"
    if not VENV_PY.exists():
        return "no .venv in this checkout (./dev setup)"
    return None


def _install_nspawn() -> None:
    need("systemd-nspawn", "systemd-container")  # one apt-get at a time beside other test processes


def _build_root(root: Path) -> None:
    """This host's /usr (bound read-only at boot), a copy of its /etc, and the test's files."""
    for d in ("usr", "var", "tmp", "run", "root/.pyenv", "dev", "proc", "sys", "home", str(ROOT).lstrip("/")):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copytree("/etc", root / "etc", symlinks=True)
    (root / "etc" / "os-release").unlink(missing_ok=True)
    shutil.copy("/usr/lib/os-release", root / "etc" / "os-release")
    (root / "etc" / "machine-id").write_text("")
    for link in ("bin", "lib", "lib64", "sbin"):
        (root / link).symlink_to(f"usr/{link}")
    # The copied /etc may enable the distribution's own cluster; this test wants only its own server.
    for wants in (root / "etc" / "systemd" / "system").glob("*.wants/postgresql*"):
        wants.unlink()

    conf = root / "etc" / "standby"
    conf.mkdir(exist_ok=True)
    raw = tomllib.loads((ROOT / "etc" / "standby.example.toml").read_text())
    raw["state_dir"] = "/var/lib/standby"
    raw["postgres"]["data_dir"] = DATA
    raw["postgres"]["socket_dir"] = "/run/postgresql"
    for name, where in (("heartbeat.key", ("heartbeat_key_file",)),
                        ("replication.password", ("postgres", "replication_password_file")),
                        ("api.token", ("api", "token_file"))):
        secret = conf / name
        secret.write_text(secrets.token_urlsafe(32) + "\n")
        secret.chmod(0o600)
        table = raw
        for part in where[:-1]:
            table = table[part]
        table[where[-1]] = f"/etc/standby/{name}"
    (conf / "standby.toml").write_text(tomli_w.dumps(raw))
    (conf / "launch.py").write_text(LAUNCH)

    unit = (ROOT / "etc" / "standby.service").read_text()
    unit = unit.replace("ExecStart=/usr/local/bin/standby agent", f"ExecStart={VENV_PY} /etc/standby/launch.py")
    unit = "\n".join(ln for ln in unit.splitlines() if not ln.startswith("ExecStopPost=")) + "\n"
    (root / "etc" / "systemd" / "system" / "standby.service").write_text(unit)
    dropins = root / "etc" / "systemd" / "system" / "standby.service.d"
    dropins.mkdir(exist_ok=True)
    # This checkout's interpreter lives under /root, which ProtectHome hides, and the checkout itself
    # may be anywhere (a CI clone under /tmp, which PrivateTmp hides): both are bound in read-only;
    # nothing else changes.
    pyenv = Path(os.path.realpath(VENV_PY)).parents[2]
    (dropins / "interpreter.conf").write_text(
        f"[Service]\nProtectHome=tmpfs\nBindReadOnlyPaths={pyenv}\nBindReadOnlyPaths={ROOT}\n")


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    why = _missing()
    if why:
        pytest.skip(why)
    _install_nspawn()
    base = Path(tempfile.mkdtemp(prefix="standby-nspawn-"))
    root = base / "root"
    proc: subprocess.Popen[bytes] | None = None
    try:
        _build_root(root)
        pyenv = Path(os.path.realpath(VENV_PY)).parents[2]
        binds = ["--bind-ro=/usr", f"--bind-ro={ROOT}", f"--bind-ro={pyenv}"]
        with open(base / "console.log", "wb") as console:
            proc = subprocess.Popen(
                ["systemd-nspawn", "-D", str(root), "--boot", "--register=no", "--keep-unit", "--private-network",
                 f"--machine=sbt{secrets.token_hex(3)}", *binds],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True)
        c = Container(root, proc)
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline and proc.poll() is None:
            if c.pid1() is not None:
                state = c.run("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    break
            time.sleep(0.5)
        if state not in ("running", "degraded"):
            log = (base / "console.log").read_text(errors="replace")[-2000:]
            pytest.skip(f"the container did not boot (state {state or 'none'}, nspawn "
                        f"{'exited ' + str(proc.poll()) if proc.poll() is not None else 'running'}): {log}")
        c.run(f"mkdir -p /var/lib/standby /var/lib/postgresql/15 /run/postgresql"
              f" && chown postgres: /var/lib/postgresql /var/lib/postgresql/15 /run/postgresql"
              f" && runuser -u postgres -- {PG_BIN}/initdb -D {DATA} -U postgres --auth=trust >/dev/null"
              f" && systemctl daemon-reload")
        yield c
    finally:
        if proc is not None and proc.poll() is None:
            c = Container(root, proc)
            if c.pid1() is not None:
                c.run("systemctl poweroff", check=False)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _wait_postmaster(c: Container, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = c.postmaster()
        if pid is not None and c.run("runuser -u postgres -- psql -h /run/postgresql -Atc 'select 1'",
                                     check=False).stdout.strip() == "1":
            return pid
        time.sleep(0.3)
    raise AssertionError("PostgreSQL did not come up: " + c.run("journalctl -u standby --no-pager | tail -20",
                                                               check=False).stdout)


def _stop_all(c: Container) -> None:
    c.run("systemctl stop standby; rm -rf /etc/systemd/system/standby.service.d/control.conf; systemctl daemon-reload;"
          f" runuser -u postgres -- {PG_BIN}/pg_ctl -D {DATA} -m fast -w stop >/dev/null 2>&1; true")


def test_h2_restarting_the_agent_unit_leaves_postgresql_running(container: Container) -> None:
    c = container
    try:
        c.run("systemctl start standby")
        before = _wait_postmaster(c)
        assert c.run("systemctl is-active standby-postgresql-alpha.service", check=False).stdout.strip() == "active"
        c.run("systemctl restart standby")
        time.sleep(2)  # what KillMode=mixed kills, it kills at once; give the new agent time to act too
        assert c.run("systemctl is-active standby").stdout.strip() == "active"
        assert c.postmaster() == before  # the same server, never restarted
        assert _wait_postmaster(c) == before
    finally:
        _stop_all(c)


def test_h2_control_a_server_started_as_the_units_child_dies_with_it(container: Container) -> None:
    """What the test above guards against: with pg_ctl as the launcher, the restart kills the server."""
    c = container
    try:
        # KillMode=mixed: the unit's other processes are killed when its stop times out (TimeoutStopSec, 30 s
        # in the shipped unit); a shorter one here changes when the server dies, not whether.
        c.run("printf '[Service]\\nEnvironment=FORCE_PG_CTL=1\\nTimeoutStopSec=2\\n'"
              " > /etc/systemd/system/standby.service.d/control.conf && systemctl daemon-reload && systemctl start standby")
        before = _wait_postmaster(c)
        c.run("systemctl stop standby")
        deadline = time.monotonic() + 10
        while c.postmaster() == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.postmaster() != before
    finally:
        _stop_all(c)


def test_l4_corrupt_state_file_fence_stops_the_real_primary(container: Container) -> None:
    """An unclean exit with a damaged state file: `standby fence --if-unclean` drops the service IP
    and stops the running primary (both real), keeps the file as found, and says why."""
    c = container
    damaged = '{"term": 7, "fenced": fa'
    try:
        c.run("systemctl start standby")
        _wait_postmaster(c)
        c.run("systemctl stop standby")  # the server stays (its own unit); nobody decides for it now
        c.run("ip link add eth0 type veth peer name eth0p && ip link set eth0 up && ip addr add 192.0.2.100/24 dev eth0")
        boot = c.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
        live = f'{{"pid": 1, "boot": 3, "last_decision": 0, "clean": false, "kernel_boot": "{boot}"}}'
        c.run(f"printf '%s' '{damaged}' > /var/lib/standby/agent-state.json && printf '%s' '{live}' > /var/lib/standby/alive")
        res = c.run(f"{ROOT}/.venv/bin/standby fence --if-unclean --config /etc/standby/standby.toml --node alpha",
                    check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "cannot be read" in res.stdout and "removed service IP 192.0.2.100/24" in res.stdout, res.stdout
        assert c.postmaster() is None
        assert "192.0.2.100" not in c.run("ip -4 addr show dev eth0").stdout
        assert c.run("cat /var/lib/standby/agent-state.json").stdout == damaged
    finally:
        c.run("ip link del eth0; rm -f /var/lib/standby/agent-state.json /var/lib/standby/alive", check=False)
        _stop_all(c)
