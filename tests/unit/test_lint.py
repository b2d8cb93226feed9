"""The habits that keep the code readable, enforced by `./dev test` and CI.

ruff and mypy --strict run with the configuration in pyproject.toml and must find nothing in src/
(ruff in bench/ too);
the parts depend on each other one way (the lab never imports the command line, status and
preflight observe through observe/, the switchover does not reach into the status command) and
no module imports itself back through others; no function in the agent, the actions or the decisions
is longer than a screen, and no module of the agent longer than a few.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# Paths whose findings are shown but do not fail the test (none: every finding counts).
PENDING: tuple[str, ...] = ()


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def _findings(output: str) -> list[str]:
    """Lines that report a finding at a path, outside PENDING."""
    return [line for line in output.splitlines()
            if line.startswith(("src/", "bench/")) and ":" in line and not line.startswith(PENDING)]


def test_ruff_finds_nothing_in_src_and_bench() -> None:
    res = _run("ruff", "check", "--no-cache", "--output-format", "concise", "src", "bench")
    assert res.returncode in (0, 1), res.stderr  # 2: ruff itself failed (bad configuration)
    found = _findings(res.stdout)
    assert not found, "ruff check src bench:\n" + "\n".join(found)


def test_mypy_finds_nothing_in_src() -> None:
    res = _run("mypy", "--no-error-summary")  # files and strictness from pyproject.toml
    assert res.returncode in (0, 1), res.stdout + res.stderr  # 2: mypy itself failed
    found = [line for line in _findings(res.stdout) if ": note:" not in line]
    assert not found, "mypy:\n" + "\n".join(found)


# -- which part may import which --------------------------------------------------------------------

def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "standby").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The project's modules ``name`` imports anywhere in its file (inside functions too): a module
    imported where it is used is still a dependency. ``from pkg import sub`` depends on ``pkg.sub``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _under(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


@pytest.mark.parametrize(("importer", "imported"), [
    ("standby.lab", "standby.cli"),  # the lab runs commands as processes, never imports them
    ("standby.act", "standby.cli"),
    ("standby.act", "standby.status"),  # the switchover reads the agents through the API client
    ("standby.observe", "standby.act"),  # looking never acts
    ("standby.observe", "standby.cli"),
    ("standby.status", "standby.act"),  # status and preflight observe through observe/
    ("standby.preflight", "standby.act"),
    ("standby.status", "standby.cli"),
    ("standby.documents", "standby.agent"),  # the documents are the vocabulary the parts share
    ("standby.apiclient", "standby.cli"),
])
def test_dependencies_point_one_way(importer: str, imported: str) -> None:
    wrong = sorted(f"{a} imports {b}" for a, deps in GRAPH.items() if _under(a, importer)
                   for b in deps if _under(b, imported))
    assert not wrong, "\n".join(wrong)


def test_nothing_outside_the_cli_imports_it() -> None:
    # The command line sits on top: what a command and another part share lives below it.
    wrong = sorted(f"{a} imports {b}" for a, deps in GRAPH.items() if not _under(a, "standby.cli")
                   for b in deps if _under(b, "standby.cli"))
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        yield sorted(component)


def test_cycle_finder_finds_a_cycle() -> None:
    assert list(_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]
    assert list(_cycles({"a": {"b"}, "b": set()})) == []


def test_no_import_cycle() -> None:
    cycles = list(_cycles(GRAPH))
    assert not cycles, "modules that import each other (through others):\n" + "\n".join(map(" <-> ".join, cycles))


def test_the_labs_service_commands_run_without_importing_the_cli_into_the_lab() -> None:
    # The lab names the workload's command line as a process (softswitch.CLI): it must exist.
    from standby.lab import softswitch

    res = subprocess.run([*softswitch.CLI, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "serve" in res.stdout and "health" in res.stdout, res.stdout + res.stderr


# -- sizes: a function read in one screen, an agent module in a few --------------------------------------

MAX_FUNCTION_LINES = 60
MAX_AGENT_MODULE_LINES = 300
SIZED = [SRC / "standby" / "agent", SRC / "standby" / "act", SRC / "standby" / "decide.py",
         SRC / "standby" / "operations.py", SRC / "standby" / "follow.py", SRC / "standby" / "topology.py"]
# Nothing is exempt; an entry here would have to say why and when it goes.
LONG_FUNCTIONS_PENDING: set[str] = set()


def _sized_files() -> list[Path]:
    return sorted(f for p in SIZED for f in ([p] if p.is_file() else p.rglob("*.py")))


def _long_functions(path: Path, limit: int) -> Iterator[tuple[str, int]]:
    """(qualified name, lines) of every function or method in ``path`` longer than ``limit`` lines,
    nested ones included (a nested function counts in its own right as well as in its parent)."""
    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}" if prefix else child.name
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                if lines > limit:
                    yield name, lines
            yield from walk(child, name)
    yield from walk(ast.parse(path.read_text(), str(path)), "")


def test_long_function_finder_measures_nested_functions_and_methods(tmp_path: Path) -> None:
    path = tmp_path / "sized.py"
    path.write_text("def f():\n    def g():\n" + "        x = 1\n" * 5 + "    return g\n"
                    "class C:\n    def m(self):\n" + "        y = 2\n" * 4)
    assert dict(_long_functions(path, 4)) == {"f": 8, "f.g": 6, "C.m": 5}
    assert dict(_long_functions(path, 8)) == {}


def test_no_function_in_the_agent_the_actions_or_the_decisions_is_over_60_lines() -> None:
    long = [f"{f.relative_to(SRC)}::{name}: {n} lines" for f in _sized_files()
            for name, n in _long_functions(f, MAX_FUNCTION_LINES)
            if f"{f.relative_to(SRC)}::{name}" not in LONG_FUNCTIONS_PENDING]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(long)


def test_no_module_of_the_agent_is_over_300_lines() -> None:
    long = [f"{f.relative_to(SRC)}: {n} lines" for f in sorted((SRC / "standby" / "agent").rglob("*.py"))
            if (n := len(f.read_text().splitlines())) > MAX_AGENT_MODULE_LINES]
    assert not long, f"agent modules over {MAX_AGENT_MODULE_LINES} lines (move what is not theirs to its part):\n" \
        + "\n".join(long)


def _says_what_it_owns(path: Path) -> bool:
    doc = (ast.get_docstring(ast.parse(path.read_text(), str(path))) or "").lower()
    return "owns" in doc and "may not" in doc


def test_every_agent_module_says_what_it_owns_and_what_it_may_not_do() -> None:
    # A newcomer opens agent/ and reads, file by file, which part is where and what it must leave alone.
    silent = [str(f.relative_to(SRC)) for f in sorted((SRC / "standby" / "agent").rglob("*.py"))
              if not _says_what_it_owns(f)]
    assert not silent, "agent modules whose docstring does not say what they own and may not do:\n" + "\n".join(silent)
