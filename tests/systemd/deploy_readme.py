"""Run README.md's "Deploy on two servers" on two containers, step by step, as its commands say.

The numbered commands are read out of README.md, so the README cannot drift from what is tested.
Only what a real operator would change is changed: step 9's "edit it" writes the containers'
interfaces into the example (each edit must find its text, or the example changed and this fails),
`scp` to `root@HOST:` becomes a copy into that container's root, and "with its own name" runs the
alpha command on beta with beta's name. The containers have no internet: pip finds the wheel's
dependencies in a wheelhouse made on the host, told only through pip's environment.

    python tests/systemd/deploy_readme.py --list   # the steps as parsed, where each runs
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SECTION = "## Deploy on two servers"
NODES = ("alpha", "beta")
WHEELHOUSE_IN_ROOT = "/root/wheelhouse"
# Where pip looks inside the servers: the README's own command, offline.
PIP_ENV = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE_IN_ROOT, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# A step's `scp` records what it would send; the copy is made between the roots afterwards.
_SCP_MARK = "@@scp@@"
_SCP_FUNCTION = ("scp() { while [ \"${1#-}\" != \"$1\" ]; do shift; done; "
                 f"printf '{_SCP_MARK}'; printf '\\t%s' \"$@\"; printf '\\n'; }}; ")


class Where(StrEnum):
    CHECKOUT = "the machine with this checkout"
    BOTH = "both servers"
    ALPHA = "alpha"
    BETA = "beta"
    EACH = "alpha, then beta with its own name"
    EITHER = "either server"


_WHERE_TEXT = {
    "a machine with this checkout": Where.CHECKOUT,
    "both servers": Where.BOTH,
    "alpha": Where.ALPHA,
    "beta": Where.BETA,
    "alpha, then on beta (with its own name)": Where.EACH,
    "either": Where.EITHER,
}


class ReadmeDrift(Exception):
    """README.md's deploy section no longer has the shape this script reads; says what it found."""


@dataclass(frozen=True)
class Step:
    number: int
    where: Where
    command: str
    text: str  # the whole item, for the log
    only_with: str | None = None  # "with `[spool]`:" steps run only when the configuration has that table

    @property
    def edits_config(self) -> bool:
        return "then edit it" in self.text

    def nodes(self) -> tuple[str, ...]:
        return {Where.CHECKOUT: (), Where.BOTH: NODES, Where.ALPHA: ("alpha",), Where.BETA: ("beta",),
                Where.EACH: NODES, Where.EITHER: ("alpha",)}[self.where]

    def command_for(self, node: str) -> str:
        # "with its own name": the alpha command, naming beta.
        return re.sub(r"\balpha\b", node, self.command) if self.where is Where.EACH else self.command


def parse(readme: str) -> list[Step]:
    """The numbered steps of the deploy section, each with where it runs; raises ReadmeDrift."""
    try:
        body = readme.split(SECTION + "\n", 1)[1]
    except IndexError:
        raise ReadmeDrift(f"README.md has no {SECTION!r} section") from None
    body = re.split(r"^#{2,3} ", body, maxsplit=1, flags=re.M)[0]
    items: list[tuple[int, Where | None, str]] = []
    where: Where | None = None
    for line in body.splitlines():
        if m := re.match(r"^(\d+)\. (.*)$", line):
            items.append((int(m.group(1)), where, m.group(2)))
        elif line.startswith("   ") and items and line.strip():
            n, w, text = items[-1]
            items[-1] = (n, w, f"{text} {line.strip()}")
        elif m := re.search(r"\bOn ([^.:]+):\s*$", line):
            if m.group(1) not in _WHERE_TEXT:
                raise ReadmeDrift(f"deploy section: unknown place {m.group(0)!r}; expected one of {list(_WHERE_TEXT)}")
            where = _WHERE_TEXT[m.group(1)]
    steps = []
    for i, (n, w, text) in enumerate(items, start=1):
        if n != i or w is None:
            raise ReadmeDrift(f"deploy section: step {n} ({text[:40]!r}) is out of order or says not where it runs")
        spans = re.findall(r"`([^`]+)`", text)
        cond = re.match(r"with `\[(\w+)\]`:", text)
        command = spans[1] if cond else spans[0] if spans else None
        if command is None:
            raise ReadmeDrift(f"deploy section: step {n} has no command in backquotes")
        steps.append(Step(n, w, command, text, cond.group(1) if cond else None))
    if not steps:
        raise ReadmeDrift("deploy section: no numbered steps")
    return steps


# -- step 9: the operator's edit of the example --------------------------------------------------------

def _replace(text: str, old: str, new: str, count: int | None = None) -> str:
    found = text.count(old)
    if found == 0 or (count is not None and found != count):
        raise ReadmeDrift(f"etc/standby.example.toml: expected {count or 'some'} {old!r}, found {found}; "
                          "the example changed: update this edit")
    return text.replace(old, new)


def edit_example(example: str, public_if: str, private_if: str, services: str) -> str:
    """What "edit it" means for this pair: its interfaces, its services, the API token. The example's
    addresses, service IP and tie-breaker are the ones these containers have, so they stay."""
    text = _replace(example, 'interface = "eth0"', f'interface = "{public_if}"')
    text = _replace(text, 'interface = "eth1"', f'interface = "{private_if}"')
    head, rest = text.split("[[services]]\n", 1)
    if "\n[postgres]\n" not in rest:
        raise ReadmeDrift("etc/standby.example.toml: no [postgres] after [[services]]; update this edit")
    text = head + services + "\n[postgres]\n" + rest.split("\n[postgres]\n", 1)[1]
    return _replace(text, '# token_file = "/etc/standby/api.token"', 'token_file = "/etc/standby/api.token"', 1)


# -- the servers and the copies between them ----------------------------------------------------------

class Server:
    """One machine a step runs on: a shell there and its file system as seen from the host."""

    name: str
    root: Path  # "/" on the host
    home: str  # where a login lands: relative paths start here

    def shell(self, command: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError


class Host(Server):
    def __init__(self, workdir: Path) -> None:
        self.name, self.root, self.home = "checkout", Path("/"), str(workdir)

    def shell(self, command: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=self.home, capture_output=True, text=True, check=False,
                              env={**os.environ, **env})


def _host_path(server: Server, path: str) -> Path:
    full = path if path.startswith("/") else f"{server.home}/{path}"
    return server.root / full.lstrip("/")


def copy_between(source: Server, args: list[str], servers: Mapping[str, Server]) -> list[str]:
    """What one `scp SRC... root@HOST:DEST` asked for, done between the roots; returns what was copied."""
    *sources, dest = args
    m = re.fullmatch(r"root@([\w.-]+):(.*)", dest)
    if not m or m.group(1) not in servers or not sources:
        raise ReadmeDrift(f"scp {' '.join(args)}: expected sources and root@{'|'.join(servers)}:PATH")
    target_server = servers[m.group(1)]
    target = _host_path(target_server, m.group(2) or target_server.home)
    done = []
    for src in sources:
        into = target / Path(src).name if target.is_dir() else target
        shutil.copy2(_host_path(source, src), into)  # scp -p: mode and times
        done.append(f"{source.name}:{src} -> {m.group(1)}:{into.relative_to(target_server.root)}")
    return done


# -- the host's part: the checkout, the wheelhouse --------------------------------------------------------

def export_checkout(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) in ``dest``, so step 1 leaves the tree as it was."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def wheelhouse(cache: Path) -> Path:
    """Wheels of the package's dependencies for the servers' Python 3.11, downloaded once per dependency list."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    target = cache / f"wheelhouse-{hashlib.sha256(chr(10).join(deps).encode()).hexdigest()[:12]}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
                    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux_2_28_x86_64", "--implementation", "cp", "-d", str(target), *deps],
                   check=True)
    (target / ".complete").write_text("\n".join(deps) + "\n")
    return target


# -- running it --------------------------------------------------------------------------------------------

def deploy(servers: Mapping[str, Server], workdir: Path, write_config: Callable[[str], str],
           say: Callable[[str], None] = print, readme: str | None = None) -> list[Step]:
    """Every step of the README, in order; ``write_config(example text)`` is step 9's edit.

    ``servers``: alpha and beta (their roots hold the wheelhouse at WHEELHOUSE_IN_ROOT already).
    Raises StepFailed at the first step that exits non-zero, with its output.
    """
    steps = parse(readme if readme is not None else README.read_text())
    host = Host(workdir)
    everyone: dict[str, Server] = {**servers}
    config: dict[str, object] | None = None
    for step in steps:
        if step.only_with is not None:
            if config is None or step.only_with not in config:
                say(f"step {step.number}: skipped, the configuration has no [{step.only_with}]")
                continue
        for server in [host] if step.where is Where.CHECKOUT else [everyone[n] for n in step.nodes()]:
            command = step.command_for(server.name)
            say(f"step {step.number} on {server.name}: {command}")
            proc = server.shell(_SCP_FUNCTION + command, {} if server is host else PIP_ENV)
            lines = proc.stdout.split("\n")
            copies = [line.split("\t")[1:] for line in lines if line.startswith(_SCP_MARK)]
            output = "\n".join(line for line in lines if not line.startswith(_SCP_MARK))
            if proc.returncode != 0:
                raise StepFailed(step, server.name, proc.returncode, output + proc.stderr)
            for args in copies:
                for line in copy_between(server, args, everyone):
                    say(f"    copied {line}")
            if output.strip():
                say("    " + output.strip().replace("\n", "\n    "))
            if step.edits_config:
                path = _host_path(server, "/etc/standby/standby.toml")
                path.write_text(write_config(path.read_text()))
                say(f"    edited {path.relative_to(server.root)}")
                config = tomllib.loads(path.read_text())
    return steps


class StepFailed(Exception):
    def __init__(self, step: Step, server: str, code: int, output: str) -> None:
        super().__init__(f"README deploy step {step.number} on {server} (`{step.command_for(server)}`) "
                         f"exited with {code}:\n{output.strip()[-3000:]}")
        self.step, self.server = step, server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--list", action="store_true", help="print the parsed steps and where each runs")
    args = ap.parse_args()
    if args.list:
        for step in parse(README.read_text()):
            cond = f" (only with [{step.only_with}])" if step.only_with else ""
            print(f"{step.number:2}. on {step.where.value}{cond}: {step.command}")
        return
    # The whole run needs two booted containers: tests/systemd/test_systemd_pair.py makes them.
    ap.error("only --list runs on its own; the deployment runs in tests/systemd/test_systemd_pair.py")


if __name__ == "__main__":
    main()
