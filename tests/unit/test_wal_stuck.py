"""Finding (hung disk): a primary whose WAL disk completes no write answers the agent's question (read from
memory) while no commit finishes, so the rule for a server that answers nothing never fired and the database
never moved (tests/lab/test_failover.py::test_wal_disk_hung_on_primary_database_moves, failing first). The
watch over readings (standby.observe.walstuck) and the decision's rule, here against every schedule of
readings Hypothesis draws and either side of the bound; where a crashed server gets no hand-over, neither does
this one (tests/unit/test_unresponsive_server.py, NOT_SERVING)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from standby import config
from standby import status as status_mod
from standby.decide import decide
from standby.documents import AGENT_VIEW, PostgresView
from standby.model import ActionKind, DbState, LocalPg, Observation, Reason
from standby.observe import postgres as pgobs
from standby.observe.walstuck import WalWatch
from tests.unit.configs import example_with_secrets
from tests.unit.shell_fakes import INTERVAL_S, FakeKernel, FakePostgres, run, shell
from tests.unit.test_documents import view
from tests.unit.test_unresponsive_server import POLICY, SERVICE_IP, SERVING, _obs

def _pg(db: DbState, flush: int, waiting: bool) -> LocalPg:
    return LocalPg(db, lsn=flush, flush_lsn=flush if db is DbState.PRIMARY else None,
                   wal_waiting=waiting and db is DbState.PRIMARY)


# One reading: the server's role, its flush position, whether the flush is awaited, the time since the previous.
READING = st.tuples(st.sampled_from([DbState.PRIMARY, DbState.PRIMARY, DbState.STANDBY, DbState.DOWN]),
                    st.integers(0, 3), st.booleans(), st.floats(0.0, 5.0))


def _watched(readings: list[tuple[DbState, int, bool, float]]) -> tuple[WalWatch, float]:
    watch, t = WalWatch(), 0.0
    for db, flush, waiting, dt in readings:
        t += dt
        watch = watch.after(_pg(db, flush, waiting), t)
    return watch, t


# Stated without the watch's own bookkeeping, one property each (the watch is a fold; these pin the fold).
@given(readings=st.lists(READING, max_size=30))
def test_stuck_never_exceeds_the_time_the_readings_cover(readings: list[tuple[DbState, int, bool, float]]) -> None:
    watch, t = _watched(readings)
    assert 0.0 <= watch.stuck_s() <= t + 1e-9


@given(readings=st.lists(READING, max_size=30), reading=READING)
def test_a_reading_that_is_not_a_primary_awaiting_its_flush_ends_the_count(
        readings: list[tuple[DbState, int, bool, float]], reading: tuple[DbState, int, bool, float]) -> None:
    db, flush, waiting, dt = reading
    watch, t = _watched(readings)
    if db is not DbState.PRIMARY or not waiting:
        assert watch.after(_pg(db, flush, waiting), t + dt).stuck_s() == 0.0


@given(readings=st.lists(READING, min_size=1, max_size=30), dt=st.floats(0.0, 5.0), moved=st.integers(1, 5))
def test_the_same_flush_still_awaited_adds_the_time_between_and_a_moved_one_starts_at_zero(
        readings: list[tuple[DbState, int, bool, float]], dt: float, moved: int) -> None:
    watch, t = _watched(readings)
    db, flush, waiting, _ = readings[-1]
    if db is DbState.PRIMARY and waiting:
        same = watch.after(_pg(DbState.PRIMARY, flush, True), t + dt)
        assert abs(same.stuck_s() - (watch.stuck_s() + dt)) < 1e-9
    assert watch.after(_pg(DbState.PRIMARY, flush + moved, True), t + dt).stuck_s() == 0.0


def test_only_time_the_readings_cover_counts_not_the_time_since() -> None:
    """Adversarial read, finding 1: one awaited reading, then readings that were late or failed, counted as stuck
    all the time since; the watch counts from the first reading of the run to the latest, nothing after."""
    watch = WalWatch().after(_pg(DbState.PRIMARY, 7, True), 100.0)
    assert watch.stuck_s() == 0.0  # however long before the next reading arrives
    assert watch.after(_pg(DbState.PRIMARY, 7, True), 131.0).stuck_s() == 31.0


@given(flushes=st.lists(st.integers(0, 10**9), min_size=1, max_size=50))
def test_an_idle_primary_is_never_stuck_whatever_its_flush_position(flushes: list[int]) -> None:
    """Nothing awaits its flush: a record left in a partial page, flushed by no one, is no hang."""
    watch = WalWatch()
    for i, flush in enumerate(flushes):
        watch = watch.after(_pg(DbState.PRIMARY, flush, False), float(i))
        assert watch.stuck_s() == 0.0


def test_a_flush_that_moves_between_readings_is_a_working_disk() -> None:
    watch = WalWatch()
    for i in range(100):
        watch = watch.after(_pg(DbState.PRIMARY, i, True), i * 0.2)
        assert watch.stuck_s() == 0.0


def _stuck(stuck_s: float, silent_s: float = 0.0) -> Observation:
    return replace(_obs(silent_s), wal_stuck_s=stuck_s)


@given(stuck_s=st.floats(30.0, 3600.0))
def test_a_primary_whose_wal_stands_still_past_the_bound_hands_the_database_over(stuck_s: float) -> None:
    s, acts = decide(SERVING, _stuck(stuck_s), POLICY)
    assert [(a.kind, a.reason) for a in acts] == [(ActionKind.FENCE, Reason.WAL_FLUSH_STUCK_FAILOVER)]
    assert s.fenced and s.resumable and not s.was_primary


@given(stuck_s=st.floats(0.0, 29.99))
def test_a_slow_flush_below_the_bound_is_left_alone(stuck_s: float) -> None:
    s, acts = decide(SERVING, _stuck(stuck_s), POLICY)
    assert not s.fenced and not any(a.kind is ActionKind.FENCE for a in acts)


def test_a_server_silent_and_stuck_is_named_for_its_silence() -> None:
    """Both past the bound: the silence is what the agent saw last (its stuck reading is older)."""
    _, acts = decide(SERVING, _stuck(60.0, silent_s=60.0), POLICY)
    assert [a.reason for a in acts] == [Reason.PG_UNRESPONSIVE_FAILOVER]


class HungDisk(FakePostgres):
    """A primary whose readings go on answering after its WAL disk hangs: the flush position stands still
    and a commit waits on it; before, the flush moves with every reading."""

    def __init__(self) -> None:
        super().__init__(DbState.PRIMARY)
        self.hung = False

    def read(self):  # type: ignore[no-untyped-def]
        pg, names = super().read()
        if pg.db is not DbState.PRIMARY:
            return pg, names
        if not self.hung:
            self.lsn += 100
        return replace(pg, flush_lsn=self.lsn, wal_waiting=True), names


def test_the_agent_hands_over_a_primary_whose_wal_disk_hung_while_its_readings_are_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "example").mkdir()
    raw, _ = example_with_secrets(tmp_path / "example")
    timings = {**raw["timings"], "wal_flush_stuck_ms": 5000}
    pg = HungDisk()
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP}), extra={"timings": timings}) as sh:
        fenced_after: list[float] = []

        async def go() -> None:
            await sh.start()
            for _ in range(40):  # 6 s of a busy, working disk: the flush moves, nothing is stuck
                await sh.tick()
            assert not sh.agent.state.fenced
            pg.hung, hung_at = True, sh.clock.t
            for _ in range(80):
                await sh.tick()
                if sh.agent.state.fenced:
                    fenced_after.append(sh.clock.t - hung_at)
                    break
            for _ in range(20):  # the fence's stop runs on a thread of its own: let it
                if pg.fence_stops:
                    break
                await sh.tick()

        run(go())
        assert fenced_after and 5.0 <= fenced_after[0] <= 5.0 + 3 * INTERVAL_S, fenced_after
        decisions = [(e["action"], e["reason"]) for e in sh.events("decision")]
        assert ("fence", "wal_flush_stuck_failover") in decisions, decisions
        # No clean stop can finish on a hung disk: SIGKILL at once, not after the fast and immediate steps' 10 s.
        assert pg.fence_stops[:1] == [True], pg.fence_stops


@pytest.mark.parametrize("answer", [pgobs.Unanswered.TIMEOUT, pgobs.Unanswered.REFUSED,
                                    pgobs.Unanswered.TOO_MANY_CLIENTS])
def test_finding_1_readings_that_fail_after_an_awaited_one_do_not_count_as_stuck(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: pgobs.Unanswered) -> None:
    """Adversarial read, finding 1: a busy primary (its flush moving, awaited at every reading) whose agent then
    cannot read it (its statement timeout, a refusal, too many clients) was fenced as a hung disk after the
    bound: the count ran on from the last awaited reading. A reading that fails says nothing of the disk."""

    class BusyThenUnreadable(HungDisk):
        unreadable = False

        def read(self):  # type: ignore[no-untyped-def]
            return answer if self.unreadable else super().read()

    (tmp_path / "example").mkdir()
    raw, _ = example_with_secrets(tmp_path / "example")
    pg = BusyThenUnreadable()
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP}),
               extra={"timings": {**raw["timings"], "wal_flush_stuck_ms": 5000}}) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(10):
                await sh.tick()
            pg.unreadable = True
            for _ in range(60):  # 9 s of readings that fail
                await sh.tick()

        run(go())
        assert not sh.agent.state.fenced and not pg.fence_stops, pg.calls


def test_status_says_a_primary_whose_wal_stands_still(tmp_path: Path) -> None:
    """The operator's view at 3 a.m.: the agent's /status carries how long (postgres.wal_stuck_s, read as 0 from
    older agents), and `standby status` says it once past WAL_STUCK_WARN_S, with the bound it is handed over at."""
    raw, _ = example_with_secrets(tmp_path)
    cfg = config.parse(raw)

    def said_with(cfg: config.Config, stuck_s: float) -> list[str]:
        pg = PostgresView(DbState.PRIMARY, 1 << 33, False, True, "beta", wal_stuck_s=stuck_s)
        agents = {"alpha": replace(view(), node="alpha", peer="beta", postgres=pg)}
        warnings = status_mod._agent_warnings(cfg, status_mod.Observations("alpha", {}, (), agents=agents))
        return [w for w in warnings if "flushed no WAL" in w]

    def said(stuck_s: float) -> list[str]:
        return said_with(cfg, stuck_s)

    assert said(0.0) == [] and said(2.9) == []
    assert said(7.5) == ["alpha's PostgreSQL has flushed no WAL for 7.5 s while it waits for it (its disk hung?): "
                         "at timings.wal_flush_stuck_ms (30000 ms) its agent hands the database to the standby, if the "
                         "standby has every acknowledged commit (sync) or is within the lag bound (async)"]
    raw["timings"]["wal_flush_stuck_ms"] = 0
    assert "nothing moves the database by itself here" in said_with(config.parse(raw), 7.5)[0]
    older = {k: v for k, v in AGENT_VIEW.encode(replace(view(), postgres=PostgresView(
        DbState.PRIMARY, 1, False, True, None, wal_stuck_s=4.0))).items()}
    del older["postgres"]["wal_stuck_s"]
    assert AGENT_VIEW.decode(older).postgres.wal_stuck_s == 0.0
