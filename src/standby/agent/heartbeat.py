"""Heartbeats: small authenticated UDP messages between the two agents, on both networks.

Wire format: a JSON body followed by its HMAC-SHA256 (32 bytes) under the
shared key. A message is accepted only if the MAC verifies, it names this
cluster and the peer, and its (boot, seq) is newer than any accepted before:
boot grows with every agent start (persisted), seq with every message, so a
recorded message can never be played back. Anything else is counted and
dropped; no input can raise out of `Receiver.accept`.

It owns: the wire format and the rules for accepting a message. It may not read sockets or
clocks (the link, agent/link.py, does both), nor act on what a message says.

The order is remembered across the receiver's own restarts too: the peer's
newest accepted boot is persisted (only when it changes, so no write per
packet), older boots are refused, and a message of that same boot, whose
sequence numbers were only in memory, is trusted only once it acknowledges
this run of the receiver (something a recording from before cannot do).

``v`` is the sender's protocol major (standby.protocol has the rule): a message of another major is
refused as "protocol", never decoded, and the receiver remembers the major it heard, so the agent's
view can say which side to upgrade. A minor adds optional fields only (``_optional``).
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from standby import protocol
from standby.model import DbState, Net, PeerView

VERSION = protocol.MAJOR
MAC_LEN = 32
MAX_PACKET = 2048


class Reject(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class ProtocolReject(Reject):
    """A message of another protocol major: its fields may mean something else, so none is read."""

    def __init__(self, peer: int) -> None:
        super().__init__("protocol", f"the peer speaks protocol {peer}, this node {VERSION}")
        self.peer = peer


@dataclass(frozen=True)
class Heartbeat:
    cluster: str
    sender: str
    boot: int
    seq: int
    net: Net
    digest: str  # of the sender's configuration
    view: PeerView
    # (boot, seq) of the newest message the sender accepted from the receiver:
    # lets the receiver tell how long the sender has not heard it.
    ack: tuple[int, int] | None = None


def view_to_dict(v: PeerView) -> dict[str, Any]:
    return {
        "term": v.term, "db": v.db.value, "services": v.services, "lsn": v.lsn, "sync_ok": v.sync_ok,
        "carrier": {k.value: bool(b) for k, b in v.carrier.items()}, "tiebreaker_ok": v.tiebreaker_ok,
        "releasing_services": v.releasing_services, "preferred": v.preferred,
        "reporting": v.reporting, "reporting_epoch": v.reporting_epoch, "reporting_ack": v.reporting_ack,
        "eligible": v.eligible, "dr_serves": v.dr_serves,
        **({"dr_writable_term": v.dr_writable_term} if v.dr_writable_term is not None else {}),
        **({"home_adopted": True} if v.home_adopted else {}),  # absent while false: no cost where unused
    }


def encode(hb: Heartbeat, key: bytes) -> bytes:
    body = json.dumps({
        "v": VERSION, "cluster": hb.cluster, "from": hb.sender, "boot": hb.boot, "seq": hb.seq,
        "net": hb.net.value, "digest": hb.digest, "view": view_to_dict(hb.view),
        **({"ack": list(hb.ack)} if hb.ack is not None else {}),
    }, separators=(",", ":"), sort_keys=True).encode()
    return body + hmac.digest(key, body, "sha256")


def _typed(d: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in d:
        raise Reject("malformed", f"missing {name}")
    value = d[name]
    # bool is an int in Python: do not let true pass as a number or 1 as a flag.
    if isinstance(value, bool) and kind not in (bool, (bool, type(None))):
        raise Reject("malformed", f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise Reject("malformed", f"{name} has the wrong type")
    return value


def _optional(d: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """A field later versions added: absent in an older peer's message, typed when present."""
    return _typed(d, name, kind) if name in d else default


def _view(d: Any) -> PeerView:
    if not isinstance(d, dict):
        raise Reject("malformed", "view is not an object")
    carrier_raw = _typed(d, "carrier", dict)
    try:
        carrier = {Net(k): bool(v) for k, v in carrier_raw.items() if isinstance(v, bool)}
        db = DbState(_typed(d, "db", str))
    except ValueError as e:
        raise Reject("malformed", str(e)) from None
    lsn = _typed(d, "lsn", (int, type(None)))
    term = _typed(d, "term", int)
    if term < 0 or (lsn is not None and lsn < 0):
        raise Reject("malformed", "negative term or lsn")
    epoch, ack = _optional(d, "reporting_epoch", int, 0), _optional(d, "reporting_ack", int, 0)
    if epoch < 0 or ack < 0:
        raise Reject("malformed", "negative reporting episode")
    dr_term = _optional(d, "dr_writable_term", int, None)
    if dr_term is not None and dr_term < 0:
        raise Reject("malformed", "negative dr_writable_term")
    return PeerView(
        term=term, db=db, services=_typed(d, "services", bool), lsn=lsn, sync_ok=_typed(d, "sync_ok", bool),
        carrier=carrier, tiebreaker_ok=_typed(d, "tiebreaker_ok", (bool, type(None))),
        releasing_services=_typed(d, "releasing_services", bool), preferred=_typed(d, "preferred", bool),
        reporting=_optional(d, "reporting", bool, False), reporting_epoch=epoch, reporting_ack=ack,
        eligible=_optional(d, "eligible", bool, True), dr_serves=_optional(d, "dr_serves", bool, False),
        dr_writable_term=dr_term, home_adopted=_optional(d, "home_adopted", bool, False),
    )


def _ack(d: dict[str, Any]) -> tuple[int, int] | None:
    if "ack" not in d:
        return None  # an older peer
    ack = d["ack"]
    if (not isinstance(ack, list) or len(ack) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ack)):
        raise Reject("malformed", "ack is not [boot, seq]")
    return ack[0], ack[1]


def decode(packet: bytes, key: bytes) -> Heartbeat:
    """Verify and parse one packet; raises Reject (never anything else)."""
    try:
        if len(packet) <= MAC_LEN or len(packet) > MAX_PACKET:
            raise Reject("malformed", f"{len(packet)} bytes")
        body, mac = packet[:-MAC_LEN], packet[-MAC_LEN:]
        if not hmac.compare_digest(mac, hmac.digest(key, body, "sha256")):
            raise Reject("forged", "bad MAC")
        d = json.loads(body)
        if not isinstance(d, dict):
            raise Reject("malformed", "not an object")
        if (v := _typed(d, "v", int)) != VERSION:
            raise ProtocolReject(v)
        try:
            net = Net(_typed(d, "net", str))
        except ValueError:
            raise Reject("malformed", "unknown network") from None
        boot, seq = _typed(d, "boot", int), _typed(d, "seq", int)
        if boot < 0 or seq < 0:
            raise Reject("malformed", "negative counter")
        return Heartbeat(cluster=_typed(d, "cluster", str), sender=_typed(d, "from", str), boot=boot, seq=seq,
                         net=net, digest=_typed(d, "digest", str), view=_view(d.get("view")), ack=_ack(d))
    except Reject:
        raise
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as e:
        raise Reject("malformed", type(e).__name__) from None


class Receiver:
    """Accepts the peer's heartbeats in order, per network; counts everything it refuses.

    Each packet carries its own sequence number, so the copies sent on the two
    networks are distinct messages; ordering is enforced per network, because
    the two paths may reorder against each other.
    """

    def __init__(self, key: bytes, cluster: str, peer: str, digest: str) -> None:
        self.key, self.cluster, self.peer, self.digest = key, cluster, peer, digest
        self.last: dict[Net, tuple[int, int]] = {n: (-1, -1) for n in Net}
        self.newest: tuple[int, int] = (-1, -1)
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.mismatched_digest: str | None = None
        # The protocol major of the peer's newest refused message, until one of ours is accepted again.
        self.peer_protocol: int | None = None
        # The peer's newest boot ever accepted (persisted through `restore`), and the one known at
        # this receiver's start: the sequence numbers of that boot were lost with the last run.
        self.floor = -1
        self.restored_boot = -1
        self._persist: Callable[[int], Future[None]] | None = None
        self._saving: tuple[int, Future[None]] | None = None  # the newest boot being written, and its write
        self.persist_errors = 0

    def restore(self, peer_boot: int, persist: Callable[[int], Future[None]]) -> None:
        """Continue after a restart: ``peer_boot`` is the newest boot accepted by earlier runs;
        ``persist`` starts durably recording a newer one on another thread (writes in the order
        asked: a single-thread pool), and the boot is acted on only once that write is over."""
        self.floor = self.restored_boot = peer_boot
        self._persist = persist

    def _recorded(self, boot: int) -> bool:
        """Whether ``boot`` is on disk; the first time it is asked, starts the write. The handler runs on
        the event loop: an fsync there on a busy disk was a stall that fenced a healthy primary."""
        if self._persist is None:
            return True
        if self._saving is None or self._saving[0] != boot:
            self._saving = (boot, self._persist(boot))
        write = self._saving[1]
        if not write.done():
            return False
        if write.exception() is not None:  # a disk problem must not make the peer unheard; memory still holds it
            self.persist_errors += 1
        return True

    def accept(self, packet: bytes, arrived_on: Net) -> Heartbeat | None:
        """The heartbeat if valid and new; None otherwise (and counted)."""
        try:
            hb = decode(packet, self.key)
            if hb.cluster != self.cluster or hb.sender != self.peer:
                raise Reject("foreign", f"{hb.cluster}/{hb.sender}")
            if hb.net is not arrived_on:
                raise Reject("wrong_network", f"sent for {hb.net.value}, arrived on {arrived_on.value}")
            if (hb.boot, hb.seq) <= self.last[hb.net] or hb.boot < self.floor:
                raise Reject("replay", f"boot {hb.boot} seq {hb.seq}")
            if hb.digest != self.digest:
                self.mismatched_digest = hb.digest
                raise Reject("config_mismatch", hb.digest[:12])
            if hb.boot > self.floor:
                if not self._recorded(hb.boot):
                    raise Reject("boot_unrecorded", f"boot {hb.boot} is being written down")
                self.floor = hb.boot
        except Reject as r:
            self.rejected[r.kind] += 1
            if isinstance(r, ProtocolReject):
                self.peer_protocol = r.peer
            return None
        self.peer_protocol = None
        self.last[hb.net] = (hb.boot, hb.seq)
        self.accepted += 1
        return hb

    def trusted(self, hb: Heartbeat, my_boot: int) -> bool:
        """Whether an accepted heartbeat may count as the peer's word (alive, and its view).

        A boot newer than any accepted before this receiver started is new by construction. The
        boot that was current then may be a recording played back after the restart (its sequence
        numbers were in memory only), unless it acknowledges ``my_boot``: only a peer that heard
        this run can. Untrusted messages still feed the acknowledgements, so the peer soon proves it.
        """
        return hb.boot > self.restored_boot or (hb.ack is not None and hb.ack[0] == my_boot)

    def is_newest(self, hb: Heartbeat) -> bool:
        """True (and remembered) if no later message from the peer was seen on any network."""
        if (hb.boot, hb.seq) > self.newest:
            self.newest = (hb.boot, hb.seq)
            return True
        return False
