"""What reaches the agent from the network: heartbeat replay across restarts, the boot counter,
the API's listen addresses and limits, the token's travel, and the state files' modes.

Agents here are real (built from the example configuration, secrets in a temporary directory)
but never run their loop; heartbeats are really encoded with the shared key and fed to the
agent's own packet handler, as the socket would.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.agent import node as node_mod
from standby.agent.heartbeat import Heartbeat, encode
from standby.agent.node import Agent
from standby.agent.store import Store
from standby.model import DbState, Net, PeerView
from tests.unit.configs import example_with_secrets

PRIMARY_IN_SYNC = PeerView(term=4, db=DbState.PRIMARY, services=True, lsn=5_000, sync_ok=True,
                           carrier={Net.PUBLIC: True, Net.PRIVATE: True}, tiebreaker_ok=True)


class _Socket:
    """Hands the agent's packet handler queued datagrams, as a non-blocking UDP socket would."""

    def __init__(self, packets: list[tuple[bytes, str]]) -> None:
        self.packets = list(packets)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.packets:
            raise BlockingIOError
        data, ip = self.packets.pop(0)
        return data, (ip, 8009)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, Any], Path]]:
    raw, _ = example_with_secrets(tmp_path)
    # This machine has no eth0 with the service IP; which addresses are held is not the point here.
    monkeypatch.setattr(node_mod.addresses, "held", lambda sip: False)
    yield raw, tmp_path


def _agent(raw: dict[str, Any]) -> Agent:
    a = Agent(config.parse(raw), "alpha")
    asyncio.run(a._restore())
    return a


def _close(a: Agent) -> None:
    for pool in (a.pg_pool, a.svc_pool, a.probe_pool):
        pool.shutdown(wait=False)


def _beta_heartbeat(a: Agent, boot: int, seq: int, ack: tuple[int, int] | None, net: Net = Net.PRIVATE) -> tuple[bytes, str]:
    packet = encode(Heartbeat(a.cfg.cluster, "beta", boot, seq, net, a.digest, PRIMARY_IN_SYNC, ack), a.key)
    return packet, str(getattr(a.cfg.nodes["beta"], net.value).ip)


def _feed(a: Agent, packets: list[tuple[bytes, str]], net: Net = Net.PRIVATE) -> None:
    a._on_packet(_Socket(packets), net)  # type: ignore[arg-type]


# -- M4: heartbeat replay after the receiver restarts --------------------------------------------


def test_m4_recorded_heartbeats_replayed_after_restart_are_not_the_peers_view(setup: tuple[dict[str, Any], Path]) -> None:
    raw, _ = setup
    first = _agent(raw)
    # beta's run 7 talks to alpha's first run: "primary, you are my synchronous standby".
    recorded = [_beta_heartbeat(first, 7, seq, (first.boot, 1)) for seq in range(1, 6)]
    older_run = [_beta_heartbeat(first, 6, seq, None) for seq in range(900, 905)]
    _feed(first, recorded[:2])
    assert first.peer_view == PRIMARY_IN_SYNC and first.heard[Net.PRIVATE] is not None
    _close(first)

    restarted = _agent(raw)  # same state directory: alpha's agent started again
    assert restarted.boot > first.boot
    _feed(restarted, recorded + older_run)
    assert restarted.peer_view is None, "a recording made the restarted agent take the peer's view"
    assert restarted.heard[Net.PRIVATE] is None, "a recording counted as the peer being alive"

    # The live peer soon acknowledges this run; from then on it is heard again, as is a newer run.
    _feed(restarted, [_beta_heartbeat(restarted, 7, 10, None)])
    assert restarted.peer_view is None
    _feed(restarted, [_beta_heartbeat(restarted, 7, 11, (restarted.boot, 1))])
    assert restarted.peer_view == PRIMARY_IN_SYNC and restarted.heard[Net.PRIVATE] is not None
    _close(restarted)


def test_m4_peer_restart_is_heard_at_once_and_older_runs_stay_refused(setup: tuple[dict[str, Any], Path]) -> None:
    raw, _ = setup
    first = _agent(raw)
    _feed(first, [_beta_heartbeat(first, 7, 1, None)])
    _close(first)
    again = _agent(raw)
    # Both restarted: beta's new run cannot acknowledge alpha's yet, and needs not (it is newer).
    _feed(again, [_beta_heartbeat(again, 8, 1, None)])
    assert again.peer_view == PRIMARY_IN_SYNC
    _close(again)
    third = _agent(raw)
    _feed(third, [_beta_heartbeat(third, 7, 50, (third.boot, 1))])  # run 7 is over: even with a plausible ack
    assert third.peer_view is None and third.receiver.rejected["replay"] == 1
    _close(third)


# -- L4: a damaged boot counter ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["corrupt", "missing", "empty"])
def test_l4_damaged_boot_counter_still_gives_a_newer_boot(tmp_path: Path, damage: str) -> None:
    store = Store(tmp_path / "state", "alpha")
    # The peer has persisted our run as newer than any small counter: a time-based boot after
    # years of restarts, or a counter that really reached this far.
    first = store.next_boot()
    store.write_liveness(first, clean=True)  # as every decision step of a run does
    second = store.next_boot()
    store.write_liveness(second, clean=True)
    assert second > first
    if damage == "corrupt":
        store.boot_path.write_bytes(b"\x00\xffgarbage")
    elif damage == "missing":
        store.boot_path.unlink()
    else:
        store.boot_path.write_text("")
    third = store.next_boot()
    assert third > second, "with the counter file damaged, the peer would drop every heartbeat as a replay"


def test_l4_boot_counter_and_liveness_both_lost_fall_back_to_the_clock(tmp_path: Path) -> None:
    store = Store(tmp_path / "state", "alpha")
    store.boot_path.write_text("41")
    assert store.next_boot() > 1_600_000_000  # above any counter the peer can have seen by counting
    store.boot_path.write_text("not a number")
    store.live_path.write_text("{")
    assert store.next_boot() > 1_600_000_000


# -- L6: the history and the state directory are root's ------------------------------------------


def test_l6_history_and_state_dir_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "history.jsonl").write_text("")
    (state / "history.jsonl").chmod(0o644)  # written by an older version
    store = Store(state, "alpha")
    store.record("agent_started", boot=1)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.history_path.stat().st_mode) == 0o600
    fresh = Store(tmp_path / "other", "alpha")
    fresh.record("agent_started", boot=1)
    assert stat.S_IMODE(fresh.history_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o700
