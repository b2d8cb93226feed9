"""`standby demo`: the whole story on a lab, narrated for a newcomer."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import click

from standby.cli.common import OperatorError, handle_errors
from standby.lab import Lab, LabSpec
from standby.lab.errors import LabError
from standby.lab.pair import role_changes, under_load, verify

STANDBY = str(Path(sys.executable).with_name("standby"))
SERVICE_URL = "http://192.0.2.100:8080"


def say(title: str) -> None:
    click.echo()
    click.secho(f"== {title}", bold=True)


def sh(lab: Lab, node: str, *args: str, show: bool = True) -> str:
    """Run a `standby` command inside a node, as an operator on that server would."""
    res = lab.run(node, [STANDBY, *args, "--config", str(lab.config_path), "--node", node], check=False)
    if show:
        click.echo(res.stdout.rstrip())
    if res.returncode != 0:
        raise OperatorError(f"`standby {' '.join(args)}` on {node} failed: {res.stderr.strip()}")
    return res.stdout


@click.command("demo")
@click.option("--name", default="sbdemo", show_default=True, help="Lab name (namespaces are NAME-alpha, ...).")
@click.option("--rate", default=100, show_default=True, help="Calls per second of the sample load.")
@click.option("--seconds", default=5.0, show_default=True, help="How long the load runs before the fault.")
@click.option("--keep", is_flag=True, help="Leave the lab running at the end (remove it with `standby lab down`).")
@handle_errors
def command(name: str, rate: int, seconds: float, keep: bool) -> None:
    """Build a two-server lab, carry calls, crash the primary, and show the failover and what was lost.

    Needs root: it creates network namespaces and runs two PostgreSQL servers.
    """
    logging.getLogger("psycopg").setLevel(logging.ERROR)  # the probe's timeouts on the dead node are expected
    say("1. A lab: two servers (alpha, beta), a public and a private network, a client")
    try:
        lab = Lab.up(LabSpec(name))
    except LabError as e:
        raise OperatorError(str(e)) from None
    try:
        _story(lab, rate, seconds)
    finally:
        if keep:
            click.echo(f"\nlab kept: inspect with `standby lab status --name {name}`, "
                       f"remove with `standby lab down --name {name}`")
        else:
            say("Cleaning up")
            lab.down()
            click.echo(f"lab {name} removed")


def _story(lab: Lab, rate: int, seconds: float) -> None:
    st = lab.snapshot()
    for node in ("alpha", "beta"):
        n = st.nodes[node]
        click.echo(f"  {node}: public {n.public.address}, private {n.private.address}")
    click.echo(f"  service IP {st.service_ips[0].address} (on alpha), config {lab.config_path}")

    say("2. Bootstrap: the primary (alpha) first, then the standby (beta) clones it over the private network")
    sh(lab, "alpha", "bootstrap", "--restart")
    sh(lab, "beta", "bootstrap")

    say("3. Preflight (`standby check` on alpha)")
    sh(lab, "alpha", "check")

    say("4. The agents start on both nodes; the sample softswitch runs on both, reached through the service IP")
    for node in ("alpha", "beta"):
        lab.start_agent(node)
    lab.wait_for("the pair to be ready", lambda: _ready(lab), timeout_s=60)
    sh(lab, "beta", "status")

    with tempfile.TemporaryDirectory(prefix="standby-demo-") as tmp:
        say(f"5. Calls: {rate}/s from the client through {SERVICE_URL}, for {seconds:g}s before the fault")
        with under_load(lab, Path(tmp), rate) as run:
            time.sleep(max(0.0, seconds - 2.0))
            say("6. The primary's host crashes (every process killed, both cables cut)")
            run.t_fault = time.monotonic()
            lab.crash("alpha")
            _watch(lab, run.t_fault)
            time.sleep(2.0)
        say("7. What the standby decided (`standby history` on beta)")
        for e in role_changes(lab, "beta"):
            click.echo(f"  {e['time']}  {e['action']:<16} {e['reason']:<12} {e['detail']}")

        say("8. Checking every call against the new primary's database")
        verdict = verify(lab, run, on="beta")
        lost = len(verdict["missing_acked"])
        gap = run.first_ack_after_fault("beta")
        dual = len(run.probe.dual) if run.probe else 0
        click.echo(f"  acknowledged calls: {verdict['acked']}, lost: {lost}, duplicates: {len(verdict['duplicate_call_ids'])}")
        click.echo(f"  from the crash to the first call acknowledged by beta: {gap:.2f} s" if gap is not None
                   else "  no call was acknowledged after the crash")
        click.echo(f"  samples with two writable primaries: {dual} of {len(run.probe.samples) if run.probe else 0}")
        sh(lab, "beta", "status")
        if lost or dual or not verdict["ok"]:
            raise OperatorError("the checker found a problem (see above)")
        click.secho("  nothing lost, never two primaries", fg="green", bold=True)


def _ready(lab: Lab) -> bool:
    a, b = lab.agent_status("alpha"), lab.agent_status("beta")
    return bool(a and b and a.state.services and a.services_healthy and b.state.eligible)


def _watch(lab: Lab, t0: float, seconds: float = 3.0) -> None:
    """A live view of beta's agent while it takes over."""
    last = ""
    while time.monotonic() - t0 < seconds:
        st = lab.agent_status("beta")
        if st:
            heard = max(v or 0 for v in st.peer_heard_s_ago.values())
            line = (f"beta: postgres {st.postgres.state.value:<8} term {st.state.term}  "
                    f"service IPs {'held' if st.state.services else '-':<4}")
            if line != last:
                click.echo(f"  +{time.monotonic() - t0:4.2f}s  {line}  (alpha last heard {heard:.2f}s ago)")
                last = line
        time.sleep(0.1)
