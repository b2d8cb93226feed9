"""A promotion reserves the old primary's replication slot once, before PostgreSQL leaves recovery
(LocalDb.promote); a manual `standby promote` does not ensure it a second time after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.agent.localdb import LocalDb
from standby.model import DbState
from tests.unit.configs import example_with_secrets
from tests.unit.shell_fakes import FakePostgres, run, shell


class _Rows:
    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self._row = row

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._row


class FakeServer:
    """The statements LocalDb.promote sends, against a server with slots and a recovery flag."""

    closed = False

    def __init__(self) -> None:
        self.in_recovery = True
        self.slots: dict[str, bool] = {}  # name -> made while in recovery
        self.statements: list[str] = []

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> _Rows:
        self.statements.append(sql)
        if sql.startswith("SELECT 1 FROM pg_replication_slots"):
            return _Rows((1,) if params[0] in self.slots else None)
        if sql.startswith("SELECT pg_create_physical_replication_slot"):
            self.slots[params[0]] = self.in_recovery
        elif sql.startswith("SELECT pg_promote"):
            self.in_recovery = False
        elif sql.startswith("SELECT pg_is_in_recovery"):
            return _Rows((self.in_recovery,))
        return _Rows(None)


def test_the_slot_of_the_old_primary_exists_after_the_promotion_made_while_in_recovery(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    cfg = config.parse(raw)
    db = LocalDb(cfg, "beta")
    server = FakeServer()
    db._conn = server  # type: ignore[assignment]
    db.promote()
    assert not server.in_recovery
    assert server.slots == {cfg.slot_name("alpha"): True}


def test_a_manual_promotion_ensures_the_slot_once_in_the_promotion_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Promoting(FakePostgres):
        def promote(self) -> None:  # LocalDb.promote: the slot, then pg_promote
            calls.append("promote")
            super().promote()

        def ensure_peer_slot(self) -> None:
            calls.append("ensure_peer_slot")

    pg = Promoting(DbState.STANDBY)
    with shell(tmp_path, monkeypatch, pg) as sh:
        async def go() -> dict[str, Any]:
            await sh.start()
            await sh.tick(None)
            return await sh.agent.operator.operate("manual_promote")  # type: ignore[no-any-return]

        result = run(go())
    assert pg.db is DbState.PRIMARY and result["term"] >= 1
    assert calls == ["promote"], calls


def _with_follower(tmp_path: Path) -> config.Config:
    from tests.unit.test_followers_config import follower

    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("gamma", 21)]
    return config.parse(raw)


def test_a_dr_promotion_reserves_the_pair_nodes_slots_while_in_recovery(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`standby promote --node gamma` (cli/promote.py) makes them just before its pg_promote: made in
    recovery, each holds gamma's WAL from its last restartpoint, before the fork, for the rewind of the
    rebuilt site (`standby rejoin --from gamma`)."""
    from standby.cli import promote as promote_cli

    cfg = _with_follower(tmp_path)
    server = FakeServer()
    promote_cli._reserve_pair_slots(cfg, "gamma", server)  # type: ignore[arg-type]
    assert server.slots == {cfg.slot_name("alpha"): True, cfg.slot_name("beta"): True}
    assert any("pg_create_physical_replication_slot" in s for s in server.statements)
    assert "reserved" in capsys.readouterr().out
    promote_cli._reserve_pair_slots(cfg, "gamma", server)  # a second promotion attempt: nothing new, nothing said
    assert capsys.readouterr().out == ""


def test_a_dr_promotion_goes_on_when_a_slot_cannot_be_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    from standby.cli import promote as promote_cli

    class Full(FakeServer):
        def execute(self, sql: str, params: tuple[Any, ...] = ()) -> _Rows:
            if sql.startswith("SELECT pg_create_physical_replication_slot"):
                raise psycopg.errors.ConfigurationLimitExceeded("all replication slots are in use")
            return super().execute(sql, params)

    promote_cli._reserve_pair_slots(_with_follower(tmp_path), "gamma", Full())  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "warning" in out and "cloned rather than rewound" in out
