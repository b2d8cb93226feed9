"""A running pair on the lab (bootstrapped, agents started) and the sample load against it.

Shared by the demo, the benchmarks and the tests, so all three exercise the
same path an operator would.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from standby.documents import AGENT_VIEW, AgentView
from standby.lab import Lab, followers
from standby.lab.checker import Outcome, first_ack_after, read_history
from standby.lab.errors import LabError
from standby.lab.probe import DualPrimaryProbe, ProbeResult
from standby.model import DbState

STANDBY = str(Path(sys.executable).with_name("standby"))
SERVICE_URL = "http://192.0.2.100:8080"
ROLE_CHANGES = {"promote", "fence", "take_services", "release_services"}


def agent_state(lab: Lab, node: str) -> dict[str, Any]:
    """The node agent's /status as its JSON says it ({} if it does not answer): for tests that check
    what the API serves. Code that acts on the view uses ``lab.agent_status`` (typed)."""
    st = lab.agent_status(node)
    return {} if st is None else AGENT_VIEW.encode(st)


def start_pair(lab: Lab, own_clock: bool = False, before_agents: Callable[[Lab], None] | None = None) -> Lab:
    """Bootstrap, start both agents (``own_clock``: with steppable wall clocks, see Lab.set_clock),
    wait until alpha serves and beta may take over; the lab's followers cloned from alpha, their agents
    started, each streaming from its upstream (alpha, or beta when cascaded). ``before_agents`` changes the
    bootstrapped lab while no agent watches (a server stopped then is no fault)."""
    lab.bootstrap()
    if before_agents is not None:
        before_agents(lab)
    followers.attach(lab)
    for node in ("alpha", "beta"):
        lab.start_agent(node, own_clock)
    for node in lab.spec.followers:
        lab.start_agent(node)
    wait_ready(lab)
    # Cascaded followers are cloned from alpha too; their agents then point them at beta.
    for node in lab.spec.followers:
        followers.wait_streaming(lab, node, lab.spec.follower_source())
    return lab


def wait_ready(lab: Lab, timeout_s: float = 60.0) -> Lab:
    """Wait until alpha serves and beta may take over; fail at once if that can no longer happen."""

    def ready() -> bool:
        a, b = lab.agent_status("alpha"), lab.agent_status("beta")
        if a and b and (why := never_ready(a, b)):
            # Sticky until an operator acts: waiting on would only hide what happened.
            changes = role_changes(lab, "alpha") + role_changes(lab, "beta")
            raise LabError(f"the pair cannot become ready: {why}; the agents decided: "
                           + "; ".join(f"{e['node']} {e['action']} ({e['reason']}: {e.get('detail')})" for e in changes))
        return bool(a and b and a.state.services and a.services_healthy
                    and b.state.eligible and b.postgres.streaming)

    lab.wait_for("the pair to be ready (alpha serving, beta eligible)", ready, timeout_s=timeout_s)
    return lab


def never_ready(alpha: AgentView, beta: AgentView) -> str | None:
    """Why a starting pair can no longer reach "alpha serving, beta eligible" by itself, or None."""
    if alpha.state.fenced:
        return "alpha is fenced"
    if beta.state.fenced:
        return "beta is fenced"
    if beta.postgres.state is DbState.PRIMARY:
        return "beta was promoted"
    if beta.state.services and not alpha.state.services:
        return "the service role moved to beta"
    return None


def role_changes(lab: Lab, node: str, since: str = "") -> list[dict[str, Any]]:
    res = lab.standby(node, "history", "--json", "--limit", "1000", check=False)
    entries = json.loads(res.stdout) if res.returncode == 0 else []
    return [e for e in entries if e["event"] == "decision" and e.get("action") in ROLE_CHANGES and e["time"] > since]


def holders(lab: Lab) -> list[str]:
    """Nodes holding the service IP where clients can reach it (a crashed host's leftovers do not count)."""
    st = lab.snapshot()
    return st.reachable_holders(st.service_ips[0])


def reporting_holders(lab: Lab) -> list[str]:
    """Nodes holding the reporting IP where clients can reach it."""
    st = lab.snapshot()
    return st.reachable_holders(st.reporting_ip)


def primaries(lab: Lab) -> list[str]:
    out = []
    for node in ("alpha", "beta"):
        try:
            with lab.pg_connect(node, connect_timeout=2) as c:
                row = c.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    out.append(node)
        except (psycopg.Error, OSError):
            continue  # down, frozen or unreachable: not a primary a client could write to
    return out


def database_servers(lab: Lab) -> dict[str, str]:
    """Every address of the lab's database nodes -> the node's name: what an acknowledged call's ``node``
    in a load history (the address the service's database connection reached) stands for."""
    return {link.ip: n.name for n in (*lab.spec.nodes(), *lab.spec.follower_nodes()) for link in (n.public, n.private)}


@dataclass
class LoadRun:
    history: Path
    servers: Mapping[str, str] = field(default_factory=dict)  # database address -> node (database_servers)
    probe: ProbeResult | None = None
    verdict: dict[str, Any] = field(default_factory=dict)
    t_fault: float | None = None

    def first_ack_after_fault(self, by: str) -> float | None:
        """Fault to service restored on ``by``, the node that serves after the fault: the first call sent
        after the fault that ``by``'s database acknowledged. An acknowledgement the old primary gave after
        the fault (a partition rather than a crash, a call in flight) is not service restored."""
        if self.t_fault is None:
            return None
        mine = {address for address, node in self.servers.items() if node == by}
        return first_ack_after(read_history(self.history), self.t_fault, mine)

    def wait_served_by(self, lab: Lab, by: str, timeout_s: float = 30.0) -> None:
        """Until a call sent after the fault is acknowledged by ``by``'s database: the load has seen the
        service restored there (a test's fixed pause after the roles settled only hoped so)."""
        def served() -> bool:
            try:
                return self.first_ack_after_fault(by) is not None
            except (OSError, ValueError):  # a line being written
                return False

        lab.wait_for(f"a call sent after the fault acknowledged by {by}", served, timeout_s=timeout_s, every_s=0.2)

    def acks_after_fault_by(self) -> Counter[str]:
        """Acknowledged calls sent after the fault, per node whose database wrote them (an address of no
        lab node as itself)."""
        if self.t_fault is None:
            return Counter()
        t_fault = self.t_fault
        return Counter(self.servers.get(a.node, a.node) for a in read_history(self.history)
                       if a.outcome is Outcome.ACK and a.t_send >= t_fault and a.node is not None)


def wait_first_ack(lab: Lab, history: Path, timeout_s: float = 60.0) -> None:
    """Until the load's first acknowledged call. Starting the generator (an interpreter and its imports) took
    more than the 2 s of steady state a test gave it on a loaded machine (CI run 34): the fault came before it
    had opened its history, and the test had nothing to check."""
    def acked() -> bool:
        try:
            return any(a.outcome is Outcome.ACK for a in read_history(history))
        except (OSError, ValueError):  # not created yet
            return False

    lab.wait_for(f"the first acknowledged call in {history.name}", acked, timeout_s=timeout_s, every_s=0.2)


@contextmanager
def under_load(lab: Lab, tmp: Path, rate: int = 100) -> Iterator[LoadRun]:
    """Calls through the service IP and the dual-primary probe, for the duration of the block."""
    run = LoadRun(tmp / "calls.jsonl", database_servers(lab))
    password = lab.spec.secret("app.password").read_text().strip()
    probe = DualPrimaryProbe(lab.netns("client"), {"alpha": "192.0.2.11", "beta": "192.0.2.12"}, password).start()
    lab.spawn("client", [STANDBY, "lab", "load", "--url", SERVICE_URL, "--rate", str(rate), "--duration", "3600",
                         "--out", str(run.history)], "load")
    try:
        wait_first_ack(lab, run.history)
        time.sleep(2.0)  # a steady state before the fault
        yield run
    finally:
        lab.stop_spawned("client", "load")
        run.probe = probe.stop()


def verify(lab: Lab, run: LoadRun, on: str) -> dict[str, Any]:
    """The independent checker, against the database of ``on``."""
    res = lab.run(on, [STANDBY, "lab", "verify", "--json", "--history", str(run.history),
                       "--dsn-file", str(lab.spec.secret("app.dsn"))], check=False)
    try:
        run.verdict = json.loads(res.stdout)
    except ValueError:
        raise RuntimeError(f"the checker failed on {on}: {res.stderr.strip() or res.stdout.strip()}") from None
    return run.verdict
