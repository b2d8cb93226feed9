"""The pure half of the peers benchmark: each tool's configuration files as text, and the figures of a
series of host-crash rounds (per tool, and each tool's median against standby's).

No I/O here, so tests/unit/test_bench_peers.py can check it without a lab.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Tool(StrEnum):
    STANDBY = "standby"
    KEEPALIVED = "keepalived"
    PATRONI = "patroni"


BASELINE = Tool.STANDBY


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank (as benchlib's): always a value that was observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _numbers(runs: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in runs if isinstance(r.get(key), (int, float))]


def summarise(runs: Sequence[Mapping[str, Any]], tools: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per tool: fault -> first ack (p50, max), lost acknowledged writes per failover, dual-writable
    samples, and the ratio of its median to standby's.

    A round that failed to measure (``error`` set, or never checked: ``lost`` missing) counts in
    ``rounds`` and ``errors`` but in no figure; a round whose writes never came back counts in
    ``no_ack`` (its first ack is missing, so the median is over the rounds that recovered).
    """
    out: dict[str, dict[str, Any]] = {}
    for tool in tools:
        rs = [r for r in runs if r.get("tool") == tool]
        measured = [r for r in rs if not r.get("error") and r.get("lost") is not None]
        first = _numbers(measured, "first_ack_s")
        lost = _numbers(measured, "lost")
        out[tool] = {
            "rounds": len(rs),
            "errors": len(rs) - len(measured),
            "no_ack": sum(1 for r in measured if r.get("first_ack_s") is None),
            "first_ack_s": {"n": len(first), "p50": percentile(first, 0.5), "max": max(first) if first else None},
            "lost_total": int(sum(lost)),
            "lost_per_failover": sum(lost) / len(lost) if lost else None,
            "lost_max": int(max(lost)) if lost else None,
            "dual_samples_total": int(sum(_numbers(measured, "dual_samples"))),
        }
    base = out.get(BASELINE.value, {}).get("first_ack_s", {}).get("p50")
    for s in out.values():
        p50 = s["first_ack_s"]["p50"]
        s["ratio_of_medians"] = p50 / base if p50 is not None and base else None
    return out


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def render(summary: Mapping[str, Mapping[str, Any]], versions: Mapping[str, str]) -> str:
    lines = [
        "host crash of the primary under 100 calls/s through the service IP; a fresh lab per round",
        "first ack: fault -> first acknowledged call sent after it (s); ratio: median / standby's median",
        f"{'tool':<11} {'rounds':>6} {'first ack p50':>13} {'max':>7} {'ratio':>6} {'lost/failover':>13} "
        f"{'lost max':>8} {'dual':>5} {'no ack':>6} {'errors':>6}  version",
    ]
    for tool, s in summary.items():
        fa = s["first_ack_s"]
        lines.append(
            f"{tool:<11} {s['rounds']:>6} {_f(fa['p50'], '.3f'):>13} {_f(fa['max'], '.3f'):>7} "
            f"{_f(s['ratio_of_medians'], '.1f'):>6} {_f(s['lost_per_failover']):>13} {_f(s['lost_max'], 'd'):>8} "
            f"{s['dual_samples_total']:>5} {s['no_ack']:>6} {s['errors']:>6}  {versions.get(tool, '?')}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- keepalived


@dataclass(frozen=True)
class VrrpNode:
    name: str
    address: str  # public, without prefix
    peer_address: str
    priority: int
    initial_master: bool


def keepalived_conf(node: VrrpNode, interface: str, service_ip: str, notify: str, advert_int: float) -> str:
    """The usual do-it-yourself pair: one VRRP instance carrying the service IP, unicast to the peer
    (no multicast needed on the public network), a notify script run on every state change."""
    return "\n".join([
        "global_defs {",
        f"  router_id {node.name}",
        "  script_user root",
        "}",
        "vrrp_instance pg {",
        f"  state {'MASTER' if node.initial_master else 'BACKUP'}",
        f"  interface {interface}",
        "  virtual_router_id 51",
        f"  priority {node.priority}",
        f"  advert_int {advert_int:g}",
        f"  unicast_src_ip {node.address}",
        f"  unicast_peer {{\n    {node.peer_address}\n  }}",
        f"  virtual_ipaddress {{\n    {service_ip} dev {interface}\n  }}",
        f"  notify {notify}",
        "}",
        "",
    ])


def promote_script(psql: Sequence[str], state_log: str) -> str:
    """keepalived's notify script: on MASTER, promote the local standby and stop waiting for the lost
    sync peer (a promoted server keeps synchronous_standby_names and would hold every commit)."""
    q = " ".join(psql)
    return "\n".join([
        "#!/bin/sh",
        "# keepalived notify: $1 INSTANCE|GROUP, $2 its name, $3 the new state",
        f'echo "$(date +%s.%N) $3" >> {state_log}',
        '[ "$3" = MASTER ] || exit 0',
        f"if [ \"$({q} -c 'SELECT pg_is_in_recovery()')\" = t ]; then",
        f"  {q} -c 'SELECT pg_promote(true, 60)'",
        f"  {q} -c \"ALTER SYSTEM SET synchronous_standby_names = ''\" -c 'SELECT pg_reload_conf()'",
        "fi",
        "",
    ])


# --------------------------------------------------------------------------- Patroni


@dataclass(frozen=True)
class PatroniTimings:
    """Patroni's documented minimums (dynamic configuration): ttl >= 20, loop_wait >= 1, retry_timeout >= 3,
    and loop_wait + 2 * retry_timeout <= ttl."""

    ttl: int = 20
    loop_wait: int = 1
    retry_timeout: int = 3

    def problems(self) -> list[str]:
        out = []
        if self.ttl < 20:
            out.append(f"ttl {self.ttl}: Patroni's minimum is 20")
        if self.loop_wait < 1:
            out.append(f"loop_wait {self.loop_wait}: Patroni's minimum is 1")
        if self.retry_timeout < 3:
            out.append(f"retry_timeout {self.retry_timeout}: Patroni's minimum is 3")
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            out.append("loop_wait + 2 * retry_timeout must not exceed ttl")
        return out


@dataclass(frozen=True)
class PatroniNode:
    name: str
    public_ip: str
    private_ip: str
    data_dir: str
    socket_dir: str
    work_dir: str  # owned by the server's OS user: pgpass


def patroni_conf(scope: str, node: PatroniNode, etcd: str, bin_dir: str, port: int, replication: tuple[str, str],
                 timings: PatroniTimings, hba: Sequence[str]) -> str:
    """One member's configuration (JSON, which YAML reads as it is): etcd's v2 API (what vip-manager
    reads too), synchronous mode (the lab's sync durability), replication over the private network.
    The first member bootstraps the cluster itself (initdb as the lab's, then ``hba``)."""
    user, password = replication
    doc = {
        "scope": scope,
        "name": node.name,
        "restapi": {"listen": f"{node.public_ip}:8008", "connect_address": f"{node.public_ip}:8008"},
        "etcd": {"host": etcd},
        "bootstrap": {"dcs": {
            "ttl": timings.ttl, "loop_wait": timings.loop_wait, "retry_timeout": timings.retry_timeout,
            "synchronous_mode": True,
            "postgresql": {"use_pg_rewind": False, "use_slots": True},
        },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, {"auth-local": "trust"},
                       {"auth-host": "scram-sha-256"}],
            "pg_hba": list(hba),
        },
        "postgresql": {
            "listen": f"0.0.0.0:{port}",
            "connect_address": f"{node.private_ip}:{port}",
            "data_dir": node.data_dir,
            "bin_dir": bin_dir,
            "pgpass": f"{node.work_dir}/pgpass",
            "use_unix_socket": True,
            "parameters": {"unix_socket_directories": node.socket_dir},
            "authentication": {
                "superuser": {"username": "postgres"},
                "replication": {"username": user, "password": password},
            },
        },
        "log": {"level": "INFO"},
    }
    return json.dumps(doc, indent=2) + "\n"


def vip_manager_conf(scope: str, member: str, service_ip: str, interface: str, etcd: str, interval_ms: int) -> str:
    """vip-manager (Patroni's companion for a service IP): the address follows the leader key."""
    address, prefix = service_ip.split("/")
    return "\n".join([
        f"ip: {address}",
        f"netmask: {prefix}",
        f"interface: {interface}",
        f"trigger-key: /service/{scope}/leader",
        f"trigger-value: {member}",
        "dcs-type: etcd",
        f"dcs-endpoints: [\"http://{etcd}\"]",
        f"interval: {interval_ms}",
        "",
    ])
