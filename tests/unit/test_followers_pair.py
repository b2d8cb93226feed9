"""Issue 12, the pair serving its followers: replication allowed from their private addresses, a slot
for each on both pair nodes, and synchronous_standby_names from topology.sync_plan (the hot standby alone
unless a quorum is asked for, which then says "quorum" in status, never plain "sync")."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.act import postgres as pgact
from standby.model import DbState, PgRole, SyncState
from standby.observe.postgres import ReplicaInfo
from standby.status import IpHolders, Observations, assemble
from tests.unit.shell_fakes import FakeKernel, FakePostgres, Shell, run, shell
from tests.unit.test_followers_config import follower
from tests.unit.test_status_rules import primary, standby

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"


def with_followers(base: dict[str, Any], quorum: int = 0) -> config.Config:
    d = {**base, "followers": [follower("dr", 21), follower("dr2", 22, upstream="dr"),
                               follower("reports", 31, role="reporting")]}
    d["replication"] = {**d["replication"], "quorum": quorum}
    return config.parse(d)


def example(quorum: int = 0) -> config.Config:
    return with_followers(tomllib.loads(EXAMPLE.read_text()), quorum)


def test_i12_followers_may_replicate_from_their_private_address_only() -> None:
    cfg = example()
    rules = [ln.split() for ln in pgact.hba_block(cfg, "alpha") if not ln.startswith("#")]
    for ip in ("10.9.0.21/32", "10.9.0.22/32", "10.9.0.31/32"):
        # Replication, and the server's own database for pg_rewind (a rejoin); never the application's.
        assert [r[1] for r in rules if r[3] == ip] == ["replication", cfg.pg("alpha").database]
        assert cfg.salvage.database not in [r[1] for r in rules if r[3] == ip]
    assert all(r[3] != "203.0.113.21/32" for r in rules)  # never the public address
    assert len(pgact.hba_block(config.load(EXAMPLE), "alpha")) == len(pgact.hba_block(cfg, "alpha")) - 6


def test_i12_a_followers_pg_hba_lets_the_other_followers_stream_and_the_pair_nodes_be_rebuilt_from_it() -> None:
    cfg = example()
    rules = [ln.split() for ln in pgact.hba_block(cfg, "dr") if not ln.startswith("#")]
    pair = [str(cfg.nodes[n].private.ip) + "/32" for n in sorted(cfg.nodes)]
    # The pair's nodes: replication, the server's own database (pg_rewind) and the salvage's (rows compared).
    rebuilt = [(db, ip) for ip in pair for db in ("replication", cfg.pg("dr").database, cfg.salvage.database)]
    assert sorted((r[1], r[3]) for r in rules) == sorted(
        [("replication", "10.9.0.22/32"), ("replication", "10.9.0.31/32"), *dict.fromkeys(rebuilt)])
    assert all(r[3] not in ("203.0.113.21/32",) for r in rules)  # never a public address


def test_i12_a_follower_rejoins_only_a_pair_node_and_a_pair_node_is_never_rejoined_as_a_follower() -> None:
    from standby.act import rejoin as rj

    cfg = example()
    ok = rj.Rejoining.follower(cfg, "dr", "beta", lambda: None)
    assert (ok.node, ok.source) == ("dr", "beta")
    with pytest.raises(rj.RejoinRefused, match="not a follower"):
        rj.Rejoining.follower(cfg, "alpha", "beta", lambda: None)
    with pytest.raises(rj.RejoinRefused, match="not a node of the hot pair"):
        rj.Rejoining.follower(cfg, "dr2", "dr", lambda: None)


def test_i12_each_pair_node_keeps_a_slot_per_follower_and_a_follower_one_per_cascade() -> None:
    cfg = example()
    assert pgact.follower_slots(cfg, "alpha") == ["standby_dr", "standby_dr2", "standby_reports"]
    assert pgact.follower_slots(cfg, "beta") == ["standby_dr", "standby_dr2", "standby_reports"]
    assert pgact.follower_slots(cfg, "dr") == ["standby_dr2"]
    assert pgact.follower_slots(config.load(EXAMPLE), "alpha") == []


def test_i12_sync_names_are_the_hot_standby_alone_unless_a_quorum_is_asked_for() -> None:
    assert pgact.sync_names(config.load(EXAMPLE), "beta") == pgact.sync_value("beta")
    assert pgact.sync_names(example(), "beta") == '"beta"'
    # Quorum members: the hot standby and the warm followers streaming from the primary (not dr2, not reports).
    assert pgact.sync_names(example(quorum=2), "beta") == 'ANY 2 ("beta", "dr")'
    assert pgact.sync_names(example(quorum=2), "alpha") == 'ANY 2 ("alpha", "dr")'


def _with(sh: Shell, quorum: int) -> None:
    """The shell's agent restarted on the same files with followers (and a quorum) configured."""
    sh.cfg = with_followers(sh.cfg.model_dump(mode="json"), quorum)
    sh.restart()


@pytest.mark.parametrize("quorum, want", [(0, '"beta"'), (2, 'ANY 2 ("beta", "dr")')])
def test_i12_the_primarys_agent_sets_the_plans_names_and_the_follower_slots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quorum: int, want: str) -> None:
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({"192.0.2.100"})) as sh:
        _with(sh, quorum)

        async def go() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()

        run(go())
        assert pg.sync_names[-1:] == ([want] if quorum else [])  # the fake already has '"beta"'
        assert pg.follower_slot_calls > 0 and set(pg.follower_slot_roles) == {True}  # released as the primary


def test_i12_the_standbys_agent_keeps_the_follower_slots_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots are not replicated: a standby promoted by a failover must have them already."""
    pg = FakePostgres(DbState.STANDBY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel()) as sh:
        _with(sh, 0)

        async def go() -> None:
            await sh.start()
            for _ in range(3):
                await sh.tick()

        run(go())
        assert pg.follower_slot_calls > 0 and pg.sync_names == []
        assert set(pg.follower_slot_roles) == {False}  # idle slots released as the standby's


def _quorum_pair(sync: SyncState) -> Observations:
    p = primary(sync=sync)
    dr = ReplicaInfo("dr", "10.9.0.21", "streaming", sync, p.current_lsn, p.current_lsn, p.current_lsn, 0.01)
    p = p.__class__(**{**p.__dict__, "replicas": (*p.replicas, dr)})
    return Observations("alpha", {"alpha": p, "beta": standby()}, (IpHolders("192.0.2.100", ("alpha",), True),))


def test_i12_status_says_quorum_and_expects_it_when_a_quorum_is_asked_for() -> None:
    doc = assemble(example(quorum=2), _quorum_pair(SyncState.QUORUM))
    assert doc.nodes["beta"].postgres.sync_state is SyncState.QUORUM
    assert not [w for w in doc.warnings if "durability" in w or "protected" in w]
    # Without a quorum configured, a standby in "quorum" is not what was asked for: said.
    doc = assemble(example(quorum=0), _quorum_pair(SyncState.QUORUM))
    assert any("durability is sync but beta is quorum, not sync" in w for w in doc.warnings)
    doc = assemble(example(quorum=2), _quorum_pair(SyncState.SYNC))
    assert any("with a quorum but beta is sync, not quorum" in w for w in doc.warnings)
    assert doc.nodes["alpha"].role is PgRole.PRIMARY
