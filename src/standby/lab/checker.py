"""Judge a load run: the client's history of attempts against the rows on the final primary.

Pure functions over plain records (``check``), plus ``read_db_state`` to fetch those rows.
A call counts as acknowledged if any of its attempts got a 200, as indeterminate if none
did but one may have reached the database, and as failed otherwise. Violations:

- acknowledged calls missing from ``cdrs`` (lost writes), or present under another CDR id;
- calls the service said were not committed (``failed``) that are in ``cdrs``;
- a call_id with more than one CDR;
- a CDR without both of its balance deltas, deltas that disagree with their CDR, or deltas
  without a CDR;
- an account or vendor whose balance is not the sum of its deltas.

Indeterminate calls are not violations; they are reported as applied or not applied.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

# --------------------------------------------------------------------------- history records


class Outcome(enum.StrEnum):
    ACK = "ack"  # HTTP 200: committed, says the service
    FAILED = "failed"  # definitely not committed
    INDETERMINATE = "indeterminate"  # may or may not have committed


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt, as the load generator records it (one JSON line each)."""

    call_id: str
    t_send: float  # time.monotonic()
    t_done: float
    outcome: Outcome
    node: str | None = None  # on an ack: the database server the service wrote to (its inet_server_addr)
    cdr_id: int | None = None
    error: str | None = None
    status: int | None = None  # HTTP status, when an answer came

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "outcome": self.outcome.value}, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attempt:
        return cls(
            call_id=str(d["call_id"]),
            t_send=float(d["t_send"]),
            t_done=float(d["t_done"]),
            outcome=Outcome(d["outcome"]),
            node=d.get("node"),
            cdr_id=d.get("cdr_id"),
            error=d.get("error"),
            status=d.get("status"),
        )


def read_history(path: Path) -> list[Attempt]:
    """Attempts from a JSON-lines history; a torn last line (writer killed mid-line) is ignored."""
    attempts: list[Attempt] = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if isinstance(record, dict) and record.get("type") == "event":
                continue  # a campaign's history also holds its faults and heals
            attempts.append(Attempt.from_dict(record))
        except (ValueError, KeyError, TypeError):
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not a history record") from None
    return attempts


# --------------------------------------------------------------------------- database rows


@dataclass(frozen=True)
class CdrRow:
    cdr_id: int
    call_id: str
    account_id: int | None
    vendor_id: int | None
    price: Decimal | None
    cost: Decimal | None


@dataclass(frozen=True)
class DeltaRow:
    call_id: str
    party: str  # 'account' | 'vendor'
    party_id: int | None
    delta: Decimal | None


@dataclass(frozen=True)
class DbState:
    cdrs: Sequence[CdrRow]
    deltas: Sequence[DeltaRow]
    accounts: Mapping[int, Decimal]  # id -> balance
    vendors: Mapping[int, Decimal]


def read_db_state(conn: psycopg.Connection[Any]) -> DbState:
    """All rows the checker needs, from one snapshot (a load may still be running)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cdrs = [
            CdrRow(*r)
            for r in conn.execute("SELECT id, call_id, account_id, vendor_id, price, cost FROM cdrs").fetchall()
        ]
        deltas = [
            DeltaRow(*r) for r in conn.execute("SELECT call_id, party, party_id, delta FROM balance_deltas").fetchall()
        ]
        accounts = {r[0]: r[1] for r in conn.execute("SELECT id, balance FROM accounts").fetchall()}
        vendors = {r[0]: r[1] for r in conn.execute("SELECT id, balance FROM vendors").fetchall()}
    return DbState(cdrs=cdrs, deltas=deltas, accounts=accounts, vendors=vendors)


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Gap:
    """The time between two consecutive acknowledgements (monotonic seconds)."""

    start: float  # t_done of the ack before the gap
    end: float  # t_done of the ack that ended it

    @property
    def seconds(self) -> float:
        return self.end - self.start


def longest_ack_gap(ack_times: Iterable[float]) -> Gap | None:
    """The longest interval between consecutive acknowledgement times; None with fewer than two."""
    times = sorted(ack_times)
    best: Gap | None = None
    for a, b in itertools.pairwise(times):
        if best is None or b - a > best.seconds:
            best = Gap(a, b)
    return best


def first_ack_after(history: Iterable[Attempt], t_fault: float, servers: Collection[str]) -> float | None:
    """Seconds from ``t_fault`` to the earliest acknowledgement written on one of ``servers`` (database
    addresses) of a call sent at or after ``t_fault``; None if there is none. Calls in flight at the fault
    and acknowledgements from any other server (an old primary still answering) do not count."""
    done = [a.t_done for a in history
            if a.outcome is Outcome.ACK and a.t_send >= t_fault and a.node is not None and a.node in servers]
    return min(done) - t_fault if done else None


def call_outcomes(history: Iterable[Attempt]) -> dict[str, Outcome]:
    """Per call_id, over all its attempts: any ack wins, then any indeterminate, else failed."""
    rank = {Outcome.FAILED: 0, Outcome.INDETERMINATE: 1, Outcome.ACK: 2}
    result: dict[str, Outcome] = {}
    for a in history:
        prev = result.get(a.call_id)
        if prev is None or rank[a.outcome] > rank[prev]:
            result[a.call_id] = a.outcome
    return result


@dataclass(frozen=True)
class BalanceMismatch:
    party: str
    party_id: int
    balance: Decimal | None  # None: deltas name a party that has no row
    deltas_sum: Decimal


@dataclass(frozen=True)
class Verdict:
    attempts: int
    calls: int
    acked: int
    failed: int
    indeterminate: int
    missing_acked: tuple[str, ...] = ()
    ack_id_mismatch: tuple[tuple[str, int, int], ...] = ()  # (call_id, acknowledged cdr_id, cdr_id in db)
    failed_but_applied: tuple[str, ...] = ()
    duplicate_call_ids: Mapping[str, int] = field(default_factory=dict)  # call_id -> CDR rows
    missing_deltas: tuple[tuple[str, str], ...] = ()  # (call_id, party)
    wrong_deltas: tuple[str, ...] = ()  # "call_id: what is wrong"
    orphan_deltas: tuple[str, ...] = ()  # call_ids with deltas and no CDR
    balance_mismatches: tuple[BalanceMismatch, ...] = ()
    indeterminate_applied: tuple[str, ...] = ()
    indeterminate_not_applied: tuple[str, ...] = ()
    unknown_cdrs: int = 0  # CDRs whose call_id is not in this history (other runs)
    longest_gap: Gap | None = None
    t_first_send: float | None = None
    t_last_done: float | None = None

    @property
    def ack_rate(self) -> float:
        """Acknowledged calls per second over the run (first send to last answer)."""
        if self.t_first_send is None or self.t_last_done is None or self.t_last_done <= self.t_first_send:
            return 0.0
        return self.acked / (self.t_last_done - self.t_first_send)

    @property
    def violations(self) -> list[str]:
        found = [
            (self.missing_acked, "acknowledged calls missing from the database"),
            (self.ack_id_mismatch, "acknowledged calls present under another CDR id"),
            (self.failed_but_applied, "calls refused by the service but committed"),
            (self.duplicate_call_ids, "call_ids with more than one CDR"),
            (self.missing_deltas, "balance deltas missing"),
            (self.wrong_deltas, "balance deltas disagreeing with their CDR"),
            (self.orphan_deltas, "balance deltas without a CDR"),
            (self.balance_mismatches, "balances that are not the sum of their deltas"),
        ]
        return [f"{len(items)} {what}" for items, what in found if items]

    @property
    def ok(self) -> bool:
        return not self.violations

    def render(self, examples: int = 5) -> str:
        t0 = self.t_first_send or 0.0
        lines = [
            f"verdict: {'OK' if self.ok else 'VIOLATIONS'}",
            f"  attempts {self.attempts}, calls {self.calls}: {self.acked} acknowledged, {self.failed} failed, "
            f"{self.indeterminate} indeterminate "
            f"({len(self.indeterminate_applied)} applied, {len(self.indeterminate_not_applied)} not applied)",
            f"  ack rate {self.ack_rate:.1f}/s",
        ]
        if self.longest_gap is not None:
            g = self.longest_gap
            lines.append(
                f"  longest gap between acks {g.seconds:.3f} s, from t+{g.start - t0:.3f} s to t+{g.end - t0:.3f} s "
                f"(monotonic {g.start:.3f} .. {g.end:.3f})"
            )
        if self.unknown_cdrs:
            lines.append(f"  {self.unknown_cdrs} CDRs in the database are not from this history")

        def show(title: str, items: Sequence[object]) -> None:
            if items:
                more = f" (+{len(items) - examples} more)" if len(items) > examples else ""
                lines.append(f"  VIOLATION {len(items)} {title}: {', '.join(map(str, items[:examples]))}{more}")

        show("acknowledged but missing", self.missing_acked)
        show(
            "acknowledged under another CDR id",
            [f"{c} (acked {a}, db {d})" for c, a, d in self.ack_id_mismatch],
        )
        show("refused but committed", self.failed_but_applied)
        show("duplicate call_ids", [f"{c} x{n}" for c, n in self.duplicate_call_ids.items()])
        show("missing deltas", [f"{c}/{p}" for c, p in self.missing_deltas])
        show("wrong deltas", self.wrong_deltas)
        show("orphan deltas", self.orphan_deltas)
        show(
            "balance mismatches",
            [f"{m.party} {m.party_id}: balance {m.balance} != deltas {m.deltas_sum}" for m in self.balance_mismatches],
        )
        return "\n".join(lines)


def _balance_mismatches(
    party: str, balances: Mapping[int, Decimal], deltas: Sequence[DeltaRow]
) -> list[BalanceMismatch]:
    sums: dict[int, Decimal] = defaultdict(Decimal)
    for d in deltas:
        if d.party == party and d.party_id is not None:
            sums[d.party_id] += d.delta or Decimal(0)
    out = []
    for pid in sorted(set(balances) | set(sums)):
        bal, total = balances.get(pid), sums.get(pid, Decimal(0))
        if bal is None or bal != total:
            out.append(BalanceMismatch(party, pid, bal, total))
    return out


def _delta_problems(cdrs: Mapping[str, CdrRow], deltas: Sequence[DeltaRow]) -> tuple[
    list[tuple[str, str]], list[str], list[str]
]:
    by_call: dict[str, list[DeltaRow]] = defaultdict(list)
    for d in deltas:
        by_call[d.call_id].append(d)
    missing: list[tuple[str, str]] = []
    wrong: list[str] = []
    for call_id, cdr in sorted(cdrs.items()):
        rows = by_call.get(call_id, [])
        expected = {"account": (cdr.account_id, -(cdr.price or 0)), "vendor": (cdr.vendor_id, cdr.cost or 0)}
        for party, (pid, amount) in expected.items():
            mine = [d for d in rows if d.party == party]
            if not mine:
                missing.append((call_id, party))
            elif len(mine) > 1:
                wrong.append(f"{call_id}: {len(mine)} {party} deltas")
            elif mine[0].party_id != pid or mine[0].delta != amount:
                got = mine[0]
                wrong.append(f"{call_id}: {party} delta {got.delta} to {got.party_id}, expected {amount} to {pid}")
    orphans = sorted(c for c in by_call if c not in cdrs)
    return missing, wrong, orphans


def check(history: Sequence[Attempt], db: DbState) -> Verdict:
    """Compare what clients were told with what the database holds."""
    outcomes = call_outcomes(history)
    acked_ids: dict[str, int | None] = {}
    for a in history:
        if a.outcome is Outcome.ACK and acked_ids.get(a.call_id) is None:
            acked_ids[a.call_id] = a.cdr_id

    rows_per_call = Counter(c.call_id for c in db.cdrs)
    ids_per_call: dict[str, set[int]] = defaultdict(set)
    for c in db.cdrs:
        ids_per_call[c.call_id].add(c.cdr_id)
    cdr_by_call = {c.call_id: c for c in sorted(db.cdrs, key=lambda c: c.cdr_id)}  # lowest id wins

    missing_acked: list[str] = []
    mismatch: list[tuple[str, int, int]] = []
    failed_applied: list[str] = []
    ind_applied: list[str] = []
    ind_not: list[str] = []
    for call_id, outcome in sorted(outcomes.items()):
        present = call_id in rows_per_call
        if outcome is Outcome.ACK:
            acked_id = acked_ids.get(call_id)
            if not present:
                missing_acked.append(call_id)
            elif acked_id is not None and acked_id not in ids_per_call[call_id]:
                mismatch.append((call_id, acked_id, cdr_by_call[call_id].cdr_id))
        elif outcome is Outcome.FAILED:
            if present:
                failed_applied.append(call_id)
        else:
            (ind_applied if present else ind_not).append(call_id)

    missing_deltas, wrong_deltas, orphans = _delta_problems(cdr_by_call, db.deltas)
    counts = Counter(outcomes.values())
    return Verdict(
        attempts=len(history),
        calls=len(outcomes),
        acked=counts[Outcome.ACK],
        failed=counts[Outcome.FAILED],
        indeterminate=counts[Outcome.INDETERMINATE],
        missing_acked=tuple(missing_acked),
        ack_id_mismatch=tuple(mismatch),
        failed_but_applied=tuple(failed_applied),
        duplicate_call_ids={c: n for c, n in sorted(rows_per_call.items()) if n > 1},
        missing_deltas=tuple(missing_deltas),
        wrong_deltas=tuple(wrong_deltas),
        orphan_deltas=tuple(orphans),
        balance_mismatches=(
            *_balance_mismatches("account", db.accounts, db.deltas),
            *_balance_mismatches("vendor", db.vendors, db.deltas),
        ),
        indeterminate_applied=tuple(ind_applied),
        indeterminate_not_applied=tuple(ind_not),
        unknown_cdrs=sum(1 for c in rows_per_call if c not in outcomes),
        longest_gap=longest_ack_gap(a.t_done for a in history if a.outcome is Outcome.ACK),
        t_first_send=min((a.t_send for a in history), default=None),
        t_last_done=max((a.t_done for a in history), default=None),
    )
