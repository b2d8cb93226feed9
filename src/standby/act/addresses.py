"""Service IPs: added and removed with netlink, announced with gratuitous ARP.

Each read or change is one netlink request on a plain socket (RTM_GETADDR, RTM_NEWADDR, RTM_DELADDR,
RTM_GETLINK), not pyroute2: the agent uses four messages of it, and importing pyroute2 kept ~4 MB of modules
in every agent for its whole life (issue 13's memory goal), and setting up an IPRoute for each read cost the
decision loop milliseconds of CPU. pyroute2 stays for the command line and the lab (standby.netlink).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from standby.config import ServiceIP
from standby.observe import probes

_RTM_NEWADDR, _RTM_GETADDR, _NLMSG_DONE, _NLM_F_DUMP = 20, 22, 3, 0x300
_IFA_ADDRESS, _IFA_LOCAL = 1, 2


def held(sip: ServiceIP) -> bool:
    """Is the address configured on its interface? RuntimeError if there is no such interface."""
    return (_if_index(sip.interface), sip.address.ip.packed) in _ipv4_addresses()


def _if_index(interface: str) -> int:
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        raise RuntimeError(f"interface {interface} does not exist on this node") from None


def _ipv4_addresses() -> list[tuple[int, bytes]]:
    """Every IPv4 address of this thread's network namespace: (interface index, address), the address being
    IFA_LOCAL (on a point-to-point link IFA_ADDRESS is the other end's), else IFA_ADDRESS."""
    body = struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0)  # ifaddrmsg: family only, every interface
    out: list[tuple[int, bytes]] = []
    for kind, payload in _exchange(_RTM_GETADDR, _NLM_F_DUMP, body):
        if kind == _NLMSG_ERROR:
            err = _refusal(payload)
            raise OSError(err, f"reading addresses: {os.strerror(err)}")
        if kind == _RTM_NEWADDR:
            found = _attributes(payload, 8)  # after the ifaddrmsg
            local = found.get(_IFA_LOCAL, found.get(_IFA_ADDRESS))
            if local is not None:
                out.append((struct.unpack_from("=I", payload, 4)[0], local))
    return out


def add(sip: ServiceIP) -> bool:
    """Add the address; False if it was already there."""
    err = _change_address(_RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, sip)
    if err == errno.EEXIST:
        return False
    _raise_for(err, "adding", sip)
    return True


def remove(sip: ServiceIP) -> bool:
    """Remove the address; False if it was not there."""
    err = _change_address(_RTM_DELADDR, 0, sip)
    if err in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.EINVAL):  # nothing to remove
        return False
    _raise_for(err, "removing", sip)
    return True


_RTM_DELADDR, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 21, 0x4, 0x200, 0x400
_RT_SCOPE_UNIVERSE = 0


def _change_address(kind: int, flags: int, sip: ServiceIP) -> int:
    """One RTM_NEWADDR or RTM_DELADDR for ``sip`` (as `ip addr add|del ADDRESS/PREFIX dev INTERFACE`), and the
    kernel's answer: 0, or the errno it refused with. RuntimeError if there is no such interface."""
    ip = sip.address.ip.packed
    body = (struct.pack("=BBBBI", socket.AF_INET, sip.address.network.prefixlen, 0, _RT_SCOPE_UNIVERSE,
                        _if_index(sip.interface))
            + _attr(_IFA_LOCAL, ip) + _attr(_IFA_ADDRESS, ip))
    answer, payload = _exchange(kind, _NLM_F_ACK | flags, body)[0]
    if answer != _NLMSG_ERROR or len(payload) < 4:
        raise OSError(f"unexpected netlink answer type {answer} for address {sip.address} on {sip.interface}")
    return _refusal(payload)


def _raise_for(err: int, doing: str, sip: ServiceIP) -> None:
    if err:
        raise OSError(err, f"{doing} {sip.address} on {sip.interface}: {os.strerror(err)}")


def announce(sip: ServiceIP, count: int = 1) -> None:
    probes.gratuitous_arp(sip.interface, str(sip.address.ip), count)


def answered_elsewhere(sip: ServiceIP) -> set[str]:
    """MACs of other hosts answering ARP for this service IP right now.

    Raises ProbeError when the link has no carrier before or after the probe: a probe over a dead link hears
    nobody, and that silence must not read as "free" (a take decided just before the cable went would add
    the address, and it would be on two hosts once the cable is back: finding H2)."""
    _carrier_or_raise(sip)
    found = probes.arp_holders(sip.interface, str(ipaddress.IPv4Interface(sip.address).ip))
    _carrier_or_raise(sip)
    return found


def _carrier_or_raise(sip: ServiceIP) -> None:
    if not carrier(sip.interface):
        raise probes.ProbeError(errno.ENETDOWN, f"ARP probe for {sip.address.ip} on {sip.interface}: the link has "
                                                "no carrier, so nobody answering would mean nothing")


# One RTM_GETLINK for one interface, on a plain netlink socket: the decision loop reads both carriers
# every step, and an IPRoute set up and torn down each time cost it milliseconds of CPU per read.
_RTM_NEWLINK, _RTM_GETLINK, _NLMSG_ERROR, _NLM_F_REQUEST = 16, 18, 2, 1
_IFLA_IFNAME, _IFLA_OPERSTATE, _IFLA_EXT_MASK, _IFLA_CARRIER = 3, 16, 29, 33
_IF_OPER_UP, _RTEXT_FILTER_SKIP_STATS = 6, 1 << 3
_NO_SUCH_LINK = (errno.ENODEV, errno.ERANGE)  # none by that name; a name longer than any link's


def _exchange(kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
    """Send one netlink request (NLM_F_REQUEST and ``flags``) and return its answer, each message as (type, what
    follows its header): a dump's messages up to NLMSG_DONE, else the one message that answers it."""
    dump, out = flags & _NLM_F_DUMP == _NLM_F_DUMP, list[tuple[int, bytes]]()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(2.0)
        s.send(struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | flags, 1, 0) + body)
        while True:
            data, off = s.recv(65536), 0
            while off + 16 <= len(data):
                length, answer = struct.unpack_from("=IH", data, off)
                if length < 16:
                    raise OSError(f"malformed netlink message of length {length}")
                if answer == _NLMSG_DONE and dump:
                    return out
                out.append((answer, data[off + 16:off + length]))
                if not dump:
                    return out
                off += (length + 3) & ~3


def _refusal(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR message (0: an acknowledgement)."""
    return -int(struct.unpack_from("=i", payload)[0])


def _attributes(payload: bytes, start: int) -> dict[int, bytes]:
    """A message's attributes (rtattr) by type, read from ``start`` (the end of its fixed header)."""
    attrs: dict[int, bytes] = {}
    while start + 4 <= len(payload):
        rta_len, rta_type = struct.unpack_from("=HH", payload, start)
        if rta_len < 4:
            break
        attrs[rta_type & 0x3FFF] = payload[start + 4:start + rta_len]
        start += (rta_len + 3) & ~3
    return attrs


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _link_attrs(interface: str) -> dict[int, bytes] | None:
    """The kernel's attributes of the link named ``interface`` in this thread's network namespace, by
    type; None if there is none. Any other failure (no descriptor left, say) raises OSError."""
    body = (struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, interface.encode() + b"\0")
            + _attr(_IFLA_EXT_MASK, struct.pack("=I", _RTEXT_FILTER_SKIP_STATS)))
    kind, payload = _exchange(_RTM_GETLINK, 0, body)[0]
    if kind == _NLMSG_ERROR:
        err = _refusal(payload)
        if err in _NO_SUCH_LINK:
            return None
        raise OSError(err, f"reading link {interface}: {os.strerror(err)}")
    if kind != _RTM_NEWLINK:
        raise OSError(f"unexpected netlink answer type {kind} for link {interface}")
    return _attributes(payload, 16)  # after the ifinfomsg


def carrier(interface: str) -> bool:
    """Is the link up with a carrier (cable in, peer end up)?"""
    attrs = _link_attrs(interface)
    if attrs is None:
        return False  # no such interface here
    oper, has_carrier = attrs.get(_IFLA_OPERSTATE, b""), attrs.get(_IFLA_CARRIER, b"")
    return oper[:1] == bytes([_IF_OPER_UP]) and has_carrier[:1] == b"\x01"
