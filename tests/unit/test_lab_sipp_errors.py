"""Reading SIPp's error files: which calls a crashed proxy took with it (standby.lab.sipp_errors).

The entries are SIPp's own, as CI run 36's host crash left them (call 77's BYE answered to the crashed alpha,
sent again through beta, which the lab's callee now answers with 481 instead); the unexpected-message one
follows SIPp's format for a callee that got an INVITE again through the other proxy while it waited for the
ACK."""

from __future__ import annotations

from pathlib import Path

import pytest

from standby.lab import sipp_errors
from standby.lab.errors import LabError

DEAD_BYE = (
    "2026-12-03\t17:36:39.129049\t1796319399.129049: Dead call 77-31329@192.0.2.50 (successful), received "
    "'BYE sip:callee@192.0.2.50:5070 SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.12;branch=z9hG4bKcaee.9b80863faca757c6f75374a8c4a9f9d3.0\n"
    "Via: SIP/2.0/UDP 192.0.2.50:5061;branch=z9hG4bK-31329-77-6\n"
    "From: <sip:caller@192.0.2.50:5061>;tag=31329c77\n"
    "Call-ID: 77-31329@192.0.2.50\n"
    "CSeq: 2 BYE\n"
    "Content-Length: 0\n\n'"
)
UNEXPECTED_INVITE = (
    "2026-12-03\t17:36:39.200000\t1796319399.200000: Aborting call on unexpected message for Call-Id "
    "'80-31329@192.0.2.50': while expecting 'ACK' (index 2), received 'INVITE sip:callee@192.0.2.50:5070 SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.12;branch=z9hG4bK0a1.0\n"
    "Via: SIP/2.0/UDP 192.0.2.50:5061;branch=z9hG4bK-31329-80-0\n"
    "Call-ID: 80-31329@192.0.2.50\n"
    "CSeq: 1 INVITE\n\n'"
)
TIMEOUT = ("2026-12-03\t17:37:07.621430\t1796319427.621430: Call-Id: 77-31329@192.0.2.50, receive timeout on "
           "message standby lab caller:7 without label to jump to (ontimeout attribute): aborting call")


def test_each_entry_names_its_call_the_request_received_and_the_proxy_that_forwarded_it() -> None:
    errors = sipp_errors.parse("The following events occurred:\n" + DEAD_BYE + UNEXPECTED_INVITE + TIMEOUT + "\n")
    assert [(e.callid, e.received, e.via) for e in errors] == [
        ("77-31329@192.0.2.50", "BYE", "192.0.2.12"),
        ("80-31329@192.0.2.50", "INVITE", "192.0.2.12"),
        ("77-31329@192.0.2.50", "", ""),
    ]
    assert errors[2].text.startswith("Call-Id: 77-31329@192.0.2.50, receive timeout")


def test_only_an_invite_again_through_the_survivor_shows_the_answer_went_to_the_crashed_node() -> None:
    through_alpha = UNEXPECTED_INVITE.replace("UDP 192.0.2.12;", "UDP 192.0.2.11;").replace("80-31329", "78-31329")
    ack = DEAD_BYE.replace("received 'BYE", "received 'ACK").replace("77-31329", "79-31329")
    errors = sipp_errors.parse(DEAD_BYE + UNEXPECTED_INVITE + through_alpha + ack)
    # A BYE again (call 77, CI run 36) no longer excuses a call: the lab's callee answers it with 481 for 32 s
    # after the call's end, which ends the call and has it accounted; a dead-call BYE means some other fault.
    assert sipp_errors.answered_to_the_crashed(errors, "192.0.2.12") == {"80-31329@192.0.2.50"}
    assert sipp_errors.answered_to_the_crashed(errors, "192.0.2.13") == set()


def test_failed_calls_are_those_the_callers_errors_name(tmp_path: Path) -> None:
    assert sipp_errors.read(tmp_path / "none.log") == []  # SIPp writes no file when nothing went wrong
    f = tmp_path / "caller-errors.log"
    f.write_text("The following events occurred:\n" + TIMEOUT + "\n")
    assert sipp_errors.failed_calls(sipp_errors.read(f)) == {"77-31329@192.0.2.50"}
    assert sipp_errors.parse("no entry here\n") == []


def test_an_unreadable_file_is_a_lab_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="cannot read SIPp's errors"):
        sipp_errors.read(tmp_path)  # a directory


def test_an_event_explains_a_call_only_on_the_callees_word_and_only_for_a_crash(tmp_path: Path) -> None:
    from standby.lab import sip
    from standby.lab.sipevent import Event, EventResult, _explain

    r = sip.AccRecord
    records = [r("INVITE", "76-31329@192.0.2.50", "", "1"), r("BYE", "76-31329@192.0.2.50", "1796319398", "2"),
               r("INVITE", "77-31329@192.0.2.50", "", "1"),  # answered to the crashed alpha, its INVITE again via beta
               r("INVITE", "78-31329@192.0.2.50", "", "1"), r("BYE", "78-31329@192.0.2.50", "0", "2")]  # no start
    completed = {"76-31329@192.0.2.50", "78-31329@192.0.2.50"}
    (tmp_path / sip.CALLER_ERRORS).write_text("The following events occurred:\n" + TIMEOUT + "\n")
    # Forwarded by beta from its home address (the recorded log had beta's public address before there were any).
    beta = sip.PUBLIC_IPS["beta"]
    (tmp_path / sip.CALLEE_ERRORS).write_text("The following events occurred:\n" + UNEXPECTED_INVITE.replace(
        "UDP 192.0.2.12;", f"UDP {beta};").replace("80-31329", "77-31329"))
    for event, explained in ((Event.HOST_CRASH, 1), (Event.SWITCHOVER, 0)):
        result = EventResult(event.value, "spool", True, "sync", 30, 3, succeeded=2, failed=1)
        _explain(result, event, records, completed, tmp_path)
        assert (result.not_whole, result.answer_lost_with_crash) == (2, explained)
        assert result.unexplained == (["78-31329@192.0.2.50"] if explained else
                                      ["77-31329@192.0.2.50", "78-31329@192.0.2.50"])
    # A failed call the caller's errors do not name cannot be looked at: said first.
    result = EventResult("host_crash", "spool", True, "sync", 30, 3, succeeded=1, failed=2)
    _explain(result, Event.HOST_CRASH, records, {"76-31329@192.0.2.50"}, tmp_path)
    assert result.unexplained[0] == "2 calls failed, the caller's errors name 1"


HELD_ANSWER_TIMEOUT = ("2026-12-05\t00:59:38.789467\t1796432378.789467: Call-Id: 121-28357@192.0.2.50, receive timeout "
                       "on message standby lab caller:2 without label to jump to (ontimeout attribute): aborting call")


def test_ci62_a_call_whose_answer_only_the_crashed_proxy_had_is_explained_on_that_proxys_own_record(
        tmp_path: Path) -> None:
    """CI run 62 and stop 37's CI, call 121 both times (the crash follows SIPp's statistics tick, the tick on
    which SIPp places its next calls): alpha met the INVITE with its 100 Trying (the caller stops sending it
    again), the callee answered through alpha, alpha accounted the answer into its spool (shipped after the
    heal: "INVITE 200" from node 1) and died before the answer reached the caller, who gave up waiting for it.
    No request went again through beta, so the callee had nothing to say. The crashed node's own record of
    the answer, and nothing else accounted for the call, is the evidence; anything more or other is not."""
    from standby.lab import sip
    from standby.lab.sipevent import Event, EventResult, _explain

    r = sip.AccRecord
    call = "121-28357@192.0.2.50"
    (tmp_path / sip.CALLER_ERRORS).write_text("The following events occurred:\n" + HELD_ANSWER_TIMEOUT + "\n")
    cases = [  # (the call's records, the caller's error, the event, explained)
        ([r("INVITE", call, "", "1", "200")], HELD_ANSWER_TIMEOUT, Event.HOST_CRASH, True),
        ([r("INVITE", call, "", "1", "200")], HELD_ANSWER_TIMEOUT, Event.SWITCHOVER, False),  # nothing crashed
        ([r("INVITE", call, "", "2", "200")], HELD_ANSWER_TIMEOUT, Event.HOST_CRASH, False),  # the survivor had it
        ([r("INVITE", call, "", "1", "486")], HELD_ANSWER_TIMEOUT, Event.HOST_CRASH, False),  # not an answer
        ([r("INVITE", call, "", "1", "200"), r("BYE", call, "1796432350", "2", "200")],  # the caller had it
         HELD_ANSWER_TIMEOUT, Event.HOST_CRASH, False),
        ([], HELD_ANSWER_TIMEOUT, Event.HOST_CRASH, False),  # no record: nobody's word
        ([r("INVITE", call, "", "1", "200")],  # given up for another reason than a missing answer
         HELD_ANSWER_TIMEOUT.replace("receive timeout on message", "send timeout on message"), Event.HOST_CRASH,
         False),
    ]
    for records, error, event, explained in cases:
        (tmp_path / sip.CALLER_ERRORS).write_text("The following events occurred:\n" + error + "\n")
        result = EventResult(event.value, "spool", True, "sync", 30, 1, succeeded=0, failed=1)
        _explain(result, event, records, set(), tmp_path)
        assert (result.not_whole, result.answer_lost_with_crash, result.unexplained) == (
            (1, 1, []) if explained else (1, 0, [call])), (records, error, event)
