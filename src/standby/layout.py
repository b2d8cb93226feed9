"""Where a node's PostgreSQL keeps its files: a plain data directory, or a ``postgresql-common`` cluster.

A plain layout keeps everything in the data directory (``postgresql.conf``, ``pg_hba.conf``,
``postgresql.auto.conf``) and standby chooses the port and socket directory. A cluster
(``pg_createcluster 15 main``) keeps its configuration under ``/etc/postgresql/VERSION/NAME``: its
data directory, hba file, port and socket directory are what that ``postgresql.conf`` says, and
standby writes its settings into the cluster's ``conf.d`` so the distribution's files stay the
operator's. The resolution is done here, once; the rest of the code asks the ``Layout`` for paths.

Parsing is pure (text in, values out); ``read_cluster`` is the one place that reads the files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

ETC_ROOT = Path("/etc/postgresql")
SETTINGS_FILE = "standby.conf"  # in the cluster's conf.d: the settings standby manages
# postgresql-common's defaults for what a cluster's postgresql.conf leaves out.
DEFAULT_SOCKET_DIR = Path("/var/run/postgresql")
DEFAULT_PORT = 5432

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_VERSION = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3})?$")


@dataclass(frozen=True)
class ClusterRef:
    """A postgresql-common cluster, written ``VERSION/NAME`` as pg_lsclusters shows it."""

    version: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ClusterRef:
        version, sep, name = text.partition("/")
        if not sep or not _VERSION.match(version) or not _NAME.match(name):
            raise ValueError("expected VERSION/NAME as `pg_lsclusters` shows it, e.g. \"15/main\"")
        return cls(version, name)

    def __str__(self) -> str:
        return f"{self.version}/{self.name}"

    @property
    def unit(self) -> str:
        """The distribution's systemd unit for this cluster."""
        return f"postgresql@{self.version}-{self.name}.service"

    def config_dir(self, etc_root: Path = ETC_ROOT) -> Path:
        return etc_root / self.version / self.name

    @property
    def default_data_dir(self) -> Path:
        return Path("/var/lib/postgresql") / self.version / self.name

    @property
    def bin_dir(self) -> Path:
        return Path("/usr/lib/postgresql") / self.version / "bin"


class LayoutKind(StrEnum):
    PLAIN = "plain"  # everything in the data directory
    CLUSTER = "cluster"  # postgresql-common: configuration under /etc/postgresql/V/N


class LayoutError(Exception):
    """A cluster that cannot be used as configured; the message names the file or key and the fix."""


@dataclass(frozen=True)
class Layout:
    kind: LayoutKind
    data_dir: Path
    config_dir: Path  # what ``postgres -D`` is given so that it finds postgresql.conf
    hba_file: Path
    socket_dir: Path
    settings_file: Path  # where standby persists server settings
    # The cluster's own port (a cluster's port is its postgresql.conf's); None: standby sets it.
    port: int | None = None
    cluster: ClusterRef | None = None
    conf_file: Path | None = None  # the cluster's postgresql.conf

    @property
    def is_cluster(self) -> bool:
        return self.kind is LayoutKind.CLUSTER

    @property
    def auto_conf(self) -> Path:
        """ALTER SYSTEM's file, read after every other one (it overrides conf.d)."""
        return self.data_dir / "postgresql.auto.conf"


def plain(data_dir: Path, socket_dir: Path) -> Layout:
    return Layout(LayoutKind.PLAIN, data_dir, data_dir, data_dir / "pg_hba.conf", socket_dir,
                  data_dir / "postgresql.auto.conf")


_LINE = re.compile(r"""^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*('(?:[^'\\]|\\.|'')*'|[^\s#']*)""")


def parse_conf(text: str) -> list[tuple[str, str]]:
    """``name = value`` lines of a PostgreSQL configuration file, in order (the last one wins)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or not m.group(2):
            continue
        value = m.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1].replace("''", "'"))
        out.append((m.group(1).lower(), value))
    return out


def settings_of(*texts: str) -> dict[str, str]:
    """The values files read in this order leave in force (later files override earlier ones)."""
    return {k: v for text in texts for k, v in parse_conf(text) if k not in ("include", "include_dir",
                                                                              "include_if_exists")}


def include_dirs(conf_text: str, config_dir: Path) -> list[Path]:
    return [config_dir / v if not v.startswith("/") else Path(v)
            for k, v in parse_conf(conf_text) if k == "include_dir"]


def cluster_layout(ref: ClusterRef, conf_text: str, etc_root: Path = ETC_ROOT) -> Layout:
    """The layout a cluster's postgresql.conf describes (pure)."""
    cdir = ref.config_dir(etc_root)
    s = settings_of(conf_text)
    data = Path(s.get("data_directory") or ref.default_data_dir)
    # PostgreSQL's own default, with a config_file outside the data directory, is data/pg_hba.conf.
    hba = Path(s["hba_file"]) if s.get("hba_file") else data / "pg_hba.conf"
    sockets = [p.strip() for p in s.get("unix_socket_directories", "").split(",") if p.strip()]
    socket_dir = Path(sockets[0]) if sockets else DEFAULT_SOCKET_DIR
    try:
        port = int(s.get("port", DEFAULT_PORT))
    except ValueError:
        raise LayoutError(f"{cdir / 'postgresql.conf'}: port = {s['port']!r} is not a number; fix it there") from None
    confd = next((d for d in include_dirs(conf_text, cdir) if d == cdir / "conf.d"), cdir / "conf.d")
    return Layout(LayoutKind.CLUSTER, data, cdir, hba, socket_dir, confd / SETTINGS_FILE, port, ref,
                  cdir / "postgresql.conf")


def conf_d_included(conf_text: str, config_dir: Path) -> bool:
    """Does postgresql.conf read conf.d (where standby's settings go)?"""
    return config_dir / "conf.d" in include_dirs(conf_text, config_dir)


def missing_cluster(ref: ClusterRef, etc_root: Path) -> str:
    conf = ref.config_dir(etc_root) / "postgresql.conf"
    return (f"postgres.cluster: {ref} does not exist on this host (no {conf}); create it with "
            f"`pg_createcluster {ref.version} {ref.name}`, or name one `pg_lsclusters` lists")


_cache: dict[tuple[Path, int, int], Layout] = {}


def read_cluster(ref: ClusterRef, etc_root: Path | None = None) -> Layout:
    """The cluster's layout from its files; LayoutError if it does not exist."""
    etc_root = etc_root or ETC_ROOT  # read at call time: tests point it at a tree of their own
    conf = ref.config_dir(etc_root) / "postgresql.conf"
    try:
        st = os.stat(conf)
        key = (conf, st.st_mtime_ns, st.st_size)
        if key not in _cache:
            _cache[key] = cluster_layout(ref, conf.read_text(), etc_root)
        return _cache[key]
    except FileNotFoundError:
        raise LayoutError(missing_cluster(ref, etc_root)) from None
    except OSError as e:
        raise LayoutError(f"cannot read {conf}: {e.strerror}; run as root or as the cluster's owner") from None
