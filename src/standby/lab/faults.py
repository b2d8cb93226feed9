"""Faults injected into a lab, and the live view of which ones are in effect.

State is never remembered here: whether a link is down, a node frozen or a
loss rule present is read back from the kernel each time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil

from standby.lab import netns
from standby.lab.topology import Net, interface_for

# One nftables table per node namespace holds every loss rule of that node.
LOSS_TABLE = "standby_lab_loss"
# The WAN router's: a share of what it forwards between the sites.
FORWARD_LOSS_TABLE = "standby_lab_forward_loss"


# -- links ----------------------------------------------------------------


def set_link(switch_ns: str, port: str, up: bool) -> None:
    """Take the switch-side end of a node's cable down or up (the node sees carrier loss)."""
    netns.set_link(switch_ns, port, up)


def link_state(switch_ns: str, port: str) -> str:
    return "up" if netns.link_admin_up(switch_ns, port) else "down"


# -- processes --------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


# A frozen host (a paused VM) answers nothing, not even ARP: its kernel is frozen
# too. SIGSTOP alone would leave the namespace's kernel answering, so freezing
# also drops every packet, ARP included, until the thaw.
FREEZE_TABLES = (("inet", "standby_lab_freeze"), ("arp", "standby_lab_freeze_arp"))


def _block_network(ns: str) -> None:
    script = []
    for family, table in FREEZE_TABLES:
        script += [
            f"table {family} {table} {{",
            "  chain input { type filter hook input priority -20; policy drop; }",
            "  chain output { type filter hook output priority -20; policy drop; }",
            "}",
        ]
    netns.run_in(ns, ["nft", "-f", "-"], input="\n".join(script) + "\n")


def _unblock_network(ns: str) -> None:
    for family, table in FREEZE_TABLES:
        netns.run_in(ns, ["nft", "delete", "table", family, table], check=False)


def freeze(ns: str) -> list[int]:
    _block_network(ns)
    stopped: list[int] = []
    # A process may fork between listing and stopping (a server starting a
    # worker): repeat until every process of the namespace is stopped.
    for _ in range(20):
        stopped += netns.signal_all(ns, signal.SIGSTOP)
        if all(_proc_state(pid) in ("T", "Z", None) for pid in netns.pids(ns)):
            break
        time.sleep(0.01)
    return sorted(set(stopped))


def thaw(ns: str) -> list[int]:
    pids = netns.signal_all(ns, signal.SIGCONT)
    if netns.exists(ns):
        _unblock_network(ns)
    return pids


def stopped_pids(ns: str) -> list[int]:
    return [pid for pid in netns.pids(ns) if _proc_state(pid) == "T"]


def frozen(ns: str) -> bool:
    """True when any process of the namespace is stopped."""
    return bool(stopped_pids(ns))


def kill_everything(ns: str) -> bool:
    return netns.kill_all(ns)


# -- packet loss ------------------------------------------------------------


def _ruleset(ns: str) -> list[dict[str, object]]:
    proc = netns.run_in(ns, ["nft", "-j", "list", "table", "inet", LOSS_TABLE], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return list(json.loads(proc.stdout).get("nftables", []))


def loss(ns: str) -> dict[str, int]:
    """Drop percentage per network, parsed from the rules actually loaded."""
    out = {Net.PUBLIC.value: 0, Net.PRIVATE.value: 0}
    by_if = {interface_for(n): n.value for n in Net}
    for item in _ruleset(ns):
        rule = item.get("rule")
        if not isinstance(rule, dict) or rule.get("chain") != "input":
            continue
        ifname, percent = None, 100  # a drop rule without a random draw drops everything
        for expr in rule.get("expr", []):
            m = expr.get("match") if isinstance(expr, dict) else None
            if not m:
                continue
            left = m.get("left", {})
            if isinstance(left, dict) and left.get("meta", {}).get("key") == "iifname":
                ifname = m.get("right")
            elif isinstance(left, dict) and "numgen" in left and m.get("op") == "<":
                percent = int(m.get("right", 0))
        if ifname in by_if:
            out[by_if[ifname]] = percent
    return out


def set_loss(ns: str, net: Net | str, percent: int) -> None:
    """Drop ``percent``% of packets in each direction on the node's interface for ``net``."""
    if not 0 <= percent <= 100:
        raise ValueError(f"loss percent {percent}: expected 0-100")
    wanted = loss(ns)
    wanted[Net(net).value] = percent
    script = [f"table inet {LOSS_TABLE} {{}}", f"delete table inet {LOSS_TABLE}"]
    active = {n: p for n, p in wanted.items() if p > 0}
    if active:
        inp, outp = [], []
        for n, p in active.items():
            ifname = interface_for(n)
            # numgen draws 0-99 per packet: "< p" drops p% of them; 100% needs no draw.
            draw = f"numgen random mod 100 < {p} " if p < 100 else ""
            inp.append(f'    iifname "{ifname}" {draw}drop comment "loss {n}"')
            outp.append(f'    oifname "{ifname}" {draw}drop comment "loss {n}"')
        script += [
            f"table inet {LOSS_TABLE} {{",
            "  chain input {",
            "    type filter hook input priority -10; policy accept;",
            *inp,
            "  }",
            "  chain output {",
            "    type filter hook output priority -10; policy accept;",
            *outp,
            "  }",
            "}",
        ]
    # One transaction: the old rules are replaced atomically.
    netns.run_in(ns, ["nft", "-f", "-"], input="\n".join(script) + "\n")


def clear_loss(ns: str) -> None:
    if netns.exists(ns):
        netns.run_in(ns, ["nft", "delete", "table", "inet", LOSS_TABLE], check=False)


def set_forward_loss(ns: str, percent: int) -> None:
    """Drop ``percent``% of the packets the router namespace ``ns`` forwards, either way (1-100)."""
    if not 0 < percent <= 100:
        raise ValueError(f"forward loss percent {percent}: expected 1-100")
    draw = f"numgen random mod 100 < {percent} " if percent < 100 else ""
    script = [f"table inet {FORWARD_LOSS_TABLE} {{}}", f"delete table inet {FORWARD_LOSS_TABLE}",
              f"table inet {FORWARD_LOSS_TABLE} {{",
              "  chain forward {", "    type filter hook forward priority -10; policy accept;",
              f'    {draw}drop comment "loss {percent}"', "  }", "}"]
    netns.run_in(ns, ["nft", "-f", "-"], input="\n".join(script) + "\n")


def clear_forward_loss(ns: str) -> None:
    if netns.exists(ns):
        netns.run_in(ns, ["nft", "delete", "table", "inet", FORWARD_LOSS_TABLE], check=False)


# -- a busy primary -----------------------------------------------------------

# The agent's own sessions: local (unix socket, so no client address), as the
# superuser, named "standby" by the agent or left unnamed. The caller's own
# session is never one of them.
AGENT_BACKENDS_SQL = """
SELECT pid FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND client_addr IS NULL AND usename = %s
   AND coalesce(application_name, '') IN ('standby', '') AND pid <> pg_backend_pid()
"""


def freeze_server(postmaster: int) -> list[int]:
    """Stop a PostgreSQL server's processes (SIGSTOP), the postmaster first so that it forks nothing
    meanwhile, then each of its children; the pids stopped (thawed again by stop_pids(..., SIGCONT))."""
    stopped = stop_pids([postmaster], signal.SIGSTOP)
    if not stopped:
        return []
    try:
        children = [c.pid for c in psutil.Process(postmaster).children()]
    except psutil.Error:  # gone meanwhile
        children = []
    stopped += stop_pids(children, signal.SIGSTOP)
    deadline = time.monotonic() + 1.0  # a signal is taken when the process next runs: wait for each to stop
    while any(_proc_state(p) not in ("T", "Z", None) for p in stopped) and time.monotonic() < deadline:
        time.sleep(0.005)
    return stopped


def stop_pids(pids: list[int], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to each pid still there; the ones reached."""
    reached = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            reached.append(pid)
        except ProcessLookupError:
            pass
    return reached
