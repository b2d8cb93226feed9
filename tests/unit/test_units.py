"""Issue 11: `standby show systemd` prints this node's units from the configuration; the shipped etc/ units
are that output for the example configuration, so the two cannot drift.

The command runs as a process (this checkout's installed `standby`), and systemd's own `systemd-analyze
verify` judges what it prints. Regenerate the shipped units with `.venv/bin/python -m tests.unit.test_units`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner, Result

from standby import config, units
from standby.cli.main import cli

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "etc" / "standby.example.toml"
STANDBY = ROOT / ".venv" / "bin" / "standby"
# How the shipped units are printed: the example configuration where it is installed, `standby` on PATH.
SHIPPED_CONFIG = PurePosixPath("/etc/standby/standby.toml")
SHIPPED_INSTALL = units.Install(exe=PurePosixPath("/usr/local/bin/standby"), roots=(PurePosixPath("/usr/local"),))
# The example's commented [spool], as an operator would fill it in.
EXAMPLE_SPOOL = {"path": "/var/spool/standby/acc", "pattern": "*.jsonl", "format": "json", "key": ["call_id"],
                 "table": "spool_records", "database": "sippy", "user": "accounting",
                 "password_file": "/etc/standby/ship.password"}


def _example(**changes: Any) -> dict[str, Any]:
    return {**tomllib.loads(EXAMPLE.read_text()), **changes}


def shipped() -> dict[Path, str]:
    cfg = config.parse(_example(spool=EXAMPLE_SPOOL))
    return {ROOT / "etc" / u.file: units.render(cfg, "alpha", SHIPPED_CONFIG, SHIPPED_INSTALL, u) for u in units.UnitName}


def _show(tmp_path: Path, raw: dict[str, Any], *args: str, node: str = "alpha") -> subprocess.CompletedProcess[str]:
    assert STANDBY.exists(), "run ./dev setup first"
    path = tmp_path / "standby.toml"
    path.write_text(tomli_w.dumps(raw))
    env = {k: v for k, v in os.environ.items() if k not in (config.CONFIG_ENV, config.NODE_ENV)}
    return subprocess.run([str(STANDBY), "show", "systemd", "--config", str(path), "--node", node, *args],
                          capture_output=True, text=True, timeout=120, check=False, env=env)


def _show_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: dict[str, Any], *args: str,
               node: str = "alpha") -> Result:
    """The same command in this process (this checkout's `standby` on PATH): for its refusals and --output."""
    monkeypatch.setenv("PATH", f"{STANDBY.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    path = tmp_path / "standby.toml"
    path.write_text(tomli_w.dumps(raw))
    return CliRunner().invoke(cli, ["show", "systemd", "--config", str(path), "--node", node, *args])


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120,
                          check=False)


def test_i11_shipped_units_are_what_show_systemd_prints_for_the_example() -> None:
    for path, text in shipped().items():
        assert path.read_text() == text, (f"{path.relative_to(ROOT)} differs from `standby show systemd` for the "
                                          "example; regenerate: .venv/bin/python -m tests.unit.test_units")


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (apt-get install systemd)")


@needs_systemd_analyze
@pytest.mark.parametrize("unit", list(units.UnitName))
def test_i11_printed_unit_passes_systemd_analyze_verify(tmp_path: Path, unit: units.UnitName) -> None:
    """verify fails on a missing binary but only warns on an unknown key or a bad value: any output fails."""
    res = _show(tmp_path, _example(spool=EXAMPLE_SPOOL), "--unit", unit.value)
    assert res.returncode == 0, res.stderr
    path = tmp_path / unit.file
    path.write_text(res.stdout)
    checked = _verify(path)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr


def test_i11_unit_runs_this_installation_with_this_nodes_configuration(tmp_path: Path) -> None:
    raw = _example(state_dir="/srv/standby-state", spool={**EXAMPLE_SPOOL, "status_file": "/run/standby/{node}.json"})
    raw["nodes"]["beta"]["postgres"] = {"data_dir": "/data/pg/main", "socket_dir": "/var/run/pgsock"}
    res = _show(tmp_path, raw, node="beta")
    assert res.returncode == 0, res.stderr
    d = _directives(res.stdout)
    exe = os.path.realpath(STANDBY)
    assert d["ExecStart"] == [f"{exe} agent"] and d["ExecStopPost"] == [f"{exe} fence --if-unclean"]
    assert d["Environment"] == [f"STANDBY_CONFIG={tmp_path / 'standby.toml'}", "STANDBY_NODE=beta"]
    assert d["ReadWritePaths"] == ["/srv/standby-state -/data/pg -/run/pgsock -/etc/postgresql"]
    assert "--unit standby-ship" in res.stderr  # [spool] is configured: said where the shipper's unit is
    ship = _directives(_show(tmp_path, raw, "--unit", "standby-ship", node="beta").stdout)
    assert ship["ExecStart"] == [f"{exe} ship"]
    assert ship["ReadWritePaths"] == ["/srv/standby-state /run/standby"]


def test_i11_unit_keeps_restarting_and_stays_hardened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _directives(_show_here(tmp_path, monkeypatch, _example()).stdout)
    assert d["StartLimitIntervalSec"] == ["0"] and d["Restart"] == ["always"] and int(d["LimitNOFILE"][0]) >= 65536
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"] and d["ProtectHome"] == ["yes"]
    assert d["PrivateTmp"] == ["yes"] and "CAP_SYS_ADMIN" not in d["CapabilityBoundingSet"][0]
    assert "StandardOutput" not in d and "StandardError" not in d  # the journal, systemd's default


def test_i11_an_installation_under_home_or_tmp_is_bound_in_read_only() -> None:
    cfg = config.parse(_example())
    pipx = PurePosixPath("/root/.local/pipx/venvs/standby")
    text = units.render(cfg, "alpha", SHIPPED_CONFIG, units.Install(pipx / "bin" / "standby", (pipx,)),
                        units.UnitName.AGENT)
    d = _directives(text)
    assert d["ProtectHome"] == ["tmpfs"] and d["BindReadOnlyPaths"] == [str(pipx)]
    venv = PurePosixPath("/tmp/ci/.venv")
    d = _directives(units.render(cfg, "alpha", SHIPPED_CONFIG, units.Install(venv / "bin" / "standby", (venv,)),
                                 units.UnitName.AGENT))
    assert d["ProtectHome"] == ["yes"] and d["BindReadOnlyPaths"] == [str(venv)]


@pytest.mark.parametrize(("change", "args", "says"), [
    ({}, ("--unit", "postgresql"), "pass --unit standby or --unit standby-ship"),
    ({}, ("--unit", "standby-ship"), "spool: "),
    ({"state_dir": "/var/lib/my standby"}, (), "state_dir: '/var/lib/my standby'"),
])
def test_i11_bad_input_is_refused_naming_the_fix_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], args: tuple[str, ...], says: str) -> None:
    target = tmp_path / "standby.service"
    target.write_text("the unit that runs now\n")
    res = _show_here(tmp_path, monkeypatch, _example(**change), *args, "--output", str(target))
    assert res.exit_code == 1 and says in res.stderr, res.output
    assert target.read_text() == "the unit that runs now\n"
    assert sorted(os.listdir(tmp_path)) == ["standby.service", "standby.toml"]  # no temporary file left behind


def test_i11_a_node_name_systemd_cannot_name_a_unit_after_is_refused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _example(preferred_primary="bêta")
    raw["nodes"] = {"alpha": raw["nodes"]["alpha"], "bêta": raw["nodes"]["beta"]}
    res = _show_here(tmp_path, monkeypatch, raw, node="bêta")
    assert res.exit_code == 1 and "nodes.bêta:" in res.stderr and "rename the node" in res.stderr, res.output
    assert not res.stdout


def test_i11_output_replaces_the_unit_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "standby.service"
    target.write_text("old\n")
    res = _show_here(tmp_path, monkeypatch, _example(), "--output", str(target))
    assert res.exit_code == 0 and not res.stdout, res.output
    printed = _show_here(tmp_path, monkeypatch, _example()).stdout
    assert target.read_text() == printed and "ExecStart=" in printed and target.stat().st_mode & 0o777 == 0o644


if __name__ == "__main__":
    for unit_path, unit_text in shipped().items():
        unit_path.write_text(unit_text)
        print(f"wrote {unit_path.relative_to(ROOT)}")
