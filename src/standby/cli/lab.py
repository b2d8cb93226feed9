"""`standby lab`: build, inspect, break and remove a two-server lab on this machine."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from standby.cli.common import OperatorError, handle_errors
from standby.config import ConfigError
from standby.documents import LAB_STATUS, LabStatus
from standby.lab import DEFAULT_NAME, NAME_ENV, Lab, LabError, LabSpec, check_prerequisites, configfile
from standby.lab import followers as labfollowers
from standby.lab import tls as labtls
from standby.lab import wan as labwan
from standby.lab.netns import in_netns
from standby.lab.topology import ALL_ROLES, DB_NODES, FOLLOWER_NODES, FOLLOWER_UPSTREAMS

HOSTS = (*DB_NODES, "client")

name_option = click.option(
    "--name",
    envvar=NAME_ENV,
    default=DEFAULT_NAME,
    show_default=True,
    help=f"Lab name (env {NAME_ENV}); namespaces are called NAME-sw, NAME-alpha, NAME-beta, NAME-client.",
)
net_argument = click.argument("net", type=click.Choice(["public", "private"]))


@contextlib.contextmanager
def _as_operator_errors() -> Iterator[None]:
    try:
        yield
    except ConfigError:
        raise
    except (LabError, ValueError) as e:
        raise OperatorError(str(e)) from None


def _open(name: str) -> Lab:
    with _as_operator_errors():
        check_prerequisites(need_pg=False)
        return Lab.open(name)


@click.group("lab")
def group() -> None:
    """A two-server pair on this machine, for demos, benchmarks and tests (needs root).

    Network namespaces joined by two bridges (public 192.0.2.0/24, private
    198.51.100.0/24) and a real PostgreSQL 15 per node. Nothing touches the
    host's own network.
    """


@group.command("up")
@name_option
@click.option(
    "--durability",
    type=click.Choice(["sync", "async"]),
    default="sync",
    show_default=True,
    help="replication.durability written to the lab's standby.toml.",
)
@click.option("--mode", type=click.Choice(["hot", "warm"]), default="hot", show_default=True,
              help="warm: beta stands in another subnet (203.0.113.0/24, routed), no floating service IP.")
@click.option("--pg-layout", type=click.Choice(["plain", "cluster"]), default="plain", show_default=True,
              help="cluster: each node runs a postgresql-common cluster (15/NAME-alpha, 15/NAME-beta).")
@click.option("--follower", "followers", multiple=True, type=click.Choice(list(FOLLOWER_NODES)),
              help="Add this follower ([[followers]], a namespace of its own): gamma, a warm standby in another "
                   "site behind the WAN router (198.18.0.0/24, 198.18.1.0/24); delta, a reporting replica on the "
                   "pair's subnets. `standby lab agents start` clones it from alpha and starts its agent.")
@click.option("--wan-rate", default="100mbit", show_default=True, metavar="RATE",
              help="With gamma: the WAN link's rate each way (kbit, mbit or gbit), shaped on the router with tbf. "
                   "The link adds no delay: the kernel offers no qdisc that holds packets back.")
@click.option("--follower-upstream", type=click.Choice(list(FOLLOWER_UPSTREAMS)), default="primary", show_default=True,
              help="The followers' upstream in standby.toml: primary (each streams from the pair's primary) or "
                   "standby (cascaded from the hot standby; their agents re-point them once it streams).")
@click.option("--services", "services_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A TOML file of [[services]] tables (as in standby.toml) for the agents to run beside the "
                   "sample softswitch.")
@click.option("--softswitch", type=click.Choice(["sample", "kamailio"]), default="sample", show_default=True,
              help="kamailio: also Kamailio on both nodes behind the service IP (calls to a SIPp callee in the "
                   "client namespace; place calls with sipp there, see standby.lab.sip).")
@click.option("--accounting", type=click.Choice(["spool", "direct"]), default="spool", show_default=True,
              help="With kamailio: spool: accounting lines in each node's spool, shipped by `standby ship`; "
                   "direct: INSERTs into the primary through the service IP.")
@click.option("--no-dmq", is_flag=True, help="With kamailio: the nodes do not share dialogs.")
@handle_errors
def up(name: str, durability: str, mode: str, pg_layout: str, followers: tuple[str, ...], wan_rate: str,
       follower_upstream: str, services_file: Path | None, softswitch: str, accounting: str, no_dmq: bool) -> None:
    """Build the lab: namespaces, links, PostgreSQL on alpha, the service IP, standby.toml.

    beta's data directory stays empty; `standby bootstrap` clones it (or `standby lab agents start`).
    """
    from standby.lab import sip

    with _as_operator_errors():
        # Checked before anything is built: a typo in the file costs no teardown.
        services = configfile.load_services(services_file) if services_file else []
        try:
            rate_kbit = labwan.parse_rate(wan_rate)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--wan-rate") from None
        spec = LabSpec(name=name, durability=durability, mode=mode, pg_layout=pg_layout,
                       followers=followers, wan_rate_kbit=rate_kbit, follower_upstream=follower_upstream,
                       home_addresses=softswitch == "kamailio")
        setup = sip.Setup(sip.Accounting(accounting), not no_dmq)
        if softswitch == "kamailio":
            sip.check_prerequisites()
            services.append(sip.service_entry(spec, setup))
        lab = Lab.up(spec, services)
        if softswitch == "kamailio":
            sip.configure(lab, setup)
            sip.start_callee(lab)
            if setup.accounting is sip.Accounting.SPOOL:
                for node in ("alpha", "beta"):
                    sip.start_shipper(lab, node)
    click.echo(f"lab {name} is up")
    click.echo(f"  config:   {lab.config_path}")
    click.echo(f"  services: {', '.join(['softswitch', *(s['name'] for s in services)])}")
    # The API speaks TLS with the lab's own CA: what curl or a load balancer needs to trust it.
    click.echo(f"  CA:       {lab.spec.tls_dir / labtls.CA_CERT}")
    click.echo(f"  token:    {lab.spec.secret('api.token')}")
    sips = lab.snapshot().service_ips
    click.echo("  alpha:    PostgreSQL running" + (f", service IP {sips[0].address}" if sips else ""))
    click.echo("  beta:     empty data directory (clone it with `standby bootstrap`)")
    for f in followers:
        where = f" behind the WAN router ({wan_rate} each way)" if f in spec.wan_followers() else ""
        via = ", cascaded from beta" if spec.follower_upstream == "standby" else ""
        click.echo(f"  {f + ':':<9} follower{where}{via}, empty data directory (`standby lab agents start` clones it)")
    if softswitch == "kamailio" and accounting == "spool":
        ship_log = lab.spec.role_dir("alpha") / "log" / "ship.log"
        click.echo(f"  shippers: `standby ship` on alpha and beta (alpha's log: {ship_log})")
    click.echo(f"  agents:   standby lab agents start --name {name}")
    click.echo(f"  inspect:  standby lab status --name {name}")
    click.echo(f"  remove:   standby lab down --name {name}")


def _link_cell(address: str, interface: str, state: str | None, loss: int) -> str:
    text = f"{address} {interface} "
    text += "[green]up[/]" if state == "up" else "[red]down[/]"
    if loss:
        text += f" [yellow]loss {loss}%[/]"
    return text


def _print_table(status: LabStatus) -> None:
    console = Console()
    console.print(f"[bold]lab {status.name}[/]  config {status.config_path}  durability {status.durability}")
    table = Table(show_header=True, header_style="bold")
    for col in ("node", "namespace", "public", "private", "postgres", "processes", "frozen"):
        table.add_column(col)
    for name, node in status.nodes.items():
        pg = "[green]running[/]" if node.postgres_running else (
            "stopped" if node.postgres_initialised else "[dim]no data[/]"
        )
        table.add_row(
            name,
            node.netns,
            _link_cell(node.public.address, node.public.interface, node.links.get("public"), node.loss["public"]),
            _link_cell(node.private.address, node.private.interface, node.links.get("private"), node.loss["private"]),
            pg,
            str(status.namespaces[name].processes),
            "[red]yes[/]" if node.frozen else "no",
        )
    client = status.client
    table.add_row(
        "client",
        client.netns,
        _link_cell(client.address, client.interface, client.links.get("public"), 0),
        "",
        "",
        str(status.namespaces["client"].processes),
        "[red]yes[/]" if client.frozen else "no",
    )
    console.print(table)
    for sip in status.service_ips:
        holders = ", ".join(sip.holders) or "[red]nobody[/]"
        console.print(f"service IP {sip.address} on {sip.interface}: {holders}")
    if status.reporting_ip:
        rip = status.reporting_ip
        console.print(f"reporting IP {rip.address} on {rip.interface}: {', '.join(rip.holders) or 'nobody'}")
    console.print(f"gateway and tie-breaker {status.tiebreaker} (switch namespace {status.switch.netns})")
    missing = [r for r, ns in status.namespaces.items() if not ns.exists]
    if missing:
        console.print(f"[red]missing namespaces: {', '.join(missing)}[/] (rebuild: standby lab down, then up)")


@group.command("status")
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def status(name: str, as_json: bool) -> None:
    """Show the lab's topology and what is true right now (links, PostgreSQL, faults)."""
    lab = _open(name)
    with _as_operator_errors():
        st = lab.snapshot()
    if as_json:
        click.echo(json.dumps(LAB_STATUS.encode(st), indent=2, sort_keys=True))
    else:
        _print_table(st)


@group.command("down")
@name_option
@click.option("--keep-logs", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="First copy every host's logs, the agents' state and history and standby.toml to DIR.")
@handle_errors
def down(name: str, keep_logs: Path | None) -> None:
    """Remove the lab: kill its processes, delete its namespaces and its directory."""
    with _as_operator_errors():
        check_prerequisites(need_pg=False)
        if keep_logs is not None:
            _keep_logs(name, keep_logs)
        Lab.destroy(name)
    click.echo(f"lab {name} removed")


def _keep_logs(name: str, dest: Path) -> None:
    try:
        made = Lab.open(name).collect_logs(dest)
    except (LabError, OSError) as e:
        # A broken lab must still come down; say what could not be kept.
        click.echo(f"warning: logs not kept ({e})", err=True)
        return
    click.echo(f"logs kept in {dest} ({len(made)} directories)")


@group.group("agents")
def agents() -> None:
    """Start or stop the node agents, as systemd would on real servers."""


@agents.command("start")
@name_option
@click.argument("nodes", nargs=-1, type=click.Choice([*DB_NODES, *FOLLOWER_NODES]))
@handle_errors
def agents_start(name: str, nodes: tuple[str, ...]) -> None:
    """Start the agents of NODES (default: both and the lab's followers), each pair agent under a supervisor
    that fences after an unclean death.

    A pair not yet bootstrapped (beta's data directory empty) is bootstrapped first, and a follower with an
    empty data directory is cloned from alpha first.
    """
    lab = _open(name)
    with _as_operator_errors():
        if not (lab.node("beta").pgdata / "PG_VERSION").exists():
            click.echo("bootstrapping the pair first (alpha configured as primary, beta cloned from it)")
            lab.bootstrap()
        unknown = [n for n in nodes if n not in (*DB_NODES, *lab.spec.followers)]
        if unknown:
            raise LabError(f"lab {name} has no follower {', '.join(unknown)}; build it with `standby lab up "
                           f"--follower {unknown[0]}`")
        labfollowers.attach(lab)
        for node in nodes or (*DB_NODES, *lab.spec.followers):
            if lab.spawned_alive(node, "agent"):
                click.echo(f"{node}: agent already running")
                continue
            lab.start_agent(node)
            click.echo(f"{node}: agent started (log {lab.spec.role_dir(node) / 'log' / 'agent.log'})")


@agents.command("stop")
@name_option
@click.argument("nodes", nargs=-1, type=click.Choice([*DB_NODES, *FOLLOWER_NODES]))
@handle_errors
def agents_stop(name: str, nodes: tuple[str, ...]) -> None:
    """Stop the agents of NODES (default: both and the lab's followers) cleanly: service IPs, services and
    PostgreSQL stay as they are."""
    lab = _open(name)
    with _as_operator_errors():
        for node in nodes or (*DB_NODES, *lab.spec.followers):
            if not lab.spawned_alive(node, "agent"):
                click.echo(f"{node}: agent not running")
                continue
            lab.stop_agent(node)
            click.echo(f"{node}: agent stopped")


@group.command("sipp")
@name_option
@click.option("--rate", type=click.FloatRange(0.1, 5000), default=30, show_default=True, help="Calls a second.")
@click.option("--calls", type=click.IntRange(1), default=300, show_default=True, help="Calls in all.")
@click.option("--hold-ms", type=click.IntRange(0), default=1500, show_default=True, help="How long each call lasts.")
@handle_errors
def sipp(name: str, rate: float, calls: int, hold_ms: int) -> None:
    """Place SIP calls from the client namespace to the service IP with SIPp (a lab up with --softswitch
    kamailio), wait for the last, and print SIPp's counts."""
    from standby.lab import sip

    lab = _open(name)
    with _as_operator_errors():
        logs = lab.spec.role_dir("client") / "log"
        stats = logs / "sipp-caller-stats.csv"
        stats.unlink(missing_ok=True)
        res = lab.run("client", sip.caller_argv(stats, rate, calls, hold_ms, logs), check=False,
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        counts = sip.read_caller_stats(stats)
    click.echo(f"{counts.successful} calls succeeded, {counts.failed} failed, {counts.retransmissions} "
               f"retransmissions (SIPp exit {res.returncode}; its statistics: {stats})")
    if counts.failed:
        sys.exit(1)


@group.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@name_option
@click.argument("node", type=click.Choice(list(ALL_ROLES)))
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def exec_(name: str, node: str, cmd: tuple[str, ...]) -> None:
    """Run CMD inside NODE's namespace; its exit code is passed through.

    STANDBY_CONFIG is set to the lab's standby.toml and, on alpha and beta,
    STANDBY_NODE to the node, so `standby` commands work as on a real server.

    Example: standby lab exec beta -- ping -c 1 198.51.100.11
    """
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise OperatorError("no command given; example: standby lab exec beta -- ip -br addr")
    lab = _open(name)
    with _as_operator_errors():
        ns = lab.netns(node)
    env = dict(os.environ, STANDBY_CONFIG=str(lab.config_path))
    if node in DB_NODES:
        env["STANDBY_NODE"] = node
    try:
        rc = subprocess.run(in_netns(ns, list(cmd)), env=env, check=False).returncode
    except KeyboardInterrupt:
        rc = 130
    sys.exit(rc)


@group.group("fault")
@name_option
@click.pass_context
def fault(ctx: click.Context, name: str) -> None:
    """Break the lab on purpose, and repair it (`heal`)."""
    ctx.obj = name


def _fault_lab() -> Lab:
    return _open(click.get_current_context().find_object(str) or DEFAULT_NAME)


def _do(action: str, fn: Any, *args: Any) -> None:
    with _as_operator_errors():
        fn(*args)
    click.echo(action)


@fault.command("crash")
@click.argument("node", type=click.Choice(HOSTS))
@handle_errors
def crash(node: str) -> None:
    """Kill every process of NODE at once and cut its cables (a power loss)."""
    lab = _fault_lab()
    _do(f"{node}: crashed (processes killed, links down)", lab.crash, node)


@fault.command("freeze")
@click.argument("node", type=click.Choice(HOSTS))
@handle_errors
def freeze(node: str) -> None:
    """Stop every process of NODE (SIGSTOP): alive but unresponsive."""
    lab = _fault_lab()
    _do(f"{node}: frozen", lab.freeze, node)


@fault.command("thaw")
@click.argument("node", type=click.Choice(HOSTS))
@handle_errors
def thaw(node: str) -> None:
    """Let NODE's processes run again (SIGCONT)."""
    lab = _fault_lab()
    _do(f"{node}: thawed", lab.thaw, node)


@fault.command("link-down")
@click.argument("node", type=click.Choice(HOSTS))
@net_argument
@handle_errors
def link_down(node: str, net: str) -> None:
    """Unplug NODE's cable to the NET network (switch side)."""
    lab = _fault_lab()
    _do(f"{node}: {net} link down", lab.link, node, net, False)


@fault.command("link-up")
@click.argument("node", type=click.Choice(HOSTS))
@net_argument
@handle_errors
def link_up(node: str, net: str) -> None:
    """Plug NODE's cable to the NET network back in."""
    lab = _fault_lab()
    _do(f"{node}: {net} link up", lab.link, node, net, True)


@fault.command("loss")
@click.argument("node", type=click.Choice(HOSTS))
@net_argument
@click.argument("percent", type=click.IntRange(0, 100))
@handle_errors
def loss(node: str, net: str, percent: int) -> None:
    """Drop PERCENT% of NODE's packets on NET, both directions (0 removes the rule)."""
    lab = _fault_lab()
    _do(f"{node}: {percent}% loss on {net}", lab.loss, node, net, percent)


@fault.command("heal")
@handle_errors
def heal() -> None:
    """All links up, everything thawed, loss rules removed (crashed processes stay dead)."""
    lab = _fault_lab()
    _do("healed", lab.heal)


if __name__ == "__main__":  # `python -m standby.cli.lab`
    group(prog_name="standby lab")
