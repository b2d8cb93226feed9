"""What SIPp's error files (-trace_err) say about single calls, and which calls a crashed proxy took with it.

A host crash of the proxy that held a call's transaction loses what only that proxy knew: the callee
answered the request to the crashed node's own address (the Via), so the answer never reaches the caller,
whose retransmission reaches the survivor as a new request. The callee then gets that request again,
through the survivor, for a call it has already answered: SIPp logs it ("Aborting call on unexpected
message ... received 'INVITE"). That entry is the evidence that the call's answer went to the crashed node
(README, "Kamailio on the pair", what a crash still costs). Tests excuse a call's missing answer or record
only with it. A BYE received again is no such evidence any more: the lab's callee answers every BYE for a
call it ended with 481 for 32 s after the last one (SIPp's "Dead call" comes only after that), which ends
the call for the caller and has it accounted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from standby.lab.errors import LabError

# Each entry starts with the date, time and unix time, tab-separated, then a colon; not always on a line of
# its own: SIPp starts the next entry right after a quoted message's closing quote.
_ENTRY = re.compile(r"\d{4}-\d{2}-\d{2}\t[0-9:.]+\t[0-9.]+: ")
# SIPp names the call as "Dead call ID (" or "Call-Id: ID," or "Call-Id 'ID'".
_CALL = re.compile(r"Dead call (\S+) \(|Call-Id:? '?([^\s',]+)", re.I)
_RECEIVED = re.compile(r"received '([A-Z]+) ")
_VIA = re.compile(r"^Via: SIP/2\.0/[A-Z]+ ([^;:\s]+)", re.M | re.I)


@dataclass(frozen=True)
class SippError:
    callid: str
    text: str  # SIPp's first line, without the time
    received: str = ""  # the request SIPp received and could not take into a live call, if any
    via: str = ""  # that request's top Via host: the proxy that forwarded it


def read(path: Path) -> list[SippError]:
    """The entries of a SIPp error file that name a call; none when SIPp wrote no file (no error)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise LabError(f"cannot read SIPp's errors {path}: {e.strerror}") from None
    return parse(text)


def parse(text: str) -> list[SippError]:
    heads = list(_ENTRY.finditer(text))
    out = []
    for i, head in enumerate(heads):
        start, end = head.end(), heads[i + 1].start() if i + 1 < len(heads) else len(text)
        entry = text[start:end]
        call = _CALL.search(entry)
        if call is None:
            continue
        received = _RECEIVED.search(entry)
        # The received message's top Via; SIPp's own words come before the message.
        message = entry[received.start():] if received else ""
        via = _VIA.search(message)
        out.append(SippError(callid=call.group(1) or call.group(2), text=entry.splitlines()[0].strip(),
                             received=received.group(1) if received else "", via=via.group(1) if via else ""))
    return out


def answered_to_the_crashed(callee_errors: list[SippError], survivor: str) -> set[str]:
    """The calls whose INVITE the callee received again through ``survivor`` (a proxy's own address) after it
    had answered it: their answer went to the other proxy, the crashed one."""
    return {e.callid for e in callee_errors if e.received == "INVITE" and e.via == survivor}


def gave_up_waiting(caller_errors: list[SippError]) -> set[str]:
    """The calls the caller gave up while waiting for a message (SIPp's receive timeout): an answer that never
    came, as opposed to a request it could not send or a message it did not expect."""
    return {e.callid for e in caller_errors if "receive timeout" in e.text}


def failed_calls(caller_errors: list[SippError]) -> set[str]:
    """The calls the caller's error file names (SIPp logs why it gave each failed call up)."""
    return {e.callid for e in caller_errors}
