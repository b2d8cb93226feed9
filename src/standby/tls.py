"""TLS from [tls]: the files a node uses, libpq's settings, and the API's SSL contexts.

Without [tls] every helper returns "nothing" (no settings, no context, http),
so callers need no branch of their own.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from standby.config import Config, ConfigError, check_secret_mode


@dataclass(frozen=True)
class NodeTls:
    """One node's TLS files, with ``{node}`` filled in."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def files(cfg: Config, node: str) -> NodeTls | None:
    if cfg.tls is None:
        return None
    return NodeTls(cfg.tls.ca_file, cfg.tls.cert_for(node), cfg.tls.key_for(node))


def check(cfg: Config, node: str) -> NodeTls | None:
    """``node``'s TLS files, refusing missing ones and a key that group or others can read."""
    f = files(cfg, node)
    if f is None:
        return None
    problems = [
        f"{key}: file {path} does not exist; create it (PEM) or fix the path"
        + (" ({node} becomes the node's name)" if key != "tls.ca_file" else "")
        for key, path in (("tls.ca_file", f.ca_file), ("tls.cert_file", f.cert_file), ("tls.key_file", f.key_file))
        if not path.is_file()
    ]
    if problems:
        raise ConfigError(problems)
    check_secret_mode(f.key_file, "tls.key_file")
    return f


def libpq_params(cfg: Config) -> dict[str, str]:
    """What a connection to the peer's PostgreSQL adds: verify its certificate and name against the CA."""
    if cfg.tls is None:
        return {}
    return {"sslmode": "verify-full", "sslrootcert": str(cfg.tls.ca_file)}


def server_settings(cfg: Config, node: str) -> dict[str, str]:
    """PostgreSQL's settings serving TLS with ``node``'s certificate (all reload without a restart)."""
    f = files(cfg, node)
    if f is None:
        return {}
    return {"ssl": "on", "ssl_cert_file": str(f.cert_file), "ssl_key_file": str(f.key_file), "ssl_ca_file": str(f.ca_file)}


def server_context(cfg: Config, node: str) -> ssl.SSLContext | None:
    """The agent API's server side, with ``node``'s certificate."""
    f = check(cfg, node)
    if f is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(f.cert_file, f.key_file)
    return ctx


def client_context(cfg: Config) -> ssl.SSLContext | None:
    """What a client of an agent API verifies the agent against: the [tls] CA, and the address it dialled."""
    if cfg.tls is None:
        return None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.tls.ca_file))


def api_url(cfg: Config, host: object, path: str) -> str:
    """An agent API's URL: https with [tls], http without."""
    return f"{'https' if cfg.tls else 'http'}://{host}:{cfg.api.port}{path}"
