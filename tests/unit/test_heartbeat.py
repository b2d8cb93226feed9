"""Heartbeat codec and receiver: authenticated, ordered, and unbreakable by any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from standby.agent.heartbeat import MAC_LEN, MAX_PACKET, VERSION, Heartbeat, Receiver, Reject, decode, encode
from standby.model import DbState, Net, PeerView
from tests.sizing import examples

KEY = b"k" * 32
VIEW = PeerView(term=3, db=DbState.PRIMARY, services=True, lsn=12345, sync_ok=True,
                carrier={Net.PUBLIC: True, Net.PRIVATE: False}, tiebreaker_ok=None)


def hb(seq: int, net: Net = Net.PUBLIC, boot: int = 1, sender: str = "alpha", digest: str = "d") -> bytes:
    return encode(Heartbeat("c", sender, boot, seq, net, digest, VIEW), KEY)


def receiver() -> Receiver:
    return Receiver(KEY, "c", "alpha", "d")


def test_roundtrip() -> None:
    got = decode(hb(7), KEY)
    assert got.view == VIEW and got.seq == 7 and got.net is Net.PUBLIC


def test_forged_mac_rejected_and_counted() -> None:
    r = receiver()
    good = hb(1)
    forged = good[:-MAC_LEN] + bytes(MAC_LEN)
    assert r.accept(forged, Net.PUBLIC) is None
    other_key = encode(Heartbeat("c", "alpha", 1, 1, Net.PUBLIC, "d", VIEW), b"x" * 32)
    assert r.accept(other_key, Net.PUBLIC) is None
    assert r.rejected["forged"] == 2 and r.accepted == 0


def test_tampered_body_rejected() -> None:
    pkt = bytearray(hb(1))
    pkt[10] ^= 0x01
    assert receiver().accept(bytes(pkt), Net.PUBLIC) is None


def test_replay_rejected_per_network() -> None:
    r = receiver()
    assert r.accept(hb(5, Net.PUBLIC), Net.PUBLIC) is not None
    assert r.accept(hb(5, Net.PUBLIC), Net.PUBLIC) is None  # the same packet again
    assert r.accept(hb(4, Net.PUBLIC), Net.PUBLIC) is None  # an older one
    assert r.accept(hb(4, Net.PRIVATE), Net.PRIVATE) is not None  # the other path may lag behind
    assert r.rejected["replay"] == 2


def test_new_agent_run_accepted_old_run_refused() -> None:
    r = receiver()
    assert r.accept(hb(900, boot=1), Net.PUBLIC) is not None
    assert r.accept(hb(1, boot=2), Net.PUBLIC) is not None  # restarted agent: seq starts again
    assert r.accept(hb(901, boot=1), Net.PUBLIC) is None  # a recording of the previous run


def test_wrong_sender_cluster_network_or_config() -> None:
    r = receiver()
    assert r.accept(hb(1, sender="beta"), Net.PUBLIC) is None
    assert r.accept(encode(Heartbeat("other", "alpha", 1, 2, Net.PUBLIC, "d", VIEW), KEY), Net.PUBLIC) is None
    assert r.accept(hb(3, Net.PRIVATE), Net.PUBLIC) is None
    assert r.accept(hb(4, digest="e"), Net.PUBLIC) is None
    assert r.rejected == {"foreign": 2, "wrong_network": 1, "config_mismatch": 1}
    assert r.mismatched_digest == "e"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash(data: bytes) -> None:
    r = receiver()
    assert r.accept(data, Net.PUBLIC) is None
    assert sum(r.rejected.values()) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=6), max_leaves=25)


@settings(max_examples=examples(2000, 500), deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "cluster", "from", "boot", "seq", "net", "digest", "view"]), json_values),
       st.dictionaries(st.sampled_from(["term", "db", "services", "lsn", "sync_ok", "carrier", "tiebreaker_ok",
                                        "releasing_services", "preferred"]), json_values))
def test_authenticated_garbage_is_a_clean_reject(fields: dict, view: dict) -> None:
    """Even a correctly signed message with nonsense inside only ever raises Reject."""
    import hashlib
    import hmac
    import json

    fields = {**fields, "view": view} if "view" not in fields else fields
    body = json.dumps(fields).encode()
    packet = body + hmac.new(KEY, body, hashlib.sha256).digest()
    try:
        decode(packet, KEY)
    except Reject as e:
        v = fields.get("v")
        # Signed and of a sendable size, it names another protocol: refused as that, its fields unread.
        other_protocol = isinstance(v, int) and not isinstance(v, bool) and v != VERSION and len(packet) <= MAX_PACKET
        assert e.kind == ("protocol" if other_protocol else "malformed")


def _signed(fields: dict) -> bytes:
    import hashlib
    import hmac
    import json

    body = json.dumps(fields).encode()
    return body + hmac.new(KEY, body, hashlib.sha256).digest()


def _fields(view: dict) -> dict:
    return {"v": 1, "cluster": "c", "from": "alpha", "boot": 1, "seq": 1, "net": "public", "digest": "d",
            "view": view}


OLD_VIEW = {"term": 3, "db": "primary", "services": True, "lsn": 12345, "sync_ok": True,
            "carrier": {"public": True}, "tiebreaker_ok": None, "releasing_services": False, "preferred": True}


def test_message_of_an_older_peer_has_no_reporting_fields() -> None:
    view = decode(_signed(_fields(OLD_VIEW)), KEY).view
    assert (view.reporting, view.reporting_epoch, view.reporting_ack) == (False, 0, 0)
    assert view.eligible is True  # an older peer is assumed able to promote


def test_eligible_roundtrips_and_is_typed() -> None:
    from dataclasses import replace

    v = replace(VIEW, eligible=False)
    assert decode(encode(Heartbeat("c", "alpha", 1, 1, Net.PUBLIC, "d", v), KEY), KEY).view == v
    try:
        decode(_signed(_fields({**OLD_VIEW, "eligible": "no"})), KEY)
    except Reject as e:
        assert e.kind == "malformed"
    else:
        raise AssertionError("a non-boolean eligible was accepted")


def test_reporting_fields_roundtrip_and_are_typed() -> None:
    from dataclasses import replace

    v = replace(VIEW, reporting=True, reporting_epoch=(5 << 24) + 2, reporting_ack=7)
    assert decode(encode(Heartbeat("c", "alpha", 1, 1, Net.PUBLIC, "d", v), KEY), KEY).view == v
    for bad in ({"reporting": 1}, {"reporting_epoch": True}, {"reporting_ack": -1}, {"reporting_epoch": "3"}):
        try:
            decode(_signed(_fields({**OLD_VIEW, **bad})), KEY)
        except Reject as e:
            assert e.kind == "malformed"
        else:
            raise AssertionError(f"accepted {bad}")


def test_ack_roundtrips_and_is_typed() -> None:
    hb = Heartbeat("c", "alpha", 1, 9, Net.PUBLIC, "d", VIEW, ack=(4, 17))
    assert decode(encode(hb, KEY), KEY).ack == (4, 17)
    assert decode(_signed(_fields(OLD_VIEW)), KEY).ack is None  # an older peer sends none
    for bad in ([1], [1, -2], ["1", 2], [True, 2], {"boot": 1}, None):
        try:
            decode(_signed({**_fields(OLD_VIEW), "ack": bad}), KEY)
        except Reject as e:
            assert e.kind == "malformed"
        else:
            raise AssertionError(f"ack {bad!r} was accepted")


def test_home_adopted_roundtrips_is_typed_and_absent_while_false() -> None:
    from dataclasses import replace

    v = replace(VIEW, home_adopted=True)
    assert decode(encode(Heartbeat("c", "alpha", 1, 1, Net.PUBLIC, "d", v), KEY), KEY).view == v
    assert b"home_adopted" not in hb(1)  # an older peer's messages, and this one's while it adopts nothing
    assert decode(_signed(_fields(OLD_VIEW)), KEY).view.home_adopted is False
    try:
        decode(_signed(_fields({**OLD_VIEW, "home_adopted": 1})), KEY)
    except Reject as e:
        assert e.kind == "malformed"
    else:
        raise AssertionError("a non-boolean home_adopted was accepted")
