"""The lab's WAN: a router namespace between the pair's networks and the other site's, its link shaped.

The other site (the followers of ``WAN_FOLLOWERS``) has a subnet of its own per network, bridged inside
the router; the router has one leg on each of the pair's bridges and forwards between the two sites. Each
direction is shaped where it leaves the router: a token bucket (``tbf``) at ``LabSpec.wan_rate_kbit``.

The link has a rate and no added delay: the kernel this lab runs on has neither ``netem`` nor ``fq`` (which,
with a timestamping classifier, could hold packets back), and a token bucket only queues what exceeds its
rate. A round trip across the router therefore costs what the rate and the queue make it cost.

``plan`` is pure (the commands, per namespace, in order); ``build`` runs them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from standby.lab import netns
from standby.lab.topology import (
    DB_NODES,
    PAIR_NETS,
    PREFIX_LEN,
    WAN_NETS,
    WAN_ROUTER,
    WAN_ROUTER_FAR,
    WAN_ROUTER_NEAR,
    LabSpec,
    Net,
    Role,
    bridge_for,
)

# The router's legs: on the pair's bridges (near) and the other site's bridges (far), inside the router.
NEAR_PORT = {Net.PUBLIC: "near-pub", Net.PRIVATE: "near-priv"}
FAR_BRIDGE = {Net.PUBLIC: "sitepub", Net.PRIVATE: "sitepriv"}
# The switch-side ends of the near legs, on the pair's bridges.
SWITCH_PORT = {Net.PUBLIC: "wan-pub", Net.PRIVATE: "wan-priv"}
# How much the bucket lets through at line speed (5 ms at the rate, at least ten full frames) and how long a
# packet may wait in its queue before it is dropped (TCP then slows down, as on a real line).
BURST_S = 0.005
MIN_BURST_BYTES = 15_140
QUEUE_LATENCY = "100ms"

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(kbit|mbit|gbit)\s*$", re.IGNORECASE)
_PER_KBIT = {"kbit": 1, "mbit": 1_000, "gbit": 1_000_000}


def parse_rate(text: str) -> int:
    """``100mbit`` (kbit, mbit or gbit, tc's units) as kbit/s; ValueError naming the form expected."""
    m = _RATE.match(text)
    if m is None:
        raise ValueError(f"WAN rate {text!r}: expected a number and kbit, mbit or gbit, e.g. 100mbit")
    return round(float(m.group(1)) * _PER_KBIT[m.group(2).lower()])


def tbf(dev: str, rate_kbit: int) -> list[str]:
    """The tc arguments that shape ``dev``'s egress to ``rate_kbit``."""
    burst = max(MIN_BURST_BYTES, round(rate_kbit * 1000 / 8 * BURST_S))
    return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_kbit}kbit", "burst", str(burst),
            "latency", QUEUE_LATENCY]


@dataclass(frozen=True)
class Step:
    """One command in one namespace: ``ip -batch`` lines (``ip``) or a whole argv (``argv``)."""

    ns: str
    ip: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()


def _in_pair_net(address: str, net: Net) -> bool:
    return ipaddress.ip_interface(address).ip in ipaddress.ip_network(PAIR_NETS[net])


def plan(spec: LabSpec) -> list[Step]:
    """Everything the WAN adds to a lab whose namespaces exist (none without a follower in the other site):
    the router's legs and bridges, its forwarding, the routes on both sides, the shaping."""
    far = spec.wan_followers()
    if not far:
        return []
    router, switch = spec.netns(WAN_ROUTER), spec.netns(Role.SWITCH.value)
    steps: list[Step] = []
    sw: list[str] = []
    rt: list[str] = []
    for net in Net:
        sw += [f"link add {SWITCH_PORT[net]} type veth peer name {NEAR_PORT[net]} netns {router}",
               f"link set {SWITCH_PORT[net]} master {bridge_for(net)}", f"link set {SWITCH_PORT[net]} up"]
        rt += [f"addr add {WAN_ROUTER_NEAR[net]}/{PREFIX_LEN} dev {NEAR_PORT[net]}", f"link set {NEAR_PORT[net]} up",
               f"link add {FAR_BRIDGE[net]} type bridge", f"addr add {WAN_ROUTER_FAR[net]}/{PREFIX_LEN} dev "
               f"{FAR_BRIDGE[net]}", f"link set {FAR_BRIDGE[net]} up"]
    # The switch (also the tie-breaker, and warm mode's router) reaches the other site's public subnet too.
    sw.append(f"route add {WAN_NETS[Net.PUBLIC]} via {WAN_ROUTER_NEAR[Net.PUBLIC]}")
    rt.append(f"route add default via {spec.gateway_for(Role.ALPHA.value)}")
    for name in far:
        node = spec.node(name)
        for link in (node.public, node.private):
            # Created in the router, the far end placed straight into the follower's namespace.
            rt += [f"link add {link.switch_port} type veth peer name {link.interface} netns {node.netns}",
                   f"link set {link.switch_port} master {FAR_BRIDGE[link.net]}", f"link set {link.switch_port} up"]
    steps += [Step(switch, ip=tuple(sw)), Step(router, ip=tuple(rt)),
              Step(router, argv=("sysctl", "-qw", "net.ipv4.ip_forward=1"))]
    for name in far:
        node = spec.node(name)
        steps.append(Step(node.netns, ip=(
            f"addr add {node.public.address} dev {node.public.interface}", f"link set {node.public.interface} up",
            f"addr add {node.private.address} dev {node.private.interface}", f"link set {node.private.interface} up",
            # The pair's private subnet over the private leg (the default route is the public one).
            f"route add {PAIR_NETS[Net.PRIVATE]} via {WAN_ROUTER_FAR[Net.PRIVATE]}")))
    # The pair's side: every host on a pair subnet reaches the other site through the router's leg there.
    near_hosts = [*(spec.node(n) for n in DB_NODES), *(spec.node(f) for f in spec.followers if f not in far)]
    for node in near_hosts:
        routes = tuple(f"route add {WAN_NETS[link.net]} via {WAN_ROUTER_NEAR[link.net]}"
                       for link in (node.public, node.private) if _in_pair_net(link.address, link.net))
        steps.append(Step(node.netns, ip=routes))
    steps.append(Step(spec.netns(Role.CLIENT.value),
                      ip=(f"route add {WAN_NETS[Net.PUBLIC]} via {WAN_ROUTER_NEAR[Net.PUBLIC]}",)))
    # Each direction shaped where it leaves the router: towards the pair, towards the other site.
    for dev in (*NEAR_PORT.values(), *(spec.node(n).link(net).switch_port for n in far for net in Net)):
        steps.append(Step(router, argv=tuple(tbf(dev, spec.wan_rate_kbit))))
    return steps


def build(spec: LabSpec) -> None:
    """Run ``plan(spec)``: the lab's namespaces and the pair's bridges must exist."""
    for step in plan(spec):
        if step.ip:
            netns.ip_batch(step.ns, list(step.ip))
        if step.argv:
            netns.run_in(step.ns, list(step.argv))


def shaping(spec: LabSpec) -> dict[str, str]:
    """The router's qdisc per shaped device as tc shows it (``tc qdisc show``), for a check or a status."""
    out: dict[str, str] = {}
    router = spec.netns(WAN_ROUTER)
    for dev in (*NEAR_PORT.values(), *(spec.node(n).link(net).switch_port for n in spec.wan_followers()
                                       for net in Net)):
        res = netns.run_in(router, ["tc", "qdisc", "show", "dev", dev], check=False)
        out[dev] = res.stdout.strip()
    return out
