"""Who holds a service IP: this node (netlink) and anyone else on the link (ARP)."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass

from pyroute2 import IPRoute


def local_addresses() -> dict[str, set[ipaddress.IPv4Address]]:
    """Every IPv4 address configured on this node, by interface name."""
    out: dict[str, set[ipaddress.IPv4Address]] = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=2):
            out.setdefault(names.get(addr["index"], "?"), set()).add(ipaddress.IPv4Address(addr.get_attr("IFA_ADDRESS")))
    return out


def holds(address: ipaddress.IPv4Address) -> bool:
    return any(address in addrs for addrs in local_addresses().values())


_REPLY = re.compile(r"reply from (\S+) \[([0-9A-Fa-f:]{17})\]")


@dataclass(frozen=True)
class ArpAnswer:
    address: str
    macs: frozenset[str]  # every hardware address that answered for it


def arp_who_has(interface: str, address: str, count: int = 2, timeout_s: int = 1) -> ArpAnswer:
    """Ask the link who answers for ``address``; more than one MAC means a duplicate."""
    exe = shutil.which("arping")
    if exe is None:
        raise RuntimeError("arping not found: apt-get install iputils-arping")
    res = subprocess.run([exe, "-c", str(count), "-w", str(timeout_s + count), "-I", interface, address],
                         capture_output=True, text=True, timeout=timeout_s + count + 5)
    macs = frozenset(m.group(2).lower() for m in _REPLY.finditer(res.stdout) if m.group(1) == address)
    return ArpAnswer(address, macs)
