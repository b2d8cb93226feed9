"""The failover-time figure (LoadRun.first_ack_after_fault) on synthetic load histories (no lab needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from standby.lab.checker import Attempt, Outcome
from standby.lab.pair import LoadRun

# What the softswitch reports as the database it wrote to (inet_server_addr), per node, as in the lab.
SERVERS = {"10.0.0.11": "alpha", "192.0.2.11": "alpha", "10.0.0.12": "beta", "192.0.2.12": "beta"}
T_FAULT = 100.0


def _run(tmp_path: Path, *attempts: Attempt) -> LoadRun:
    history = tmp_path / "calls.jsonl"
    history.write_text("".join(a.to_json() + "\n" for a in attempts))
    return LoadRun(history, servers=SERVERS, t_fault=T_FAULT)


def _ack(n: int, t_send: float, t_done: float, db: str | None) -> Attempt:
    return Attempt(f"c-{n}", t_send, t_done, Outcome.ACK, db, n)


def test_an_ack_the_old_primary_gave_after_the_fault_is_not_service_restored(tmp_path: Path) -> None:
    """A partition rather than a crash: alpha, cut off from beta but not from every client, acknowledges
    a call sent after the fault. Service is restored only when beta, the new primary, acknowledges."""
    run = _run(tmp_path,
               _ack(1, 99.0, 99.01, "10.0.0.11"),
               _ack(2, 100.01, 100.02, "10.0.0.11"),  # alpha still writes: the partition, or a call in flight
               Attempt("c-3", 100.5, 102.5, Outcome.INDETERMINATE, error="timeout"),
               _ack(4, 103.0, 104.25, "192.0.2.12"))  # beta, reached over its public address
    assert run.first_ack_after_fault("beta") == 4.25
    assert run.first_ack_after_fault("alpha") == pytest.approx(0.02)  # alpha's own, for contrast


def test_no_ack_from_the_new_primary_is_none_even_if_the_old_one_answered(tmp_path: Path) -> None:
    run = _run(tmp_path, _ack(1, 100.1, 100.2, "10.0.0.11"), _ack(2, 100.3, 100.4, "192.0.2.11"))
    assert run.first_ack_after_fault("beta") is None


def test_a_call_sent_before_the_fault_does_not_count_even_when_the_new_primary_acked_it(tmp_path: Path) -> None:
    run = _run(tmp_path, _ack(1, 99.9, 101.0, "10.0.0.12"), _ack(2, 101.5, 102.0, "10.0.0.12"))
    assert run.first_ack_after_fault("beta") == 2.0


def test_no_fault_time_no_figure(tmp_path: Path) -> None:
    run = _run(tmp_path, _ack(1, 100.1, 100.2, "10.0.0.12"))
    run.t_fault = None
    assert run.first_ack_after_fault("beta") is None


def test_acks_after_the_fault_are_counted_per_node(tmp_path: Path) -> None:
    run = _run(tmp_path,
               _ack(1, 99.0, 100.5, "10.0.0.11"),  # sent before the fault: not counted
               _ack(2, 100.1, 100.2, "10.0.0.11"),
               _ack(3, 103.0, 103.1, "10.0.0.12"),
               _ack(4, 103.1, 103.2, "192.0.2.12"),
               _ack(5, 103.2, 103.3, "203.0.113.9"))  # an address of no lab node
    assert run.acks_after_fault_by() == {"alpha": 1, "beta": 2, "203.0.113.9": 1}
