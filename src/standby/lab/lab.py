"""A two-server pair on one machine: namespaces, bridges, PostgreSQL and faults, put together."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from standby import apiclient
from standby import config as standby_config
from standby.act.postgres import StopMode
from standby.documents import (
    LAB_STATUS,
    AgentView,
    LabClient,
    LabFloatingIp,
    LabLink,
    LabNamespace,
    LabNode,
    LabStatus,
    LabSwitch,
)
from standby.lab import clock, configfile, faults, leaks, netns, pgnode, procs, softswitch, waldisk, wan
from standby.lab import tls as labtls
from standby.lab.errors import CommandFailed, LabError, LabExists, LabMissing, PrerequisiteMissing
from standby.lab.topology import (
    ALL_ROLES,
    DB_NODES,
    DEFAULT_NAME,
    DEFAULT_WAN_RATE_KBIT,
    FOLLOWER_NODES,
    GATEWAY,
    HOME_IPS,
    LAB_BASE,
    PG_OS_USER,
    PG_PORT,
    PREFIX_LEN,
    PRIVATE_BRIDGE,
    PUBLIC_BRIDGE,
    PUBLIC_IF,
    REMOTE_GATEWAY,
    REPORTING_IP,
    SECRET_FILES,
    SERVICE_IP,
    WAN_ROUTER,
    LabSpec,
    Link,
    Net,
    NodeLayout,
    Role,
    bridge_for,
    cluster_for,
    rate_limit_argv,
)

STATE_VERSION = 1
# Namespaces with a cable to the switch, i.e. that faults can hit.
HOST_ROLES: tuple[str, ...] = (Role.ALPHA.value, Role.BETA.value, Role.CLIENT.value)


def check_prerequisites(need_pg: bool = True) -> None:
    """Refuse early, with the package to install, rather than fail halfway through."""
    if os.geteuid() != 0:
        raise PrerequisiteMissing("the lab creates network namespaces and must run as root (try sudo)")
    tools = {
        "ip": "apt-get install iproute2",
        "nft": "apt-get install nftables",
        "arping": "apt-get install iputils-arping",
        "setsid": "apt-get install util-linux",
        "sysctl": "apt-get install procps",
        "openssl": "apt-get install openssl",
    }
    for tool, hint in tools.items():
        if not shutil.which(tool):
            raise PrerequisiteMissing(f"{tool} not found; install it with: {hint}")
    if need_pg:
        pgnode.check_prerequisites()


def exists(name: str, base: Path = LAB_BASE) -> bool:
    spec = LabSpec(name, base=base)
    return spec.root.exists() or any(netns.exists(spec.netns(r))
                                     for r in LabSpec(name, base=base, followers=FOLLOWER_NODES).roles())


@dataclass
class Lab:
    spec: LabSpec

    # -- life cycle -------------------------------------------------------

    @classmethod
    def up(cls, spec: LabSpec, services: Sequence[Mapping[str, Any]] = ()) -> Lab:
        """Build the whole lab; on any failure remove what was made and re-raise.

        ``services``: [[services]] entries run by the agents beside the sample softswitch.
        """
        check_prerequisites()
        if exists(spec.name, spec.base):
            raise LabExists(
                f"lab {spec.name!r} already exists; run `standby lab down --name {spec.name}` first"
            )
        lab = cls(spec)
        try:
            lab._build(services)
        except BaseException:
            cls.destroy(spec.name, spec.base)
            raise
        return lab

    @classmethod
    def up_network(cls, spec: LabSpec) -> Lab:
        """Only the namespaces, bridges, addresses and routes: no secrets, PostgreSQL or agents. For
        servers of another kind placed into the nodes' namespaces (containers that boot systemd)."""
        check_prerequisites(need_pg=False)
        if exists(spec.name, spec.base):
            raise LabExists(f"lab {spec.name!r} already exists; run `standby lab down --name {spec.name}` first")
        lab = cls(spec)
        try:
            spec.base.mkdir(mode=0o755, parents=True, exist_ok=True)
            spec.root.mkdir(mode=0o755)
            lab._write_state("network")
            lab._build_network()
        except BaseException:
            cls.destroy(spec.name, spec.base)
            raise
        return lab

    @classmethod
    def open(cls, name: str = DEFAULT_NAME, base: Path = LAB_BASE) -> Lab:
        spec = LabSpec(name, base=base)
        try:
            data = json.loads(spec.state_file.read_text())
        except FileNotFoundError:
            raise LabMissing(
                f"there is no lab named {name!r} ({spec.state_file} is missing); "
                f"create it with `standby lab up --name {name}`"
            ) from None
        except (OSError, ValueError) as e:
            raise LabError(
                f"cannot read {spec.state_file} ({e}); remove the lab with `standby lab down --name {name}`"
            ) from None
        return cls(LabSpec(name, durability=data.get("durability", "sync"), base=base, mode=data.get("mode", "hot"),
                           pg_layout=data.get("pg_layout", "plain"), followers=tuple(data.get("followers", ())),
                           private_mbit=data.get("private_mbit", 0),
                           wan_rate_kbit=data.get("wan_rate_kbit", DEFAULT_WAN_RATE_KBIT),
                           follower_upstream=data.get("follower_upstream", "primary")))

    def down(self) -> None:
        type(self).destroy(self.spec.name, self.spec.base)

    @classmethod
    def destroy(cls, name: str, base: Path = LAB_BASE) -> None:
        """Remove every trace of a lab, whatever state it is in. Needs no lab.json; idempotent."""
        # Whichever followers it had: found without lab.json.
        spec = LabSpec(name, base=base, followers=FOLLOWER_NODES)
        namespaces = [spec.netns(r) for r in spec.roles()]
        for ns in namespaces:
            faults.thaw(ns)
        # A disk left frozen (wal-disk-hang) first too: the stops below would wait on it for ever.
        waldisk.thaw_under(spec.root)
        # Agents first: a live agent would restart a PostgreSQL being stopped.
        pg_uid = pwd.getpwnam("postgres").pw_uid
        for ns in namespaces:
            for pid in netns.pids(ns) if netns.exists(ns) else []:
                try:
                    if os.stat(f"/proc/{pid}").st_uid != pg_uid:
                        os.kill(pid, signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    pass
        # A clean immediate stop lets the servers remove their own shared memory.
        for node in (*spec.nodes(), *spec.follower_nodes()):
            if pgnode.running(node):
                try:
                    pgnode.stop(node, StopMode.IMMEDIATE)
                except (LabError, OSError):
                    pass
        for ns in namespaces:
            netns.kill_all(ns)
        for node in (*spec.nodes(), *spec.follower_nodes()):
            pgnode.release_shared_memory(node)
        # Named after the lab, so found without lab.json (a crashed `up`), whichever layout it had.
        for node_name in DB_NODES:
            pgnode.drop_cluster(cluster_for(name, node_name))
        for ns in namespaces:
            netns.delete(ns)
        root = spec.root.resolve()
        waldisk.unmount_under(root)
        if root.parent == base.resolve() and root.exists():
            shutil.rmtree(root)

    # -- building ---------------------------------------------------------

    def _write_state(self, phase: str) -> None:
        state = {
            "version": STATE_VERSION,
            "name": self.spec.name,
            "durability": self.spec.durability,
            "private_mbit": self.spec.private_mbit,
            "mode": self.spec.mode,
            "pg_layout": self.spec.pg_layout,
            "followers": list(self.spec.followers),
            "wan_rate_kbit": self.spec.wan_rate_kbit,
            "follower_upstream": self.spec.follower_upstream,
            "root": str(self.root),
            "phase": phase,
            # Who built it, for whoever finds a leftover lab.
            "owner_pid": os.getpid(),
            "created_at": time.time(),
        }
        tmp = self.spec.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.spec.state_file)

    def _build(self, services: Sequence[Mapping[str, Any]]) -> None:
        spec = self.spec
        spec.base.mkdir(mode=0o755, parents=True, exist_ok=True)
        spec.root.mkdir(mode=0o755)
        os.chmod(spec.root, 0o755)
        # First, so that a crashed `up` can still be found and torn down.
        self._write_state("building")
        self._build_network()
        self._write_secrets()
        for node in (*spec.nodes(), *spec.follower_nodes()):
            pgnode.prepare_dirs(node)
            (spec.role_dir(node.name) / "procs").mkdir(parents=True, exist_ok=True)
        for role in (Role.SWITCH.value, Role.CLIENT.value):
            (spec.role_dir(role) / "log").mkdir(parents=True, exist_ok=True)
        alpha = spec.node("alpha")
        pgnode.initdb(alpha)
        beta = spec.node("beta")
        if beta.cluster:
            # A cluster of its own whose data directory `standby bootstrap` fills with a clone of alpha.
            pgnode.create_cluster(beta)
            pgnode.allow_app(beta)
            for child in beta.pgdata.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        pgnode.start(alpha)
        pgnode.create_app(alpha, self._secret("app.password"))
        softswitch.init_schema(f"host={alpha.socket_dir} port={PG_PORT} dbname=softswitch user=softswitch")
        self._write_app_dsn()
        if spec.mode == "hot":
            self._place_service_ip(alpha)
        spec.config_path.write_text(configfile.render(spec, [configfile.softswitch_service(spec), *services],
                                                       softswitch.SALVAGE))
        os.chmod(spec.config_path, 0o644)
        standby_config.load(spec.config_path)
        self._write_state("up")

    def _build_network(self) -> None:
        spec = self.spec
        for role in spec.roles():
            netns.add(spec.netns(role))
        sw = spec.netns(Role.SWITCH.value)
        cmds = [
            f"link add {PUBLIC_BRIDGE} type bridge",
            f"link add {PRIVATE_BRIDGE} type bridge",
            f"addr add {GATEWAY}/{PREFIX_LEN} dev {PUBLIC_BRIDGE}",
            f"link set {PUBLIC_BRIDGE} up",
            f"link set {PRIVATE_BRIDGE} up",
        ]
        # The other site's followers are cabled to the WAN router instead (standby.lab.wan).
        hosts = (*spec.nodes(), *(f for f in spec.follower_nodes() if f.name not in spec.wan_followers()))
        cables = [(n.netns, n.public) for n in hosts] + [(n.netns, n.private) for n in hosts]
        cables.append((spec.netns(Role.CLIENT.value), spec.client_link))
        for ns, link in cables:
            # Created in the switch namespace, the far end placed straight into the host's.
            cmds += [
                f"link add {link.switch_port} type veth peer name {link.interface} netns {ns}",
                f"link set {link.switch_port} master {bridge_for(link.net)}",
                f"link set {link.switch_port} up",
            ]
        netns.ip_batch(sw, cmds)
        for ns, link in cables:
            netns.ip_batch(ns, [f"addr add {link.address} dev {link.interface}", f"link set {link.interface} up"])
        if spec.private_mbit:
            # Each host's egress: whatever crosses the private network (a clone, a rewind, streaming) is
            # shaped once, at its sender.
            for n in hosts:
                netns.run_in(n.netns, rate_limit_argv(n.private.interface, spec.private_mbit))
        if spec.mode == "warm":
            # The switch routes between the two sites' subnets.
            netns.ip_batch(sw, [f"addr add {REMOTE_GATEWAY}/{PREFIX_LEN} dev {PUBLIC_BRIDGE}"])
            netns.sysctl(sw, "net.ipv4.ip_forward", "1")
        wan.build(spec)
        for role in (*HOST_ROLES, *spec.followers):
            netns.ip_batch(spec.netns(role), [f"route add default via {spec.gateway_for(role)}"])
        for node in spec.nodes():
            # Services may bind the service IP before it arrives on this node.
            netns.sysctl(node.netns, "net.ipv4.ip_nonlocal_bind", "1")

    def _write_secrets(self) -> None:
        d = self.spec.secrets_dir
        # Others may pass through (PostgreSQL reaches its TLS key) but not list;
        # every file in here is 0600.
        d.mkdir(mode=0o711)
        os.chmod(d, 0o711)
        for name in SECRET_FILES:
            path = d / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        tls_dir = self.spec.tls_dir
        tls_dir.mkdir(mode=0o711)
        labtls.make_ca(tls_dir, self.spec.name)
        for node in (*self.spec.nodes(), *self.spec.follower_nodes()):
            labtls.make_node_cert(tls_dir, node.name, [node.public.ip, node.private.ip], PG_OS_USER)

    def _write_app_dsn(self) -> None:
        """How the sample softswitch reaches whichever node is primary, over either network.

        One file for any client (``app.dsn``) and one per node, listing that
        node's own addresses first: after a failover the service on the new
        primary finds its local database at once instead of first timing out
        on the dead peer.
        """
        nodes = self.spec.nodes()

        def hosts(first: str | None) -> list[str]:
            order = sorted(nodes, key=lambda n: n.name != first)
            return [n.private.address.split("/")[0] for n in order] + [n.public.address.split("/")[0] for n in order]

        if self.spec.mode == "hot":
            self._write_secret_file(configfile.REPORT_DSN, (
                f"host={REPORTING_IP.split('/')[0]} port={PG_PORT} dbname=softswitch user=softswitch "
                f"password={self._secret('app.password')} connect_timeout=2\n"))
        for name, first in [(configfile.APP_DSN, None)] + [(configfile.app_dsn_for(n.name), n.name) for n in nodes]:
            path = self.spec.secret(name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(
                    f"host={','.join(hosts(first))} port={PG_PORT} dbname=softswitch user=softswitch "
                    f"password={self._secret('app.password')} target_session_attrs=read-write "
                    "connect_timeout=2 tcp_user_timeout=1000 keepalives=1 keepalives_idle=1 "
                    "keepalives_interval=1 keepalives_count=2\n"
                )

    def _write_secret_file(self, name: str, text: str) -> None:
        fd = os.open(self.spec.secret(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _secret(self, name: str) -> str:
        return self.spec.secret(name).read_text().strip()

    def _place_service_ip(self, node: NodeLayout) -> None:
        netns.ip_batch(node.netns, [f"addr add {SERVICE_IP} dev {PUBLIC_IF}"])
        ip = SERVICE_IP.split("/")[0]
        # Unsolicited ARP so neighbours learn where the address lives now.
        netns.run_in(node.netns, ["arping", "-q", "-U", "-c", "3", "-i", "0.2", "-I", PUBLIC_IF, ip], check=False)

    def secret_leaks(self) -> list[str]:
        """Where this lab's secrets appear outside its secrets and data directories (``path:line: name``)."""
        values = {n: self._secret(n) for n in SECRET_FILES if self.spec.secret(n).exists()}
        return leaks.scan(self.root, values, skip=[self.spec.secrets_dir]) if self.root.exists() else []

    def collect_logs(self, dest: Path) -> list[Path]:
        """Copy each host's logs and each agent's state and history under ``dest``, for a failure's post-mortem.

        Secrets and data directories stay behind; returns the directories made.
        """
        made: list[Path] = []
        for role in (*DB_NODES, *self.spec.followers, Role.CLIENT.value, Role.SWITCH.value):
            src = self.spec.role_dir(role)
            for sub in ("log", "state"):
                if (src / sub).is_dir():
                    shutil.copytree(src / sub, dest / role / sub, dirs_exist_ok=True)
                    made.append(dest / role / sub)
        if self.config_path.exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.config_path, dest / self.config_path.name)
        return made

    # -- names --------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def root(self) -> Path:
        return self.spec.root

    @property
    def config_path(self) -> Path:
        return self.spec.config_path

    def config(self) -> standby_config.Config:
        return standby_config.load(self.config_path)

    def _role(self, node: str, allowed: Sequence[str] = ALL_ROLES) -> str:
        if node not in allowed:
            raise LabError(f"unknown node {node!r}: expected one of {', '.join(allowed)}")
        return node

    def netns(self, node: str) -> str:
        return self.spec.netns(self._role(node, self.spec.roles()))

    def node(self, node: str) -> NodeLayout:
        """A pair node's or one of this lab's followers' layout."""
        return self.spec.node(self._role(node, (*DB_NODES, *self.spec.followers)))

    # -- running things -------------------------------------------------

    def run(self, node: str, argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace; output is captured unless stdout/stderr are given."""
        return netns.run_in(self.netns(node), argv, check=check, **kw)

    def _proc_paths(self, node: str, name: str) -> tuple[Path, Path]:
        procs.check_name(name)
        d = self.spec.role_dir(self._role(node, self.spec.roles()))
        return d / "log" / f"{name}.log", d / "procs" / f"{name}.pid"

    def spawn(self, node: str, argv: Sequence[str], name: str, env: dict[str, str] | None = None) -> int:
        """Start a background process in the namespace and return its pid.

        Output goes to {root}/{node}/log/{name}.log, the pid to
        {root}/{node}/procs/{name}.pid; ``env`` is added to the current
        environment. The process dies at the latest with the lab.
        """
        log, pid = self._proc_paths(node, name)
        return procs.spawn(self.netns(node), argv, log, pid, env={**os.environ, **(env or {})})

    def spawned_alive(self, node: str, name: str) -> bool:
        return procs.alive(self.netns(node), self._proc_paths(node, name)[1])

    def stop_spawned(self, node: str, name: str) -> None:
        procs.stop(self.netns(node), self._proc_paths(node, name)[1])

    # -- the product on the lab ------------------------------------------

    def standby(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `standby` command inside a node, with this lab's config and the node's name."""
        exe = str(Path(sys.executable).with_name("standby"))
        return self.run(node, [exe, *args, "--config", str(self.config_path), "--node", node], check=check)

    def bootstrap(self) -> None:
        """Make alpha and beta a streaming pair (the primary first)."""
        self.standby("alpha", "bootstrap", "--restart")
        self.standby("beta", "bootstrap")

    def start_agent(self, node: str, own_clock: bool = False) -> None:
        """The agent under a supervisor that fences after an unclean death, as systemd's unit does.

        ``own_clock``: the agent (and what it starts) reads the wall clock
        through the node's offset file, so `set_clock` can step it.
        """
        exe = str(Path(sys.executable).with_name("standby"))
        # A follower's agent has nothing to fence after an unclean death: it runs without the supervisor.
        respawn = [] if node in self.spec.followers else ["--respawn"]
        argv = [exe, "agent", *respawn, "-v", "--config", str(self.config_path), "--node", node]
        self.spawn(node, clock.command(self.spec.role_dir(node), argv) if own_clock else argv, "agent")

    def set_clock(self, node: str, offset_s: int) -> None:
        """Step the wall clock of an agent started with ``own_clock`` to real time + ``offset_s``."""
        clock.set_offset(self.spec.role_dir(self._role(node, DB_NODES)), offset_s)

    def wal_on_loop_ext4(self, node: str, size_mb: int) -> None:
        """Move the node's WAL to an ext4 of ``size_mb`` that ``freeze_wal_disk`` can hang (PostgreSQL stopped
        and started around it: do it before the agents start)."""
        self._move_disk(node, waldisk.move_to_loop_ext4, size_mb)

    def data_on_loop_ext4(self, node: str, size_mb: int) -> None:
        """Move the node's whole data directory (its WAL with it) to an ext4 of ``size_mb`` that
        ``freeze_wal_disk`` can hang: the usual one-disk layout (before the agents start)."""
        self._move_disk(node, waldisk.move_data_to_loop_ext4, size_mb)

    def _move_disk(self, node: str, move: Callable[[NodeLayout, int], None], size_mb: int) -> None:
        layout = self.node(node)
        was_running = pgnode.running(layout)
        if was_running:
            pgnode.stop(layout, StopMode.FAST)
        move(layout, size_mb)
        if was_running:
            pgnode.start(layout)

    def freeze_wal_disk(self, node: str) -> bool:
        """A hung disk under the node's WAL: every write to it waits until ``thaw_wal_disk`` (or the lab's end)."""
        return waldisk.freeze(self.node(node))

    def thaw_wal_disk(self, node: str) -> None:
        waldisk.thaw(self.node(node))

    def fill_wal_disk(self, node: str) -> int:
        return waldisk.fill(self.node(node))

    def free_wal_disk(self, node: str) -> None:
        waldisk.free(self.node(node))

    def stop_agent(self, node: str) -> None:
        self.stop_spawned(node, "agent")

    def agent_pid(self, node: str) -> int | None:
        """The agent process itself (the supervisor's child)."""
        sup = procs.read_pid(self._proc_paths(node, "agent")[1])
        if sup is None:
            return None
        kids = Path(f"/proc/{sup}/task/{sup}/children")
        try:
            pids = [int(p) for p in kids.read_text().split()]
        except (FileNotFoundError, ValueError):
            return None
        return pids[0] if pids else None

    def kill_agent(self, node: str) -> int | None:
        """SIGKILL the agent (its supervisor then fences if needed and starts a new one)."""
        pid = self.agent_pid(node)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        return pid

    def kill_postgres(self, node: str) -> int | None:
        """SIGKILL the postmaster: PostgreSQL crashes, the host lives on."""
        pid = pgnode.postmaster_pid(self.node(node))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        return pid

    def freeze_postgres(self, node: str) -> list[int]:
        """Stop the server's processes (SIGSTOP), the host and its agent running on (a hung disk, a debugger);
        the pids stopped, for stop_pids(..., SIGCONT)."""
        pid = pgnode.postmaster_pid(self.node(node))
        return [] if pid is None else faults.freeze_server(pid)

    def agent_status(self, node: str, timeout_s: float = 2.0) -> AgentView | None:
        """The node agent's own view (GET /status on its API, from its own namespace, at its public
        address), or None if it does not answer."""
        cfg = self.config()
        via = (str(self.node(node).public.ip),)
        return netns.call_in(self.netns(node), apiclient.agent_status, cfg, node, timeout_s, via)

    def wait_for(self, what: str, predicate: Any, timeout_s: float = 30.0, every_s: float = 0.1) -> Any:
        """Poll until ``predicate()`` is truthy; raise LabError naming ``what`` on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise LabError(f"timed out after {timeout_s:g}s waiting for {what}")
            time.sleep(every_s)

    # -- PostgreSQL -----------------------------------------------------

    def pg_start(self, node: str) -> None:
        pgnode.start(self.node(node))

    def pg_stop(self, node: str, mode: StopMode = StopMode.FAST) -> None:
        pgnode.stop(self.node(node), mode)

    def pg_running(self, node: str) -> bool:
        return pgnode.running(self.node(node))

    def pg_connect(self, node: str, dbname: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
        return pgnode.connect(self.node(node), dbname, **kw)

    # -- faults -----------------------------------------------------------

    def _ports(self, node: str) -> list[str]:
        if node == Role.CLIENT.value:
            return [self.spec.client_link.switch_port]
        n = self.node(node)
        return [n.public.switch_port, n.private.switch_port]

    @property
    def _switch(self) -> str:
        return self.spec.netns(Role.SWITCH.value)

    def crash(self, node: str) -> None:
        """Power loss: every process of the host dies at once and its cables go dead.

        The cables go first: a killed process's sockets are closed by the
        kernel, and the FIN/RST it sends would tell peers what a real power
        loss never does. Floating addresses are runtime state a rebooted host
        no longer has, so they go too (healing the cables then is the reboot).
        So do the neighbour caches: packets sent between the cables going dead
        and the kill wait there for an ARP answer, and healing within the
        kernel's ARP retries would deliver them seconds late (a dead standby's
        heartbeats arrived after the heal and read as its current word).
        """
        ns = self.netns(self._role(node, self._hosts))
        for port in self._ports(node):
            faults.set_link(self._switch_of(node), port, False)
        faults.kill_everything(ns)
        netns.run_in(ns, ["ip", "neigh", "flush", "all"], check=False)
        if node in ("alpha", "beta"):
            for address in (SERVICE_IP, REPORTING_IP, *HOME_IPS.values()):
                netns.run_in(ns, ["ip", "addr", "del", address, "dev", PUBLIC_IF], check=False)

    def freeze(self, node: str) -> None:
        """Freeze the host like a paused VM: every process stopped (SIGSTOP), no packet in or out, ARP included."""
        faults.freeze(self.netns(self._role(node, self._hosts)))

    def thaw(self, node: str) -> None:
        faults.thaw(self.netns(self._role(node, self._hosts)))

    @property
    def _hosts(self) -> tuple[str, ...]:
        """What a host fault may hit: the pair, the client and this lab's followers."""
        return (*HOST_ROLES, *self.spec.followers)

    def _switch_of(self, node: str) -> str:
        """The namespace holding the switch-side end of ``node``'s cables: the WAN router's for a follower
        in the other site (standby.lab.wan), the switch's otherwise."""
        return self.spec.netns(WAN_ROUTER) if node in self.spec.wan_followers() else self._switch

    def _port(self, node: str, net: str) -> str:
        self._role(node, self._hosts)
        net = Net(net)
        if node == Role.CLIENT.value:
            if net is not Net.PUBLIC:
                raise LabError("the client has only a public link")
            return self.spec.client_link.switch_port
        return self.node(node).link(net).switch_port

    def link(self, node: str, net: str, up: bool) -> None:
        faults.set_link(self._switch_of(node), self._port(node, net), up)

    def wan_link(self, up: bool) -> None:
        """Cut (or mend) the link between the sites on the pair's side of the router: the other site's
        followers lose the pair, the pair's own subnets are untouched."""
        if not self.spec.wan_followers():
            raise LabError(f"lab {self.name} has no WAN (no follower in the other site)")
        for net in Net:
            faults.set_link(self._switch, wan.SWITCH_PORT[net], up)

    def wan_loss(self, percent: int) -> None:
        """Drop ``percent``% of what the router forwards between the sites; 0 removes."""
        if not self.spec.wan_followers():
            raise LabError(f"lab {self.name} has no WAN (no follower in the other site)")
        router = self.spec.netns(WAN_ROUTER)
        if percent:
            faults.set_forward_loss(router, int(percent))
        else:
            faults.clear_forward_loss(router)

    def loss(self, node: str, net: str, percent: int) -> None:
        """Drop ``percent``% of IP packets each way on that interface (ARP is not affected); 0 removes."""
        self._port(node, net)  # validates node and net
        if not shutil.which("nft"):
            raise PrerequisiteMissing("nft not found; install it with: apt-get install nftables")
        faults.set_loss(self.netns(node), Net(net), int(percent))

    def heal(self) -> None:
        """Undo link, freeze and loss faults, the WAN's too; crashed processes stay dead."""
        for role in self._hosts:
            ns = self.netns(role)
            for port in self._ports(role):
                faults.set_link(self._switch_of(role), port, True)
            faults.thaw(ns)
            faults.clear_loss(ns)
        if self.spec.wan_followers():
            self.wan_link(True)
            self.wan_loss(0)

    # -- live view ----------------------------------------------------------

    def _links(self, node: str) -> dict[str, str]:
        if not netns.exists(self._switch):
            return {}
        nets = (Net.PUBLIC,) if node == Role.CLIENT.value else tuple(Net)
        return {n.value: faults.link_state(self._switch_of(node), self._port(node, n)) for n in nets}

    def _service_ip_holders(self, address: str = SERVICE_IP) -> list[str]:
        return [n for n in DB_NODES if netns.exists(self.netns(n)) and address in netns.addresses(self.netns(n), PUBLIC_IF)]

    def status(self) -> dict[str, Any]:
        """``snapshot()`` as JSON (`standby lab status --json`)."""
        return LAB_STATUS.encode(self.snapshot())

    def snapshot(self) -> LabStatus:
        """Topology plus what is true right now, read from the kernel and the processes."""
        spec = self.spec
        namespaces = {r: LabNamespace(spec.netns(r), netns.exists(spec.netns(r)), len(netns.pids(spec.netns(r))))
                      for r in ALL_ROLES}

        def link(it: Link) -> LabLink:
            return LabLink(it.address, it.interface, it.switch_port)

        nodes: dict[str, LabNode] = {}
        for n in spec.nodes():
            alive = namespaces[n.name].exists
            nodes[n.name] = LabNode(
                netns=n.netns,
                public=link(n.public),
                private=link(n.private),
                pgdata=str(n.pgdata),
                socket_dir=str(n.socket_dir),
                state_dir=str(n.state_dir),
                log_dir=str(n.log_dir),
                port=PG_PORT,
                dsn_local=n.dsn_local(),
                dsn_private=n.dsn_private(),
                postgres_running=pgnode.running(n),
                postgres_initialised=(n.pgdata / "PG_VERSION").exists(),
                links=self._links(n.name),
                frozen=alive and faults.frozen(n.netns),
                loss=faults.loss(n.netns) if alive else {"public": 0, "private": 0},
            )
        client_ns = spec.netns(Role.CLIENT.value)
        return LabStatus(
            name=spec.name,
            root=str(spec.root),
            config_path=str(spec.config_path),
            durability=spec.durability,
            mode=spec.mode,
            namespaces=namespaces,
            switch=LabSwitch(self._switch, {"public": PUBLIC_BRIDGE, "private": PRIVATE_BRIDGE}),
            nodes=nodes,
            client=LabClient(
                netns=client_ns,
                address=spec.client_link.address,
                interface=spec.client_link.interface,
                links=self._links(Role.CLIENT.value),
                frozen=namespaces["client"].exists and faults.frozen(client_ns),
            ),
            service_ips=[LabFloatingIp(SERVICE_IP, PUBLIC_IF, self._service_ip_holders())],
            reporting_ip=(LabFloatingIp(REPORTING_IP, PUBLIC_IF, self._service_ip_holders(REPORTING_IP))
                          if spec.mode == "hot" else None),
            tiebreaker=GATEWAY,
            gateway=GATEWAY,
        )


__all__ = ["CommandFailed", "Lab", "check_prerequisites", "exists"]
