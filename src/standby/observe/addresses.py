"""The addresses configured on this node, read with netlink (who else answers: see probes)."""

from __future__ import annotations

import ipaddress

from standby.netlink import IPRoute


def local_addresses() -> dict[str, set[ipaddress.IPv4Address]]:
    """Every IPv4 address configured on this node, by interface name."""
    out: dict[str, set[ipaddress.IPv4Address]] = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=2):
            out.setdefault(names.get(addr["index"], "?"), set()).add(ipaddress.IPv4Address(addr.get_attr("IFA_ADDRESS")))
    return out

