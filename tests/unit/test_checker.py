"""The history checker on generated histories and database states (no database needed)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from standby.lab.checker import (
    Attempt,
    CdrRow,
    DbState,
    DeltaRow,
    Outcome,
    call_outcomes,
    check,
    longest_ack_gap,
    read_history,
)
from standby.lab.loadgen import classify_exception, classify_response

ACCOUNTS, VENDORS = 4, 3


@dataclass(frozen=True)
class Call:
    call_id: str
    outcome: Outcome
    applied: bool  # in the database
    account_id: int
    vendor_id: int
    price: Decimal
    cost: Decimal
    t: float


money = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def worlds(draw: st.DrawFn) -> list[Call]:
    """Calls whose database state agrees with what clients were told."""
    n = draw(st.integers(min_value=0, max_value=40))
    calls, t = [], 0.0
    for i in range(n):
        outcome = draw(st.sampled_from(Outcome))
        applied = outcome is Outcome.ACK or (outcome is Outcome.INDETERMINATE and draw(st.booleans()))
        t += draw(st.floats(min_value=0.001, max_value=5.0))
        calls.append(
            Call(f"c{i}", outcome, applied, draw(st.integers(1, ACCOUNTS)), draw(st.integers(1, VENDORS)),
                 draw(money), draw(money), t)  # fmt: skip
        )
    return calls


def history_of(calls: list[Call]) -> list[Attempt]:
    return [
        Attempt(c.call_id, c.t, c.t + 0.01, c.outcome, cdr_id=1000 + i if c.outcome is Outcome.ACK else None)
        for i, c in enumerate(calls)
    ]


def db_of(calls: list[Call]) -> DbState:
    cdrs, deltas = [], []
    accounts = {i: Decimal(0) for i in range(1, ACCOUNTS + 1)}
    vendors = {i: Decimal(0) for i in range(1, VENDORS + 1)}
    for i, c in enumerate(calls):
        if not c.applied:
            continue
        cdrs.append(CdrRow(1000 + i, c.call_id, c.account_id, c.vendor_id, c.price, c.cost))
        deltas.append(DeltaRow(c.call_id, "account", c.account_id, -c.price))
        deltas.append(DeltaRow(c.call_id, "vendor", c.vendor_id, c.cost))
        accounts[c.account_id] -= c.price
        vendors[c.vendor_id] += c.cost
    return DbState(cdrs, deltas, accounts, vendors)


def without_calls(db: DbState, gone: set[str]) -> DbState:
    """The state as if those calls had never committed (balances stay consistent)."""
    accounts, vendors = dict(db.accounts), dict(db.vendors)
    for d in db.deltas:
        if d.call_id in gone and d.delta is not None and d.party_id is not None:
            (accounts if d.party == "account" else vendors)[d.party_id] -= d.delta
    cdrs = [c for c in db.cdrs if c.call_id not in gone]
    return DbState(cdrs, [d for d in db.deltas if d.call_id not in gone], accounts, vendors)


@given(worlds())
def test_consistent_world_is_ok_and_indeterminates_are_classified(calls: list[Call]) -> None:
    v = check(history_of(calls), db_of(calls))
    assert v.ok, v.render()
    assert v.acked == sum(c.outcome is Outcome.ACK for c in calls)
    doubtful = [c for c in calls if c.outcome is Outcome.INDETERMINATE]
    assert set(v.indeterminate_applied) == {c.call_id for c in doubtful if c.applied}
    assert set(v.indeterminate_not_applied) == {c.call_id for c in doubtful if not c.applied}


@given(worlds(), st.data())
def test_deleted_acknowledged_rows_are_reported_exactly(calls: list[Call], data: st.DataObject) -> None:
    acked = sorted(c.call_id for c in calls if c.outcome is Outcome.ACK)
    gone = set(data.draw(st.lists(st.sampled_from(acked), unique=True) if acked else st.just([])))
    v = check(history_of(calls), without_calls(db_of(calls), gone))
    assert set(v.missing_acked) == gone
    assert v.violations == ([f"{len(gone)} acknowledged calls missing from the database"] if gone else [])


@given(worlds(), st.data())
def test_duplicate_call_ids_are_reported_with_their_counts(calls: list[Call], data: st.DataObject) -> None:
    db = db_of(calls)
    present = sorted({c.call_id for c in db.cdrs})
    extra = data.draw(st.lists(st.sampled_from(present), max_size=6) if present else st.just([]))
    next_id = 10_000
    cdrs = list(db.cdrs)
    for call_id in extra:
        base = next(c for c in db.cdrs if c.call_id == call_id)
        cdrs.append(replace(base, cdr_id=next_id))
        next_id += 1
    v = check(history_of(calls), replace(db, cdrs=cdrs))
    expected = defaultdict(lambda: 1)
    for call_id in extra:
        expected[call_id] += 1
    assert dict(v.duplicate_call_ids) == dict(expected)
    assert not v.missing_acked and not v.ack_id_mismatch


@given(worlds().filter(lambda cs: any(c.applied for c in cs)), st.data())
def test_a_missing_delta_and_the_balance_it_breaks_are_reported(calls: list[Call], data: st.DataObject) -> None:
    db = db_of(calls)
    victim = data.draw(st.sampled_from(list(db.deltas)))
    v = check(history_of(calls), replace(db, deltas=[d for d in db.deltas if d is not victim]))
    assert v.missing_deltas == ((victim.call_id, victim.party),)
    if victim.delta != 0:
        assert [(m.party, m.party_id) for m in v.balance_mismatches] == [(victim.party, victim.party_id)]
    assert not v.ok


@given(worlds(), st.integers(1, ACCOUNTS))
def test_a_tampered_balance_is_reported(calls: list[Call], account_id: int) -> None:
    db = db_of(calls)
    accounts = {**db.accounts, account_id: db.accounts[account_id] + Decimal("0.000001")}
    v = check(history_of(calls), replace(db, accounts=accounts))
    assert [(m.party, m.party_id) for m in v.balance_mismatches] == [("account", account_id)]


def test_refused_but_committed_orphans_and_id_mismatch() -> None:
    calls = [
        Call("a", Outcome.ACK, True, 1, 1, Decimal("1.5"), Decimal("1"), 1.0),
        Call("f", Outcome.FAILED, True, 1, 1, Decimal("2"), Decimal("1"), 2.0),
    ]
    db = db_of(calls)
    history = history_of(calls)
    history[0] = replace(history[0], cdr_id=42)  # the client was told another CDR id
    deltas = [*db.deltas, DeltaRow("ghost", "vendor", 1, Decimal(0))]
    v = check(history, replace(db, deltas=deltas))
    assert v.failed_but_applied == ("f",)
    assert v.ack_id_mismatch == (("a", 42, 1000),)
    assert v.orphan_deltas == ("ghost",)
    text = v.render()
    assert "VIOLATIONS" in text and "refused but committed: f" in text


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=50))
def test_longest_gap_is_the_largest_step_between_consecutive_acks(times: list[float]) -> None:
    gap = longest_ack_gap(times)
    if len(times) < 2:
        assert gap is None
        return
    s = sorted(times)
    assert gap is not None
    assert gap.seconds == max(b - a for a, b in zip(s, s[1:], strict=False))
    assert gap.start in times and gap.end in times
    assert not any(gap.start < t < gap.end for t in times)


def test_gap_ignores_non_acks_and_is_rendered_with_its_position() -> None:
    history = [
        Attempt("1", 10.0, 10.1, Outcome.ACK),
        Attempt("2", 10.2, 10.3, Outcome.ACK),
        Attempt("3", 10.4, 12.4, Outcome.INDETERMINATE),
        Attempt("4", 11.0, 11.0, Outcome.FAILED),
        Attempt("5", 14.0, 14.3, Outcome.ACK),
    ]
    v = check(history, DbState([], [], {}, {}))
    assert v.longest_gap is not None and (v.longest_gap.start, v.longest_gap.end) == (10.3, 14.3)
    assert v.ack_rate == 3 / (14.3 - 10.0)
    assert "from t+0.300 s to t+4.300 s" in v.render()


def test_outcome_over_retries_prefers_ack_then_indeterminate() -> None:
    history = [
        Attempt("x", 0, 1, Outcome.FAILED),
        Attempt("x", 1, 2, Outcome.INDETERMINATE),
        Attempt("y", 0, 1, Outcome.INDETERMINATE),
        Attempt("y", 1, 2, Outcome.ACK),
        Attempt("y", 2, 3, Outcome.FAILED),
        Attempt("z", 0, 1, Outcome.FAILED),
    ]
    assert call_outcomes(history) == {"x": Outcome.INDETERMINATE, "y": Outcome.ACK, "z": Outcome.FAILED}


def test_history_round_trip_tolerates_a_torn_last_line(tmp_path: Path) -> None:
    attempts = [
        Attempt("a", 1.0, 2.0, Outcome.ACK, node="198.51.100.11", cdr_id=7, status=200),
        Attempt("b", 1.5, 3.5, Outcome.INDETERMINATE, error="TimeoutError"),
    ]
    path = tmp_path / "h.jsonl"
    path.write_text("".join(a.to_json() + "\n" for a in attempts) + '{"call_id": "c", "t_se')
    assert read_history(path) == attempts


def test_render_fits_one_screen_with_many_violations() -> None:
    calls = [Call(f"c{i}", Outcome.ACK, True, 1, 1, Decimal(1), Decimal(1), float(i)) for i in range(500)]
    db = db_of(calls)
    v = check(history_of(calls), DbState([], db.deltas, {1: Decimal(5)}, {1: Decimal(0)}))
    assert not v.ok
    assert len(v.render().splitlines()) <= 24
    assert "(+495 more)" in v.render()


@settings(max_examples=50)
@given(st.integers(min_value=100, max_value=599), st.booleans())
def test_response_classification(status: int, commit_unknown: bool) -> None:
    outcome, _ = classify_response(status, {"error": "x", "commit_unknown": commit_unknown})
    if status == 200:
        assert outcome is Outcome.ACK
    elif status == 503:
        assert outcome is (Outcome.INDETERMINATE if commit_unknown else Outcome.FAILED)
    elif 400 <= status < 500:
        assert outcome is Outcome.FAILED
    else:
        assert outcome is Outcome.INDETERMINATE  # nobody vouched for "not committed"


def test_no_answer_is_failed_only_without_a_connection() -> None:
    assert classify_exception(ConnectionRefusedError("refused"), connected=False)[0] is Outcome.FAILED
    assert classify_exception(TimeoutError(), connected=True)[0] is Outcome.INDETERMINATE
