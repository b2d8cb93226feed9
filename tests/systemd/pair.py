"""Two containers booted with systemd, in a lab's node namespaces, deployed by the README's steps.

The lab gives only the network (its switch with the public and private bridges, the client, the
tie-breaker); everything on alpha and beta is what the README installs, run by their systemd.
A container powered off or rebooted takes its network cards with it: their links go down and the
addresses only that boot had (the service IPs) go, as on a real server; they come back at boot.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from standby.documents import PAIR_STATUS, PairStatus
from standby.lab import LAB_BASE, Lab, LabSpec, netns
from standby.lab.topology import PRIVATE_IF, PUBLIC_IF, SERVICE_IP, Role
from standby.model import PgRole, SyncState
from tests.systemd import deploy_readme, rootfs
from tests.systemd.containers import Container

NAME_PREFIX = "sbsd"
APP = "softswitch"  # the client's role and database, made after the README's steps
SERVICE_ADDRESS = SERVICE_IP.split("/")[0]
DATA_DIR = "/var/lib/postgresql/15/standby"
POSTGRES_UNIT = "standby-postgresql-{node}"
JOURNAL_TAIL = 80  # lines of each agent's journal in a failure's report


class NotConverged(AssertionError):
    pass


def sweep() -> None:
    """Remove pairs a killed run left behind (their containers die with their namespaces). Call it holding
    the lab lock only, so no live run's pair is touched."""
    names = {p.name for p in LAB_BASE.iterdir()} if LAB_BASE.exists() else set()
    names |= {n.rsplit("-", 1)[0] for n in netns.list_all()}
    for name in sorted(n for n in names if re.fullmatch(rf"{NAME_PREFIX}[0-9a-f]{{4}}", n)):
        Lab.destroy(name)


class _ContainerServer(deploy_readme.Server):
    def __init__(self, container: Container) -> None:
        self.container, self.name, self.root, self.home = container, container.name, container.root, "/root"

    def shell(self, command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:  # type: ignore[override]
        return self.container.shell(command, check=False, env=dict(env))


@dataclass
class Pair:
    lab: Lab
    nodes: dict[str, Container]
    app_password: str = field(default_factory=lambda: secrets.token_hex(16))

    @classmethod
    def build(cls, say: Callable[[str], None]) -> Pair:
        """The network, a copy of the cached root per node, both booted. Undone by ``destroy`` even half-built."""
        root = rootfs.ensure_root()
        lab = Lab.up_network(LabSpec(NAME_PREFIX + secrets.token_hex(2)))
        pair = cls(lab, {})
        try:
            wheels = deploy_readme.wheelhouse(rootfs.CACHE_BASE)
            for node in ("alpha", "beta"):
                copy = lab.root / "roots" / node
                say(f"{node}: copying the cached root {root} to {copy}")
                rootfs.copy_root(copy)
                subprocess.run(["cp", "-a", f"{wheels}/.", str(copy / deploy_readme.WHEELHOUSE_IN_ROOT.lstrip("/"))],
                               check=True)
                pair.nodes[node] = Container(node, copy, lab.netns(node), lab.root / "console" / f"{node}.log")
                pair.power_on(node)
                say(f"{node}: booted, systemd is PID {pair.nodes[node].pid1} on the host")
        except BaseException:
            pair.destroy()
            raise
        return pair

    def destroy(self) -> None:
        for c in self.nodes.values():
            c.stop()
        self.lab.down()  # the namespaces and everything under the lab's directory, the roots too

    # -- power ---------------------------------------------------------------------------------------------

    def power_on(self, node: str) -> None:
        ns = self.lab.netns(node)
        netns.ip_batch(ns, [f"link set {PUBLIC_IF} up", f"link set {PRIVATE_IF} up"])
        netns.ip_batch(ns, [f"route replace default via {self.lab.spec.gateway_for(node)}"])
        self.nodes[node].boot()

    def powered_off(self, node: str) -> None:
        """After the container stopped: its cards are dead and what only its last boot added is gone."""
        ns = self.lab.netns(node)
        layout = self.lab.node(node)
        own = {layout.public.address, layout.private.address}
        out = json.loads(netns.run(["ip", "-n", ns, "-j", "addr", "show"]).stdout)
        batch = [f"addr del {a['local']}/{a['prefixlen']} dev {i['ifname']}" for i in out if i["ifname"] != "lo"
                 for a in i.get("addr_info", []) if a.get("family") == "inet"
                 and f"{a['local']}/{a['prefixlen']}" not in own]
        netns.ip_batch(ns, [*batch, f"link set {PUBLIC_IF} down", f"link set {PRIVATE_IF} down"])

    # -- the deployment ---------------------------------------------------------------------------------

    def deploy(self, workdir: Path, say: Callable[[str], None]) -> list[deploy_readme.Step]:
        servers = {n: _ContainerServer(c) for n, c in self.nodes.items()}
        return deploy_readme.deploy(servers, deploy_readme.export_checkout(workdir),
                                    lambda example: deploy_readme.edit_example(example, PUBLIC_IF, PRIVATE_IF, ""),
                                    say=say)

    def add_client(self, primary: str) -> None:
        """The application's role, database and pg_hba line (the client's network), as its operator adds them."""
        line = f"host {APP} {APP} {self.lab.spec.client_link.address.split('/')[0]}/24 scram-sha-256"
        for node in self.nodes:
            self.sh(node, f"echo '{line}' >> {DATA_DIR}/pg_hba.conf")
            self.sql(node, "SELECT pg_reload_conf()")
        self.sql(primary, f"CREATE ROLE {APP} LOGIN PASSWORD '{self.app_password}'")
        self.sql(primary, f"CREATE DATABASE {APP} OWNER {APP}")
        self.sql(primary, f"SET ROLE {APP}; CREATE TABLE acked (id bigint PRIMARY KEY)", db=APP)

    # -- inside the servers ------------------------------------------------------------------------------

    def sh(self, node: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.nodes[node].shell(command, check=check)

    def sql(self, node: str, query: str, db: str = "postgres") -> str:
        return self.nodes[node].run(["runuser", "-u", "postgres", "--", "psql", "-qAtX", "-v", "ON_ERROR_STOP=1",
                                     "-d", db, "-c", query]).stdout.strip()

    def status(self, node: str) -> PairStatus:
        out = self.nodes[node].run(["standby", "status", "--json", "--node", node], check=False).stdout
        return PAIR_STATUS.decode(json.loads(out))

    def postgres_pid(self, node: str) -> int:
        out = self.nodes[node].run(["systemctl", "show", "-P", "MainPID", POSTGRES_UNIT.format(node=node)]).stdout
        return int(out.strip())

    def converged(self, timeout_s: float = 90, observer: str | None = None) -> PairStatus:
        """Wait for one primary holding the service IP and the other streaming in sync, both agents up, and
        the standby's agent eligible: the pair can fail over. Without the last, a fault right after a rejoin
        met a standby whose server was in sync but whose agent had not yet heard the primary say so; it
        rightly did not promote, and the test waited for a failover that could not come."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            for obs in [observer] if observer else [n for n, c in self.nodes.items() if c.running]:
                try:
                    st = self.status(obs)
                except (ValueError, subprocess.SubprocessError) as e:
                    last = e
                    continue
                last = st
                p = st.primary
                if p is None:
                    continue
                other = next(n for n in st.nodes if n != p)
                o = st.nodes[other]
                if (o.postgres.state is PgRole.STANDBY and o.postgres.sync_state is SyncState.SYNC
                        and o.agent is not None and o.agent.eligible
                        and st.service_ips[SERVICE_ADDRESS].holders == [p]
                        and all(n.agent is not None and n.agent.running for n in st.nodes.values())):
                    return st
            time.sleep(1)
        raise NotConverged(f"the pair did not converge in {timeout_s} s; last status: {last}{self.journal_tails()}")

    def journal_tails(self, lines: int = JOURNAL_TAIL) -> str:
        """Each running node's agent journal, last lines: what a failure's report needs to say why (the
        containers are gone once the module ends)."""
        out = []
        for name, node in self.nodes.items():
            if node.running:
                res = node.run(["journalctl", "-u", "standby", "-n", str(lines), "--no-pager", "-o", "short-precise"],
                               check=False)
                out.append(f"\n--- {name}: journalctl -u standby, last {lines} lines ---\n{res.stdout}{res.stderr}")
        return "".join(out)

    def _poll(self, node: str, ready: Callable[[PairStatus], bool], what: str, timeout_s: float) -> PairStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                st: PairStatus | None = self.status(node)
                if st is not None and ready(st):
                    return st
            except (ValueError, subprocess.SubprocessError):
                st = None
            if time.monotonic() > deadline:
                raise NotConverged(f"{what} in {timeout_s} s; last status: {st}{self.journal_tails()}")
            time.sleep(0.5)

    def settled(self, node: str, timeout_s: float = 90) -> PairStatus:
        """``node``'s agent answers and sees one primary (itself or its peer)."""
        return self._poll(node, lambda st: st.nodes[node].agent is not None and st.primary is not None,
                          f"{node} saw no single primary", timeout_s)

    def wait_fenced(self, node: str, timeout_s: float = 60) -> PairStatus:
        """``node``'s agent answers and says it is fenced (a booting agent answers before it has heard its peer)."""
        def fenced(st: PairStatus) -> bool:
            agent = st.nodes[node].agent
            return agent is not None and agent.fenced
        return self._poll(node, fenced, f"{node} did not say it is fenced", timeout_s)

    def wait_primary(self, node: str, timeout_s: float = 60) -> PairStatus:
        return self._poll(node, lambda st: st.primary == node, f"{node} did not become primary", timeout_s)


@dataclass
class Writer:
    """A client in the client's network: one-row commits through the service IP, each id kept once acknowledged."""

    pair: Pair
    acked: list[int] = field(default_factory=list)
    errors: int = 0
    last_error: str = ""
    ack_times: list[float] = field(default_factory=list)  # time.monotonic() of each acknowledgement
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        ns = self.pair.lab.netns(Role.CLIENT.value)
        self._thread = threading.Thread(target=netns.call_in, args=(ns, self._run), daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # Ids above every earlier scenario's: each scenario's writer writes into the same table.
        n = time.time_ns() // 1000
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(host=SERVICE_ADDRESS, dbname=APP, user=APP, password=self.pair.app_password,
                                           autocommit=True, connect_timeout=2, tcp_user_timeout=2000)
                n += 1
                conn.execute("INSERT INTO acked (id) VALUES (%s)", (n,))
                self.acked.append(n)
                self.ack_times.append(time.monotonic())
                time.sleep(0.01)
            except (psycopg.Error, OSError) as e:
                self.errors += 1
                self.last_error = str(e).strip()
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
        if conn is not None:
            conn.close()

    def longest_gap(self, since: float) -> float:
        """The longest time without an acknowledged commit after ``since`` (time.monotonic())."""
        times = [since, *(t for t in self.ack_times if t > since)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def acked_since(self, count: int) -> int:
        return len(self.acked) - count

    def stop(self, timeout_s: float = 60) -> list[int]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the writer is still waiting for a commit {timeout_s} s after being stopped")
        return list(self.acked)

    def lost(self, primary: str) -> list[int]:
        """Acknowledged ids the primary does not have."""
        have = {int(x) for x in self.pair.sql(primary, "SELECT id FROM acked", db=APP).split()}
        return [i for i in self.acked if i not in have]
