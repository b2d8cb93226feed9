"""The lab's cluster configuration (standby.toml), rendered as TOML text.

The file is small and regular, so a tiny formatter is enough; the result is
always checked by loading it with standby.config.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from standby.lab import softswitch
from standby.lab import tls as labtls
from standby.lab.topology import (
    GATEWAY,
    PG_BIN,
    PG_OS_USER,
    PG_PORT,
    PG_SUPERUSER,
    PUBLIC_IF,
    REPORTING_IP,
    SERVICE_IP,
    LabSpec,
)

REPLICATION_USER = "replicator"
APP_DSN = "app.dsn"  # the sample softswitch's connection string (holds a password)
REPORT_DSN = "report.dsn"  # the sample report's: the reporting IP (holds a password)
# The lab's [reporting]: withdrawn rather than loading the primary, feedback on,
# and a short replay delay, so a conflict would cancel a report within the tests.
REPORTING = {
    "address": REPORTING_IP,
    "interface": PUBLIC_IF,
    "max_lag_bytes": 4 * 1024 * 1024,
    "fallback": "withdraw",
    "hot_standby_feedback": True,
    "max_standby_streaming_delay_ms": 2000,
}
SOFTSWITCH_PORT = 8080


def app_dsn_for(node: str) -> str:
    return f"app-{node}.dsn"


def softswitch_service(spec: LabSpec) -> dict[str, Any]:
    """The sample softswitch as a [[services]] entry; {node} is filled in by the agent."""
    py = list(softswitch.CLI)
    node_dir = spec.root / "{node}"
    pidfile = str(node_dir / "procs" / "softswitch.pid")
    return {
        "name": "softswitch",
        "start": [*py, "start", "--dsn-file", str(spec.secret(app_dsn_for("{node}"))), "--listen", f"0.0.0.0:{SOFTSWITCH_PORT}",
                  "--pidfile", pidfile, "--logfile", str(node_dir / "log" / "softswitch.log")],
        "stop": [*py, "stop", "--pidfile", pidfile],
        "health": [*py, "health", "--url", f"http://127.0.0.1:{SOFTSWITCH_PORT}/health", "-q"],
        "timeout_s": 20,
        # Warm on both nodes: it follows the primary through its host list, so a
        # failover only moves the address and waits for no process start.
        "placement": "everywhere",
    }


def toml_value(value: Any) -> str:
    """A TOML literal for the plain values a config holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        # A JSON string with only ASCII escapes is also a valid TOML basic string.
        return json.dumps(str(value), ensure_ascii=True)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else json.dumps(key)


def _table(header: str, items: Mapping[str, Any]) -> list[str]:
    return [f"[{header}]", *(f"{_key(k)} = {toml_value(v)}" for k, v in items.items()), ""]


def render(spec: LabSpec, services: Sequence[Mapping[str, Any]] = (), salvage: Mapping[str, Any] | None = None) -> str:
    secret = spec.secret
    lines = [
        f"# Cluster configuration of the standby lab {spec.name!r}, written by `standby lab up`.",
        f"cluster = {toml_value(spec.name)}",
        f"mode = {toml_value(spec.mode)}",
        'preferred_primary = "alpha"',
        f"heartbeat_key_file = {toml_value(secret('heartbeat.key'))}",
        f"state_dir = {toml_value(spec.root / 'state')}",
        f"services = {toml_value(list(services))}",
        *([f"salvage = {toml_value(salvage)}"] if salvage else []),
        "",
    ]
    if spec.mode == "hot":
        lines += ["[[service_ips]]", f"address = {toml_value(SERVICE_IP)}", f"interface = {toml_value(PUBLIC_IF)}", ""]
    else:
        # No address can float to another site: a hook tells clients where the primary went.
        # Run as a plain script: importing the package would cost more than the hook itself.
        hook = [sys.executable, str(Path(__file__).with_name("hook.py")), str(spec.root / "address-changes.log"),
                "{node}", "{address}"]
        lines.insert(-1, f"address_change_hook = {toml_value(hook)}")
    for node in spec.nodes():
        lines += _table(
            f"nodes.{node.name}",
            {
                "public": {"address": node.public.address, "interface": node.public.interface},
                "private": {"address": node.private.address, "interface": node.private.interface},
                "postgres": {"cluster": node.cluster} if node.cluster else {"data_dir": node.pgdata,
                                                                            "socket_dir": node.socket_dir},
                "state_dir": node.state_dir,
            },
        )
    lines += _table(
        "postgres",
        {
            "bin_dir": PG_BIN,
            "port": PG_PORT,
            "os_user": PG_OS_USER,
            "superuser": PG_SUPERUSER,
            "database": "postgres",
            "replication_user": REPLICATION_USER,
            "replication_password_file": secret("replication.password"),
        },
    )
    lines += _table("replication", {"durability": spec.durability})
    lines += _table("tiebreaker", {"address": GATEWAY})
    # The lab's clients and checks reach the agents on their public addresses, as a load balancer would.
    lines += _table("api", {"token_file": secret("api.token"), "listen": ["private", "public", "localhost"]})
    lines += _table("tls", {
        "ca_file": spec.tls_dir / labtls.CA_CERT,
        "cert_file": labtls.cert_path(spec.tls_dir, "{node}"),
        "key_file": labtls.key_path(spec.tls_dir, "{node}"),
    })
    if spec.mode == "hot":
        lines += _table("reporting", REPORTING)
    return "\n".join(lines)
