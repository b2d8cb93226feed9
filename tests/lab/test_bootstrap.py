"""Bootstrap, status and check on the lab: real namespaces, real PostgreSQL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from standby import config
from standby.lab import Lab

STANDBY = str(Path(sys.executable).with_name("standby"))


def sb(lab: Lab, node: str, *args: str, cfg: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `standby` command inside a node's namespace, as an operator would."""
    argv = [STANDBY, *args, "--config", str(cfg or lab.config_path), "--node", node]
    return lab.run(node, argv, check=False)


@pytest.fixture(scope="module")
def pair(lab: Lab) -> Lab:
    first = sb(lab, "alpha", "bootstrap", "--restart")
    assert first.returncode == 0, first.stderr
    second = sb(lab, "beta", "bootstrap")
    assert second.returncode == 0, second.stderr
    assert "streaming" in second.stdout
    return lab


def test_rows_written_on_primary_reach_standby(pair: Lab) -> None:
    with pair.pg_connect("alpha", autocommit=True) as p:
        p.execute("CREATE TABLE IF NOT EXISTS t_repl (id int primary key, note text)")
        p.execute("INSERT INTO t_repl SELECT g, 'call ' || g FROM generate_series(1, 500) g ON CONFLICT DO NOTHING")
    # In sync mode the commit returned only after beta had the WAL; replay is right behind.
    with pair.pg_connect("beta", autocommit=True) as s:
        for _ in range(100):
            n = s.execute("SELECT count(*) FROM t_repl").fetchone()[0] if s.execute(
                "SELECT to_regclass('t_repl')").fetchone()[0] else 0
            if n == 500:
                break
            s.execute("SELECT pg_sleep(0.05)")
        assert n == 500
        assert s.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True


def test_bootstrap_is_idempotent(pair: Lab) -> None:
    for node in ("alpha", "beta"):
        res = sb(pair, node, "bootstrap")
        assert res.returncode == 0, res.stderr
        assert "nothing to do" in res.stdout, res.stdout
        assert "[changed]" not in res.stdout


def test_replication_is_locked_to_the_peers_private_address(pair: Lab) -> None:
    with pair.pg_connect("alpha", autocommit=True) as p:
        rules = p.execute(
            "SELECT address FROM pg_hba_file_rules WHERE 'replication' = ANY(database) AND 'replicator' = ANY(user_name)"
        ).fetchall()
        verifier = p.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'").fetchone()[0]
    assert rules == [("198.51.100.12",)]
    assert verifier.startswith("SCRAM-SHA-256$")


def test_status_json_matches_postgres(pair: Lab) -> None:
    res = sb(pair, "beta", "status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    with pair.pg_connect("alpha", autocommit=True) as p:
        rep = p.execute("SELECT application_name, sync_state FROM pg_stat_replication").fetchall()
        lsn_after = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        tli = p.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
    with pair.pg_connect("beta", autocommit=True) as s:
        replay = s.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]
    assert doc["primary"] == "alpha"
    assert doc["nodes"]["alpha"]["role"] == "primary" and doc["nodes"]["beta"]["role"] == "standby"
    assert rep == [("beta", "sync")] and doc["nodes"]["beta"]["postgres"]["sync_state"] == "sync"
    assert doc["nodes"]["alpha"]["postgres"]["timeline"] == tli
    from standby.model import Lsn
    assert Lsn.parse(doc["nodes"]["alpha"]["postgres"]["current_lsn"]) <= Lsn.parse(lsn_after)
    assert doc["nodes"]["beta"]["postgres"]["replay_lsn"] is not None
    assert Lsn.parse(doc["nodes"]["beta"]["postgres"]["replay_lsn"]) <= Lsn.parse(replay)
    assert doc["nodes"]["alpha"]["service_ips"] == ["192.0.2.100"]
    assert doc["nodes"]["beta"]["service_ips"] == []
    # No agent runs in this module: status says so, and nothing else is wrong.
    assert doc["nodes"]["alpha"]["agent"] is None
    assert sorted(doc["warnings"]) == [f"{n}'s agent does not answer on its API: nothing decides for {n}"
                                       for n in ("alpha", "beta")]


def test_status_shouts_when_two_nodes_hold_the_service_ip(pair: Lab) -> None:
    pair.run("beta", ["ip", "addr", "add", "192.0.2.100/24", "dev", "pub0"])
    try:
        res = sb(pair, "alpha", "status", "--json")
        doc = json.loads(res.stdout)
        assert doc["service_ips"]["192.0.2.100"]["holders"] == ["alpha", "beta"]
        assert any("192.0.2.100" in w and "ALPHA AND BETA" in w for w in doc["warnings"])
        human = sb(pair, "alpha", "status")
        assert "WARNING: SERVICE IP 192.0.2.100 IS HELD BY ALPHA AND BETA" in human.stdout
    finally:
        pair.run("beta", ["ip", "addr", "del", "192.0.2.100/24", "dev", "pub0"])


def test_check_passes_on_a_healthy_pair(pair: Lab) -> None:
    res = sb(pair, "alpha", "check", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] and {c["verdict"] for c in doc["checks"]} == {"pass"}


def _variant(lab: Lab, tmp_path: Path, **node_pg: object) -> Path:
    """The lab's config with overrides in beta's [nodes.beta.postgres] table."""
    cfg = config.load(lab.config_path).model_dump(mode="json", exclude_none=True)
    cfg["nodes"]["beta"]["postgres"].update({k: str(v) for k, v in node_pg.items()})

    path = tmp_path / "variant.toml"
    path.write_text(tomli_w.dumps(cfg))
    config.load(path)
    return path


def test_mismatched_postgres_versions_refused(pair: Lab, tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in Path("/usr/lib/postgresql/15/bin").iterdir():
        (fake / tool.name).symlink_to(tool)
    (fake / "postgres").unlink()
    (fake / "postgres").write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 14.11'\n")
    (fake / "postgres").chmod(0o755)
    tmp_path.chmod(0o755)
    empty = tmp_path / "pgdata-new"
    cfg = _variant(pair, tmp_path, bin_dir=fake, data_dir=empty, socket_dir=tmp_path)
    res = sb(pair, "beta", "bootstrap", cfg=cfg)
    assert res.returncode == 1
    assert "major versions differ" in res.stderr and "14" in res.stderr and "15" in res.stderr
    assert not empty.exists()  # nothing was changed
    chk = sb(pair, "beta", "check", "--json", cfg=cfg)
    assert chk.returncode == 1
    verdicts = {c["check"]: c["verdict"] for c in json.loads(chk.stdout)["checks"]}
    assert verdicts["postgresql major version"] == "fail"


def test_data_directory_in_use_refused(pair: Lab, tmp_path: Path) -> None:
    # beta's real data directory, but a socket where its server does not listen.
    tmp_path.chmod(0o755)
    cfg = _variant(pair, tmp_path, socket_dir=tmp_path)
    before = sorted(p.name for p in Path(config.load(cfg).pg("beta").data_dir).iterdir())
    res = sb(pair, "beta", "bootstrap", "--replace-data", cfg=cfg)
    assert res.returncode == 1
    assert "in use by PID" in res.stderr
    assert sorted(p.name for p in Path(config.load(cfg).pg("beta").data_dir).iterdir()) == before


def test_existing_data_kept_unless_told(pair: Lab, tmp_path: Path) -> None:
    """A stopped data directory that is not a standby is never overwritten silently."""
    other = tmp_path / "pgdata"
    shutil.copytree(config.load(pair.config_path).pg("alpha").data_dir, other,
                    ignore=shutil.ignore_patterns("postmaster.pid"))
    shutil.chown(other, "postgres", "postgres")
    subprocess.run(["chown", "-R", "postgres:postgres", str(other)], check=True)
    tmp_path.chmod(0o755)
    (other / "standby.signal").unlink(missing_ok=True)
    cfg = _variant(pair, tmp_path, data_dir=other, socket_dir=tmp_path)
    res = sb(pair, "beta", "bootstrap", cfg=cfg)
    assert res.returncode == 1 and "--replace-data" in res.stderr
    assert (other / "PG_VERSION").exists()
    assert not list(tmp_path.glob("pgdata.replaced-*"))


def test_unreachable_peer_refused(lab: Lab, pair: Lab, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    empty = tmp_path / "pgdata-new"
    cfg = _variant(pair, tmp_path, data_dir=empty, socket_dir=tmp_path)
    lab.link("alpha", "private", False)
    lab.link("alpha", "public", False)
    try:
        res = sb(lab, "beta", "bootstrap", cfg=cfg)
    finally:
        lab.heal()
    assert res.returncode == 1
    assert "cannot reach PostgreSQL on alpha" in res.stderr
    assert not empty.exists()
