"""Operator operations as pure transitions (standby.operations): preconditions, terms, what is persisted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from standby import operations as ops
from standby.decide import State
from standby.model import DbState
from standby.operations import Operation, Refusal

states = st.builds(State, term=st.integers(0, 50), peer_term=st.integers(0, 50), fenced=st.booleans(),
                   was_primary=st.booleans(), promoting=st.booleans(), degraded=st.booleans(),
                   peer_could_promote=st.booleans(), services=st.booleans(), releasing_services=st.booleans())


@given(states, st.booleans())
def test_every_promotion_takes_a_term_above_any_seen(s: State, planned: bool) -> None:
    new = ops.promoting(s, planned)
    assert new.term > s.term and new.term > s.peer_term and new.term == ops.next_term(s)
    assert new.promoting and new.degraded
    assert new.was_primary is (False if planned else s.was_primary)


@given(states)
def test_following_is_a_standby_in_the_newest_term_known(s: State) -> None:
    new = ops.following(s)
    assert new.term == max(s.term, s.peer_term) and new.term >= s.term
    assert not (new.fenced or new.was_primary or new.promoting or new.degraded or new.peer_could_promote)


@given(states)
def test_fenced_by_hand_keeps_its_term_and_claims_nothing(s: State) -> None:
    new = ops.fenced_by_operator(s)
    assert new.fenced and not new.was_primary and not new.promoting and not new.releasing_services
    assert new.term == s.term


@pytest.mark.parametrize(("op", "state", "db", "suspended", "refused"), [
    (Operation.DEMOTE, State(), DbState.PRIMARY, False, Refusal.NOT_SUSPENDED),
    (Operation.DEMOTE, State(fenced=True), DbState.PRIMARY, True, Refusal.NOT_PRIMARY),
    (Operation.DEMOTE, State(), DbState.STANDBY, True, Refusal.NOT_PRIMARY),
    (Operation.DEMOTE, State(), DbState.PRIMARY, True, None),
    (Operation.PROMOTE, State(), DbState.STANDBY, False, Refusal.NOT_SUSPENDED),
    (Operation.PROMOTE, State(), DbState.DOWN, True, Refusal.NOT_STANDBY),
    (Operation.PROMOTE, State(), DbState.STANDBY, True, None),
    (Operation.FOLLOW, State(), DbState.PRIMARY, True, Refusal.NOT_STOPPED),
    (Operation.FOLLOW, State(), DbState.DOWN, False, None),
    (Operation.RESUME, State(was_primary=True, fenced=True), DbState.DOWN, True, Refusal.NEVER_PRIMARY),
    (Operation.RESUME, State(was_primary=False), DbState.DOWN, True, Refusal.NEVER_PRIMARY),
    (Operation.RESUME, State(was_primary=True), DbState.DOWN, True, None),
    (Operation.MANUAL_PROMOTE, State(fenced=True), DbState.STANDBY, False, Refusal.NOT_RUNNING_STANDBY),
    (Operation.MANUAL_PROMOTE, State(), DbState.DOWN, False, Refusal.NOT_RUNNING_STANDBY),
    (Operation.MANUAL_PROMOTE, State(), DbState.STANDBY, False, None),
    (Operation.REJOIN, State(fenced=True), DbState.DOWN, False, None),
    (Operation.FENCE, State(), DbState.PRIMARY, False, None),
])
def test_each_operation_is_refused_only_for_its_named_reason(op: Operation, state: State, db: DbState, suspended: bool,
                                                               refused: Refusal | None) -> None:
    assert ops.refusal(op, state, db, suspended) is refused


@pytest.mark.parametrize("op", list(Operation))
@pytest.mark.parametrize(("silent_s", "refused"), [(0.0, False), (4.9, False), (5.0, False), (5.1, True), (600.0, True)])
def test_an_operation_never_waits_behind_a_server_that_does_not_answer(op: Operation, silent_s: float,
                                                                        refused: bool) -> None:
    """Known residual of the unresponsive-server read (2026-12-05): an operation on a node whose server had
    stopped answering (SIGSTOP, a debugger, a hung disk) queued its first step behind the hung reading and
    held the decision turn until the server ran again: no decision, the hand-over of that server included,
    and no person's fence. Every operation but the fence (which stops the server on a thread of its own) is
    refused once the agent's question has gone unanswered past 5 s, the floor that tells a hung server from
    a slow one (config.MIN_UNRESPONSIVE_MS); the states below are ones each operation is otherwise allowed in."""
    allowed = {Operation.DEMOTE: (State(), DbState.PRIMARY), Operation.PROMOTE: (State(), DbState.STANDBY),
               Operation.FOLLOW: (State(), DbState.DOWN), Operation.RESUME: (State(was_primary=True), DbState.DOWN),
               Operation.MANUAL_PROMOTE: (State(), DbState.STANDBY), Operation.REJOIN: (State(fenced=True), DbState.DOWN),
               Operation.REBUILD: (State(fenced=True), DbState.DOWN), Operation.FENCE: (State(), DbState.PRIMARY)}
    s, db = allowed[op]
    assert ops.refusal(op, s, db, True) is None
    expected = Refusal.NOT_ANSWERING if refused and op is not Operation.FENCE else None
    assert ops.refusal(op, s, db, True, silent_s) is expected


@given(st.sampled_from(Operation), states, st.sampled_from(DbState), st.booleans(), st.floats(0.0, 5.0))
def test_below_the_bound_only_the_other_rules_refuse(op: Operation, s: State, db: DbState, suspended: bool,
                                                     silent_s: float) -> None:
    assert ops.refusal(op, s, db, suspended, silent_s) is ops.refusal(op, s, db, suspended)


def test_the_refusal_of_a_silent_server_says_what_to_do() -> None:
    text = Refusal.NOT_ANSWERING.describe("alpha", DbState.PRIMARY)
    assert "alpha" in text and "standby fence alpha" in text and "timings.postgres_unresponsive_ms" in text


def test_a_refusal_names_the_node_and_what_its_server_is() -> None:
    text = Refusal.NOT_PRIMARY.describe("alpha", DbState.STANDBY)
    assert "alpha" in text and "standby" in text
    assert Refusal.NOT_SUSPENDED.describe("alpha", DbState.PRIMARY) == Refusal.NOT_SUSPENDED.value


@pytest.mark.parametrize(("peer_primary", "agent_answers", "force", "first"), [
    (True, True, False, ops.PeerFirst.REFUSE),
    (True, False, False, ops.PeerFirst.REFUSE),
    (True, True, True, ops.PeerFirst.FENCE),
    (True, False, True, ops.PeerFirst.FENCE),  # the fence cannot be asked: the command stops there
    # Its server down, its agent up: fenced for good first, with or without --force (a precautionary fence
    # could otherwise resume on this node's last heartbeat as a standby: the simulated forced promotion).
    (False, True, False, ops.PeerFirst.FENCE),
    (False, True, True, ops.PeerFirst.FENCE),
    (False, False, False, ops.PeerFirst.WARN),
    (False, False, True, ops.PeerFirst.WARN),
])
def test_a_promotion_by_hand_fences_every_peer_whose_agent_answers(peer_primary: bool, agent_answers: bool,
                                                                   force: bool, first: ops.PeerFirst) -> None:
    assert ops.peer_first(peer_primary, agent_answers, force) is first


@pytest.mark.parametrize(("peer_primary", "force", "then"), [
    (True, False, ops.PeerFirst.REFUSE),
    (True, True, ops.PeerFirst.REFUSE),  # it could still be writing: no flag goes past that
    (False, False, ops.PeerFirst.REFUSE),  # the message names the ways on
    (False, True, ops.PeerFirst.WARN),
])
def test_a_failed_fence_stops_the_promotion_unless_a_person_forces_past_a_stopped_server(
        peer_primary: bool, force: bool, then: ops.PeerFirst) -> None:
    assert ops.after_failed_fence(peer_primary, force) is then
