"""`standby demo`: the whole story on a lab, narrated for a newcomer."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click

from standby.cli.common import OperatorError, handle_errors
from standby.lab import Lab, LabSpec
from standby.lab.errors import LabError

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
@click.option("--seconds", default=5.0, show_default=True, help="How long the load runs.")
@click.option("--keep", is_flag=True, help="Leave the lab running at the end (remove it with `standby lab down`).")
@handle_errors
def command(name: str, rate: int, seconds: float, keep: bool) -> None:
    """Build a two-server lab, replicate, carry calls, and show that nothing was lost.

    Needs root: it creates network namespaces and runs two PostgreSQL servers.
    """
    say("1. A lab: two servers (alpha, beta), a public and a private network, a client")
    try:
        lab = Lab.up(LabSpec(name))
    except LabError as e:
        raise OperatorError(str(e)) from None
    try:
        _story(lab, rate, seconds)
    finally:
        if keep:
            click.echo(f"\nlab kept: inspect with `standby lab status --name {name}`, remove with `standby lab down --name {name}`")
        else:
            say("Cleaning up")
            lab.down()
            click.echo(f"lab {name} removed")


def _story(lab: Lab, rate: int, seconds: float) -> None:
    st = lab.status()
    for node in ("alpha", "beta"):
        n = st["nodes"][node]
        click.echo(f"  {node}: public {n['public']['address']}, private {n['private']['address']}")
    click.echo(f"  service IP {st['service_ips'][0]['address']} (on alpha), config {lab.config_path}")

    say("2. Preflight on alpha (`standby check`): before replication exists, some checks wait for it")
    res = lab.run("alpha", [STANDBY, "check", "--config", str(lab.config_path), "--node", "alpha"], check=False)
    click.echo(res.stdout.rstrip())

    say("3. Bootstrap: first the primary (alpha), then the standby (beta) clones it over the private network")
    sh(lab, "alpha", "bootstrap", "--restart")
    sh(lab, "beta", "bootstrap")

    say("4. Run it again: bootstrap is idempotent")
    sh(lab, "beta", "bootstrap")

    say("5. The sample softswitch on alpha; calls from the client through the service IP")
    started = lab.run("alpha", [sys.executable, "-c",
                                "import sys; from standby.config import load; from standby.act.services import start_all;"
                                "r = start_all(load(sys.argv[1]).services, 'alpha'); print(r); sys.exit(0 if all(x.ok for x in r) else 1)",
                                str(lab.config_path)], check=False)
    if started.returncode != 0:
        raise OperatorError(f"the softswitch did not start: {started.stdout} {started.stderr}")
    with tempfile.TemporaryDirectory(prefix="standby-demo-") as tmp:
        history = Path(tmp) / "calls.jsonl"
        click.echo(f"  placing {rate} calls/s for {seconds:g}s ...")
        load = lab.run("client", [STANDBY, "lab", "load", "--url", SERVICE_URL, "--rate", str(rate),
                                  "--duration", str(seconds), "--out", str(history)], check=False)
        click.echo("  " + load.stdout.strip().replace("\n", "\n  "))

        say("6. Status from beta (`standby status`): roles, LSNs, lag, sync state, service IPs")
        sh(lab, "beta", "status")

        say("7. Every acknowledged call is on the primary, once, with balanced accounts; and on the standby too")
        dsn = lab.spec.secret("app.dsn")
        verdict = lab.run("alpha", [STANDBY, "lab", "verify", "--history", str(history), "--dsn-file", str(dsn)],
                          check=False)
        click.echo(verdict.stdout.rstrip())
        time.sleep(0.5)
        counts = {}
        for node in ("alpha", "beta"):
            with lab.pg_connect(node, dbname="softswitch") as conn:
                counts[node] = conn.execute("SELECT count(*) FROM cdrs").fetchone()[0]  # type: ignore[index]
        click.echo(f"  CDRs on alpha (primary): {counts['alpha']}, on beta (standby, read-only): {counts['beta']}")
        doc = json.loads(sh(lab, "beta", "status", "--json", show=False))
        lag = doc["nodes"]["beta"]["postgres"]
        click.echo(f"  beta is {lag['sync_state']}, {lag['lag_bytes']} bytes behind")
        if verdict.returncode != 0:
            raise OperatorError("the checker found a problem (see above)")
