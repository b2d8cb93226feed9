"""The distribution's PostgreSQL clusters (postgresql-common): configuration, layout, settings, launchers.

Each test builds its own /etc/postgresql tree in a temporary directory; nothing here touches the
host's clusters.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby import config, layout, preflight
from standby.act import bootstrap as boot
from standby.act import postgres as pgact
from standby.agent.policy import config_digest
from standby.model import Verdict
from tests.unit.configs import example_with_secrets

DEBIAN_CONF = """\
# a postgresql.conf as pg_createcluster writes it (trimmed)
data_directory = '{data}'		# use data in another directory
hba_file = '{etc}/pg_hba.conf'	# host-based authentication file
ident_file = '{etc}/pg_ident.conf'	# ident configuration file
port = {port}				# (change requires restart)
unix_socket_directories = '{sockets}'	# comma-separated list of directories
#listen_addresses = 'localhost'
cluster_name = '15/t1'
include_dir = 'conf.d'			# include files ending in '.conf' from
"""


def _cluster_tree(root: Path, name: str = "t1", port: int = 5433, sockets: str = "/run/t1-sock,/tmp",
                  data: Path | None = None) -> tuple[Path, Path]:
    """(etc root, data directory) of a cluster 15/NAME under ``root``."""
    etc_root = root / "etc" / "postgresql"
    cdir = etc_root / "15" / name
    (cdir / "conf.d").mkdir(parents=True)
    data = data or root / "data" / name
    (cdir / "postgresql.conf").write_text(DEBIAN_CONF.format(data=data, etc=cdir, port=port, sockets=sockets))
    for f in ("pg_hba.conf", "pg_ident.conf", "start.conf", "pg_ctl.conf", "environment"):
        (cdir / f).write_text(f"# the distribution's {f}\n")
    return etc_root, data


def _raw_with_cluster(tmp: Path, cluster: str = "15/t1") -> dict[str, Any]:
    raw, _ = example_with_secrets(tmp)
    for key in ("data_dir", "socket_dir", "bin_dir"):
        raw["postgres"].pop(key, None)
    raw["postgres"]["cluster"] = cluster
    return raw


# -- step 1: configuration and layout --------------------------------------------------------------


def test_cluster_layout_reads_the_clusters_own_files(tmp_path: Path) -> None:
    etc_root, data = _cluster_tree(tmp_path)
    lay = layout.read_cluster(layout.ClusterRef.parse("15/t1"), etc_root)
    cdir = etc_root / "15" / "t1"
    assert lay.is_cluster and lay.cluster == layout.ClusterRef("15", "t1")
    assert lay.data_dir == data
    assert lay.config_dir == cdir and lay.conf_file == cdir / "postgresql.conf"
    assert lay.hba_file == cdir / "pg_hba.conf"
    assert lay.port == 5433
    assert lay.socket_dir == Path("/run/t1-sock")  # the first of the list: where the clients look
    assert lay.settings_file == cdir / "conf.d" / "standby.conf"
    assert lay.auto_conf == data / "postgresql.auto.conf"
    assert lay.cluster.unit == "postgresql@15-t1.service"


def test_cluster_layout_falls_back_to_postgresql_commons_defaults() -> None:
    lay = layout.cluster_layout(layout.ClusterRef("15", "bare"), "include_dir = 'conf.d'\n", Path("/e"))
    assert lay.data_dir == Path("/var/lib/postgresql/15/bare")
    assert lay.hba_file == lay.data_dir / "pg_hba.conf"  # PostgreSQL's own default beside the data
    assert (lay.port, lay.socket_dir) == (5432, Path("/var/run/postgresql"))


def test_parse_conf_reads_quotes_comments_and_the_last_value() -> None:
    text = ("port = 5432\n#port = 1\nport=5434 # later wins\nlisten_addresses = 'a, b'  # two\n"
            "ssl_key_file = 'it''s'\nwal_log_hints on\n   \n")
    assert layout.settings_of(text) == {"port": "5434", "listen_addresses": "a, b", "ssl_key_file": "it's",
                                        "wal_log_hints": "on"}


@pytest.mark.parametrize("bad", ["main", "15/", "/main", "15/ma in", "fifteen/main", "15/main/x"])
def test_config_cluster_must_be_version_slash_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(_raw_with_cluster(tmp_path, bad))
    assert "postgres.cluster" in str(e.value) and "15/main" in str(e.value)


def test_config_cluster_and_data_dir_are_exclusive(tmp_path: Path) -> None:
    raw = _raw_with_cluster(tmp_path)
    raw["postgres"]["data_dir"] = "/srv/pg"
    with pytest.raises(config.ConfigError) as e:
        config.parse(raw)
    msg = str(e.value)
    assert "postgres.data_dir and postgres.cluster" in msg and "remove postgres.data_dir" in msg
    raw = _raw_with_cluster(tmp_path)
    raw["nodes"]["beta"]["postgres"] = {"data_dir": "/srv/pg"}
    with pytest.raises(config.ConfigError) as e:
        config.parse(raw)
    assert "nodes.beta.postgres.data_dir and postgres.cluster" in str(e.value)


def test_config_without_a_cluster_keeps_its_digest(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    plain = config.parse(raw)
    dumped = plain.model_dump(mode="json")
    # The key is absent, as in versions before it: a peer running one computes the same digest.
    assert "cluster" not in dumped["postgres"]
    assert all("cluster" not in n["postgres"] for n in dumped["nodes"].values())
    clustered = config.parse(_raw_with_cluster(tmp_path))
    assert clustered.model_dump(mode="json")["postgres"]["cluster"] == "15/t1"
    assert config_digest(clustered) != config_digest(plain)


@pytest.fixture
def etc_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    etc_root, data = _cluster_tree(tmp_path)
    _cluster_tree(tmp_path, "t2", port=5432, sockets="/run/t2-sock")
    monkeypatch.setattr(layout, "ETC_ROOT", etc_root)
    return etc_root, data


def test_config_takes_a_clusters_paths_from_its_files(tmp_path: Path, etc_tree: tuple[Path, Path]) -> None:
    _, data = etc_tree
    raw = _raw_with_cluster(tmp_path)
    raw["nodes"]["beta"]["postgres"] = {"cluster": "15/t2"}  # two clusters on one host: one per node
    cfg = config.parse(raw)
    a, b = cfg.pg("alpha"), cfg.pg("beta")
    assert (a.data_dir, a.socket_dir, a.bin_dir) == (data, Path("/run/t1-sock"), Path("/usr/lib/postgresql/15/bin"))
    assert (b.data_dir, b.socket_dir) == (tmp_path / "data" / "t2", Path("/run/t2-sock"))
    assert cfg.layout("beta").cluster == layout.ClusterRef("15", "t2")
    plain = config.parse(example_with_secrets(tmp_path)[0])
    assert not plain.layout("alpha").is_cluster
    assert plain.layout("alpha").hba_file == plain.pg("alpha").data_dir / "pg_hba.conf"


def test_a_missing_cluster_is_refused_naming_the_fix_and_nothing_changes(
        tmp_path: Path, etc_tree: tuple[Path, Path]) -> None:
    cfg = config.parse(_raw_with_cluster(tmp_path, "15/nope"))
    with pytest.raises(layout.LayoutError) as e:
        cfg.layout("alpha")
    assert "postgres.cluster: 15/nope does not exist" in str(e.value)
    assert "pg_createcluster 15 nope" in str(e.value)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(pgact.PostgresActionError, match="pg_createcluster 15 nope"):
        boot.bootstrap(cfg, "alpha")
    with pytest.raises(pgact.PostgresActionError, match="pg_createcluster 15 nope"):
        pgact.start(cfg, "alpha")
    assert sorted(p for p in tmp_path.rglob("*")) == before


# -- step 2: launchers, settings, hba, clone --------------------------------------------------------


def test_cluster_launchers_are_the_distributions(tmp_path: Path, etc_tree: tuple[Path, Path]) -> None:
    no_systemd, systemd = pgact.HostFacts(False, None), pgact.HostFacts(True, "/usr/bin/systemd-run")
    assert pgact.choose_launcher(no_systemd, cluster=True)[0] is pgact.Launcher.PG_CTLCLUSTER
    assert pgact.choose_launcher(systemd, cluster=True)[0] is pgact.Launcher.CLUSTER_UNIT
    cfg = config.parse(_raw_with_cluster(tmp_path))
    argv = pgact.start_argv(cfg, "alpha", pgact.Launcher.PG_CTLCLUSTER, 60)
    assert argv[:4] == ["pg_ctlcluster", "15", "t1", "start"]
    assert pgact.start_argv(cfg, "alpha", pgact.Launcher.CLUSTER_UNIT, 60) == [
        "systemctl", "start", "postgresql@15-t1.service"]
    lay = cfg.layout("alpha")
    assert pgact.stop_argv(lay, systemd, pgact.StopMode.FAST, 60) == ["systemctl", "stop", "postgresql@15-t1.service"]
    # An immediate stop (a fence) cannot go through the unit, which stops fast.
    for facts in (systemd, no_systemd):
        argv = pgact.stop_argv(lay, facts, pgact.StopMode.IMMEDIATE, 60)
        assert argv[0] == "pg_ctlcluster" and argv[argv.index("-m") + 1] == "immediate"
        assert "--skip-systemctl-redirect" in argv and argv[argv.index("stop") - 2:argv.index("stop")] == ["15", "t1"]


def test_primary_settings_leave_a_clusters_port_and_socket_to_its_files(
        tmp_path: Path, etc_tree: tuple[Path, Path]) -> None:
    cluster = pgact.primary_settings(config.parse(_raw_with_cluster(tmp_path)), "alpha", has_checksums=False)
    assert "port" not in cluster and "unix_socket_directories" not in cluster
    assert cluster["wal_log_hints"] == "on" and cluster["wal_level"] == "replica"
    plain = pgact.primary_settings(config.parse(example_with_secrets(tmp_path)[0]), "alpha", has_checksums=False)
    assert plain["port"] == "5432"


@pytest.fixture
def pg_owned_tree() -> Iterator[Path]:
    """A directory the postgres account owns (the cluster's files are that account's), cleaned up."""
    if os.geteuid() != 0:
        pytest.skip("needs root (files of the postgres account)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres account (apt-get install postgresql-15)")
    base = Path(tempfile.mkdtemp(prefix="standby-cluster-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _chown_tree(root: Path, user: str = "postgres") -> None:
    for p in [root, *root.rglob("*")]:
        shutil.chown(p, user, user)


@pytest.fixture
def pg_cluster(pg_owned_tree: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(etc root, data directory) of cluster 15/t1, all the postgres account's, as the host's /etc/postgresql."""
    etc_root, data = _cluster_tree(pg_owned_tree)
    data.mkdir(parents=True, mode=0o700)
    _chown_tree(pg_owned_tree)
    monkeypatch.setattr(layout, "ETC_ROOT", etc_root)
    return etc_root, data


def test_a_clusters_standby_settings_go_to_conf_d_and_its_hba_file(
        tmp_path: Path, pg_cluster: tuple[Path, Path]) -> None:
    etc_root, data = pg_cluster
    # What a clone of the primary brings along in ALTER SYSTEM's file.
    (data / "postgresql.auto.conf").write_text("work_mem = '8MB'\nsynchronous_standby_names = '\"beta\"'\n")
    _chown_tree(data)
    cdir = etc_root / "15" / "t1"
    untouched = {p: p.read_bytes() for p in cdir.iterdir() if p.is_file() and p.name != "pg_hba.conf"}
    cfg = config.parse(_raw_with_cluster(tmp_path))

    pgact.configure_as_standby(cfg, "alpha", "beta")

    ours = layout.settings_of((cdir / "conf.d" / "standby.conf").read_text())
    assert ours["primary_slot_name"] == cfg.slot_name("alpha") and "primary_conninfo" in ours
    assert ours["synchronous_standby_names"] == "" and "port" not in ours
    auto = layout.settings_of((data / "postgresql.auto.conf").read_text())
    assert auto == {"work_mem": "8MB"}  # the cloned value that would override conf.d is gone
    assert pgact.HBA_BEGIN in (cdir / "pg_hba.conf").read_text()
    assert "the distribution's pg_hba.conf" in (cdir / "pg_hba.conf").read_text()
    assert not (data / "pg_hba.conf").exists() and not (data / "postgresql.conf").exists()
    assert (data / "standby.signal").exists()
    assert {p: p.read_bytes() for p in untouched} == untouched
    assert (cdir / "conf.d" / "standby.conf").stat().st_uid == pwd.getpwnam("postgres").pw_uid
    # Run again (a rejoin after a rejoin): the same file, merged, not doubled.
    pgact.configure_as_standby(cfg, "alpha", "beta")
    lines = (cdir / "conf.d" / "standby.conf").read_text().splitlines()
    assert sum(ln.startswith("primary_conninfo") for ln in lines) == 1


# -- step 3: `standby check` explains a cluster that is not set up -----------------------------------


def _items(cfg: config.Config, seen: preflight.ClusterSeen) -> dict[str, tuple[Verdict, str]]:
    return {i.name: (i.verdict, i.reason) for i in preflight.cluster_items(cfg, "alpha", seen, None)}


def test_check_explains_a_missing_cluster(tmp_path: Path, etc_tree: tuple[Path, Path]) -> None:
    cfg = config.parse(_raw_with_cluster(tmp_path, "15/nope"))
    seen = preflight.gather_cluster(cfg, "alpha")
    assert seen is not None
    verdict, reason = _items(cfg, seen)["cluster"]
    assert verdict is Verdict.FAIL and "pg_createcluster 15 nope" in reason
    assert preflight.gather_cluster(config.parse(example_with_secrets(tmp_path)[0]), "alpha") is None


def test_check_explains_port_listen_addresses_rewind_and_owner(
        tmp_path: Path, etc_tree: tuple[Path, Path]) -> None:
    etc_root, data = etc_tree
    data.mkdir(parents=True)  # root's, not the postgres account's
    cfg = config.parse(_raw_with_cluster(tmp_path))
    seen = preflight.gather_cluster(cfg, "alpha")
    assert seen is not None and seen.missing is None
    items = _items(cfg, seen)
    conf = str(etc_root / "15" / "t1" / "postgresql.conf")
    verdict, reason = items["cluster port"]  # the tree says 5433; the configuration 5432
    assert verdict is Verdict.FAIL and "port = 5433" in reason and conf in reason and "postgres.port = 5432" in reason
    verdict, reason = items["cluster listen_addresses"]  # commented out: PostgreSQL's 'localhost'
    ip = str(cfg.nodes["alpha"].private.ip)
    assert verdict is Verdict.FAIL and "'localhost'" in reason and ip in reason and "listen_addresses = '*'" in reason
    verdict, reason = items["cluster rewind"]
    assert verdict is not Verdict.PASS and "wal_log_hints" in reason and conf in reason
    verdict, reason = items["cluster ownership"]
    assert verdict is Verdict.FAIL and str(data) in reason and "chown -R postgres:" in reason

    # Set up as standby needs it (conf.d is read after postgresql.conf): every check passes.
    (etc_root / "15" / "t1" / "conf.d" / "standby.conf").write_text(
        "port = 5432\nlisten_addresses = '*'\nwal_log_hints = on\n")
    shutil.chown(data, "postgres", "postgres")
    shutil.chown(etc_root / "15" / "t1", "postgres", "postgres")
    items = _items(cfg, preflight.gather_cluster(cfg, "alpha"))  # type: ignore[arg-type]
    assert {n: v for n, (v, _) in items.items()} == {
        "cluster": Verdict.PASS, "cluster port": Verdict.PASS, "cluster listen_addresses": Verdict.PASS,
        "cluster rewind": Verdict.PASS}


def test_check_explains_a_cluster_that_no_longer_reads_conf_d(tmp_path: Path, etc_tree: tuple[Path, Path]) -> None:
    etc_root, _ = etc_tree
    conf = etc_root / "15" / "t1" / "postgresql.conf"
    conf.write_text(conf.read_text().replace("include_dir = 'conf.d'", "#include_dir = 'conf.d'"))
    cfg = config.parse(_raw_with_cluster(tmp_path))
    verdict, reason = _items(cfg, preflight.gather_cluster(cfg, "alpha"))["cluster conf.d"]  # type: ignore[arg-type]
    assert verdict is Verdict.FAIL and str(conf) in reason and "include_dir = 'conf.d'" in reason


# -- step 4: the lab's cluster layout (its pure part; tests/lab/test_cluster_layout.py runs it) -----


def test_lab_cluster_layout_names_a_cluster_per_node_and_configures_it(tmp_path: Path) -> None:
    from standby.lab import configfile
    from standby.lab.topology import LabSpec, cluster_for

    spec = LabSpec("sbx1", base=tmp_path, pg_layout="cluster")
    assert [n.cluster for n in spec.nodes()] == ["15/sbx1-alpha", "15/sbx1-beta"]
    # Named after the lab: the host's own clusters (15/main) are never a lab's.
    assert all(cluster_for(name, n) != "15/main" for name in ("main", "m", "sblab") for n in ("alpha", "beta"))
    assert all(n.cluster is None for n in LabSpec("sbx1", base=tmp_path).nodes())
    with pytest.raises(ValueError, match="pg_layout"):
        LabSpec("sbx1", pg_layout="debian")
    for f in ("replication.password", "heartbeat.key", "api.token"):
        spec.secret(f).parent.mkdir(parents=True, exist_ok=True)
        spec.secret(f).write_text("x\n")
    cfg = config.parse(tomllib.loads(configfile.render(spec)))
    assert cfg.pg("beta").cluster == "15/sbx1-beta"
    assert cfg.nodes["alpha"].postgres.data_dir is None and cfg.nodes["alpha"].postgres.socket_dir is None


def test_a_cluster_of_another_account_is_refused_naming_the_fix_and_nothing_changes(
        tmp_path: Path, pg_cluster: tuple[Path, Path]) -> None:
    etc_root, data = pg_cluster
    (data / "PG_VERSION").write_text("15\n")
    shutil.chown(data, "root", "root")  # e.g. restored from a backup as root
    cfg = config.parse(_raw_with_cluster(tmp_path))
    tree = etc_root.parent.parent
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*")}
    with pytest.raises(pgact.PostgresActionError) as e:
        boot.bootstrap(cfg, "alpha")
    assert f"{data} (data_directory of cluster 15/t1) does not belong to postgres" in str(e.value)
    assert f"chown -R postgres: {data}" in str(e.value)
    assert {p: p.stat().st_mtime_ns for p in tree.rglob("*")} == before


def test_a_clusters_server_log_is_where_pg_ctlcluster_writes_it(tmp_path: Path, etc_tree: tuple[Path, Path]) -> None:
    etc_root, _ = etc_tree
    cfg = config.parse(_raw_with_cluster(tmp_path))
    assert pgact.log_path(cfg, "alpha") == Path("/var/log/postgresql/postgresql-15-t1.log")
    (etc_root / "15" / "t1" / "log").symlink_to(tmp_path / "t1.log")  # pg_createcluster -l
    assert pgact.log_path(cfg, "alpha") == tmp_path / "t1.log"
