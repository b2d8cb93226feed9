"""Service IPs: added and removed with netlink, announced with gratuitous ARP."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from standby.config import ServiceIP
from standby.netlink import IPRoute, NetlinkError
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


# One RTM_GETLINK for one interface, on a plain netlink socket: the decision loop reads both carriers
# every step, and an IPRoute set up and torn down each time cost it milliseconds of CPU per read.
_RTM_NEWLINK, _RTM_GETLINK, _NLMSG_ERROR, _NLM_F_REQUEST = 16, 18, 2, 1
_IFLA_IFNAME, _IFLA_OPERSTATE, _IFLA_EXT_MASK, _IFLA_CARRIER = 3, 16, 29, 33
_IF_OPER_UP, _RTEXT_FILTER_SKIP_STATS = 6, 1 << 3
_NO_SUCH_LINK = (errno.ENODEV, errno.ERANGE)  # none by that name; a name longer than any link's


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _link_attrs(interface: str) -> dict[int, bytes] | None:
    """The kernel's attributes of the link named ``interface`` in this thread's network namespace, by
    type; None if there is none. Any other failure (no descriptor left, say) raises OSError."""
    body = (struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, interface.encode() + b"\0")
            + _attr(_IFLA_EXT_MASK, struct.pack("=I", _RTEXT_FILTER_SKIP_STATS)))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(2.0)
        s.send(struct.pack("=IHHII", 16 + len(body), _RTM_GETLINK, _NLM_F_REQUEST, 1, 0) + body)
        data = s.recv(65536)
    length, kind = struct.unpack_from("=IH", data)
    if kind == _NLMSG_ERROR:
        err = -struct.unpack_from("=i", data, 16)[0]
        if err in _NO_SUCH_LINK:
            return None
        raise OSError(err, f"reading link {interface}: {os.strerror(err)}")
    if kind != _RTM_NEWLINK:
        raise OSError(f"unexpected netlink answer type {kind} for link {interface}")
    attrs: dict[int, bytes] = {}
    off = 16 + 16  # nlmsghdr, ifinfomsg
    while off + 4 <= length:
        rta_len, rta_type = struct.unpack_from("=HH", data, off)
        if rta_len < 4:
            break
        attrs[rta_type & 0x3FFF] = data[off + 4:off + rta_len]
        off += (rta_len + 3) & ~3
    return attrs


def carrier(interface: str) -> bool:
    """Is the link up with a carrier (cable in, peer end up)?"""
    attrs = _link_attrs(interface)
    if attrs is None:
        return False  # no such interface here
    oper, has_carrier = attrs.get(_IFLA_OPERSTATE, b""), attrs.get(_IFLA_CARRIER, b"")
    return oper[:1] == bytes([_IF_OPER_UP]) and has_carrier[:1] == b"\x01"
