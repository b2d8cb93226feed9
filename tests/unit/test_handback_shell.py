"""The switchback from a promoted DR node (standby.act.handback) with its I/O replaced: which server it starts
again, and as what, after each outcome of the pair node's promotion."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from standby import rebuild
from standby.act import handback
from standby.act import postgres as pgact
from standby.apiclient import ApiError
from standby.documents import Promoted


class _Conn:
    def execute(self, *a: Any) -> None:
        return None


class _Api:
    def __init__(self, promote: Promoted | ApiError) -> None:
        self.answer = promote
        self.calls: list[str] = []

    def maintenance(self, node: str, on: bool) -> None:
        self.calls.append(f"maintenance {node} {on}")

    def promote(self, node: str, lsn: str, timeout_s: float) -> Promoted:
        self.calls.append(f"promote {node} past {lsn}")
        if isinstance(self.answer, ApiError):
            raise self.answer
        return self.answer


@pytest.fixture
def gamma(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """gamma's server, as the hand-back acts on it: what was done to it, in order."""
    done: list[str] = []
    running = {"up": True}

    @contextlib.contextmanager
    def local(*a: Any, **kw: Any) -> Iterator[_Conn]:
        yield _Conn()

    def stop(cfg: Any, node: str, mode: Any, timeout_s: int = 60) -> None:
        done.append(f"stop {node} {mode.value}")
        running["up"] = False

    def start(cfg: Any, node: str, timeout_s: int = 60) -> None:
        done.append(f"start {node}")
        running["up"] = True

    monkeypatch.setattr(handback, "look", lambda cfg, here, target: rebuild.Decision(True, rebuild.Reason.HAND_BACK))
    monkeypatch.setattr(handback.obs, "connect_local", local)
    monkeypatch.setattr(handback.obs, "connect_peer", local)
    monkeypatch.setattr(pgact, "stop", stop)
    monkeypatch.setattr(pgact, "start", start)
    monkeypatch.setattr(pgact, "control_data", lambda cfg, node: {
        "Database cluster state": "shut down", "Latest checkpoint location": "0/5000060"})
    monkeypatch.setattr(pgact, "running_pid", lambda d: 1 if running["up"] else None)
    monkeypatch.setattr(pgact, "ensure_slot", lambda conn, name: done.append(f"slot {name}"))
    monkeypatch.setattr(pgact, "configure_as_standby", lambda cfg, node, src: done.append(f"{node} standby of {src}"))
    monkeypatch.setattr(pgact, "wait_streaming", lambda cfg, node, timeout_s=60: "streaming")
    yield done


def _cfg() -> Any:
    from tests.unit.test_followers_pair import example

    return example()


def test_a_promotion_refused_while_the_pair_node_is_still_a_standby_resumes_the_dr_node(
        gamma: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    api = _Api(ApiError(409, "received WAL up to 0/5000000 but the old primary's shutdown checkpoint is at 0/5000060"))
    monkeypatch.setattr(handback, "AgentApi", lambda cfg: api)
    monkeypatch.setattr(handback, "still_standby", lambda cfg, node: True)
    with pytest.raises(handback.HandBackError, match=r"switchback aborted, nothing lost: .*dr serves again"):
        handback.hand_back(_cfg(), "dr", "alpha")
    assert gamma == ["stop dr fast", "start dr"]  # started again as it was: a primary (no standby.signal)
    assert api.calls == ["maintenance alpha True", "promote alpha past 0/5000060", "maintenance alpha False"]


def test_a_promotion_that_may_have_happened_leaves_the_dr_node_stopped(
        gamma: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Breaks a hand-back that starts the DR node again on any failed promotion: the answer may have been lost
    after alpha was promoted, and two primaries would follow."""
    monkeypatch.setattr(handback, "AgentApi", lambda cfg: _Api(ApiError(0, "timed out")))
    monkeypatch.setattr(handback, "still_standby", lambda cfg, node: "alpha's agent does not answer")
    with pytest.raises(handback.HandBackError, match="stays stopped so that two primaries cannot happen"):
        handback.hand_back(_cfg(), "dr", "alpha")
    assert gamma == ["stop dr fast"]


def test_once_the_pair_node_is_promoted_the_dr_node_starts_as_its_standby(
        gamma: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handback, "AgentApi", lambda cfg: _Api(Promoted(term=2, received_lsn="0/50000D8")))
    out = handback.hand_back(_cfg(), "dr", "alpha")
    assert out.term == 2
    assert gamma == ["stop dr fast", "slot standby_dr", "dr standby of alpha", "start dr"]
