"""The lab builds what its contract says, its faults do what they say, and it cleans up after itself."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby.config import load
from standby.lab import LAB_BASE, Lab, LabExists, LabMissing, LabSpec
from standby.lab.netns import NETNS_DIR
from standby.lab.pair import primaries, start_pair
from standby.lab.pgnode import STATE_TMPFS_ENV
from standby.lab.topology import PG_BIN

pytestmark = pytest.mark.lab

STANDBY = Path(sys.executable).with_name("standby")
ROLES = ("sw", "alpha", "beta", "client")
ALPHA_PUB, ALPHA_PRIV = "192.0.2.11", "198.51.100.11"
BETA_PUB, BETA_PRIV = "192.0.2.12", "198.51.100.12"
SERVICE = "192.0.2.100"


# -- helpers ------------------------------------------------------------------


def received(lab: Lab, src: str, dst: str, count: int = 1) -> int:
    """Echo replies ``src`` gets from ``dst`` out of ``count`` requests."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-W", "1", dst]
    if count > 1:
        argv[1:1] = ["-i", "0.01"]
    out = lab.run(src, argv, check=False).stdout
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


def reachable(lab: Lab, src: str, dst: str) -> bool:
    """Any echo reply within a couple of seconds.

    Not a single ping: after a fault the neighbour entry may have failed, and
    the kernel re-resolves it only on its next retransmit.
    """
    argv = ["ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "2", dst]
    return lab.run(src, argv, check=False).returncode == 0


def addresses(lab: Lab, node: str, ifname: str) -> list[str]:
    data = json.loads(lab.run(node, ["ip", "-j", "-4", "addr", "show", "dev", ifname]).stdout)
    # An interface without IPv4 addresses is left out of `-4` output altogether.
    return [f"{a['local']}/{a['prefixlen']}" for link in data for a in link["addr_info"]]


def netns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def proc_state(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except FileNotFoundError:
        return None
    return None


def pg_isready(lab: Lab, src: str, host: str) -> int:
    return lab.run(src, [str(PG_BIN / "pg_isready"), "-q", "-t", "3", "-h", host, "-p", "5432"], check=False).returncode


def lab_traces(name: str) -> list[str]:
    traces = [f"netns {name}-{r}" for r in ROLES if (NETNS_DIR / f"{name}-{r}").exists()]
    if (LAB_BASE / name).exists():
        traces.append(f"dir {LAB_BASE / name}")
    return traces


def cli(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(STANDBY), "lab", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"standby lab {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def healed(lab: Lab) -> Iterator[Lab]:
    """The shared lab, healed again after the test whatever it broke."""
    try:
        yield lab
    finally:
        lab.heal()


# -- what `up` builds -----------------------------------------------------------


def test_namespaces_addresses_and_service_ip(lab: Lab) -> None:
    for role in ROLES:
        assert (NETNS_DIR / f"{lab.name}-{role}").exists()
        assert lab.netns(role) == f"{lab.name}-{role}"
        lo = json.loads(lab.run(role, ["ip", "-j", "link", "show", "dev", "lo"]).stdout)[0]
        assert "UP" in lo["flags"]
    assert addresses(lab, "alpha", "pub0") == [f"{ALPHA_PUB}/24", f"{SERVICE}/24"]
    assert addresses(lab, "alpha", "priv0") == [f"{ALPHA_PRIV}/24"]
    assert addresses(lab, "beta", "pub0") == [f"{BETA_PUB}/24"]
    assert addresses(lab, "beta", "priv0") == [f"{BETA_PRIV}/24"]
    assert addresses(lab, "client", "pub0") == ["192.0.2.50/24"]
    assert addresses(lab, "sw", "brpub") == ["192.0.2.1/24"]
    assert addresses(lab, "sw", "brpriv") == []
    ports = {p["ifname"]: p.get("master") for p in json.loads(lab.run("sw", ["ip", "-j", "link", "show"]).stdout)}
    assert ports["alpha-pub"] == ports["beta-pub"] == ports["client-pub"] == "brpub"
    assert ports["alpha-priv"] == ports["beta-priv"] == "brpriv"
    for node in ("alpha", "beta"):
        assert lab.run(node, ["sysctl", "-n", "net.ipv4.ip_nonlocal_bind"]).stdout.strip() == "1"
    # Nothing of the lab leaked into the host's own namespace.
    host = {p["ifname"] for p in json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)}
    assert not host & {"brpub", "brpriv", "alpha-pub", "alpha-priv", "beta-pub", "beta-priv", "client-pub"}
    assert reachable(lab, "client", SERVICE)
    assert reachable(lab, "beta", ALPHA_PRIV)
    assert reachable(lab, "client", "192.0.2.1")


def test_i13_the_private_link_is_rate_limited_and_the_public_one_is_not(lab: Lab) -> None:
    """Each host's private egress goes through a token bucket at the lab's rate (1 Gbit/s by default)."""
    assert lab.spec.private_mbit == 1000
    assert Lab.open(lab.name).spec.private_mbit == 1000  # lab.json keeps it
    for node in ("alpha", "beta"):
        private = json.loads(lab.run(node, ["tc", "-j", "qdisc", "show", "dev", "priv0"]).stdout)
        tbf = [q for q in private if q["kind"] == "tbf" and q.get("root")]
        assert len(tbf) == 1, private
        assert tbf[0]["options"]["rate"] == 1000 * 1_000_000 // 8  # bytes per second
        public = json.loads(lab.run(node, ["tc", "-j", "qdisc", "show", "dev", "pub0"]).stdout)
        assert not [q for q in public if q["kind"] == "tbf"], public


def test_files_secrets_and_config(lab: Lab) -> None:
    root = lab.root
    assert root == LAB_BASE / lab.name
    assert root.stat().st_mode & 0o777 == 0o755
    assert json.loads((root / "lab.json").read_text())["name"] == lab.name
    # Passable (PostgreSQL reaches its TLS key inside), never listable by others.
    assert (root / "secrets").stat().st_mode & 0o777 == 0o711
    values = set()
    for name in ("replication.password", "heartbeat.key", "api.token", "app.password"):
        path = root / "secrets" / name
        assert path.stat().st_mode & 0o777 == 0o600
        values.add(path.read_text().strip())
    assert len(values) == 4 and "" not in values
    assert (root / "secrets" / "app.dsn").stat().st_mode & 0o777 == 0o600

    cfg = load(lab.config_path)
    assert cfg.cluster == lab.name
    assert cfg.mode.value == "hot" and cfg.preferred_primary == "alpha"
    assert cfg.replication.durability.value == "sync"
    assert cfg.tiebreaker is not None and str(cfg.tiebreaker.address) == "192.0.2.1"
    assert [(str(s.address), s.interface) for s in cfg.service_ips] == [(f"{SERVICE}/24", "pub0")]
    assert [s.name for s in cfg.services] == ["softswitch"]
    assert cfg.services[0].argv("stop", "beta")[-1] == str(root / "beta" / "procs" / "softswitch.pid")
    assert cfg.heartbeat_key_file == root / "secrets" / "heartbeat.key"
    assert cfg.api.token_file == root / "secrets" / "api.token"
    assert cfg.postgres.replication_password_file == root / "secrets" / "replication.password"
    for node, pub, priv in (("alpha", ALPHA_PUB, ALPHA_PRIV), ("beta", BETA_PUB, BETA_PRIV)):
        n = cfg.nodes[node]
        assert (str(n.public.ip), n.public.interface) == (pub, "pub0")
        assert (str(n.private.ip), n.private.interface) == (priv, "priv0")
        assert cfg.pg(node).data_dir == root / node / "pgdata"
        assert cfg.pg(node).socket_dir == root / node / "run"
        assert cfg.state_dir_for(node) == root / node / "state"
        assert (root / node / "state").is_dir() and (root / node / "log").is_dir()
        pgdata = root / node / "pgdata"
        assert pgdata.stat().st_mode & 0o777 == 0o700
        assert pgdata.owner() == "postgres" and (root / node / "run").owner() == "postgres"
    assert list((root / "beta" / "pgdata").iterdir()) == []


def test_async_durability_goes_into_the_config(lab_factory) -> None:
    lab = lab_factory(durability="async")
    assert load(lab.config_path).replication.durability.value == "async"


def test_postgres_on_alpha(lab: Lab) -> None:
    assert lab.pg_running("alpha") and not lab.pg_running("beta")
    assert pg_isready(lab, "beta", ALPHA_PRIV) == 0
    assert pg_isready(lab, "client", ALPHA_PUB) == 0
    with lab.pg_connect("alpha") as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('unix_socket_directories','listen_addresses','port','data_checksums','server_version_num')"
            ).fetchall()
        )
    assert settings["unix_socket_directories"] == str(lab.root / "alpha" / "run")
    assert settings["listen_addresses"] == "*" and settings["port"] == "5432"
    assert settings["data_checksums"] == "off"
    assert settings["server_version_num"].startswith("15")
    assert (lab.root / "alpha" / "log" / "postgresql.log").stat().st_size > 0

    # The sample softswitch's clients log in with the app password over either network.
    password = (lab.root / "secrets" / "app.password").read_text().strip()
    psql = str(PG_BIN / "psql")
    for src, host in (("client", ALPHA_PUB), ("beta", ALPHA_PRIV)):
        out = lab.run(
            src,
            [psql, "-XAtq", f"host={host} user=softswitch dbname=softswitch", "-c", "SELECT current_user, current_database()"],
            env={**os.environ, "PGPASSWORD": password},
        ).stdout.strip()
        assert out == "softswitch|softswitch"
    wrong = lab.run(
        "client",
        [psql, "-XAtq", f"host={ALPHA_PUB} user=softswitch dbname=softswitch", "-c", "SELECT 1"],
        env={**os.environ, "PGPASSWORD": "wrong"},
        check=False,
    )
    assert wrong.returncode != 0


def test_up_refuses_an_existing_lab(lab: Lab) -> None:
    with pytest.raises(LabExists, match=f"standby lab down --name {lab.name}"):
        Lab.up(LabSpec(name=lab.name))
    assert lab.pg_running("alpha")
    proc = cli("up", "--name", lab.name, check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr and "Traceback" not in proc.stderr


def test_run_and_spawn(lab: Lab) -> None:
    assert lab.run("beta", ["sh", "-c", "exit 3"], check=False).returncode == 3
    pid = lab.spawn("client", ["sleep", "600"], "sleeper")
    try:
        assert pid in netns_pids(lab.netns("client"))
        assert lab.spawned_alive("client", "sleeper")
    finally:
        lab.stop_spawned("client", "sleeper")
    assert pid not in netns_pids(lab.netns("client"))
    assert not lab.spawned_alive("client", "sleeper")


# -- faults -------------------------------------------------------------------------


def test_private_link_down_keeps_public(healed: Lab) -> None:
    lab = healed
    lab.link("alpha", "private", False)
    assert not reachable(lab, "beta", ALPHA_PRIV)
    assert reachable(lab, "beta", ALPHA_PUB)
    assert lab.status()["nodes"]["alpha"]["links"] == {"public": "up", "private": "down"}
    lab.link("alpha", "private", True)
    assert reachable(lab, "beta", ALPHA_PRIV)
    assert lab.status()["nodes"]["alpha"]["links"] == {"public": "up", "private": "up"}


def test_public_link_down_keeps_private(healed: Lab) -> None:
    lab = healed
    lab.link("beta", "public", False)
    assert not reachable(lab, "alpha", BETA_PUB)
    assert not reachable(lab, "beta", "192.0.2.1")
    assert reachable(lab, "alpha", BETA_PRIV)


def test_packet_loss(healed: Lab) -> None:
    lab = healed
    lab.loss("alpha", "public", 100)
    assert lab.status()["nodes"]["alpha"]["loss"] == {"public": 100, "private": 0}
    assert not reachable(lab, "client", ALPHA_PUB)
    assert reachable(lab, "beta", ALPHA_PRIV)
    lab.loss("alpha", "public", 0)
    assert lab.status()["nodes"]["alpha"]["loss"] == {"public": 0, "private": 0}
    assert received(lab, "client", ALPHA_PUB, 10) == 10
    lab.loss("alpha", "private", 30)
    assert lab.status()["nodes"]["alpha"]["loss"] == {"public": 0, "private": 30}
    # Each echo survives both directions with p = 0.49: all 50 lost or all 50
    # back is a chance of about 1e-15.
    got = received(lab, "beta", ALPHA_PRIV, 50)
    assert 0 < got < 50


def test_freeze_and_thaw(healed: Lab) -> None:
    lab = healed
    ns = lab.netns("alpha")
    lab.freeze("alpha")
    pids = netns_pids(ns)
    assert pids and all(proc_state(p) == "T" for p in pids)
    assert lab.status()["nodes"]["alpha"]["frozen"] is True
    assert pg_isready(lab, "beta", ALPHA_PRIV) != 0
    # Like a paused VM, its kernel answers nothing either: no ping, no ARP for the service IP.
    assert received(lab, "beta", ALPHA_PRIV, 3) == 0
    arp = lab.run("client", ["arping", "-c", "2", "-w", "2", "-I", "pub0", SERVICE], check=False)
    assert arp.returncode != 0, arp.stdout
    lab.thaw("alpha")
    assert not any(proc_state(p) == "T" for p in netns_pids(ns))
    assert lab.status()["nodes"]["alpha"]["frozen"] is False
    assert pg_isready(lab, "beta", ALPHA_PRIV) == 0


def test_heal_undoes_every_fault(healed: Lab) -> None:
    lab = healed
    lab.link("alpha", "public", False)
    lab.link("beta", "private", False)
    lab.link("client", "public", False)
    lab.loss("beta", "public", 100)
    lab.freeze("alpha")
    lab.heal()
    st = lab.status()
    for node in ("alpha", "beta"):
        assert st["nodes"][node]["links"] == {"public": "up", "private": "up"}
        assert st["nodes"][node]["loss"] == {"public": 0, "private": 0}
        assert st["nodes"][node]["frozen"] is False
    assert st["client"]["links"] == {"public": "up"}
    assert reachable(lab, "client", SERVICE)
    assert reachable(lab, "client", BETA_PUB)
    assert reachable(lab, "alpha", BETA_PRIV)
    assert pg_isready(lab, "beta", ALPHA_PRIV) == 0


def test_crash_kills_everything_and_cuts_links(lab_factory) -> None:
    lab = lab_factory()
    lab.spawn("alpha", ["sleep", "600"], "sleeper")
    assert netns_pids(lab.netns("alpha"))
    lab.crash("alpha")
    assert netns_pids(lab.netns("alpha")) == []
    assert not lab.pg_running("alpha")
    assert not reachable(lab, "beta", ALPHA_PRIV)
    assert not reachable(lab, "client", ALPHA_PUB)
    st = lab.status()["nodes"]["alpha"]
    assert st["links"] == {"public": "down", "private": "down"} and st["postgres_running"] is False
    # heal restores the cables but not the processes; the server then restarts from its data.
    lab.heal()
    assert reachable(lab, "beta", ALPHA_PRIV)
    assert not lab.pg_running("alpha")
    lab.pg_start("alpha")
    with lab.pg_connect("alpha") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    lab.pg_stop("alpha")
    assert not lab.pg_running("alpha")


# -- the command line -----------------------------------------------------------------


def test_cli_status_json_matches_reality(healed: Lab) -> None:
    lab = healed
    lab.link("alpha", "public", False)
    lab.loss("beta", "private", 100)
    st = json.loads(cli("status", "--json", "--name", lab.name).stdout)
    assert st == json.loads(json.dumps(lab.status()))
    assert st["nodes"]["alpha"]["links"]["public"] == "down"
    port = json.loads(lab.run("sw", ["ip", "-j", "link", "show", "dev", "alpha-pub"]).stdout)[0]
    assert "UP" not in port["flags"]
    assert st["nodes"]["beta"]["loss"]["private"] == 100
    assert "numgen" not in lab.run("beta", ["nft", "list", "ruleset"]).stdout  # 100% drops without a draw
    assert 'iifname "priv0" drop' in lab.run("beta", ["nft", "list", "ruleset"]).stdout
    assert st["nodes"]["alpha"]["postgres_running"] is True
    assert st["service_ips"][0]["holders"] == ["alpha"]
    assert st["namespaces"]["alpha"]["processes"] == len(netns_pids(lab.netns("alpha")))
    table = cli("status", "--name", lab.name).stdout
    assert lab.name in table and "alpha" in table and "down" in table


def test_cli_fault_exec_and_errors(healed: Lab) -> None:
    lab = healed
    cli("fault", "--name", lab.name, "link-down", "beta", "private")
    assert lab.status()["nodes"]["beta"]["links"]["private"] == "down"
    cli("fault", "--name", lab.name, "loss", "alpha", "public", "100")
    assert lab.status()["nodes"]["alpha"]["loss"]["public"] == 100
    cli("fault", "--name", lab.name, "heal")
    assert lab.status()["nodes"]["beta"]["links"]["private"] == "up"
    assert lab.status()["nodes"]["alpha"]["loss"]["public"] == 0

    assert cli("exec", "--name", lab.name, "beta", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    out = cli("exec", "--name", lab.name, "alpha", "--", "ip", "-br", "-4", "addr", "show", "dev", "priv0").stdout
    assert ALPHA_PRIV in out

    bad_node = cli("fault", "--name", lab.name, "crash", "gamma", check=False)
    assert bad_node.returncode != 0 and "gamma" in bad_node.stderr and "Traceback" not in bad_node.stderr
    missing = cli("status", "--name", "nolab" + secrets.token_hex(3), check=False)
    assert missing.returncode == 1 and "no lab named" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_up_status_down(lab_factory) -> None:
    name = lab_factory.reserve()  # destroyed by the fixture should an assertion fail
    out = cli("up", "--name", name, "--durability", "async").stdout
    assert name in out
    lab = Lab.open(name)
    assert lab.spec.durability == "async" and lab.pg_running("alpha")
    st = json.loads(cli("status", "--json", env={**os.environ, "STANDBY_LAB": name}).stdout)
    assert st["name"] == name and st["durability"] == "async"
    assert st["nodes"]["beta"]["postgres_initialised"] is False
    cli("down", "--name", name)
    assert lab_traces(name) == []


# -- cleaning up ---------------------------------------------------------------------


def test_down_leaves_nothing_and_is_idempotent(lab_factory) -> None:
    lab = lab_factory()
    lab.spawn("beta", ["sleep", "600"], "sleeper")
    lab.freeze("client")  # a frozen namespace must not hold the teardown up
    lab.link("alpha", "private", False)
    pids = [p for r in ROLES for p in netns_pids(lab.netns(r))]
    assert pids
    lab.down()
    assert lab_traces(lab.name) == []
    assert all(proc_state(p) in (None, "Z") for p in pids)
    lab.down()
    Lab.destroy(lab.name)
    assert lab_traces(lab.name) == []
    with pytest.raises(LabMissing):
        Lab.open(lab.name)


SHM = Path("/dev/shm")
# What a lab server (dynamic shared memory, posix) and libfaketime (per process, named after its pid) put there.
SHM_ENTRY = re.compile(r"^(PostgreSQL\.\d+|faketime_shm_\d+|sem\.faketime_sem_\d+)$")


def host_shm() -> dict[str, int]:
    """The host's /dev/shm entries of those kinds, by name, with their inode."""
    found = {}
    for p in SHM.iterdir():
        if SHM_ENTRY.match(p.name):
            try:
                found[p.name] = p.stat().st_ino
            except FileNotFoundError:
                continue  # removed meanwhile
    return found


def host_shm_mapped_by(lab: Lab) -> dict[str, int]:
    """Those entries that a process of ``lab`` has mapped now: this lab's, not another's beside it (device and
    inode say which file; a /dev/shm of the process's own is another device)."""
    dev = SHM.stat().st_dev
    host_dev = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    by_inode = {ino: name for name, ino in host_shm().items()}
    mapped = {}
    for pid in {p for r in ROLES for p in netns_pids(lab.netns(r))}:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue  # exited meanwhile
        for line in maps.splitlines():
            cols = line.split(maxsplit=5)  # address perms offset dev inode [path]
            if len(cols) >= 5 and cols[3] == host_dev and (name := by_inode.get(int(cols[4]))):
                mapped[name] = int(cols[4])
    return mapped


def under_libfaketime(pid: int) -> bool:
    try:
        return b"libfaketime" in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def test_down_leaves_no_shared_memory_of_a_killed_server_or_of_libfaketime(lab_factory) -> None:
    """A PostgreSQL server killed with SIGKILL cannot remove its dynamic shared memory segments, and
    libfaketime's semaphore and segment of each process outlive a process that does not exit as their
    maker (a killed one, any Python one): none of them may stay in the host's /dev/shm once the lab is
    down. Other labs may run beside this one, so what counts is what a process of this lab had mapped."""
    lab = lab_factory()
    before = host_shm()
    start_pair(lab, own_clock=True)
    assert any(under_libfaketime(p) for p in netns_pids(lab.netns("alpha"))), "no process of alpha under libfaketime"
    seen = host_shm_mapped_by(lab)
    lab.kill_postgres("alpha")
    lab.wait_for("beta primary", lambda: primaries(lab) == ["beta"], timeout_s=30)
    seen |= host_shm_mapped_by(lab)
    lab.down()
    after = host_shm()
    left = sorted(name for name, ino in seen.items() if after.get(name) == ino)
    assert left == [], f"left in /dev/shm by the lab: {left} (new since the test began, any lab's: " \
                       f"{sorted(set(after) - set(before))})"


def test_x4_a_test_labs_agent_state_is_off_the_shared_disk(lab_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Labs side by side share the disk; an agent that waited there on its event loop fenced (pgnode.STATE_TMPFS_ENV).
    Set here: tests/lab/conftest.py sets it only when test files run side by side."""
    monkeypatch.setenv(STATE_TMPFS_ENV, "1")
    lab = lab_factory()
    for node in ("alpha", "beta"):
        assert os.path.ismount(lab.node(node).state_dir), node
    root = lab.root
    Lab.destroy(lab.name)
    with open("/proc/self/mounts") as f:
        assert not [line for line in f if f" {root}/" in line]


def test_destroy_without_state_file(lab_factory) -> None:
    lab = lab_factory()
    pids = netns_pids(lab.netns("alpha"))
    (lab.root / "lab.json").unlink()
    with pytest.raises(LabMissing):
        Lab.open(lab.name)
    Lab.destroy(lab.name)
    assert lab_traces(lab.name) == []
    assert all(proc_state(p) in (None, "Z") for p in pids)


def test_cli_down_with_corrupt_state_file(lab_factory) -> None:
    lab = lab_factory()
    (lab.root / "lab.json").write_text("{not json")
    cli("down", "--name", lab.name)
    assert lab_traces(lab.name) == []


_FAILING_TESTS = '''
import pathlib

def test_fails_midway(lab_factory):
    lab = lab_factory()
    pathlib.Path("made.txt").write_text(lab.name)
    assert lab.pg_running("alpha")
    raise AssertionError("deliberate failure with a lab up")

def test_module_lab_fails(lab):
    pathlib.Path("made-module.txt").write_text(lab.name)
    assert False, "deliberate failure with the module lab up"
'''


def test_a_failing_test_still_cleans_up(tmp_path: Path) -> None:
    prefix = "sbf" + secrets.token_hex(1)
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_failing.py").write_text(_FAILING_TESTS)
    kept = tmp_path / "kept"
    env = {**os.environ, "STANDBY_LAB_TEST_PREFIX": prefix, "STANDBY_LAB_KEEP_FAILED": str(kept)}
    env.pop("CI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 failed" in proc.stdout, proc.stdout
    made = [(tmp_path / f).read_text() for f in ("made.txt", "made-module.txt")]
    assert all(name.startswith(prefix) for name in made)
    for name in made:
        assert lab_traces(name) == []
    assert not [ns for ns in os.listdir(NETNS_DIR) if ns.startswith(prefix)] if NETNS_DIR.exists() else True
    assert not [d for d in os.listdir(LAB_BASE) if d.startswith(prefix)]
    # Both failures' labs were kept for their post-mortem: the function's and the module's own.
    assert sorted(d.name.split("-")[0] for d in kept.iterdir()) == ["test_failing.py", "test_fails_midway"], \
        list(kept.iterdir())


# -- the lab as a new user drives it: own services, agents, logs kept ----------------


def test_cli_services_agents_and_logs_kept(lab_factory, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    services = tmp_path / "services.toml"
    services.write_text(
        "[[services]]\n"
        'name = "marker"\n'
        f'start = ["touch", "{marks}/started-{{node}}"]\n'
        f'stop = ["rm", "-f", "{marks}/started-{{node}}"]\n'
        f'health = ["test", "-e", "{marks}/started-{{node}}"]\n'
    )
    name = lab_factory.reserve()
    out = cli("up", "--name", name, "--services", str(services)).stdout
    ca = re.search(r"CA:\s+(\S+)", out)
    assert ca and Path(ca.group(1)).is_file() and "marker" in out
    lab = Lab.open(name)
    assert [s.name for s in lab.config().services] == ["softswitch", "marker"]

    out = cli("agents", "start", "--name", name).stdout
    assert "bootstrapping" in out
    # The service runs where the service IP is, and only there (placement "active").
    lab.wait_for("the marker service on alpha", lambda: (marks / "started-alpha").exists(), timeout_s=60)
    assert not (marks / "started-beta").exists()
    assert "already running" in cli("agents", "start", "--name", name, "alpha").stdout
    cli("agents", "stop", "--name", name)
    assert lab.agent_pid("alpha") is None and lab.agent_pid("beta") is None
    assert lab.pg_running("alpha") and lab.pg_running("beta")  # a clean stop leaves the servers alone

    kept = tmp_path / "kept"
    cli("down", "--name", name, "--keep-logs", str(kept))
    assert lab_traces(name) == []
    assert (kept / "alpha" / "log" / "agent.log").stat().st_size > 0
    assert (kept / "standby.toml").is_file()


def test_cli_up_refuses_a_bad_services_file_before_building(lab_factory, tmp_path: Path) -> None:
    services = tmp_path / "services.toml"
    services.write_text('[[services]]\nname = "x"\nstart = []\nstop = ["true"]\n')
    name = lab_factory.reserve()
    res = cli("up", "--name", name, "--services", str(services), check=False)
    assert res.returncode != 0 and "services[0].start" in res.stderr
    assert lab_traces(name) == []
