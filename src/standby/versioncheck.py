"""`standby check`'s comparison of the two nodes' versions: PostgreSQL's (major and minor) and standby's
own release (``protocol.release_skew``). Pure: versions in, check items out.

PostgreSQL streams WAL only between servers of the same major version, so two majors fail, pointing to
the supported path (README, "PostgreSQL major upgrade"). Two minors of one major replicate, but a
standby older than its primary may not replay what a newer primary writes: fine only while a minor
update goes node by node (README, "PostgreSQL minor update").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from standby import protocol
from standby.model import CheckItem, Verdict

PG_MAJOR_UPGRADE = "README 'Upgrades', 'PostgreSQL major upgrade'"
PG_MINOR_UPDATE = "README 'Upgrades', 'PostgreSQL minor update'"
RELEASE_UPGRADE = "README 'Upgrades'"
_PG_TEXT = re.compile(r"^\s*(\d+)(?:\.(\d+))?")


class PgSkew(StrEnum):
    SAME = "same"
    MINOR = "minor"  # one major, other minors: fine only during a minor update
    MAJOR = "major"  # no replication between them
    UNKNOWN = "unknown"  # a side's version could not be read


class ReleaseSkew(StrEnum):
    SAME = "same"  # the same A.B
    ONE_APART = "one apart"  # fine while a rolling upgrade is under way
    BEYOND_ONE = "beyond one"  # not supported side by side
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PgVersion:
    major: int
    minor: int | None = None  # None: only the major is known

    @classmethod
    def from_num(cls, num: int) -> PgVersion:
        """From server_version_num (150010 is 15.10; every supported major is 10 or later)."""
        return cls(num // 10000, num % 10000)

    @classmethod
    def from_text(cls, text: str) -> PgVersion | None:
        """From ``postgres --version``'s number ("15.10"); None when there is none."""
        m = _PG_TEXT.match(text)
        return None if m is None else cls(int(m.group(1)), None if m.group(2) is None else int(m.group(2)))

    def __str__(self) -> str:
        return str(self.major) if self.minor is None else f"{self.major}.{self.minor}"


def compare_pg(a: PgVersion | None, b: PgVersion | None) -> PgSkew:
    if a is None or b is None:
        return PgSkew.UNKNOWN
    if a.major != b.major:
        return PgSkew.MAJOR
    return PgSkew.MINOR if None not in (a.minor, b.minor) and a.minor != b.minor else PgSkew.SAME


def pg_items(node: str, peer: str, mine: PgVersion | None, theirs: PgVersion | None) -> list[CheckItem]:
    """The pair's PostgreSQL versions: ``mine`` on ``node``, ``theirs`` on ``peer``."""
    skew = compare_pg(mine, theirs)
    name = "postgresql major version"
    if skew is PgSkew.UNKNOWN:
        who = node if mine is None else peer
        return [CheckItem("pair", name, Verdict.WARN, f"{who}'s PostgreSQL version unknown (its server is not reachable)")]
    assert mine is not None and theirs is not None
    if skew is PgSkew.MAJOR:
        older = node if mine.major < theirs.major else peer
        return [CheckItem("pair", name, Verdict.FAIL,
                          f"{node} has PostgreSQL {mine.major}, {peer} has {theirs.major}: streaming replication needs "
                          f"the same major version on both nodes. Do not pair them; move the data to the new major as "
                          f"{PG_MAJOR_UPGRADE} says (a fresh standby of the new major replaces {older}'s)")]
    out = [CheckItem("pair", name, Verdict.PASS, f"both {mine.major}")]
    if skew is PgSkew.MINOR:
        older = node if (mine.minor or 0) < (theirs.minor or 0) else peer
        out.append(CheckItem("pair", "postgresql minor version", Verdict.WARN,
                             f"{node} has {mine}, {peer} has {theirs}: fine only while a minor update is under way "
                             f"(the standby first, switchover, then the old primary, switchback); finish it on {older} "
                             f"({PG_MINOR_UPDATE})"))
    return out


def compare_release(a: str, b: str | None) -> ReleaseSkew:
    skew = None if b is None else protocol.release_skew(a, b)
    if skew is None:
        return ReleaseSkew.UNKNOWN
    return ReleaseSkew.SAME if skew == 0 else ReleaseSkew.ONE_APART if skew == 1 else ReleaseSkew.BEYOND_ONE


@dataclass(frozen=True)
class Release:
    """A node's standby release and where it was read (e.g. "its agent", "at its bootstrap")."""

    version: str
    source: str


def release_items(node: str, peer: str, mine: Release, theirs: Release | None,
                  mismatch: protocol.Mismatch | None = None) -> list[CheckItem]:
    """The pair's standby releases; ``mismatch``: the protocol major this node's agent refuses its peer's in."""
    name = "standby version"
    if mismatch is not None:
        return [CheckItem("pair", name, Verdict.FAIL, str(mismatch))]
    if theirs is None:
        return [CheckItem("pair", name, Verdict.WARN,
                          f"{peer}'s standby version unknown: its agent does not answer and it has not run `standby bootstrap`")]
    skew = compare_release(mine.version, theirs.version)
    said = f"{node} runs {mine.version} ({mine.source}), {peer} {theirs.version} ({theirs.source})"
    if skew is ReleaseSkew.SAME:
        return [CheckItem("pair", name, Verdict.PASS, f"both {mine.version}")]
    if skew is ReleaseSkew.UNKNOWN:
        return [CheckItem("pair", name, Verdict.WARN, f"{said}: not both release numbers (A.B.C), cannot compare them")]
    a, b = protocol.parse_release(mine.version), protocol.parse_release(theirs.version)
    older, newer = (node, theirs.version) if (a or ()) < (b or ()) else (peer, mine.version)
    if skew is ReleaseSkew.ONE_APART:
        return [CheckItem("pair", name, Verdict.WARN,
                          f"{said}: one release apart, fine while a rolling upgrade is under way; finish it: install "
                          f"{newer} on {older} ({RELEASE_UPGRADE})")]
    return [CheckItem("pair", name, Verdict.FAIL,
                      f"{said}: more than one release apart, which are not made to work together: install {newer} on "
                      f"{older} now, then check again ({RELEASE_UPGRADE})")]


def data_dir_items(node: str, data_major: int | None, installed: int, data_dir: str, bin_dir: str) -> list[CheckItem]:
    """The data directory (its PG_VERSION) is of the major version of the binaries that will run it."""
    if data_major is None or data_major == installed:
        return []
    return [CheckItem(node, "data directory version", Verdict.FAIL,
                      f"{data_dir} holds a PostgreSQL {data_major} data directory but postgres.bin_dir ({bin_dir}) is "
                      f"PostgreSQL {installed}, which cannot run it: point postgres.bin_dir and postgres.data_dir at "
                      f"the same major version ({PG_MAJOR_UPGRADE})")]
