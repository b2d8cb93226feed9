"""Find a lab's secret values in its files: logs, histories, state, output kept on disk.

Data directories (they hold ``standby.pgpass``, a libpq password file, by
design) and the secrets directory itself are not searched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def _is_data_dir(d: Path) -> bool:
    return (d / "PG_VERSION").is_file()


def scan(root: Path, secrets: Mapping[str, str], skip: Iterable[Path] = ()) -> list[str]:
    """Every occurrence of a secret under ``root``, as ``path:line: <secret name>``, in file order."""
    needles = {name: value.encode() for name, value in secrets.items() if value}
    skipped = {p.resolve() for p in skip}
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if (here / d).resolve() not in skipped and not _is_data_dir(here / d))
        for fname in sorted(filenames):
            path = here / fname
            if path.is_symlink() or not path.is_file():
                continue  # sockets, pipes, links out of the lab
            try:
                data = path.read_bytes()
            except OSError:
                continue  # removed meanwhile
            for name, needle in needles.items():
                start = 0
                while (i := data.find(needle, start)) >= 0:
                    line = data.count(b"\n", 0, i) + 1
                    found.append(f"{path}:{line}: {name}")
                    start = i + len(needle)
    return found
