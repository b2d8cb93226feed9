"""What an interrupted rejoin remembers for the next one (chaos seed 103): the rejoin result's own document;
what a failed clone leaves (chaos seed 105)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.act import postgres as pgact
from standby.act import rejoin as rejoin_mod
from standby.act import rejoin as rj
from standby.act.rejoin import RejoinResult
from standby.act.rejoin_rewind import RewindRun
from standby.documents import RejoinMethod

from .configs import example_with_secrets


def _with_data_dir(tmp_path: Path) -> tuple[config.Config, Path]:
    """The example configuration with a data directory of its own that holds a PG_VERSION file."""
    raw, _ = example_with_secrets(tmp_path)
    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    raw["postgres"]["data_dir"] = str(data)
    return config.parse(raw), data

def test_what_a_rejoin_found_survives_until_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / rj.PENDING
    found = rj.RejoinResult(method=RejoinMethod.CLONE, fork_lsn="0/5000000", old_timeline=3,
                            salvage_report=Path("/s/report.json"), salvaged_rows=7, kept_aside=Path("/s/aside"))
    rj._remember(path, found)
    resumed = rj.RejoinResult()
    rj._resume(path, resumed)
    assert (resumed.method, resumed.fork_lsn, resumed.old_timeline, resumed.salvage_report, resumed.salvaged_rows,
            resumed.kept_aside) == (RejoinMethod.CLONE, "0/5000000", 3, Path("/s/report.json"), 7, Path("/s/aside"))


def test_an_unreadable_record_resumes_as_a_rewind_with_nothing_salvaged(tmp_path: Path) -> None:
    path = tmp_path / rj.PENDING
    for text in ("{broken", '{"method": "teleport"}', "[]"):
        path.write_text(text)
        resumed = rj.RejoinResult()
        rj._resume(path, resumed)
        assert resumed.method is RejoinMethod.REWIND and resumed.salvage_report is None
    path.unlink()
    resumed = rj.RejoinResult()
    rj._resume(path, resumed)
    assert resumed.method is RejoinMethod.REWIND


def test_chaos_seed_105_a_failed_clone_puts_the_old_directory_back(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Sync + degrade seed 105: pg_rewind was impossible, the old directory was set aside, the clone
    failed half-way, and every later `standby rejoin` refused ("beta has no data directory; use
    `standby bootstrap`"): the pair never had a standby again. A failed clone leaves the node as the
    rejoin found it, so the next rejoin starts over (salvage included); nothing is deleted."""
    cfg, data = _with_data_dir(tmp_path)

    @contextlib.contextmanager
    def passfile(*a: Any) -> Iterator[Path]:
        yield tmp_path / "pass"

    def clone_fails(cfg: Any, node: str, peer: str) -> None:
        data.mkdir(mode=0o700)  # pg_basebackup's target, emptied after its failure
        raise pgact.PostgresActionError("pg_basebackup from alpha failed: connection reset")

    monkeypatch.setattr(rejoin_mod.act, "passfile", passfile)
    failed = "pg_rewind: error: could not find previous WAL record"
    monkeypatch.setattr(rejoin_mod.rewind, "run", lambda *a, **kw: RewindRun(1, failed, ((0.1, failed),), 0.1))
    monkeypatch.setattr(rejoin_mod.act, "clone", clone_fails)
    result = RejoinResult(fork_lsn="0/5000000", old_timeline=3)
    with pytest.raises(pgact.PostgresActionError):
        rejoin_mod._rewind_or_clone(cfg, rj.Rejoining("beta", "alpha"), result, tmp_path / "pending.json", lambda s: None,
                                    looked_for_salvage=True)
    assert (data / "PG_VERSION").read_text() == "15\n"
    assert not list(tmp_path.glob("pgdata.before-rejoin-*")), "the old directory must be back in place"
    assert not (tmp_path / "pending.json").exists()


def test_i13_a_rewind_that_could_never_catch_up_is_not_run_the_rejoin_clones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new primary has removed the WAL from the last common checkpoint's redo on: a rewound directory
    would wait for it forever, and every later rejoin would resume it. The rejoin clones instead, the old
    directory kept aside for its salvage as in any clone fallback."""
    cfg, data = _with_data_dir(tmp_path)
    rewinds: list[Any] = []
    monkeypatch.setattr(rejoin_mod, "wal_gone_from_source", lambda *a: "000000010000000000000044")
    monkeypatch.setattr(rejoin_mod.rewind, "run", lambda *a, **kw: rewinds.append(a))
    monkeypatch.setattr(rejoin_mod.act, "clone", lambda cfg, node, peer: data.mkdir(mode=0o700))
    steps: list[str] = []
    result = RejoinResult(fork_lsn="0/46000000", old_timeline=1, salvage_report=tmp_path / "report.json")
    rejoin_mod._rewind_or_clone(cfg, rj.Rejoining("beta", "alpha"), result, tmp_path / "pending.json", steps.append,
                                looked_for_salvage=True)
    assert rewinds == []
    assert result.method is RejoinMethod.CLONE and result.kept_aside is not None
    assert (result.kept_aside / "PG_VERSION").read_text() == "15\n"  # the old directory, kept for its salvage
    assert "000000010000000000000044" in steps[0] and "clone" in steps[0]
    assert (tmp_path / "pending.json").exists()


def _standby_seen(monkeypatch: pytest.MonkeyPatch, status: str | None, upstream: str | None) -> None:
    from datetime import UTC, datetime

    from standby.model import PgRole
    from standby.observe.postgres import PgObservation

    monkeypatch.setattr(rj.obs, "observe_local", lambda cfg, node: PgObservation(
        node=node, role=PgRole.STANDBY, observed_at=datetime.now(UTC), receiver_status=status, upstream=upstream))

    def no_peer(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a rejoin with nothing to do touched the new primary")

    monkeypatch.setattr(rj.obs, "connect_peer", no_peer)


def test_roadback_race_a_standby_already_streaming_from_the_primary_is_nothing_to_rejoin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a CI run of the road back: beta's agent restarted its server as a standby that could follow the new
    timeline, and `standby rejoin --node beta`, run a moment later, failed ("already a standby"): a step of the road
    back that is already done must say so and succeed, changing nothing."""
    cfg, _ = _with_data_dir(tmp_path)
    _standby_seen(monkeypatch, "streaming", str(cfg.link("alpha").ip))
    said: list[str] = []
    result = rj.rejoin(cfg, rj.Rejoining.peer(cfg, "beta"), state_dir=tmp_path, report=said.append)
    assert result.method is RejoinMethod.NONE_NEEDED and result.fork_lsn is None
    assert any("already streams from alpha" in s for s in said), said


@pytest.mark.parametrize(("status", "upstream"), [("streaming", "203.0.113.99"), ("waiting", None), (None, None)])
def test_a_standby_not_streaming_from_the_primary_is_still_refused_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str | None, upstream: str | None) -> None:
    cfg, _ = _with_data_dir(tmp_path)
    _standby_seen(monkeypatch, status, upstream)
    with pytest.raises(rj.RejoinRefused, match="does not stream from alpha"):
        rj.rejoin(cfg, rj.Rejoining.peer(cfg, "beta"), state_dir=tmp_path)
