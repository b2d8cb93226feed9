"""The protocol version the agents (heartbeats) and the API (its clients) speak, and when two may talk.

A version is MAJOR.MINOR. The rule:

- Same major: they interoperate. A minor only adds optional fields, each with a default that means what
  an older peer meant by leaving it out (the heartbeat's ``_optional``, a document field with a default);
  a reader ignores fields it does not know. So agents one release apart work together during an upgrade.
- A new major is anything an older reader would misread: a field removed, renamed, or of another type or
  meaning, or a rule both nodes must follow in the same way. Messages of another major are refused, said
  and counted on their own ("protocol"), never decoded as if they were ours.

Heartbeats carry the major in ``v`` (what a minor adds shows in the fields themselves). API answers carry
``Standby-Protocol: MAJOR.MINOR``, and so do the API client's requests: the agent refuses an operation
(POST) announced in another major (409, nothing done), the client an answer in another major. Without the
header a message comes from a release older than 1.1, which speaks 1.

1.1: the API's Standby-Protocol header.
1.2: the heartbeat's ``dr_serves`` (a primary fenced because a warm follower accepts writes).
1.3: the heartbeat's ``dr_writable_term`` (a standby saw a warm follower accept writes; decide.py rule 7).

Releases and "one version apart". The release number (``standby --version``, the package's) is
``A.B.C``; it is what an operator installs, the protocol number is what the agents check on every
message. Releases are counted by ``A.B``: a patch (``C``) changes nothing a peer can see. Two releases
are one apart when they share ``A`` and their ``B`` differ by one (0.3.x and 0.4.y); a different ``A``
counts as more than one. The promise that makes a rolling upgrade work: a release speaks the protocol
major of the release before it, so releases one apart always interoperate; a new protocol major comes
only with a new release major, which is never one apart from anything before it. `standby check`
passes two releases of the same ``A.B``, warns about one apart (fine while an upgrade is under way) and
fails beyond one, naming both and the node to upgrade (``release_skew``).

The configuration digest. Heartbeats carry a digest of the sender's configuration and an agent refuses a
peer whose digest differs. The digest covers the parsed configuration, defaults included, so a key a
release adds changes it even in a file that does not mention it, and the two releases cannot run side by
side (``timings.maintenance_timeout_s`` did that: agents from before it and after it refuse each other).
A key added from now on is listed in ``ADDED_CONFIG_KEYS`` and left out of the digest while it has its
default: both releases compute the same digest from the same file. Set to another value, the older
release refuses the file (it does not know the key), so nothing is misread.

A key whose default a release changes breaks the same way (``postgres.wal_keep_size_mb``, 1024 -> 128: in
a file without it the two releases fill in different values). ``CHANGED_DEFAULTS`` names such a key with
the default the releases before it fill in, and a file that leaves the key out is digested with that
earlier default; a file that sets the key is digested as written. Only for keys that enter no decision
(each server's own setting): a file that leaves the key out and one that sets the earlier default then
digest alike, and for such a key that difference cannot make the agents judge alike what differs.
"""

from __future__ import annotations

import re
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

MAJOR = 1
MINOR = 3
HEADER = "Standby-Protocol"
# Configuration keys (dotted, as in the file) added since 1.0 with a default; see the module's docstring.
ADDED_CONFIG_KEYS: tuple[str, ...] = ("followers", "replication.quorum", "timings.postgres_unresponsive_ms",
                                      "timings.wal_flush_stuck_ms")
# Configuration keys (dotted) whose default changed, with the earlier default; see the module's docstring.
CHANGED_DEFAULTS: dict[str, Any] = {"postgres.wal_keep_size_mb": 1024}
# What an agent that predates the header speaks.
UNANNOUNCED = (1, 0)
_VERSION = re.compile(r"^\s*(\d{1,6})\.(\d{1,6})\s*$")
# A release number as the package metadata writes it: A.B[.C], then anything (a pre-release, +local).
_RELEASE = re.compile(r"^\s*(\d{1,6})\.(\d{1,6})(?:\.(\d{1,6}))?(?![\d])")


@dataclass(frozen=True)
class Mismatch:
    """A peer (agent or API) speaking another major protocol than this node."""

    who: str  # e.g. "beta's agent", "the client"
    peer: int | None  # its major; None: its version could not be read
    own: int = MAJOR
    me: str = "this node"  # who speaks ``own``

    def __str__(self) -> str:
        if self.peer is None:
            return (f"{self.who} announces a protocol {self.me} ({self.own}) cannot read: run the same standby "
                    "release on both nodes (see README 'Upgrades')")
        older = self.me if self.own < self.peer else self.who
        return (f"{self.who} speaks protocol {self.peer}, {self.me} {self.own}: they cannot work together; "
                f"upgrade standby on the older side ({older}) to the other's release (see README 'Upgrades')")


def header_value() -> str:
    return f"{MAJOR}.{MINOR}"


def parse_header(value: str | None) -> tuple[int, int] | None:
    """(major, minor) of a Standby-Protocol header; UNANNOUNCED when absent; None when unreadable."""
    if value is None:
        return UNANNOUNCED
    m = _VERSION.match(value)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_header(value: str | None, who: str) -> Mismatch | None:
    """None when an answer with this header may be read; else why not (an unreadable header counts as
    another protocol: its answer could be anything)."""
    got = parse_header(value)
    if got is None:
        return Mismatch(who, None)
    return None if got[0] == MAJOR else Mismatch(who, got[0])


def parse_release(text: str) -> tuple[int, int, int] | None:
    """(A, B, C) of a release number; None when it is not one."""
    m = _RELEASE.match(text)
    return None if m is None else (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def release_skew(a: str, b: str) -> int | None:
    """How many releases apart two release numbers are (0: the same A.B; a different A counts as 2, more
    than one); None when either is not a release number."""
    ra, rb = parse_release(a), parse_release(b)
    if ra is None or rb is None:
        return None
    return abs(ra[1] - rb[1]) if ra[0] == rb[0] else 2


def _default(model: type[BaseModel], dotted: str) -> Any:
    """The JSON value of a configuration key's default, found through the models of its tables."""
    *tables, key = dotted.split(".")
    for table in tables:
        sub = model.model_fields[table].annotation
        assert isinstance(sub, type) and issubclass(sub, BaseModel), dotted
        model = sub
    field = model.model_fields[key]
    assert field.annotation is not None, dotted
    return TypeAdapter(field.annotation).dump_python(field.get_default(call_default_factory=True), mode="json")


def _set_in_file(instance: BaseModel, dotted: str) -> bool:
    """Whether the file gave ``dotted`` (pydantic's fields_set), rather than its default filling it in."""
    *tables, key = dotted.split(".")
    for table in tables:
        if table not in instance.model_fields_set:
            return False
        sub = getattr(instance, table)
        assert isinstance(sub, BaseModel), dotted
        instance = sub
    return key in instance.model_fields_set


def _table_of(document: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """The table of a dumped configuration that holds ``dotted``'s key (None: no such table), and the key."""
    *tables, key = dotted.split(".")
    table: Any = document
    for name in tables:
        table = table.get(name) if isinstance(table, dict) else None
    return (table if isinstance(table, dict) else None), key


def digest_document(dumped: dict[str, Any], model: type[BaseModel], instance: BaseModel | None = None) -> dict[str, Any]:
    """A configuration's JSON dump (of ``model``) without the ADDED_CONFIG_KEYS that have their default, and
    with the earlier default of each CHANGED_DEFAULTS key the file (``instance``, as parsed) leaves out."""
    out = deepcopy(dumped)
    for dotted, earlier in CHANGED_DEFAULTS.items():
        table, key = _table_of(out, dotted)
        if instance is not None and table is not None and key in table and not _set_in_file(instance, dotted):
            table[key] = earlier
    for dotted in ADDED_CONFIG_KEYS:
        table, key = _table_of(out, dotted)
        if table is not None and key in table and table[key] == _default(model, dotted):
            del table[key]
    return out
