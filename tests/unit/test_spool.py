"""Issue 16, accounting that cannot be dropped: the spool's pure parts and the shipper's file handling.

The parser takes any bytes and returns a record or a typed rejection (never an exception, never a
line without an outcome); what the shipper does next is a pure function; its state files have one
encoder and one decoder each; the file side of the shipper (offsets, set-aside lines, rotation) is
exercised on real files. Inserting into PostgreSQL is tested in tests/lab/test_spool.py.
"""

from __future__ import annotations

import csv
import http.client
import io
import itertools
import json
import os
import tempfile
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby import config
from standby.config import SpoolFormat
from standby.documents import ShipperStatus, ShipPhase, ShipProblem, SpoolView
from standby.model import PgRole
from standby.observe.postgres import PgObservation
from standby.spool import plan, state
from standby.spool.parse import KEY_MAX_BYTES, LineFormat, Record, Rejection, RejectReason, parse_line
from standby.spool.plan import Action, Outcome, Policy, Reason, View
from standby.spool.shipper import Shipper, resume_at, resume_point
from standby.status import Observations, assemble
from tests.unit.test_documents import view as agent_view

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"
FORMATS = [LineFormat(SpoolFormat.JSON), LineFormat(SpoolFormat.JSON, key=("id",)),
           LineFormat(SpoolFormat.KAMAILIO_ACC), LineFormat(SpoolFormat.KAMAILIO_ACC, key=("call_id", "method")),
           LineFormat(SpoolFormat.CSV, columns=("a", "b", "c")),
           LineFormat(SpoolFormat.CSV, columns=("a", "b"), delimiter=";", key=("b",), max_line_bytes=300)]


def _insertable(r: Record) -> None:
    """What PostgreSQL needs of a record: its text is JSON jsonb takes, its key a short UTF-8 text."""
    assert r.key and "\x00" not in r.key and len(r.key.encode()) <= max(KEY_MAX_BYTES, 71)
    r.text.encode("utf-8")  # no lone surrogate
    assert "\x00" not in r.text and "\\u0000" not in r.text.replace("\\\\", "")
    assert isinstance(json.loads(r.text), dict)


# -- the parser: any bytes in ---------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(FORMATS))
def test_i16_parser_any_bytes_one_typed_outcome(raw: bytes, fmt: LineFormat) -> None:
    out = parse_line(raw, fmt)
    assert isinstance(out, (Record, Rejection))
    if isinstance(out, Record):
        _insertable(out)
    else:
        assert isinstance(out.reason, RejectReason) and out.detail


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
_json_value = st.recursive(st.none() | st.booleans() | st.integers() | _text,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_text, _json_value, max_size=6), st.booleans())
def test_i16_json_line_kept_exactly(obj: dict[str, Any], pretty: bool) -> None:
    line = json.dumps(obj, ensure_ascii=not pretty)
    out = parse_line(line.encode(), LineFormat(SpoolFormat.JSON))
    assert isinstance(out, Record)
    assert out.fields == obj and out.text == line  # the line itself goes to the database: every digit kept


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=15),
                min_size=3, max_size=3))
def test_i16_csv_row_kept_exactly(row: list[str]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(row)
    out = parse_line(buf.getvalue().encode(), LineFormat(SpoolFormat.CSV, columns=("a", "b", "c")))
    if not buf.getvalue().strip():
        assert isinstance(out, Rejection) and out.reason is RejectReason.BLANK
        return
    assert isinstance(out, Record) and out.fields == dict(zip("abc", row, strict=True))


_acc_name = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10)
_acc_value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n;"), max_size=15)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_acc_name, _acc_value, min_size=1, max_size=8))
def test_i16_kamailio_acc_line_kept_exactly(pairs: dict[str, str]) -> None:
    pairs.pop("acc_event", None)
    if not pairs:
        return
    body = ";".join(f"{k}={v}" for k, v in pairs.items())
    line = f"Dec  1 10:00:00 sip1 /usr/sbin/kamailio[812]: NOTICE: acc [acc.c:315]: ACC: transaction answered: {body}"
    out = parse_line(line.encode(), LineFormat(SpoolFormat.KAMAILIO_ACC))
    if not body.rstrip():  # nothing but spaces after the event
        assert isinstance(out, Rejection)
        return
    assert isinstance(out, Record), out
    expected = {k: v for k, v in pairs.items()}
    last = list(pairs)[-1]
    expected[last] = expected[last].rstrip()  # trailing spaces of a line are not a value's
    assert out.fields == {"acc_event": "transaction answered", **expected}


def test_i16_kamailio_reason_phrase_with_a_semicolon() -> None:
    out = parse_line(b"ACC: call missed: timestamp=1700000000;method=INVITE;code=486;reason=Busy; call later;"
                     b"call_id=c1@h", LineFormat(SpoolFormat.KAMAILIO_ACC, key=("call_id",)))
    assert isinstance(out, Record) and out.key == "c1@h"
    assert out.fields["reason"] == "Busy; call later" and out.fields["acc_event"] == "call missed"


@pytest.mark.parametrize(("fmt", "line", "reason"), [
    (LineFormat(SpoolFormat.JSON), b"", RejectReason.BLANK),
    (LineFormat(SpoolFormat.JSON), b"  \t", RejectReason.BLANK),
    (LineFormat(SpoolFormat.JSON, max_line_bytes=256), b"{" + b" " * 300 + b"}", RejectReason.TOO_LONG),
    (LineFormat(SpoolFormat.JSON), b'{"a": "\xff"}', RejectReason.NOT_UTF8),
    (LineFormat(SpoolFormat.JSON), b'{"a": 1}\x00', RejectReason.NUL),
    (LineFormat(SpoolFormat.JSON), b'{"a": 1', RejectReason.NOT_JSON),
    (LineFormat(SpoolFormat.JSON), b"[1, 2]", RejectReason.NOT_AN_OBJECT),
    (LineFormat(SpoolFormat.JSON), b'{"a": "x\\u0000y"}', RejectReason.UNSUPPORTED_VALUE),
    (LineFormat(SpoolFormat.JSON), b'{"a": "\\udc80"}', RejectReason.UNSUPPORTED_VALUE),
    (LineFormat(SpoolFormat.JSON), b'{"a": NaN}', RejectReason.UNSUPPORTED_VALUE),
    (LineFormat(SpoolFormat.JSON), b'{"a": -Infinity}', RejectReason.UNSUPPORTED_VALUE),
    (LineFormat(SpoolFormat.JSON), b'{"a": 1e999999}', RejectReason.UNSUPPORTED_VALUE),
    (LineFormat(SpoolFormat.JSON), b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}", RejectReason.UNSUPPORTED_VALUE),
    (LineFormat(SpoolFormat.JSON), b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", RejectReason.UNSUPPORTED_VALUE),
    (LineFormat(SpoolFormat.JSON), b'{"a": 1, "a": 2}', RejectReason.DUPLICATE_FIELD),
    (LineFormat(SpoolFormat.JSON, key=("id",)), b'{"a": 1}', RejectReason.MISSING_KEY),
    (LineFormat(SpoolFormat.JSON, key=("id",)), b'{"id": ""}', RejectReason.MISSING_KEY),
    (LineFormat(SpoolFormat.JSON, key=("id",)), b'{"id": null}', RejectReason.MISSING_KEY),
    (LineFormat(SpoolFormat.KAMAILIO_ACC), b"kamailio: INFO: something else", RejectReason.NOT_ACC),
    (LineFormat(SpoolFormat.KAMAILIO_ACC), b"ACC: transaction answered: ", RejectReason.BAD_FIELD),
    (LineFormat(SpoolFormat.KAMAILIO_ACC), b"ACC: x: =1;a=2", RejectReason.BAD_FIELD),
    (LineFormat(SpoolFormat.KAMAILIO_ACC), b"ACC: x: a=1;a=2", RejectReason.DUPLICATE_FIELD),
    (LineFormat(SpoolFormat.CSV, columns=("a", "b")), b'"x,y', RejectReason.BAD_CSV),
    (LineFormat(SpoolFormat.CSV, columns=("a", "b")), b"x,y,z", RejectReason.COLUMN_COUNT),
    (LineFormat(SpoolFormat.CSV, columns=("a", "b"), key=("b",)), b"x,", RejectReason.MISSING_KEY),
])
def test_i16_malformed_line_has_its_reason(fmt: LineFormat, line: bytes, reason: RejectReason) -> None:
    out = parse_line(line, fmt)
    assert isinstance(out, Rejection) and out.reason is reason, out


def test_i16_unique_key() -> None:
    by_id = LineFormat(SpoolFormat.JSON, key=("id",))
    a, b = parse_line(b'{"id": "c1", "cost": 1}', by_id), parse_line(b'{"cost": 2, "id": "c1"}', by_id)
    assert isinstance(a, Record) and isinstance(b, Record) and a.key == b.key == "c1"  # a duplicate by key
    two = parse_line(b'{"id": 7, "leg": {"n": 1}}', LineFormat(SpoolFormat.JSON, key=("id", "leg")))
    assert isinstance(two, Record) and json.loads(two.key) == ["7", '{"n":1}']
    long = parse_line(json.dumps({"id": "x" * 2000}).encode(), by_id)
    assert isinstance(long, Record) and long.key.startswith("sha256:") and len(long.key) == 71
    whole = LineFormat(SpoolFormat.JSON)  # no key fields: the line is the key
    same = [parse_line(b'{"a": 1}', whole), parse_line(b'{"a": 1}\r', whole), parse_line(b'{"a": 2}', whole)]
    assert all(isinstance(r, Record) for r in same)
    assert same[0].key == same[1].key != same[2].key  # type: ignore[union-attr]


# -- what to do next ---------------------------------------------------------------------------

POLICY = Policy(poll_s=0.2, retry_max_s=2.0)


@pytest.mark.parametrize(("last", "pending", "connected", "failures", "one_by_one"), list(itertools.product(
    list(Outcome), [0, 1, 500], [False, True], [0, 1, 7, 60], [False, True])))
def test_i16_next_step_every_case(last: Outcome, pending: int, connected: bool, failures: int, one_by_one: bool) -> None:
    s = plan.next_step(View(last, pending, connected, failures, one_by_one), POLICY)
    assert isinstance(s.action, Action) and isinstance(s.reason, Reason)
    if last in (Outcome.CONNECT_FAILED, Outcome.LOST, Outcome.SERVER_ERROR):
        assert s.action is Action.WAIT and 0 < s.wait_s <= POLICY.retry_max_s  # never a tight retry loop
    elif pending == 0:
        # Nothing is read over a pending batch: its offset must move only after its commit.
        assert s.action is (Action.WAIT if last is Outcome.READ_NOTHING else Action.READ)
    elif not connected:
        assert s.action is Action.CONNECT
    else:
        assert s.action is (Action.INSERT_EACH if one_by_one or last is Outcome.REFUSED else Action.INSERT)
    assert s.action is not Action.INSERT or (connected and pending)


def test_i16_backoff_doubles_up_to_its_bound() -> None:
    waits = [plan.backoff(n, POLICY) for n in range(1, 40)]
    assert waits == sorted(waits) and waits[0] == POLICY.retry_first_s and waits[-1] == POLICY.retry_max_s


@pytest.mark.parametrize(("sqlstate", "outcome"), [
    (None, Outcome.LOST), ("08006", Outcome.LOST), ("08001", Outcome.LOST), ("25006", Outcome.LOST),
    ("57P01", Outcome.LOST), ("57P03", Outcome.LOST),
    ("22P02", Outcome.REFUSED), ("23502", Outcome.REFUSED), ("23514", Outcome.REFUSED), ("54000", Outcome.REFUSED),
    ("P0001", Outcome.REFUSED),
    ("42P01", Outcome.SERVER_ERROR), ("42501", Outcome.SERVER_ERROR), ("53100", Outcome.SERVER_ERROR),
    ("40001", Outcome.SERVER_ERROR), ("XX000", Outcome.SERVER_ERROR)])
def test_i16_database_errors_classified(sqlstate: str | None, outcome: Outcome) -> None:
    """Only an error the record's own data causes sets it aside; anything else is retried (nothing dropped)."""
    assert plan.classify(sqlstate) is outcome


def test_i16_phase_and_problems() -> None:
    assert plan.phase(0, 0, False, 3) is ShipPhase.CAUGHT_UP
    assert plan.phase(5, 100, False, 1) is ShipPhase.NO_PRIMARY
    assert plan.phase(5, 100, True, 0) is ShipPhase.SHIPPING
    assert plan.problems(ShipPhase.NO_PRIMARY, 10, 64, True, False) == (
        ShipProblem.DISK_LOW, ShipProblem.NOT_SAVED, ShipProblem.NO_PRIMARY)
    assert plan.problems(ShipPhase.SHIPPING, None, 64, False, False) == ()


# -- state files: one encoder, one decoder ------------------------------------------------------

_n = st.integers(0, 2**62)
_positions = st.builds(state.FilePosition, _text, _n, _n, _n, _n, _n, st.text("0123456789abcdef", max_size=64))
_progress = st.builds(state.Progress, st.lists(_positions, max_size=4).map(tuple), _n, _n, _n, _n,
                      st.lists(_positions, max_size=4).map(tuple))
_status = st.builds(ShipperStatus, _text, _n, st.floats(0, 2e9), st.sampled_from(ShipPhase), _n, _n, _n, _n,
                    _n, _n, _text, st.none() | _text, st.none() | _n, st.none() | _text,
                    st.lists(st.sampled_from(ShipProblem), unique=True).map(tuple))


@given(_progress)
def test_i16_progress_roundtrip(p: state.Progress) -> None:
    assert state.decode_progress(state.encode_progress(p)) == p


@given(_status)
def test_i16_status_roundtrip(s: ShipperStatus) -> None:
    assert state.decode_status(state.encode_status(s)) == s


@settings(max_examples=300)
@given(st.binary(max_size=300) | _status.map(state.encode_status).map(lambda b: b.replace(b"0", b"-1", 1))
       | _progress.map(state.encode_progress).map(lambda b: b.replace(b'"', b"", 2)))
def test_i16_state_decoders_take_any_bytes(raw: bytes) -> None:
    for decode in (state.decode_progress, state.decode_status):
        try:
            decode(raw)
        except state.StateError:
            pass


# -- [spool] ----------------------------------------------------------------------------------------


def _raw(**spool: Any) -> dict[str, Any]:
    d = tomllib.loads(EXAMPLE.read_text())
    d["spool"] = {"path": "/var/spool/acc", "format": "json", "database": "cdr", "user": "ship", **spool}
    return d


def _problems(d: dict[str, Any]) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        config.parse(d)
    return e.value.problems


def test_i16_spool_config_errors_name_key_and_fix() -> None:
    assert config.parse(_raw()).spool is not None
    (p,) = _problems(_raw(format="csv"))
    assert p.startswith("spool.columns:") and "columns = [" in p
    (p,) = _problems(_raw(format="csv", columns=["a", "b"], key=["c"]))
    assert p.startswith("spool.key:") and "c not in spool.columns" in p
    (p,) = _problems(_raw(columns=["a"]))
    assert p.startswith("spool.columns:") and "remove it" in p
    (p,) = _problems(_raw(format="xml"))
    assert p.startswith("spool.format:") and "json" in p
    (p,) = _problems(_raw(table="cdr; drop table x"))
    assert p.startswith("spool.table:")
    (p,) = _problems(_raw(pattern="../*"))
    assert p.startswith("spool.pattern:") and "without" in p
    (p,) = _problems(_raw(key=["a", "a"]))
    assert p.startswith("spool.key:") and "at most once" in p
    (p,) = _problems(_raw(batch_size=0))
    assert p.startswith("spool.batch_size:")
    (p,) = _problems(_raw(format="csv", columns=["a"], delimiter='"'))
    assert p.startswith("spool.delimiter:")
    d = _raw()
    del d["spool"]["database"]
    assert _problems(d) == ["spool.database: missing; this key is required"]


def test_i16_spool_section_leaves_the_agents_digest_alone() -> None:
    """Both agents compare a digest of the file; [spool] is the shipper's alone, so an older peer still agrees."""
    from standby.agent.node import config_digest

    with_spool, without = config.parse(_raw()), config.parse(tomllib.loads(EXAMPLE.read_text()))
    assert config_digest(with_spool) == config_digest(without)


# -- the shipper's file side (real files; the database in tests/lab/test_spool.py) ------------------


def _shipper(tmp_path: Path, **spool: Any) -> Shipper:
    d = _raw(**{"path": str(tmp_path / "spool"), "pattern": "*.log", "key": ["id"], **spool})
    d["state_dir"] = str(tmp_path / "state")
    (tmp_path / "spool").mkdir(exist_ok=True)
    return Shipper(config.parse(d), "alpha")


def _rejected(sh: Shipper) -> list[dict[str, Any]]:
    return [json.loads(x) for x in sh.rejects_path.read_text().splitlines()] if sh.rejects_path.exists() else []


def test_i16_malformed_line_set_aside_with_line_and_reason_rest_read(tmp_path: Path) -> None:
    sh = _shipper(tmp_path)
    (tmp_path / "spool" / "a.log").write_bytes(b'{"id": 1}\n{"id": 2\n\n{"id": 3}\n{"id": 4')
    assert sh._read() is Outcome.READ_SOME
    assert [r.key for r, _ in sh.batch.records] == ["1", "3"]  # the bad line took nothing with it
    (bad,) = sh.batch.rejects
    assert (bad["file"], bad["line"], bad["offset"], bad["reason"], bad["text"]) == ("a.log", 2, 10, "not_json", '{"id": 2')
    assert sh.batch.blank == 1
    assert sh.batch.ends[next(iter(sh.batch.ends))].offset == 30  # the unfinished last line waits for its newline


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=25), st.binary(max_size=40),
       st.sampled_from([{}, {"format": "kamailio-acc", "key": []}, {"format": "csv", "columns": ["id", "b"]}]))
def test_i16_any_bytes_in_the_spool_every_line_one_outcome(lines: list[bytes], tail: bytes, fmt: dict[str, Any]) -> None:
    """Whatever a service writes, each complete line becomes exactly one record, set-aside line or blank,
    in order, and the offset ends right after the last newline: nothing skipped, nothing read twice."""
    with tempfile.TemporaryDirectory() as d:
        sh = _shipper(Path(d), max_line_bytes=256, batch_size=10_000, **fmt)
        data = b"".join(line + b"\n" for line in lines) + tail.replace(b"\n", b"")
        (Path(d) / "spool" / "a.log").write_bytes(data)
        sh._read()
        b = sh.batch
        got = len(b.records) + len(b.rejects) + b.blank if b.records else sh.progress.rejected + sh.progress.blank
        assert got == len(lines)
        ends = list(b.ends.values()) or list(sh.progress.files)
        assert [e.offset for e in ends] == [len(data) - len(tail.replace(b"\n", b""))]
        for line, r in zip([ln for ln in lines if parse_line(ln, sh.fmt).__class__ is Record],
                           b.records, strict=True):
            assert r[0] == parse_line(line, sh.fmt)


def test_i16_rejects_only_batch_is_set_aside_and_offset_moves(tmp_path: Path) -> None:
    sh = _shipper(tmp_path)
    spool = tmp_path / "spool" / "a.log"
    spool.write_bytes(b"garbage\n\xff\xfe\n")
    assert sh._read() is Outcome.COMMITTED  # nothing for the database: set aside at once
    assert [(r["line"], r["reason"]) for r in _rejected(sh)] == [(1, "not_json"), (2, "not_utf8")]
    assert sh.progress.rejected == 2 and sh.backlog() == (0, 0)
    with open(spool, "ab") as f:
        f.write(b"[]\n")
    again = Shipper(sh.cfg, "alpha")  # a restart resumes at the saved offset: line 3, not line 1 again
    assert again._read() is Outcome.COMMITTED
    assert [(r["line"], r["reason"]) for r in _rejected(again)] == [(1, "not_json"), (2, "not_utf8"), (3, "not_an_object")]


def test_i16_overlong_line_set_aside_following_lines_read(tmp_path: Path) -> None:
    sh = _shipper(tmp_path, max_line_bytes=256)
    (tmp_path / "spool" / "a.log").write_bytes(b'{"id": "' + b"x" * 1000 + b'"}\n{"id": 2}\n')
    assert sh._read() is Outcome.READ_SOME
    assert [r.key for r, _ in sh.batch.records] == ["2"]
    (bad,) = sh.batch.rejects
    assert bad["reason"] == "too_long" and bad["line"] == 1 and len(bad["text"]) == 256


def test_i16_restart_before_the_commit_sets_nothing_aside_twice(tmp_path: Path) -> None:
    sh = _shipper(tmp_path)
    (tmp_path / "spool" / "a.log").write_bytes(b'{"id": 1}\nbad\n{"id": 2}\n')
    assert sh._read() is Outcome.READ_SOME
    assert sh._set_aside_malformed()  # what _insert does first; then the process dies before its commit
    again = Shipper(sh.cfg, "alpha")
    assert again._read() is Outcome.READ_SOME
    assert [r.key for r, _ in again.batch.records] == ["1", "2"] and again.batch.rejects == []  # sent again
    assert len(_rejected(again)) == 1 and again.progress.rejected == 1


def test_i16_rotated_and_truncated_files(tmp_path: Path) -> None:
    sh = _shipper(tmp_path)
    log = tmp_path / "spool" / "a.log"
    log.write_bytes(b"bad 1\n")
    sh._read()
    log.rename(tmp_path / "spool" / "a.1.log")  # rotated by rename: the same inode, its offset follows it
    log.write_bytes(b"bad 2\n")
    sh._read()
    assert [(r["file"], r["line"], r["text"]) for r in _rejected(sh)] == [("a.log", 1, "bad 1"), ("a.log", 1, "bad 2")]
    log.write_bytes(b"x\n")  # copytruncate: shorter than the offset, read from its start
    sh._read()
    assert _rejected(sh)[-1]["text"] == "x"


def test_i16_inode_reused_by_a_new_file_is_read_from_its_start() -> None:
    known = state.FilePosition("a.log", 1, 2, 100, 3, 100, "h1")
    assert resume_at(known, 150, "h1") == 100
    assert resume_at(known, 150, "h2") == 0  # other first bytes: another file
    assert resume_at(known, 50, None) == 0  # truncated
    assert resume_at(None, 50, None) == 0


def test_i16_resume_point() -> None:
    def at(o: int) -> tuple[state.FilePosition, ...]:
        return (state.FilePosition("a", 1, 1, o, 0, 0, ""),)

    snaps = [(10.0, at(100)), (20.0, at(200)), (30.0, at(300))]
    assert resume_point(snaps, at(0), 25.0) == at(200)
    assert resume_point(snaps, at(0), 30.0) == at(300)
    assert resume_point(snaps, at(0), 5.0) == at(0)
    assert resume_point([], at(7), 99.0) == at(7)


@pytest.mark.parametrize(("durability", "degrade", "given", "window"), [
    ("sync", 0, None, 0.0), ("sync", 5, None, 30.0), ("async", 0, None, 30.0), ("sync", 0, 12.5, 12.5)])
def test_i16_resend_window_follows_durability(durability: str, degrade: float, given: float | None,
                                              window: float) -> None:
    d = _raw(**({} if given is None else {"resend_window_s": given}))
    d["replication"] = {"durability": durability, "degrade_after_s": degrade}
    assert config.parse(d).spool_resend_window_s() == window


def test_i16_async_lost_connection_sends_the_window_again_sets_nothing_aside_twice(tmp_path: Path) -> None:
    """Commits the old primary may have lost (async) are read again, from memory and after a restart."""
    sh = _shipper(tmp_path, resend_window_s=30)
    log = tmp_path / "spool" / "a.log"
    log.write_bytes(b'{"id": 1}\nbad\n{"id": 2}\n')
    assert sh._read() is Outcome.READ_SOME
    assert sh._set_aside_malformed()  # as _insert does before the insert
    assert sh._commit(2, 0) is Outcome.COMMITTED  # the database took ids 1 and 2
    assert sh.backlog() == (0, 0)
    with open(log, "ab") as f:
        f.write(b"bad too\n")
    assert sh._read() is Outcome.COMMITTED  # a line set aside moves no database commit's window
    restarted = Shipper(sh.cfg, "alpha")  # a restart resumes 30 s before the last commit: from the start here
    assert restarted.backlog()[0] == log.stat().st_size
    assert restarted._read() is Outcome.READ_SOME
    assert [r.key for r, _ in restarted.batch.records] == ["1", "2"] and restarted.batch.rejects == []
    sh._rewind(sh.last_commit - sh.window)  # in memory: a reconnect after a lost connection
    assert sh._read() is Outcome.READ_SOME
    assert [r.key for r, _ in sh.batch.records] == ["1", "2"] and sh.batch.rejects == []
    assert [r["text"] for r in _rejected(sh)] == ["bad", "bad too"]  # each set aside once


def test_i16_unreadable_progress_ships_from_the_start(tmp_path: Path) -> None:
    sh = _shipper(tmp_path)
    sh.progress_path.write_bytes(b"{not json")
    again = Shipper(sh.cfg, "alpha")
    assert again.progress == state.Progress()  # every record again, as duplicates: none skipped


def test_i16_status_file_written_and_read_by_the_agent_side(tmp_path: Path) -> None:
    sh = _shipper(tmp_path)
    (tmp_path / "spool" / "a.log").write_bytes(b'{"id": 1}\n')
    sh._write_status(force=True)
    view = state.status_view(sh.cfg, "alpha")
    assert view is not None and view.running and view.status is not None
    assert view.status.backlog_bytes == 10 and view.status.phase is ShipPhase.SHIPPING
    stale = state.status_view(sh.cfg, "alpha", now=view.status.updated_at + 3600)
    assert stale is not None and not stale.running
    assert state.warnings("alpha", stale)[0].startswith("alpha: call records are NOT being shipped")
    names = {m.name for m in state.metric_families(view)}
    assert {"standby_spool_backlog_bytes", "standby_spool_records", "standby_spool_shipper_up"} <= names


def test_i16_status_view_without_a_readable_status_says_why(tmp_path: Path) -> None:
    sh = _shipper(tmp_path)
    missing = state.status_view(sh.cfg, "alpha")
    assert missing is not None and not missing.running and missing.status is None and missing.age_s is None
    assert missing.error is not None and "is `standby ship` running?" in missing.error
    sh.status_path.parent.mkdir(parents=True, exist_ok=True)
    sh.status_path.write_bytes(b'{"version": 1, "phase": "flying"}')
    damaged = state.status_view(sh.cfg, "alpha")
    assert damaged is not None and damaged.status is None and damaged.error and str(sh.status_path) in damaged.error
    assert "NOT being shipped" in state.warnings("alpha", damaged)[0]
    assert [m.name for m in state.metric_families(damaged)] == ["standby_spool_shipper_up"]
    assert state.status_view(config.parse(tomllib.loads(EXAMPLE.read_text())), "alpha") is None  # no [spool]


def _ship_status(**changes: Any) -> ShipperStatus:
    st = ShipperStatus(node="beta", pid=7, updated_at=1e9, phase=ShipPhase.NO_PRIMARY, backlog_bytes=99,
                       backlog_files=1, shipped=5, duplicates=1, rejected=2, blank=0, rejects_file="/r", server=None,
                       disk_free_bytes=10, last_error="No space left on device",
                       problems=(ShipProblem.DISK_LOW, ShipProblem.NOT_SAVED, ShipProblem.NO_PRIMARY))
    return replace(st, **changes)


def test_i16_status_warnings() -> None:
    view = SpoolView(running=True, error=None, age_s=0.5, status=_ship_status())
    ws = state.warnings("beta", view)
    assert any("disk is (nearly) full" in w for w in ws) and any("cannot save its progress" in w for w in ws)
    assert any("wait for a writable primary" in w for w in ws) and any("2 spool lines set aside in /r" in w for w in ws)
    assert state.warnings("beta", None) == []
    calm = SpoolView(running=True, error=None, age_s=0.5,
                     status=_ship_status(phase=ShipPhase.CAUGHT_UP, problems=(), rejected=0))
    assert state.warnings("beta", calm) == []


def test_i16_metrics_from_the_typed_view() -> None:
    view = SpoolView(running=True, error=None, age_s=0.5, status=_ship_status())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in state.metric_families(view) for s in m.samples}
    assert samples[("standby_spool_backlog_bytes", ())] == 99
    assert samples[("standby_spool_records_total", (("outcome", "rejected"),))] == 2
    assert samples[("standby_spool_problem", (("problem", "disk_low"),))] == 1.0
    assert samples[("standby_spool_problem", (("problem", "spool_unreadable"),))] == 0.0
    assert samples[("standby_spool_status_age_seconds", ())] == 0.5


def test_i16_agent_serves_its_shippers_view_on_status_and_metrics(tmp_path: Path) -> None:
    """The agent's real API: /status carries the typed view the CLI decodes, /metrics the same numbers."""
    from standby.agent.node import Agent
    from standby.api import ApiServer
    from standby.apiclient import agent_status
    from tests.unit.configs import example_with_secrets
    from tests.unit.loopback import free_port
    from tests.unit.test_findings_surface import _AgentLoop, _close

    raw, _ = example_with_secrets(tmp_path, free_port())
    raw["spool"] = {"path": str(tmp_path / "spool"), "format": "json", "database": "cdr", "user": "ship",
                    "key": ["id"]}
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "a.log").write_bytes(b'{"id": 1}\n{"id": 2}\n')
    cfg = config.parse(raw)
    Shipper(cfg, "alpha")._write_status(force=True)
    agent = Agent(cfg, "alpha")
    agent.started = True  # as Agent.run sets it once the state is restored
    loop = _AgentLoop()
    server = ApiServer(agent, loop.loop)
    server.start()
    try:
        got = agent_status(cfg, "alpha", timeout_s=5, via=("127.0.0.1",))
        assert got is not None and got.spool is not None and got.spool.running and got.spool.status is not None
        assert got.spool.status.backlog_bytes == 20 and got.spool.status.phase is ShipPhase.SHIPPING
        conn = http.client.HTTPConnection("127.0.0.1", cfg.api.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
        finally:
            conn.close()
        assert "standby_spool_backlog_bytes 20.0" in metrics and "standby_spool_shipper_up 1.0" in metrics
    finally:
        server.stop()
        loop.close()
        _close(agent)


# -- `standby status`: "unreachable" when it is -----------------------------------------------------


def test_i16_status_says_unreachable_when_nothing_of_the_host_answers() -> None:
    cfg = config.load(EXAMPLE)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    gone = PgObservation(node="alpha", role=PgRole.UNREACHABLE, observed_at=now,
                         error="private: server closed the connection unexpectedly; public: connection timeout expired")
    beta = PgObservation(node="beta", role=PgRole.PRIMARY, observed_at=now, timeline=2)
    doc = assemble(cfg, Observations("beta", {"alpha": gone, "beta": beta}, (), agents={"alpha": None, "beta": None}))
    (w,) = [w for w in doc.warnings if w.startswith("alpha")][:1]
    assert "UNREACHABLE from beta" in w and "closed the connection" not in w
    assert doc.nodes["alpha"].postgres.error == gone.error  # the detail stays in the JSON
    # Its agent answers: the host is there, and PostgreSQL's own error is the news.
    agent = agent_view(suspended=False, maintenance=None)
    doc = assemble(cfg, Observations("beta", {"alpha": gone, "beta": beta}, (), agents={"alpha": agent, "beta": None}))
    assert any(w.startswith("alpha's PostgreSQL is unreachable: private: server closed") for w in doc.warnings)


def test_i16_status_shows_each_nodes_backlog(capsys: pytest.CaptureFixture[str]) -> None:
    from standby.cli.status import render

    cfg = config.load(EXAMPLE)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    spool = SpoolView(running=True, error=None, age_s=0.2, status=_ship_status(
        node="alpha", backlog_bytes=2048, rejected=0, disk_free_bytes=None, last_error="refused",
        problems=(ShipProblem.NO_PRIMARY,)))
    agent = agent_view(spool=spool)
    doc = assemble(cfg, Observations("alpha", {n: PgObservation(node=n, role=PgRole.PRIMARY, observed_at=now)
                                               for n in ("alpha", "beta")}, (), agents={"alpha": agent, "beta": None}))
    assert doc.nodes["alpha"].agent is not None and doc.nodes["alpha"].agent.spool == spool
    render(doc)
    out = capsys.readouterr().out
    assert "spool alpha: no primary, backlog 2.0 KiB in 1 file(s); 5 shipped, 1 duplicates, 0 set aside" in out
    assert any(w.startswith("alpha: 2048 B of call records wait for a writable primary") for w in doc.warnings)


# -- `standby dsn` ----------------------------------------------------------------------------------


def test_i16_dsn_kamailio_format() -> None:
    from standby.cli.dsn import Format, libpq_dsn

    out = libpq_dsn(config.load(EXAMPLE), "writes", "cdr", "kam", 2, fmt=Format.KAMAILIO, keepalives=False)
    lines = [x for x in out.splitlines() if not x.startswith("# ")]
    # postgres:// (db_postgres's scheme), one port for all hosts, libpq options in con_param.
    assert lines == ['modparam("db_postgres", "con_param", "target_session_attrs=read-write;connect_timeout=2")',
                     '#!define DBURL "postgres://kam@192.0.2.11,192.0.2.12:5432/cdr"']
    assert "?" not in out and "postgresql://" not in out


def test_i16_dsn_kamailio_refuses_what_it_cannot_express() -> None:
    from standby.cli.dsn import DsnError, Format, libpq_dsn

    cfg = config.load(EXAMPLE)
    with pytest.raises(DsnError, match="--user"):
        libpq_dsn(cfg, "writes", "cdr", None, 2, fmt=Format.KAMAILIO)
    with pytest.raises(DsnError, match="letters, digits"):
        libpq_dsn(cfg, "writes", "c@d", "kam", 2, fmt=Format.KAMAILIO)


def test_i16_dsn_own_node_first() -> None:
    from click.testing import CliRunner

    from standby.cli.main import cli

    runner = CliRunner()
    args = ["dsn", "--config", str(EXAMPLE), "--for", "writes", "--dbname", "cdr", "--own-first"]
    on_alpha = runner.invoke(cli, [*args, "--node", "alpha"])
    on_beta = runner.invoke(cli, [*args, "--node", "beta"])
    assert on_alpha.exit_code == on_beta.exit_code == 0, on_alpha.output + on_beta.output
    assert "host=192.0.2.11,192.0.2.12 " in on_alpha.output and "host=192.0.2.12,192.0.2.11 " in on_beta.output
    uri = runner.invoke(cli, [*args, "--node", "beta", "--format", "uri"])
    assert "postgresql://192.0.2.12:5432,192.0.2.11:5432/cdr?target_session_attrs=read-write" in uri.output
    os.environ.pop("STANDBY_NODE", None)
    no_node = runner.invoke(cli, args)
    assert no_node.exit_code == 2 and "--node" in no_node.output
