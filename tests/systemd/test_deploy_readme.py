"""The README deploy script's own parts, without containers: the steps it reads out of README.md,
step 9's edit of the example, and `scp` turned into a copy between roots."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from standby import config
from tests.systemd import deploy_readme
from tests.systemd.deploy_readme import ReadmeDrift, Where


def test_every_numbered_step_of_the_readme_is_read_with_where_it_runs() -> None:
    steps = deploy_readme.parse(deploy_readme.README.read_text())
    assert [s.number for s in steps] == list(range(1, len(steps) + 1))
    where = {s.number: s.where for s in steps}
    assert where[1] is Where.CHECKOUT and where[2] is Where.CHECKOUT
    assert {s.where for s in steps} == set(Where)
    # Each step is one command: the code span, not the prose around it.
    assert all(not s.command.startswith("(") or s.command.endswith(")") for s in steps)
    spool = [s for s in steps if s.only_with]
    assert spool and all(s.only_with == "spool" and s.command.startswith("standby show systemd") for s in spool)
    each = next(s for s in steps if s.where is Where.EACH)
    assert "--node beta" in each.command_for("beta") and "alpha" not in each.command_for("beta")
    assert sum(s.edits_config for s in steps) == 1


def test_a_step_that_says_not_where_it_runs_is_refused() -> None:
    readme = "## Deploy on two servers\n\n1. `true`\n\n## Next\n"
    with pytest.raises(ReadmeDrift, match="step 1"):
        deploy_readme.parse(readme)
    with pytest.raises(ReadmeDrift, match="unknown place"):
        deploy_readme.parse("## Deploy on two servers\n\nOn gamma:\n\n1. `true`\n")


def test_the_edited_example_is_a_valid_configuration_for_the_containers(tmp_path: Path) -> None:
    example = (deploy_readme.REPO / "etc" / "standby.example.toml").read_text()
    path = tmp_path / "standby.toml"
    path.write_text(deploy_readme.edit_example(example, "pub0", "priv0", ""))
    cfg = config.load(path)
    assert {cfg.nodes[n].public.interface for n in cfg.nodes} == {"pub0"}
    assert {cfg.nodes[n].private.interface for n in cfg.nodes} == {"priv0"}
    assert cfg.services == []
    assert cfg.api.token_file is not None


def test_an_example_without_the_text_an_edit_looks_for_is_refused() -> None:
    with pytest.raises(ReadmeDrift, match="eth0"):
        deploy_readme.edit_example("[[services]]\n[postgres]\n", "pub0", "priv0", "")


class _Dir(deploy_readme.Server):
    def __init__(self, name: str, root: Path, home: str) -> None:
        self.name, self.root, self.home = name, root, home


def test_scp_to_a_host_copies_into_its_root_keeping_the_mode(tmp_path: Path) -> None:
    alpha, beta = _Dir("alpha", tmp_path / "a", "/root"), _Dir("beta", tmp_path / "b", "/root")
    for d in ("a/etc/standby", "b/etc/standby", "b/root"):
        (tmp_path / d).mkdir(parents=True)
    secret = tmp_path / "a/etc/standby/api.token"
    secret.write_text("x\n")
    secret.chmod(0o600)
    (tmp_path / "a/root/standby.example.toml").parent.mkdir(parents=True)
    (tmp_path / "a/root/standby.example.toml").write_text("y\n")
    servers = {"alpha": alpha, "beta": beta}
    deploy_readme.copy_between(alpha, ["/etc/standby/api.token", "root@beta:/etc/standby/"], servers)
    deploy_readme.copy_between(alpha, ["standby.example.toml", "root@beta:"], servers)
    assert (tmp_path / "b/etc/standby/api.token").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "b/root/standby.example.toml").read_text() == "y\n"
    with pytest.raises(ReadmeDrift, match="root@"):
        deploy_readme.copy_between(alpha, ["x", "gamma:/tmp"], servers)


class _Shell(_Dir):
    """A server whose shell is bash on this machine, in its home under its root."""

    def shell(self, command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:  # type: ignore[override]
        return subprocess.run(["bash", "-c", command], cwd=self.root / self.home.lstrip("/"), capture_output=True,
                              text=True, check=False)


def test_a_step_s_scp_is_copied_and_alpha_s_command_runs_on_beta_with_its_name(tmp_path: Path) -> None:
    readme = ("## Deploy on two servers\n\nOn a machine with this checkout:\n\n"
              "1. `for h in alpha beta; do scp -p f root@$h: ; done`\n\n"
              "On alpha, then on beta (with its own name):\n\n2. `echo alpha > name`\n\n### Next\n")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "f").write_text("wheel\n")
    servers: dict[str, deploy_readme.Server] = {}
    for n in ("alpha", "beta"):
        (tmp_path / n / "root").mkdir(parents=True)
        servers[n] = _Shell(n, tmp_path / n, "/root")
    said: list[str] = []
    deploy_readme.deploy(servers, checkout, lambda text: text, say=said.append, readme=readme)
    for n in ("alpha", "beta"):
        assert (tmp_path / n / "root" / "f").read_text() == "wheel\n"
        assert (tmp_path / n / "root" / "name").read_text() == f"{n}\n"
    assert not any("@@scp" in line for line in said)


def test_readme_runs_standby_check_only_once_both_nodes_are_bootstrapped() -> None:
    # Before beta's bootstrap its PostgreSQL does not exist, and `standby check` fails on it (exit 1):
    # a step that says "fix every failure it names" must come where every failure can be fixed.
    steps = deploy_readme.parse(deploy_readme.README.read_text())
    check = next(s.number for s in steps if s.command.startswith("standby check"))
    bootstraps = [s.number for s in steps if s.command.startswith("standby bootstrap")]
    assert len(bootstraps) == 2 and max(bootstraps) < check


def test_readme_makes_the_state_dir_the_unit_needs_before_enabling_it() -> None:
    # The unit lists state_dir in ReadWritePaths= without '-': systemd refuses to start the agent
    # (226/NAMESPACE, restarting forever) unless the directory exists, and the sandbox keeps the agent
    # from making it. Seen on the containers: nothing in the steps made /var/lib/standby.
    steps = deploy_readme.parse(deploy_readme.README.read_text())
    example = (deploy_readme.REPO / "etc" / "standby.example.toml").read_text()
    state_dir = next(line.split('"')[1] for line in example.splitlines() if line.startswith("state_dir ="))
    enable = next(s.number for s in steps if "enable --now standby" in s.command)
    assert any(s.number < enable and s.where is Where.BOTH and "install -d" in s.command
               and state_dir in s.command.split() for s in steps)
