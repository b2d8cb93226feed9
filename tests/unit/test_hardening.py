"""Secret files others can read are refused; configured commands never go through a shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner

from standby import config
from standby.act import services
from standby.agent.node import Agent, hook_argv
from standby.agent.opsteps import run_hook as _run_hook
from standby.cli.agent import agent_command
from standby.cli.config_cmd import group as config_group
from tests.unit.configs import SECRET_KEYS, example_with_secrets

# -- secrets readable by others -----------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SECRET_KEYS))
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_agent_refuses_secret_others_can_read(tmp_path: Path, key: str, mode: int) -> None:
    raw, files = example_with_secrets(tmp_path)
    files[key].chmod(mode)
    with pytest.raises(config.ConfigError) as e:
        Agent(config.parse(raw), "alpha")
    message = str(e.value)
    assert key in message and f"chmod 600 {files[key]}" in message, message
    assert files[key].read_text().strip() not in message


@pytest.mark.parametrize("key", sorted(SECRET_KEYS))
def test_agent_command_refuses_secret_others_can_read(tmp_path: Path, key: str) -> None:
    """What the operator sees: exit 2, the key, the fix, never the secret, and no agent ran."""
    raw, files = example_with_secrets(tmp_path)
    files[key].chmod(0o644)
    cfg_file = tmp_path / "standby.toml"
    cfg_file.write_text(tomli_w.dumps(raw))
    res = CliRunner().invoke(agent_command, ["--config", str(cfg_file), "--node", "alpha"])
    assert res.exit_code == 2, res.output
    assert key in res.output and "chmod 600" in res.output
    assert files[key].read_text().strip() not in res.output
    assert not any((tmp_path / "state").iterdir()), "the agent wrote state before refusing"


def test_agent_starts_with_private_secrets(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    Agent(config.parse(raw), "alpha")


def test_config_check_errors_never_show_secret_values(tmp_path: Path) -> None:
    """A bad value next to a secret path, and a secret pasted inline by mistake: errors name keys, not secrets."""
    raw, files = example_with_secrets(tmp_path)
    password = files["postgres.replication_password_file"].read_text().strip()
    raw["postgres"]["port"] = "not-a-port"
    raw["postgres"]["replication_password"] = password  # an unknown key holding the secret itself
    raw["api"]["token"] = files["api.token_file"].read_text().strip()
    cfg_file = tmp_path / "bad.toml"
    cfg_file.write_text(tomli_w.dumps(raw))
    res = CliRunner().invoke(config_group, ["check", str(cfg_file)])
    assert res.exit_code == 2
    assert "postgres.port" in res.output and "postgres.replication_password" in res.output and "api.token" in res.output
    for secret in (password, raw["api"]["token"]):
        assert secret not in res.output, res.output


# -- shell metacharacters --------------------------------------------------------------------

HOSTILE = ["; touch {pwned}", "$(touch {pwned})", "`touch {pwned}`", "| touch {pwned}", "&& touch {pwned}",
           "> {pwned}", "'\"\\", "*", "~", "$HOME", "\n touch {pwned}"]


def _argv_writer(tmp: Path) -> tuple[Path, Path, list[str]]:
    """A tiny real program that writes the argv it receives to a file; and hostile arguments for it."""
    out, pwned = tmp / "argv.json", tmp / "pwned"
    script = tmp / "argv-writer.py"
    script.write_text("import json, sys\nopen(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))\n")
    return out, pwned, [a.replace("{pwned}", str(pwned)) for a in HOSTILE]


def _written(out: Path) -> Any:
    return json.loads(out.read_text())


@pytest.mark.parametrize("which", ["start", "stop", "health"])
def test_service_commands_run_literally(tmp_path: Path, which: str) -> None:
    out, pwned, hostile = _argv_writer(tmp_path)
    cmd = [sys.executable, str(tmp_path / "argv-writer.py"), str(out), *hostile, "{node}"]
    svc = config.Service(name="x", start=cmd, stop=cmd, health=cmd)
    result = services.run(svc, which, "alpha")
    assert result.ok, result.detail
    assert _written(out) == [*hostile, "alpha"]
    assert not pwned.exists(), "a shell ran an injected command"


def test_address_change_hook_runs_literally(tmp_path: Path) -> None:
    out, pwned, hostile = _argv_writer(tmp_path)
    raw, _ = example_with_secrets(tmp_path)
    raw["address_change_hook"] = [sys.executable, str(tmp_path / "argv-writer.py"), str(out), *hostile,
                                  "{node}", "{address}", "$(echo {address})"]
    argv = hook_argv(config.parse(raw), "beta")
    assert argv is not None
    assert _run_hook(argv) == "exit 0"
    assert _written(out) == [*hostile, "beta", "192.0.2.12", "$(echo 192.0.2.12)"]
    assert not pwned.exists(), "a shell ran an injected command"


def test_a_command_line_as_one_string_is_one_program_name(tmp_path: Path) -> None:
    """Even a whole command line in argv[0] is looked up as one (missing) program, not split and run."""
    pwned = tmp_path / "pwned"
    svc = config.Service(name="x", start=[f"true; touch {pwned}"], stop=["true"])
    result = services.run(svc, "start", "alpha")
    assert not result.ok and "cannot run" in result.detail
    assert not pwned.exists()
    assert _run_hook([f"true; touch {pwned}"]).startswith("could not run")
    assert not pwned.exists()


def test_toml_round_trip_keeps_metacharacters(tmp_path: Path) -> None:
    """The loader keeps each argument as written: no splitting, no expansion."""
    raw, _ = example_with_secrets(tmp_path)
    raw["services"][0]["start"] = ["/bin/echo", "a;b", "$(c)", "`d`", "e|f", "{node}"]
    f = tmp_path / "c.toml"
    f.write_text(tomli_w.dumps(raw))
    svc = config.load(f).services[0]
    assert svc.argv("start", "beta") == ["/bin/echo", "a;b", "$(c)", "`d`", "e|f", "beta"]
