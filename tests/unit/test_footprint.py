"""Issue 13, part 3: what the agent holds for its whole life, and what each decision step costs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from standby.act import postgres as pgact
from standby.model import DbState
from tests.unit.shell_fakes import FakeKernel, FakePostgres, run, shell, view

AGENT_IMPORTS = "import standby.cli.main, standby.cli.agent, standby.api, standby.agent.stallwatch"


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}; import sys; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                              text=True).stdout.split())


def test_i13_the_agent_holds_no_pyroute2() -> None:
    """pyroute2's package imports all of itself (IPDB, NDB and sqlite3, WireGuard, nl80211...), and even its
    IPRoute alone kept ~4 MB of modules (unittest and multiprocessing among them) in the agent for its whole
    life; the agent's four netlink messages are sent on a plain socket (standby.act.addresses)."""
    loaded = _loaded_after(AGENT_IMPORTS + "; import standby.agent.follower, standby.agent.followerip")
    assert {m for m in loaded if m.split(".")[0] == "pyroute2"} == set()
    assert "sqlite3" not in loaded and "unittest" not in loaded


def test_i13_pyroute2_still_gives_its_own_names_to_whoever_asks() -> None:
    """The lab and the tests import pyroute2's names from the package, in the agent's process or not."""
    probe = ("import standby.netlink, pyroute2; from pyroute2 import NetNS, IPRoute; "
             "assert IPRoute is standby.netlink.IPRoute, IPRoute; assert pyroute2.NetNS is NetNS; "
             "assert isinstance(pyroute2.__version__, str); "
             "import pyroute2.netlink.exceptions as e; assert e.NetlinkError is standby.netlink.NetlinkError; "
             "ok = False\n"
             "try:\n    pyroute2.no_such_name\nexcept AttributeError:\n    ok = True\n"
             "assert ok")
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_i13_pyroute2_imported_whole_first_is_left_as_it_is() -> None:
    probe = ("import pyroute2; whole = pyroute2.__dict__.get('NDB'); import standby.netlink; "
             "assert whole is not None and pyroute2.IPRoute is standby.netlink.IPRoute")
    subprocess.run([sys.executable, "-c", probe], check=True)


class _OneRowConnection:
    """Answers every statement with ``row``; records what was asked (a fake of psycopg's connection)."""

    def __init__(self, row: tuple[object, ...]) -> None:
        self.row, self.asked = row, []  # type: list[tuple[str, object]]

    def execute(self, sql: str, params: object = None) -> _OneRowConnection:
        self.asked.append((sql, params))
        return self

    def fetchone(self) -> tuple[object, ...]:
        return self.row


def test_i13_the_step_reads_a_primary_in_one_round_trip() -> None:
    from standby.agent.localdb import read_local
    from standby.model import DbState, LocalPg, Lsn

    conn = _OneRowConnection((False, '"beta"', "0/3000060", "sync", "0/3000000", None, None, None, None,
                               "0/3000040", True))
    local, names = read_local(conn, "beta")  # type: ignore[arg-type]
    assert len(conn.asked) == 1 and conn.asked[0][1] == {"peer": "beta", "flush_seen": None}
    assert names == '"beta"'
    assert local == LocalPg(DbState.PRIMARY, lsn=Lsn.parse("0/3000060").value, peer_sync=True,  # type: ignore[union-attr]
                            peer_flush_lsn=Lsn.parse("0/3000000").value,  # type: ignore[union-attr]
                            flush_lsn=Lsn.parse("0/3000040").value, wal_waiting=True)  # type: ignore[union-attr]
    # A standby connected but not (yet) in sync, or none connected at all.
    assert not read_local(_OneRowConnection((False, "", "0/5", "async", "0/4", None, None, None, None, "0/5", False)),  # type: ignore[arg-type]
                          "beta")[0].peer_sync
    alone, _ = read_local(_OneRowConnection((False, "", "0/5", None, None, None, None, None, None, "0/5", False)), "beta")  # type: ignore[arg-type]
    assert (alone.peer_sync, alone.peer_flush_lsn, alone.flush_lsn, alone.wal_waiting) == (False, None, 5, False)


def test_i13_the_step_reads_a_standby_in_one_round_trip() -> None:
    from standby.agent.localdb import read_local
    from standby.model import DbState, LocalPg, Lsn

    conn = _OneRowConnection((True, "", None, None, None, "0/3000100", "0/3000080", "streaming", 0.25, None, False))
    local, names = read_local(conn, "alpha")  # type: ignore[arg-type]
    assert len(conn.asked) == 1 and names == ""
    assert local == LocalPg(DbState.STANDBY, lsn=Lsn.parse("0/3000100").value,  # type: ignore[union-attr]
                            replay_lsn=Lsn.parse("0/3000080").value, streaming=True, upstream_age_s=0.25)  # type: ignore[union-attr]
    # No WAL receiver (the upstream is gone): not streaming, no age; the position is what was replayed.
    gone, _ = read_local(_OneRowConnection((True, "", None, None, None, None, "0/7", None, None, None, False)), "alpha")  # type: ignore[arg-type]
    assert gone == LocalPg(DbState.STANDBY, lsn=7, replay_lsn=7, streaming=False, upstream_age_s=None)


def test_i13_the_liveness_record_is_rewritten_in_place(tmp_path: Path) -> None:
    """Every decision rewrites it: one write to the same file, no new file and rename each time (the lab's
    profile found those the agent's largest CPU cost at rest)."""
    from standby.agent.store import Store

    store = Store(tmp_path, "alpha")
    store.write_liveness(boot=12345678901, clean=False, now=1_000_000.123456)
    inode = store.live_path.stat().st_ino
    store.write_liveness(boot=7, clean=False, now=2.5)  # a shorter record over a longer one
    assert store.live_path.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alive"]
    live = store.read_liveness()
    assert live is not None and (live.boot, live.last_decision, live.clean, live.pid) == (7, 2.5, False, os.getpid())
    assert store.unattended_for(4.0) == 1.5


def test_i13_a_liveness_record_removed_or_left_longer_by_an_older_release_is_replaced(tmp_path: Path) -> None:
    from standby.agent.store import Store

    store = Store(tmp_path, "alpha")
    store.live_path.write_text(json.dumps({"pid": 1, "boot": 3, "last_decision": 1.0, "clean": True,
                                           "kernel_boot": "x", "note": "n" * 2000}))
    store.write_liveness(boot=4, clean=False, now=9.0)
    assert store.read_liveness() is not None and store.read_liveness().boot == 4  # type: ignore[union-attr]
    store.live_path.unlink()  # by hand, while the agent runs
    store.write_liveness(boot=4, clean=True, now=10.0)
    live = store.read_liveness()
    assert live is not None and (live.clean, live.last_decision) == (True, 10.0)
    assert store.live_path.stat().st_mode & 0o777 == 0o600


def test_i13_the_kernel_boot_id_is_read_once_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """It cannot change while the process lives; the agent wrote it every decision."""
    from standby.agent import store as store_mod

    reads: list[int] = []

    def read() -> str:
        reads.append(1)
        return "boot-a"

    monkeypatch.setattr(store_mod, "_read_boot_id", read)
    store_mod.kernel_boot_id.cache_clear()
    try:
        store = store_mod.Store(tmp_path, "alpha")
        for now in (1.0, 2.0, 3.0):
            store.write_liveness(boot=1, clean=False, now=now)
        assert store.read_liveness() is not None and len(reads) == 1
    finally:
        store_mod.kernel_boot_id.cache_clear()


def _pg_jobs_per_steady_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: DbState) -> tuple[int, FakePostgres]:
    """What the PostgreSQL thread is given over ten steps of a pair at rest (ten observations at least)."""
    pg = FakePostgres(db)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({"192.0.2.100"} if db is DbState.PRIMARY else set())) as sh:
        peer = view(DbState.STANDBY) if db is DbState.PRIMARY else view(DbState.PRIMARY, services=True)

        async def go() -> int:
            await sh.start()
            for _ in range(5):
                await sh.tick(peer)
            jobs: list[Any] = []
            real = sh.agent._in_pg

            async def counted(fn: Any, *args: Any) -> Any:
                jobs.append(fn)
                return await real(fn, *args)

            sh.agent._in_pg = sh.agent.observer._in_pg = counted  # type: ignore[method-assign]
            for _ in range(10):
                await sh.tick(peer)
            return len(jobs)

        return run(go()), pg


def test_i13_a_step_at_rest_gives_the_postgresql_thread_only_its_observation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step also handed the thread a check of synchronous_standby_names (and of followers' slots the
    configuration does not have) that had nothing to do: two thread wake-ups a step, for nothing."""
    jobs, pg = _pg_jobs_per_steady_step(tmp_path, monkeypatch, DbState.PRIMARY)
    assert jobs == 10 and pg.follower_slot_calls == 0
    (tmp_path / "b").mkdir()
    jobs, pg = _pg_jobs_per_steady_step(tmp_path / "b", monkeypatch, DbState.STANDBY)
    assert jobs == 10 and pg.follower_slot_calls == 0


def test_i13_the_names_are_still_set_when_the_server_has_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoNames(FakePostgres):
        """A primary whose synchronous_standby_names were emptied by hand."""

        def read(self) -> Any:
            local, _ = super().read()
            return local, ""

    pg = NoNames(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({"192.0.2.100"})) as sh:

        async def go() -> None:
            await sh.start()
            for _ in range(3):
                await sh.tick()
                if sh.agent.sync_keeper.task is not None:
                    await sh.agent.sync_keeper.task

        run(go())
    assert pg.sync_names and set(pg.sync_names) == {pgact.sync_value("beta")}


def test_i13_the_stall_watch_on_the_heartbeat_senders_beat_wakes_the_loop_never() -> None:
    """Its beat on the loop and its watcher thread were the agent's most frequent wake-ups (20 a second each,
    then 10, for a log line about stalls of a quarter second and more). The agent hands it the heartbeat
    sender's last send, which the loop keeps every interval anyway: no callback of its own is scheduled, and
    a sender late past the bound is told, once, while one that has stopped is not watched."""
    from standby.agent.stallwatch import StallWatch

    class RecordingLoop:
        def __init__(self) -> None:
            self.delays: list[float] = []

        def call_later(self, delay: float, callback: Any) -> None:
            self.delays.append(delay)

    own = RecordingLoop()
    alone = StallWatch(own)  # type: ignore[arg-type]  (without a beat: it beats on the loop, at most ten a second)
    alone._first_beat()
    assert own.delays and min(own.delays) >= 0.1

    loop, now, sent = RecordingLoop(), [10.0], [9.9]
    sending = [True]
    watch = StallWatch(loop, clock=lambda: now[0], beat=lambda: sent[0] if sending[0] else None,  # type: ignore[arg-type]
                       beat_every_s=0.15)
    watch._first_beat()
    assert loop.delays == []  # no wake-up of its own
    assert watch.every_s >= 0.1  # the watcher thread's own wait, as the agent runs it (the default)
    assert watch.late_s <= 0.25  # still told: a stall of a quarter second
    assert not watch.check()  # sent 0.1 s ago
    now[0] = 9.9 + 0.15 + 0.24
    assert not watch.check()
    now[0] = 9.9 + 0.15 + 0.26
    assert watch.check() and not watch.check()  # told once per stall
    sent[0] = now[0]
    now[0] += 1.0
    assert watch.check()  # a new stall, told again
    sending[0] = False
    now[0] += 5.0
    assert not watch.check()  # the sender has stopped (the agent's shut-down): nothing to watch


def test_i13_the_heartbeat_link_says_while_its_sender_runs(tmp_path: Path) -> None:
    """What the stall watch reads: True while the sender loop runs, False once it is cancelled."""
    from standby.agent.link import HeartbeatLink
    from standby.config import Config
    from tests.unit.configs import example_with_secrets

    class Quiet:
        def open(self, on_datagram: Any) -> None: ...
        def send(self, net: Any, packet: bytes) -> None: ...
        def close(self) -> None: ...

    link = HeartbeatLink(Config.model_validate(example_with_secrets(tmp_path)[0]), "alpha", b"k" * 32, "digest",
                         Quiet(), time.monotonic)

    async def go() -> tuple[bool, bool, bool]:
        before = link.sending
        task = asyncio.get_running_loop().create_task(link.sender(lambda: view(DbState.PRIMARY), 0.01, asyncio.Event()))
        await asyncio.sleep(0.05)
        during = link.sending
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return before, during, link.sending

    assert asyncio.run(go()) == (False, True, False)
    assert link.sent["public"] >= 2  # it did send meanwhile
