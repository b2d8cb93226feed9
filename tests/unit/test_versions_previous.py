"""Issue 11: the previous release, taken from git, against the current code without a lab. Agents
compare a digest of their configuration in every heartbeat and refuse a peer whose digest differs, so
both releases must compute the same digest from the same file; a key the current release added, left
at its default, must not change it (standby.protocol.ADDED_CONFIG_KEYS).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from standby import config, protocol
from standby.agent.policy import config_digest
from standby.lab.configfile import toml_value
from tests.unit.configs import example_with_secrets

ROOT = Path(__file__).resolve().parents[2]
# The previous release: the oldest commit of the main line that speaks protocol major 1 (every commit
# does), takes today's lab configuration (api.listen), computes today's configuration digest (it has
# timings.maintenance_timeout_s), and has none of the defects that made earlier commits fail in today's
# lab whatever their peer's release: 06562c9 stalled past the fence timeout on a busy machine (history
# writes on the agent's loop) and 1f126fe could not start PostgreSQL as a follower (its state directory
# closed to the PostgreSQL account). It predates the Standby-Protocol header, so the current code meets
# an agent that announces nothing (protocol 1.0). tests/lab/test_mixed_versions.py runs its agent.
PREVIOUS = "871f2101f08806af4c1b4fa442046001be82f1d9"
# The main line's last commit before timings.maintenance_timeout_s: its agents and today's refuse each
# other's heartbeats (another configuration digest), the break ADDED_CONFIG_KEYS now prevents.
BEFORE_A_KEY = "adc39ff3ed25e50bfaef6d70dacb044478af51e4"


def previous_source(dest: Path, commit: str = PREVIOUS) -> Path:
    """``commit``'s src/ under ``dest`` (from git; skipped outside a checkout with that history)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.skip(f"commit {commit[:12]} is not in this checkout's history")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


_DIGEST = """
import sys
from standby import config
from standby.agent import node
assert node.__file__.startswith(sys.argv[1]), node.__file__
print(node.config_digest(config.load(sys.argv[2])))
"""


def previous_digest(src: Path, path: Path) -> str:
    res = subprocess.run([sys.executable, "-c", _DIGEST, str(src), str(path)], capture_output=True, text=True,
                         check=False, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _write(raw: dict[str, Any], path: Path) -> Path:
    """A raw configuration as a file (every table inline: the lab's TOML writer)."""
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in raw.items()))
    assert tomllib.loads(path.read_text()) == raw
    return path


def test_i11_the_previous_release_computes_the_same_configuration_digest(tmp_path: Path) -> None:
    """Guards the rule: a key added without ADDED_CONFIG_KEYS makes this fail."""
    src = previous_source(tmp_path)
    raw, _ = example_with_secrets(tmp_path)
    path = _write(raw, tmp_path / "standby.toml")
    assert previous_digest(src, path) == config_digest(config.load(path))


def test_i11_a_key_added_at_its_default_leaves_the_digest_a_release_without_it_computes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = previous_source(tmp_path, BEFORE_A_KEY)
    raw, _ = example_with_secrets(tmp_path)
    path = _write(raw, tmp_path / "standby.toml")
    before = previous_digest(src, path)
    assert before != config_digest(config.load(path))  # the break, as it happened
    monkeypatch.setattr(protocol, "ADDED_CONFIG_KEYS", (*protocol.ADDED_CONFIG_KEYS, "timings.maintenance_timeout_s"))
    assert before == config_digest(config.load(path))


def test_i11_a_key_added_set_off_its_default_is_refused_by_a_release_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is misread either way: the older release does not start on a file that uses a key it
    does not know, and the newer one's digest then differs from the digest at the default."""
    src = previous_source(tmp_path, BEFORE_A_KEY)
    monkeypatch.setattr(protocol, "ADDED_CONFIG_KEYS", (*protocol.ADDED_CONFIG_KEYS, "timings.maintenance_timeout_s"))
    raw, _ = example_with_secrets(tmp_path)
    at_default = config_digest(config.parse(raw))
    raw["timings"] = {**raw.get("timings", {}), "maintenance_timeout_s": 300}
    path = _write(raw, tmp_path / "standby.toml")
    res = subprocess.run([sys.executable, "-c", _DIGEST, str(src), str(path)], capture_output=True, text=True,
                         check=False, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
    assert res.returncode != 0 and "maintenance_timeout_s" in res.stderr
    assert config_digest(config.load(path)) != at_default


def test_i11_a_changed_default_in_a_file_that_leaves_the_key_out_keeps_the_previous_digest(tmp_path: Path) -> None:
    """postgres.wal_keep_size_mb went from 1024 to 128: a file without the key (the lab's, many real ones)
    made the previous release's agent and the current one refuse each other (CI run 16 on 8ba54ce, both
    mixed-version lab tests: "the peer beta runs a different configuration"). protocol.CHANGED_DEFAULTS."""
    src = previous_source(tmp_path)
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"] = {k: v for k, v in raw["postgres"].items() if k != "wal_keep_size_mb"}
    path = _write(raw, tmp_path / "standby.toml")
    assert config.load(path).postgres.wal_keep_size_mb == 128  # the current default runs
    assert previous_digest(src, path) == config_digest(config.load(path))


@pytest.mark.parametrize("value", [128, 1024, 512])
def test_i11_a_changed_default_set_in_the_file_is_digested_as_written(tmp_path: Path, value: int) -> None:
    src = previous_source(tmp_path)
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"] = {**raw["postgres"], "wal_keep_size_mb": value}
    path = _write(raw, tmp_path / "standby.toml")
    assert previous_digest(src, path) == config_digest(config.load(path))
