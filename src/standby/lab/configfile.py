"""The lab's cluster configuration (standby.toml), rendered as TOML text.

The file is small and regular, so a tiny formatter is enough; the result is
always checked by loading it with standby.config.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from standby.config import Service
from standby.lab import softswitch
from standby.lab import tls as labtls
from standby.lab.errors import LabError
from standby.lab.topology import (
    FOLLOWER_REPORTING_IPS,
    FOLLOWER_ROLES,
    GATEWAY,
    HOME_IPS,
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
        # Run once a second where it serves: the stdlib-only check, not the lab's CLI (see standby.lab.health).
        "health": [sys.executable, "-m", "standby.lab.health", "-q", f"http://127.0.0.1:{SOFTSWITCH_PORT}/health"],
        "timeout_s": 20,
        # Warm on both nodes: it follows the primary through its host list, so a
        # failover only moves the address and waits for no process start.
        "placement": "everywhere",
    }


def load_services(path: Path) -> list[dict[str, Any]]:
    """The ``[[services]]`` tables of ``path`` (the schema of standby.toml's), checked before anything is built.

    The lab runs them beside its sample softswitch: a way to try a real service (a SIP proxy, a
    CDR writer) on the pair without editing the generated standby.toml.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise LabError(f"{path}: cannot read it as TOML ({e})") from None
    extra = sorted(set(data) - {"services"})
    if extra:
        raise LabError(f"{path}: unexpected key(s) {', '.join(extra)}; the file holds only [[services]] tables")
    tables = data.get("services")
    if not isinstance(tables, list) or not tables:
        raise LabError(f"{path}: no [[services]] table; add one with name, start and stop (see etc/standby.example.toml)")
    out: list[dict[str, Any]] = []
    for i, table in enumerate(tables):
        try:
            service = Service.model_validate(table)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(x) for x in err["loc"]) or "(table)"
            raise LabError(f"{path}: services[{i}].{key}: {err['msg']}") from None
        if service.name == "softswitch" or service.name in (o["name"] for o in out):
            raise LabError(f"{path}: services[{i}].name: {service.name!r} is taken; give each service its own name")
        out.append(service.model_dump(mode="json", exclude_none=True))
    return out


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


def _follower(name: str, spec: LabSpec) -> dict[str, Any]:
    node = spec.node(name)
    return {
        "name": name,
        "role": FOLLOWER_ROLES[name],
        "upstream": spec.follower_upstream,
        "public": {"address": node.public.address, "interface": node.public.interface},
        "private": {"address": node.private.address, "interface": node.private.interface},
        # The lab's namespaces share one file system: each follower its own directories.
        "postgres": {"data_dir": node.pgdata, "socket_dir": node.socket_dir},
        **({"reporting_ip": {"address": ip, "interface": PUBLIC_IF}}
           if (ip := FOLLOWER_REPORTING_IPS.get(name)) else {}),
    }


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
                **({"home_address": HOME_IPS[node.name]} if spec.home_addresses else {}),
            },
        )
    for f in spec.follower_nodes():
        lines += ["[[followers]]", *(f"{k} = {toml_value(v)}" for k, v in _follower(f.name, spec).items()), ""]
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
