"""One failover or switchover of the lab's Kamailio pair under SIPp calls, and what it cost the accounting.

Shared by bench/softswitch.py (the figures) and tests/lab/test_softswitch_kamailio.py (the behaviour):
a lab with Kamailio on both nodes (standby.lab.sip), SIPp placing calls at a set rate through the service
IP, one event on alpha while calls are in progress, then every call counted in the new primary's database.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from standby.lab import sip, sipp_errors
from standby.lab.errors import LabError
from standby.lab.lab import Lab
from standby.lab.pair import holders, primaries, start_pair
from standby.lab.topology import LabSpec

Log = Callable[[str], None]


class Event(enum.StrEnum):
    HOST_CRASH = "host_crash"  # alpha loses power: every process, its cables, its addresses
    SWITCHOVER = "switchover"  # `standby switchover` on alpha


@dataclass(frozen=True)
class Load:
    rate: float = 30.0  # calls a second
    calls: int = 300
    hold_ms: int = 1500  # how long each call lasts once answered


@dataclass
class EventResult:
    event: str
    accounting: str
    dmq: bool
    durability: str
    rate: float
    calls: int
    succeeded: int = 0
    failed: int = 0  # SIPp's failed calls: no answer, an error answer, a BYE never answered
    retransmissions: int = 0
    invites_missing: int = 0  # calls without their INVITE's accounting record
    cdrs_missing: int = 0  # calls without a record of their end that knows their start
    ends_without_start: int = 0  # of those, the calls whose end was accounted without a start
    duplicates: int = 0  # records beyond the first for the same call and method
    # Of the calls SIPp completed (answered, held, hung up): those without an INVITE record, without a CDR.
    # A failed call may rightly have no record; a completed one without is a call that went unbilled.
    completed_invites_missing: int = 0
    completed_cdrs_missing: int = 0
    primary_after: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # a few calls missing a record, with what there is
    # Calls failed, or without exactly one INVITE record and one CDR with its start; of those, the calls whose
    # answer the callee sent to the crashed node (standby.lab.sipp_errors: what a crash still costs), and the
    # others (up to 10 Call-IDs): a call there is a loss no documented limit explains.
    not_whole: int = 0
    answer_lost_with_crash: int = 0
    unexplained: list[str] = field(default_factory=list)
    event_s: float = 0.0  # seconds from the first call to the event


def build(spec: LabSpec, setup: sip.Setup, log: Log = print, ring_ms: int = 0) -> Lab:
    """A running pair with Kamailio on both nodes, the callee up (answering at once, or after ``ring_ms`` of
    ringing) and (spool) a shipper on each node."""
    sip.check_prerequisites()
    spec = replace(spec, home_addresses=True)  # each proxy forwards from its node's home address
    log(f"lab {spec.name} up ({spec.durability}, accounting {setup.accounting.value}, dmq {setup.dmq})")
    lab = Lab.up(spec, [sip.service_entry(spec, setup)])
    try:
        sip.configure(lab, setup)
        sip.start_callee(lab, ring_ms)
        start_pair(lab)
        if setup.accounting is sip.Accounting.SPOOL:
            for node in ("alpha", "beta"):
                sip.start_shipper(lab, node)
    except BaseException:
        lab.down()
        raise
    return lab


def _stats(path: Path) -> sip.CallerStats | None:
    try:
        return sip.read_caller_stats(path)
    except LabError:
        return None


def run_event(lab: Lab, setup: sip.Setup, event: Event, load: Load, log: Log = print,
              keep_logs: Path | None = None) -> EventResult:
    """Calls at ``load.rate``; once calls are in progress, ``event`` on alpha (the primary); then the count.
    With ``keep_logs``, the lab's logs (Kamailio's too) are copied under it when a call's accounting is incomplete."""
    result = EventResult(event.value, setup.accounting.value, setup.dmq, lab.spec.durability, load.rate, load.calls)
    logs = lab.spec.role_dir("client") / "log"
    stats_file = logs / "sipp-caller-stats.csv"
    stats_file.unlink(missing_ok=True)
    sip.completed_log(logs).unlink(missing_ok=True)
    (logs / sip.CALLER_ERRORS).unlink(missing_ok=True)  # read after the event: only this run's calls
    lab.spawn("client", sip.caller_argv(stats_file, load.rate, load.calls, load.hold_ms, logs), "sipp-caller")
    t0 = time.monotonic()
    # A steady state first: calls set up, answered and ended, with as many in progress as the rate holds.
    lab.wait_for("SIPp's first completed calls", lambda: (s := _stats(stats_file)) and s.successful >= load.rate * 2,
                 timeout_s=60)
    result.event_s = round(time.monotonic() - t0, 2)
    log(f"{event.value} on alpha {result.event_s} s into the calls")
    if event is Event.HOST_CRASH:
        lab.crash("alpha")
    else:
        lab.standby("alpha", "switchover")
    lab.wait_for("beta the only primary, holding the service IP",
                 lambda: primaries(lab) == ["beta"] and holders(lab) == ["beta"], timeout_s=90)
    lab.wait_for("SIPp to place and end every call", lambda: not lab.spawned_alive("client", "sipp-caller"),
                 timeout_s=load.calls / load.rate + 90)
    if event is Event.HOST_CRASH:
        lab.heal()  # the host is back: its database stays down, its spool is still on its disk
        if setup.accounting is sip.Accounting.SPOOL:
            sip.start_shipper(lab, "alpha")
    final = _stats(stats_file)
    if final is None:
        raise LabError(f"SIPp left no statistics in {stats_file}")
    result.succeeded, result.failed, result.retransmissions = final.successful, final.failed, final.retransmissions
    tally, records = settle(lab, setup, load.calls)
    result.incomplete = sip.incomplete(records)
    result.invites_missing = load.calls - tally.invites
    result.cdrs_missing = load.calls - tally.cdrs
    result.ends_without_start = tally.ends_without_start
    result.duplicates = tally.duplicates
    completed = sip.read_completed(sip.completed_log(logs))
    of_completed = sip.tally(records, completed)
    result.completed_invites_missing = len(completed) - of_completed.invites
    result.completed_cdrs_missing = len(completed) - of_completed.cdrs
    _explain(result, event, records, completed, logs)
    result.primary_after = primaries(lab)
    log(f"{event.value}: {result}")
    if keep_logs is not None and result.not_whole:
        lab.collect_logs(keep_logs / lab.name)
    return result


def _explain(result: EventResult, event: Event, records: list[sip.AccRecord], completed: set[str],
             logs: Path) -> None:
    """Fill ``result``'s calls that are not whole, and which of them the crashed node's memory explains."""
    caller = sipp_errors.read(logs / sip.CALLER_ERRORS)
    failed = sipp_errors.failed_calls(caller) - completed
    accounted = {r.callid for r in records}
    not_whole = set(sip.incomplete_calls(records)) | failed | (completed - accounted)
    explained: set[str] = set()
    if event is Event.HOST_CRASH:
        callee = sipp_errors.read(logs / sip.CALLEE_ERRORS)
        explained = not_whole & (sipp_errors.answered_to_the_crashed(callee, sip.PUBLIC_IPS["beta"])
                                 | answer_held_by_the_crashed(records, caller, str(sip.NODE_IDS["alpha"])))
    unexplained = sorted(not_whole - explained)
    if len(failed) != result.failed:  # a failed call the caller's errors do not name cannot be looked at
        unexplained.insert(0, f"{result.failed} calls failed, the caller's errors name {len(failed)}")
    result.not_whole, result.answer_lost_with_crash, result.unexplained = len(not_whole), len(explained), unexplained[:10]


def answer_held_by_the_crashed(records: list[sip.AccRecord], caller_errors: list[sipp_errors.SippError],
                               crashed: str) -> set[str]:
    """The calls whose answer only the crashed proxy (node id ``crashed``) had, on its own word: the one record
    of the call is that proxy's account of the callee's 200 to the INVITE (from its spool, shipped after the
    heal), and the caller gave the call up waiting for an answer. Its 100 Trying had stopped the caller sending
    the INVITE again, so no other node ever saw the call and the callee had nothing to say (CI run 62)."""
    calls: dict[str, list[sip.AccRecord]] = {}
    for r in records:
        calls.setdefault(r.callid, []).append(r)
    return {c for c in sipp_errors.gave_up_waiting(caller_errors)
            if [(r.method, r.sip_code, r.node) for r in calls.get(c, [])] == [("INVITE", "200", crashed)]}


def settle(lab: Lab, setup: sip.Setup, calls: int, quiet_s: float = 8.0,
           timeout_s: float = 90.0) -> tuple[sip.Accounted, list[sip.AccRecord]]:
    """The new primary's count (and its records) once every call is in, or once it has not changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while True:
        with lab.pg_connect("beta", "softswitch", connect_timeout=2) as conn:
            records = sip.read_records(conn, setup.accounting)
        now = sip.tally(records)
        if now.invites >= calls and now.cdrs >= calls:
            return now, records
        if now != last:
            last, since = now, time.monotonic()
        if time.monotonic() - since >= quiet_s or time.monotonic() > deadline:
            return now, records
        time.sleep(0.5)
