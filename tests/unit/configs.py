"""The example configuration with real secret files (mode 600) in a temporary directory."""

from __future__ import annotations

import secrets
import tomllib
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"

# Secret kind -> how its path is set in the raw configuration.
SECRET_KEYS = {
    "heartbeat_key_file": ("heartbeat_key_file",),
    "postgres.replication_password_file": ("postgres", "replication_password_file"),
    "api.token_file": ("api", "token_file"),
}


def example_with_secrets(d: Path, api_port: int = 8008) -> tuple[dict[str, Any], dict[str, Path]]:
    """Raw example configuration whose secrets, state and API live in/for ``d``; and the secret files by key."""
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["state_dir"] = str(d / "state")
    (d / "state").mkdir(exist_ok=True)
    raw["api"] = {"listen": ["localhost"], "port": api_port}
    files: dict[str, Path] = {}
    for key, where in SECRET_KEYS.items():
        path = d / key.replace(".", "_")
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
        table = raw
        for part in where[:-1]:
            table = table[part]
        table[where[-1]] = str(path)
        files[key] = path
    return raw, files
