"""Service IPs: added and removed with netlink, announced with gratuitous ARP."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from standby.config import ServiceIP
from standby.observe import probes


def _index(ipr: IPRoute, interface: str) -> int:
    found = ipr.link_lookup(ifname=interface)
    if not found:
        raise RuntimeError(f"interface {interface} does not exist on this node")
    return int(found[0])


def held(sip: ServiceIP) -> bool:
    with IPRoute() as ipr:
        idx = _index(ipr, sip.interface)
        return any(a.get_attr("IFA_ADDRESS") == str(sip.address.ip) for a in ipr.get_addr(index=idx, family=2))


def add(sip: ServiceIP) -> bool:
    """Add the address; False if it was already there."""
    with IPRoute() as ipr:
        idx = _index(ipr, sip.interface)
        try:
            ipr.addr("add", index=idx, address=str(sip.address.ip), prefixlen=sip.address.network.prefixlen)
        except NetlinkError as e:
            if e.code == 17:  # EEXIST
                return False
            raise
    return True


def remove(sip: ServiceIP) -> bool:
    """Remove the address; False if it was not there."""
    with IPRoute() as ipr:
        idx = _index(ipr, sip.interface)
        try:
            ipr.addr("del", index=idx, address=str(sip.address.ip), prefixlen=sip.address.network.prefixlen)
        except NetlinkError as e:
            if e.code in (99, 19, 22):  # EADDRNOTAVAIL, ENODEV, EINVAL: nothing to remove
                return False
            raise
    return True


def announce(sip: ServiceIP, count: int = 1) -> None:
    probes.gratuitous_arp(sip.interface, str(sip.address.ip), count)


def answered_elsewhere(sip: ServiceIP) -> set[str]:
    """MACs of other hosts answering ARP for this service IP right now."""
    return probes.arp_holders(sip.interface, str(ipaddress.IPv4Interface(sip.address).ip))


def carrier(interface: str) -> bool:
    """Is the link up with a carrier (cable in, peer end up)?"""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=interface)
        if not found:
            return False
        (link,) = ipr.get_links(found[0])
        return bool(link.get_attr("IFLA_OPERSTATE") == "UP" and link.get_attr("IFLA_CARRIER") == 1)
