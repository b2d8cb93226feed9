"""One spool line in, a typed record or a typed rejection out: never an exception, never a record lost.

A record is something the database will take as it is: its fields hold no NUL character and no
lone surrogate (PostgreSQL's text and jsonb refuse both), its numbers fit PostgreSQL's numeric,
its nesting stays shallow, and it has a unique key. Anything else is a rejection with its reason,
which the shipper sets aside with the line: one bad line never holds back the ones after it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from standby.config import Spool, SpoolFormat

# A longer key is stored as its SHA-256: a btree entry must stay well under PostgreSQL's ~2.7 kB.
KEY_MAX_BYTES = 512
# Far below the depth at which Python's or PostgreSQL's JSON parser gives up.
MAX_DEPTH = 64
# Digits PostgreSQL's numeric holds on either side of the point, with a margin.
MAX_EXPONENT = 16_000
MAX_INT_DIGITS = 4_000  # Python refuses to read longer integers
ACC_MARK = "ACC: "
ACC_EVENT = "acc_event"  # the field that holds Kamailio's event ("transaction answered", ...)


class RejectReason(StrEnum):
    BLANK = "blank"  # nothing on the line: counted, not set aside
    TOO_LONG = "too_long"
    NOT_UTF8 = "not_utf8"
    NUL = "nul"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    UNSUPPORTED_VALUE = "unsupported_value"  # a value the database cannot store
    DUPLICATE_FIELD = "duplicate_field"
    NOT_ACC = "not_acc"
    BAD_FIELD = "bad_field"
    BAD_CSV = "bad_csv"
    COLUMN_COUNT = "column_count"
    MISSING_KEY = "missing_key"
    REFUSED_BY_DATABASE = "refused_by_database"  # the shipper's, when the table refuses a record


@dataclass(frozen=True)
class LineFormat:
    """What [spool] says about lines, in the shape the parser needs."""

    format: SpoolFormat
    columns: tuple[str, ...] = ()
    delimiter: str = ","
    key: tuple[str, ...] = ()
    max_line_bytes: int = 65_536

    @classmethod
    def of(cls, sp: Spool) -> LineFormat:
        return cls(sp.format, tuple(sp.columns), sp.delimiter, tuple(sp.key), sp.max_line_bytes)


@dataclass(frozen=True)
class Record:
    key: str
    fields: dict[str, Any]
    text: str  # the record as JSON text, exactly as it goes into the jsonb column


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str


Outcome = Record | Rejection


class _Unsupported(ValueError):
    pass


def parse_line(raw: bytes, fmt: LineFormat) -> Outcome:
    """``raw`` is one line without its newline (a line longer than the limit may come cut short)."""
    if len(raw) > fmt.max_line_bytes:
        return Rejection(RejectReason.TOO_LONG, f"longer than spool.max_line_bytes ({fmt.max_line_bytes})")
    raw = raw.removesuffix(b"\r")
    nul = raw.find(b"\x00")
    if nul >= 0:
        return Rejection(RejectReason.NUL, f"NUL byte at column {nul + 1}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(RejectReason.NOT_UTF8, f"not UTF-8 at byte {e.start + 1}")
    if not text.strip():
        return Rejection(RejectReason.BLANK, "blank line")
    if fmt.format is SpoolFormat.JSON:
        parsed = _json_fields(text)
    elif fmt.format is SpoolFormat.KAMAILIO_ACC:
        parsed = _acc_fields(text)
    else:
        parsed = _csv_fields(text, fmt)
    if isinstance(parsed, Rejection):
        return parsed
    fields, body = parsed
    key = record_key(raw, fields, fmt.key)
    if isinstance(key, Rejection):
        return key
    return Record(key, fields, body)


def record_key(raw: bytes, fields: dict[str, Any], names: tuple[str, ...]) -> str | Rejection:
    """The record's unique key: the named fields' values, or the SHA-256 of the line without names."""
    if not names:
        return "sha256:" + hashlib.sha256(raw).hexdigest()
    values = []
    for name in names:
        v = fields.get(name)
        if v is None or v == "":
            return Rejection(RejectReason.MISSING_KEY, f"key field {name!r} is missing or empty")
        values.append(v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"),
                                                               ensure_ascii=False, default=str))
    key = values[0] if len(values) == 1 else json.dumps(values, ensure_ascii=False)
    if len(key.encode()) > KEY_MAX_BYTES:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


# -- JSON lines -------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


class _Duplicate(ValueError):
    pass


def _number(s: str) -> Decimal:
    try:
        d = Decimal(s)
    except InvalidOperation:
        raise _Unsupported(f"number {s[:40]!r}") from None
    if abs(d.adjusted()) > MAX_EXPONENT:
        raise _Unsupported(f"number {s[:40]!r} is beyond what PostgreSQL's numeric holds")
    return d


def _integer(s: str) -> int:
    if len(s) > MAX_INT_DIGITS:
        raise _Unsupported(f"integer of {len(s)} digits")
    return int(s)


def _constant(s: str) -> Any:
    raise _Unsupported(f"{s} is not a JSON number PostgreSQL takes")


def _json_fields(text: str) -> tuple[dict[str, Any], str] | Rejection:
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_number, parse_int=_integer,
                         parse_constant=_constant)
    except _Duplicate as e:
        return Rejection(RejectReason.DUPLICATE_FIELD, f"field {str(e)[:80]!r} appears twice")
    except _Unsupported as e:
        return Rejection(RejectReason.UNSUPPORTED_VALUE, str(e))
    except RecursionError:
        return Rejection(RejectReason.UNSUPPORTED_VALUE, f"nested deeper than {MAX_DEPTH}")
    except ValueError as e:
        return Rejection(RejectReason.NOT_JSON, str(e).splitlines()[0][:200])
    if not isinstance(obj, dict):
        return Rejection(RejectReason.NOT_AN_OBJECT, f"a JSON {type(obj).__name__}, not an object")
    problem = _storable(obj, 0)
    if problem:
        return Rejection(RejectReason.UNSUPPORTED_VALUE, problem)
    # The line itself goes to the database: its numbers keep every digit.
    return obj, text


def _storable(v: Any, depth: int) -> str | None:
    """Why PostgreSQL's jsonb would refuse ``v``, or None."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH}"
    if isinstance(v, str):
        if "\x00" in v:
            return "a string holds \\u0000"
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return "a string holds a lone surrogate"
        return None
    if isinstance(v, dict):
        for k, x in v.items():
            why = _storable(k, depth + 1) or _storable(x, depth + 1)
            if why:
                return why
    elif isinstance(v, list):
        for x in v:
            why = _storable(x, depth + 1)
            if why:
                return why
    return None


# -- Kamailio acc log lines ---------------------------------------------------


def _acc_fields(text: str) -> tuple[dict[str, Any], str] | Rejection:
    at = text.find(ACC_MARK)
    if at < 0:
        return Rejection(RejectReason.NOT_ACC, f"no {ACC_MARK.strip()!r} on the line")
    rest = text[at + len(ACC_MARK):]
    event, sep, pairs = rest.partition(": ")
    if not sep or "=" in event:
        event, pairs = "", rest
    fields: dict[str, Any] = {ACC_EVENT: event.strip()}
    last: str | None = None
    segments = pairs.rstrip().split(";")
    if segments and segments[-1] == "":
        segments.pop()  # a trailing ';'
    for seg in segments:
        name, eq, value = seg.partition("=")
        if not eq:
            # A value that holds ';' (a reason phrase): the part after it belongs to that value.
            if last is None:
                return Rejection(RejectReason.BAD_FIELD, f"{seg[:60]!r} is not name=value")
            fields[last] += ";" + seg
            continue
        name = name.strip()
        if not name:
            return Rejection(RejectReason.BAD_FIELD, f"a value without a name: {seg[:60]!r}")
        if name in fields:
            return Rejection(RejectReason.DUPLICATE_FIELD, f"field {name[:80]!r} appears twice")
        fields[name] = value
        last = name
    if last is None:
        return Rejection(RejectReason.BAD_FIELD, "no name=value pairs after the event")
    return fields, json.dumps(fields, ensure_ascii=False)


# -- CSV rows ------------------------------------------------------------------


def _csv_fields(text: str, fmt: LineFormat) -> tuple[dict[str, Any], str] | Rejection:
    try:
        rows = list(csv.reader([text], delimiter=fmt.delimiter, strict=True))
    except csv.Error as e:
        return Rejection(RejectReason.BAD_CSV, str(e)[:200])
    if len(rows) != 1:
        return Rejection(RejectReason.BAD_CSV, "not one CSV row")
    (row,) = rows
    if len(row) != len(fmt.columns):
        return Rejection(RejectReason.COLUMN_COUNT, f"{len(row)} fields, spool.columns names {len(fmt.columns)}")
    fields: dict[str, Any] = dict(zip(fmt.columns, row, strict=True))
    return fields, json.dumps(fields, ensure_ascii=False)
