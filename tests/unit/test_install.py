"""Issue 11: a wheel built from this checkout, installed into a fresh virtualenv, is a working `standby`:
no editable checkout, no `dev` script. Slow (a build and an install from the package index `./dev setup`
uses), so it is one test.

The wheel is built from a copy of the sources (a build in the checkout would leave build/ there, whose
stale files a later build would package), and the installed commands run from an empty directory, so
nothing can come from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "etc" / "standby.example.toml"


def _run(argv: list[str | Path], cwd: Path, timeout: int = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "STANDBY_CONFIG", "STANDBY_NODE")}
    res = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         check=False, env=env)
    assert res.returncode == 0, f"{' '.join(map(str, argv))}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _sources(into: Path) -> Path:
    copy = into / "source"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, copy / name)
    return copy


def test_i11_a_built_wheel_installs_a_working_standby(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    copy = _sources(tmp_path)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w",
          tmp_path / "dist", copy], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("standby-*.whl")

    # Everything the package has, not only its modules: the status page's files, py.typed, the lab's helpers.
    packaged = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "src"
    shipped = {p.relative_to(src).as_posix() for p in (src / "standby").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert not shipped - packaged, f"missing from the wheel: {sorted(shipped - packaged)}"
    assert {"standby/py.typed", "standby/web/static/index.html"} <= packaged

    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", venv], cwd=elsewhere)
    _run([venv / "bin" / "pip", "install", "--disable-pip-version-check", "-q", wheel], cwd=elsewhere)
    standby = venv / "bin" / "standby"

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _run([standby, "--version"], cwd=elsewhere).strip() == f"standby, version {version}"
    assert "valid" in _run([standby, "config", "check", EXAMPLE], cwd=elsewhere)
    where = _run([venv / "bin" / "python", "-c", "import standby, importlib.resources as r; print(standby.__file__); "
                  "print((r.files('standby.web') / 'static' / 'index.html').is_file())"], cwd=elsewhere).split()
    assert Path(where[0]).is_relative_to(venv) and where[1] == "True"

    unit = _run([standby, "show", "systemd", "--config", EXAMPLE, "--node", "alpha"], cwd=elsewhere)
    exe = os.path.realpath(standby)
    assert f"ExecStart={exe} agent\n" in unit and f"ExecStopPost={exe} fence --if-unclean\n" in unit
    # The virtualenv is under /tmp, which the unit's PrivateTmp hides: it is bound in for the agent to load.
    assert f"BindReadOnlyPaths={os.path.realpath(venv)}\n" in unit
    (tmp_path / "standby.service").write_text(unit)
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "standby.service")], capture_output=True,
                            text=True, timeout=120, check=False)
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
