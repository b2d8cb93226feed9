"""Issue 12 against real PostgreSQL 15 servers on loopback addresses (no namespaces): the follower agent's
own reading, its replication-protocol questions to the pair's servers, and its re-pointing after a failover
of the pair, which must go on without a clone. The pair's agents are not run: their views are given."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from standby import config
from standby.act import postgres as pgact
from standby.agent import followerobs
from standby.agent.follower import FollowerAgent
from standby.agent.followeract import LocalFollowerDb
from standby.agent.followerobs import ANSWER_TIMEOUT_S, Watcher, identify, identify_on
from standby.agent.localdb import read_local
from standby.follow import FollowerActionKind, FollowerPg, PairView
from standby.model import DbState
from standby.observe import postgres as pgobs
from tests.lab.test_workload import wait_for
from tests.unit.configs import example_with_secrets
from tests.unit.test_followers_agent import FakeViews

BIN = Path("/usr/lib/postgresql/15/bin")
PRIVATE = {"alpha": "127.0.2.11", "beta": "127.0.2.12", "dr": "127.0.3.21"}
pytestmark = pytest.mark.skipif(not (BIN / "postgres").exists(), reason="PostgreSQL 15 is not installed")


class NoAlerts:
    def notify(self, alert: object) -> None:
        raise AssertionError(f"no alert expected: {alert}")

    def resolve(self, key: str, note: str = "") -> None:
        pass


def _cfg(tmp: Path, base: Path, quorum: int = 0) -> config.Config:
    raw, _ = example_with_secrets(tmp)
    raw["replication"] = {**raw["replication"], "quorum": quorum}
    raw.pop("reporting", None)
    for n, last in (("alpha", 11), ("beta", 12)):
        raw["nodes"][n] = {"public": {"address": f"127.0.1.{last}/24", "interface": "lo"},
                           "private": {"address": f"{PRIVATE[n]}/24", "interface": "lo"},
                           "postgres": {"data_dir": str(base / n), "socket_dir": str(base / f"{n}.sock")}}
    raw["service_ips"] = [{"address": "127.0.1.100/24", "interface": "lo"}]
    raw["postgres"] = {**raw["postgres"], "data_dir": str(base / "dr"), "socket_dir": str(base / "dr.sock"),
                       "bin_dir": str(BIN), "port": 5432}
    raw["followers"] = [{"name": "dr", "role": "warm", "upstream": "primary",
                         "public": {"address": "127.0.4.21/24", "interface": "lo"},
                         "private": {"address": f"{PRIVATE['dr']}/24", "interface": "lo"}}]
    return config.parse(raw)


def _run(argv: list[str]) -> None:
    res = pgact.run_as("postgres", argv, timeout=120)
    assert res.returncode == 0, f"{argv}: {res.stderr or res.stdout}"


def _settings(base: Path, name: str) -> str:
    return (f"listen_addresses = '{PRIVATE[name]}'\nport = 5432\nunix_socket_directories = '{base / (name + '.sock')}'\n"
            "wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nhot_standby = on\n"
            "wal_keep_size = '256MB'\nlogging_collector = off\n")


def _start(base: Path, name: str) -> None:
    (base / f"{name}.sock").mkdir(exist_ok=True)
    shutil.chown(base / f"{name}.sock", "postgres", "postgres")
    _run([str(BIN / "pg_ctl"), "-D", str(base / name), "-l", str(base / f"{name}.log"), "-w", "start"])


def _clone(base: Path, source: str, name: str, slot: str | None) -> None:
    _run([str(BIN / "pg_basebackup"), "-h", PRIVATE[source], "-p", "5432", "-U", "replicator", "-D", str(base / name),
          "-R", "-X", "stream", "--checkpoint=fast", *(["-S", slot] if slot else [])])
    with (base / name / "postgresql.auto.conf").open("a") as f:
        # Its node name as application_name, as the agents' conninfo gives it (synchronous_standby_names names it).
        f.write(_settings(base, name) + f"primary_conninfo = 'host={PRIVATE[source]} port=5432 user=replicator "
                f"application_name={name}'\n")


def _sql(base: Path, name: str, query: str) -> Any:
    with psycopg.connect(host=str(base / f"{name}.sock"), port=5432, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        cur = conn.execute(query)
        row = cur.fetchone() if cur.description else None
        return None if row is None else row[0]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[config.Config, Path]]:
    base = Path(tempfile.mkdtemp(prefix="standby-followers-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres", "postgres")
    try:
        _run([str(BIN / "initdb"), "-D", str(base / "alpha"), "-U", "postgres", "--auth=trust"])
        with (base / "alpha" / "postgresql.auto.conf").open("a") as f:
            f.write(_settings(base, "alpha"))
        (base / "alpha" / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.0/8 trust\n"
                                                      "host replication all 127.0.0.0/8 trust\n")
        _start(base, "alpha")
        _sql(base, "alpha", "CREATE ROLE replicator LOGIN REPLICATION")
        yield _cfg(tmp_path, base), base
    finally:
        for name in ("dr", "beta", "alpha"):
            if (base / name / "postmaster.pid").exists():
                pgact.run_as("postgres", [str(BIN / "pg_ctl"), "-D", str(base / name), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


def _read(own: LocalFollowerDb) -> FollowerPg:
    got = own.read()
    assert got is not None, "the follower's server does not answer"
    return got[0]


def _streaming(own: LocalFollowerDb, source: str, timeline: int) -> bool:
    pg = _read(own)
    return pg.streaming and pg.source == source and pg.timeline == timeline


def test_i12_a_follower_follows_a_failover_of_the_pair_without_a_clone(servers: tuple[config.Config, Path]) -> None:
    cfg, base = servers
    with psycopg.connect(host=str(base / "alpha.sock"), port=5432, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        assert pgact.ensure_follower_slots(conn, cfg, "alpha") == ["standby_dr"]  # what alpha's agent does
        pgact.ensure_slot(conn, "standby_beta")
    _clone(base, "alpha", "beta", "standby_beta")
    _start(base, "beta")
    _clone(base, "alpha", "dr", "standby_dr")
    _start(base, "dr")
    wait_for("beta in recovery", lambda: bool(_sql(base, "beta", "SELECT pg_is_in_recovery()")))
    with psycopg.connect(host=str(base / "beta.sock"), port=5432, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        # What beta's agent does as a standby: slots are not replicated, a promoted standby must have them.
        assert pgact.ensure_follower_slots(conn, cfg, "beta") == ["standby_dr"]
    _sql(base, "alpha", "CREATE TABLE calls (id int PRIMARY KEY)")
    _sql(base, "alpha", "INSERT INTO calls SELECT generate_series(1, 100)")

    _quorum_on_a_real_primary(cfg, base)
    own = LocalFollowerDb(cfg, "dr")
    wait_for("dr streams from alpha", lambda: _streaming(own, "alpha", 1))
    pg = _read(own)
    assert pg.timeline == 1 and pg.in_recovery
    up = identify(cfg, "alpha", {})
    assert up.timeline == 1 and up.history == () and up.flush_lsn is not None

    # The pair fails over: alpha stops (its last WAL reaches both replicas), beta is promoted onto timeline 2.
    # A watcher's connection to beta, kept from before, sees the new timeline and its history.
    with followerobs.connect(cfg, "beta") as kept:
        assert identify_on(kept, "beta", {}, time.monotonic() + ANSWER_TIMEOUT_S).timeline == 1
        _run([str(BIN / "pg_ctl"), "-D", str(base / "alpha"), "-m", "fast", "-w", "stop"])
        _sql(base, "beta", "SELECT pg_promote(true)")
        _sql(base, "beta", "INSERT INTO calls SELECT generate_series(101, 150)")
        up = identify_on(kept, "beta", {}, time.monotonic() + ANSWER_TIMEOUT_S)
    assert up.timeline == 2 and [tli for tli, _ in up.history] == [1]
    assert identify(cfg, "beta", {}) == up

    views = FakeViews()
    agent = FollowerAgent(cfg, "dr", db=own, views=views, alerts=NoAlerts())
    views.views["beta"] = PairView(term=2, db=DbState.PRIMARY, timeline=up.timeline, lsn=up.flush_lsn,
                                   heard_at=agent.clock(), history=up.history)
    views.answered["beta"] = agent.clock()
    started = time.monotonic()
    kinds = [a.kind for a in agent.step()]
    assert FollowerActionKind.POINT_AT in kinds and FollowerActionKind.REJOIN not in kinds
    wait_for("dr streams from beta on timeline 2", lambda: _streaming(own, "beta", 2))
    took = time.monotonic() - started
    wait_for("beta's rows on dr", lambda: _sql(base, "dr", "SELECT count(*) FROM calls") == 150)
    assert _sql(base, "dr", "SELECT pg_is_in_recovery()") is True  # a follower never promotes
    assert (base / "dr" / "standby.signal").exists()
    print(f"dr re-pointed at beta and streaming on timeline 2 after {took:.2f}s, no clone")


def _quorum_on_a_real_primary(cfg: config.Config, base: Path) -> None:
    """replication.quorum = 2 of (beta, dr): PostgreSQL reports both as "quorum", the primary's agent reads the hot
    standby as in sync, and a commit is acknowledged by both; then back to the hot standby alone."""
    quorum = config.Config.model_validate({**cfg.model_dump(), "replication": {**cfg.replication.model_dump(),
                                                                               "quorum": 2}})
    with psycopg.connect(host=str(base / "alpha.sock"), port=5432, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        wait_for("beta and dr connected", lambda: len(conn.execute(
            "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'").fetchall()) == 2)
        assert pgact.set_sync_names(conn, pgact.sync_names(quorum, "beta"))
        wait_for("both members in the quorum", lambda: conn.execute(
            "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1").fetchall()
            == [("beta", "quorum"), ("dr", "quorum")])
        local, names = read_local(conn, "beta")
        assert local.peer_sync and names == 'ANY 2 ("beta", "dr")'
        conn.execute("INSERT INTO calls VALUES (1000)")  # returns once both have it
        assert pgact.set_sync_names(conn, pgact.sync_names(cfg, "beta"))
        wait_for("beta alone is sync", lambda: conn.execute(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'beta'").fetchone() == ("sync",))
        conn.execute("DELETE FROM calls WHERE id = 1000")


def _watch_senders(base: Path) -> list[tuple[int, str]]:
    """alpha's WAL senders that are a follower agent's kept connections: (pid, backend_start)."""
    with psycopg.connect(host=str(base / "alpha.sock"), port=5432, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        return [(int(r[0]), str(r[1])) for r in conn.execute(
            "SELECT pid, backend_start FROM pg_stat_replication WHERE application_name = %s ORDER BY pid",
            (pgobs.WATCH_APPLICATION_NAME,)).fetchall()]


def test_watching_a_server_costs_one_kept_backend_not_one_per_round(servers: tuple[config.Config, Path]) -> None:
    """The follower's watcher asks alpha every round over one kept replication connection: one WAL sender,
    the same from round to round, not a replica to the agents' readers, with keepalives on alpha's side so that
    alpha drops it once the follower vanishes; a stalled one makes the round silent, the next round reconnects."""
    cfg, base = servers
    watcher = Watcher(cfg, "dr", 0.2, time.monotonic)
    stopped: list[int] = []
    try:
        for _ in range(10):
            watcher.poll("alpha")
        first = _watch_senders(base)
        for _ in range(10):
            watcher.poll("alpha")
        assert len(first) == 1 and _watch_senders(base) == first and watcher.servers["alpha"].opened == 1
        kept = watcher.servers["alpha"].get()
        show = followerobs.ask(kept, "SHOW tcp_keepalives_idle", time.monotonic() + ANSWER_TIMEOUT_S)
        assert show is not None and show[0] in (b"5", b"5s")
        with psycopg.connect(host=str(base / "alpha.sock"), port=5432, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            assert pgobs.read(conn, "alpha", "socket").replicas == ()

        # Its WAL sender stops answering (the process stalled, the kernel still acknowledging): silent.
        _, answered = watcher.snapshot()
        before = answered["alpha"]
        stopped.append(first[0][0])
        os.kill(stopped[0], signal.SIGSTOP)
        watcher.poll("alpha")
        assert watcher.snapshot()[1]["alpha"] == before
        watcher.poll("alpha")  # a new connection, a new WAL sender, answering
        assert watcher.snapshot()[1]["alpha"] > before and watcher.servers["alpha"].opened == 2
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        watcher.close("alpha")
        watcher.close("beta")
    wait_for("no kept connection left on alpha", lambda: _watch_senders(base) == [])


def _slot(base: Path, name: str) -> tuple[bool, str | None, str | None] | None:
    with psycopg.connect(host=str(base / "alpha.sock"), port=5432, user="postgres", dbname="postgres") as conn:
        row = conn.execute("SELECT active, restart_lsn::text, wal_status FROM pg_replication_slots "
                           "WHERE slot_name = %s", (name,)).fetchone()
    return None if row is None else (bool(row[0]), row[1], row[2])


def test_slot_left_behind_is_released_on_a_real_server_once_its_follower_streams_elsewhere(
        servers: tuple[config.Config, Path]) -> None:
    """topology.slots_to_release against PostgreSQL's own pg_replication_slots: dr streams from the primary,
    so alpha keeps its slot while it is the primary; as a standby's (the role a switchover gives it) the slot
    is released, but never while dr streams through it; and once PostgreSQL invalidated it, it is made again
    in either role."""
    cfg, base = servers
    own = psycopg.connect(host=str(base / "alpha.sock"), port=5432, user="postgres", dbname="postgres",
                          autocommit=True)
    try:
        assert pgact.ensure_follower_slots(own, cfg, "alpha") == ["standby_dr"]
        _clone(base, "alpha", "dr", "standby_dr")
        _start(base, "dr")
        wait_for("dr streams through its slot", lambda: (_slot(base, "standby_dr") or (False,))[0])
        assert pgact.release_follower_slots(own, cfg, "alpha", primary=True) == []
        assert pgact.release_follower_slots(own, cfg, "alpha", primary=False) == []  # in use: never
        _run([str(BIN / "pg_ctl"), "-D", str(base / "dr"), "-m", "fast", "-w", "stop"])
        wait_for("dr's sender gone", lambda: not (_slot(base, "standby_dr") or (True,))[0])
        assert _slot(base, "standby_dr")[1] is not None  # type: ignore[index]  # it pins WAL from dr's position
        assert pgact.release_follower_slots(own, cfg, "alpha", primary=True) == []  # dr comes back here
        assert pgact.release_follower_slots(own, cfg, "alpha", primary=False) == ["standby_dr"]
        assert _slot(base, "standby_dr") == (False, None, None)  # there, pinning nothing

        # Invalidated by PostgreSQL (max_slot_wal_keep_size passed): made again, whatever the role.
        own.execute("SELECT pg_drop_replication_slot('standby_dr')")
        pgact.ensure_slot(own, "standby_dr", reserve=True)
        own.execute("ALTER SYSTEM SET wal_keep_size = 0")
        own.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        own.execute("SELECT pg_reload_conf()")
        own.execute("CREATE TABLE IF NOT EXISTS filler (x int)")
        for _ in range(3):
            own.execute("INSERT INTO filler VALUES (1)")
            own.execute("SELECT pg_switch_wal()")
        own.execute("CHECKPOINT")
        assert _slot(base, "standby_dr") == (False, None, "lost") or _slot(base, "standby_dr")[2] == "lost"  # type: ignore[index]
        assert pgact.release_follower_slots(own, cfg, "alpha", primary=True) == ["standby_dr"]
        assert _slot(base, "standby_dr") == (False, None, None)
    finally:
        own.close()
