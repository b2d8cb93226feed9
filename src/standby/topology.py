"""The cluster's shape: the hot pair plus followers, validated before anything starts.

The hot pair (two nodes, ``[nodes.*]``) decides automatic failover between its members exactly as
before; nothing here changes the safety model. Followers (``[[followers]]``) are extra replicas that
never vote and never promote themselves:

- ``warm``: disaster recovery in another site; only an operator's ``standby promote`` makes it a primary;
- ``reporting``: serves reads, never promoted.

Each streams from the current primary (``upstream = "primary"``), from the hot standby (``"standby"``:
the primary's uplink carries the WAN stream once) or from another follower (its name). Pure values
and functions only: the checks return typed problems, each naming the key, the bad value and the fix;
the shell turns them into ``config check``'s errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from standby.confbase import Follower as Follower
from standby.confbase import FollowerRole as FollowerRole
from standby.confbase import Link


class PairNode(Protocol):
    """What the checks read of a ``[nodes.NAME]`` table (config.Node; config imports this module)."""

    @property
    def public(self) -> Link: ...
    @property
    def private(self) -> Link: ...


PRIMARY = "primary"  # upstream keyword: whichever pair node serves
STANDBY = "standby"  # upstream keyword: the hot standby (falls back to the primary when it is gone)
KEYWORDS = (PRIMARY, STANDBY)


@dataclass(frozen=True)
class Topology:
    """The pair (node name -> its [nodes.NAME] table) and the followers, in the file's order."""

    pair: Mapping[str, PairNode]
    followers: Sequence[Follower]

    def follower(self, name: str) -> Follower | None:
        return next((f for f in self.followers if f.name == name), None)


class ProblemKind(StrEnum):
    """What is wrong with a topology; one per check."""

    RESERVED_NAME = "reserved_name"  # a follower named "primary" or "standby"
    NAME_OF_PAIR_NODE = "name_of_pair_node"  # a follower named like a node of the hot pair
    DUPLICATE_NAME = "duplicate_name"
    SLOT_CLASH = "slot_clash"  # two names give one replication slot (or application_name)
    DUPLICATE_ADDRESS = "duplicate_address"
    UPSTREAM_IS_PAIR_NODE = "upstream_is_pair_node"  # a pair node by name: its role moves
    UNKNOWN_UPSTREAM = "unknown_upstream"
    CASCADE_LOOP = "cascade_loop"
    REPORTING_IP_ON_WARM = "reporting_ip_on_warm"
    MAJOR_VERSION = "major_version"
    QUORUM = "quorum"
    WAL_SENDERS = "wal_senders"  # max_wal_senders below what the topology may use at once


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    key: str  # where in the configuration, e.g. followers[1].upstream
    value: str  # the bad value
    fix: str  # what to do instead

    def __str__(self) -> str:
        return f"{self.key}: {self.value!r} {self.fix}"


def check(t: Topology) -> list[Problem]:
    """Every problem of the topology, in the file's order; empty when it may start."""
    return [*_name_problems(t), *_address_problems(t), *_upstream_problems(t), *_reporting_ip_problems(t)]


def _name_problems(t: Topology) -> Iterator[Problem]:
    seen: dict[str, str] = {}
    slots = {slot_name(n): f"nodes.{n}" for n in t.pair}
    for i, f in enumerate(t.followers):
        key = f"followers[{i}].name"
        if f.name in KEYWORDS:
            yield Problem(ProblemKind.RESERVED_NAME, key, f.name,
                          f"is an upstream keyword; name the follower otherwise (e.g. \"dr-{f.name}\")")
        elif f.name in t.pair:
            yield Problem(ProblemKind.NAME_OF_PAIR_NODE, key, f.name,
                          f"is a node of the hot pair (nodes.{f.name}); a follower needs a name of its own")
        elif f.name in seen:
            yield Problem(ProblemKind.DUPLICATE_NAME, key, f.name, f"is already the name of {seen[f.name]}; "
                          "give each follower a name of its own")
        elif slot_name(f.name) in slots:
            yield Problem(ProblemKind.SLOT_CLASH, key, f.name,
                          f"gives the replication slot {slot_name(f.name)}, as {slots[slot_name(f.name)]} does "
                          "(case, '-' and '_' do not tell names apart); rename one of them")
        seen.setdefault(f.name, f"followers[{i}]")
        slots.setdefault(slot_name(f.name), f"followers[{i}]")


def _address_problems(t: Topology) -> Iterator[Problem]:
    seen: dict[ipaddress.IPv4Address, str] = {}
    for name, node in t.pair.items():
        seen.setdefault(node.public.ip, f"nodes.{name}.public.address")
        seen.setdefault(node.private.ip, f"nodes.{name}.private.address")
    for i, f in enumerate(t.followers):
        for suffix, ip in f.addresses():
            key = f"followers[{i}].{suffix}"
            if ip in seen:
                yield Problem(ProblemKind.DUPLICATE_ADDRESS, key, str(ip),
                              f"is already used by {seen[ip]}; every address must be unique")
            seen.setdefault(ip, key)


def _upstream_problems(t: Topology) -> Iterator[Problem]:
    names = {f.name for f in t.followers}
    for i, f in enumerate(t.followers):
        key, up = f"followers[{i}].upstream", f.upstream
        if up in KEYWORDS:
            continue
        if up in t.pair:
            yield Problem(ProblemKind.UPSTREAM_IS_PAIR_NODE, key, up,
                          "names a node of the hot pair, whose role moves on failover; use \"primary\" or \"standby\"")
        elif up not in names:
            yield Problem(ProblemKind.UNKNOWN_UPSTREAM, key, up,
                          f"names no follower; use \"primary\", \"standby\" or one of: {', '.join(sorted(names)) or 'none'}")
        elif (loop := cascade_loop(t, f.name)) is not None:
            yield Problem(ProblemKind.CASCADE_LOOP, key, up,
                          f"closes a cascade loop ({' -> '.join(loop)}); let one of them stream from \"primary\" "
                          "or \"standby\"")


def cascade_loop(t: Topology, start: str) -> list[str] | None:
    """The loop of follower names ``start`` cascades into (start first and last), or None."""
    path = [start]
    f = t.follower(start)
    while f is not None and f.upstream not in KEYWORDS:
        if f.upstream == start:
            return [*path, start]
        if f.upstream in path:
            return None  # a loop further up, reported for its own members
        path.append(f.upstream)
        f = t.follower(f.upstream)
    return None


def _reporting_ip_problems(t: Topology) -> Iterator[Problem]:
    for i, f in enumerate(t.followers):
        if f.reporting_ip is not None and f.role is FollowerRole.WARM:
            yield Problem(ProblemKind.REPORTING_IP_ON_WARM, f"followers[{i}].reporting_ip", str(f.reporting_ip.address),
                          "is given for a warm follower; set role = \"reporting\" or remove reporting_ip")


# -- versions ------------------------------------------------------------------------------------------


def major(server_version_num: int) -> int:
    """PostgreSQL's major version from ``server_version_num`` (150018 -> 15; 90624 -> 9.6 as 906)."""
    return server_version_num // 10000 if server_version_num >= 100000 else server_version_num // 100


def version_problems(t: Topology, versions: Mapping[str, int]) -> list[Problem]:
    """Followers whose PostgreSQL major differs from the pair's (``server_version_num`` per node, where known).

    WAL streams only between servers of one major; a follower of another never catches up."""
    pair = sorted({major(v) for n, v in versions.items() if n in t.pair})
    if len(pair) != 1:
        return []  # unknown, or the pair itself differs (its own check says so)
    want = pair[0]
    out = []
    for i, f in enumerate(t.followers):
        got = versions.get(f.name)
        if got is not None and major(got) != want:
            out.append(Problem(ProblemKind.MAJOR_VERSION, f"followers[{i}]", f"{f.name}: PostgreSQL {major(got)}",
                               f"differs from the pair's PostgreSQL {want}; install {want} on {f.name}"))
    return out


# -- durability: who the primary waits for -------------------------------------------------------------


def application_name(node: str) -> str:
    """The name a node's WAL receiver gives (its node name), as synchronous_standby_names quotes it."""
    return f'"{node}"'


def slot_name(node: str) -> str:
    """The physical slot that streams WAL to ``node`` (the scheme of config.Config.slot_name)."""
    return "standby_" + node.replace("-", "_").lower()


@dataclass(frozen=True)
class SyncPlan:
    """synchronous_standby_names for the primary, and what it promises."""

    value: str
    members: tuple[str, ...]  # nodes whose acknowledgement counts
    waits_for: int  # how many of them each commit waits for
    # Every acknowledged commit is on the hot standby: it may be promoted automatically without loss.
    hot_standby_has_every_commit: bool
    says: str  # the promise, in words, for `status` and `config check`


def sync_plan(t: Topology, standby: str, sync: bool, quorum: int = 0) -> SyncPlan:
    """What the primary waits for. ``quorum`` 0: the hot standby only (the pair's rule, unchanged).
    ``quorum`` k > 0 (asked for by the operator): any k of the hot standby and the warm followers that
    stream from the primary. Reporting followers never count: a copy on a node that is never promoted
    protects no commit. Cascaded followers cannot count: the primary does not see them."""
    if not sync:
        return SyncPlan("", (), 0, False, "async: no commit waits; a failover can lose the newest commits")
    if quorum <= 0:
        return SyncPlan(application_name(standby), (standby,), 1, True,
                        f"sync: each commit waits for the hot standby {standby}; a DR promotion can still lose "
                        "what the warm followers had not received")
    members = (standby, *quorum_candidates(t))
    k = min(quorum, len(members))
    value = f"ANY {k} ({', '.join(application_name(m) for m in members)})"
    full = k == len(members)
    says = (f"sync quorum: each commit waits for {k} of {', '.join(members)}; "
            + ("every one of them has each acknowledged commit" if full else
               f"the hot standby {standby} may lack a commit another member acknowledged: a failover to it "
               "loses nothing only once it has flushed the primary's position"))
    return SyncPlan(value, members, k, full, says)


def quorum_candidates(t: Topology) -> tuple[str, ...]:
    return tuple(f.name for f in t.followers if f.role is FollowerRole.WARM and f.upstream == PRIMARY)


def quorum_problems(t: Topology, quorum: int, key: str = "replication.quorum") -> list[Problem]:
    n = 1 + len(quorum_candidates(t))
    if quorum < 0 or quorum > n:
        return [Problem(ProblemKind.QUORUM, key, str(quorum),
                        f"must be 0 (the hot standby only) or 1..{n} (the hot standby and the warm followers with "
                        "upstream = \"primary\"); a larger number would stop every commit")]
    return []


# -- slots ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotPlan:
    primary_slot_name: str  # this node's own slot on whichever node it streams from
    slots: tuple[str, ...]  # the slots this node keeps for the nodes that may stream from it


def slot_plan(t: Topology, node: str) -> SlotPlan:
    """The slots ``node`` keeps, whatever its role now: each pair node may become primary or standby, and a
    cascaded follower falls back to the primary, so a pair node keeps one for its peer and every follower
    (kept unreserved until used, a slot pins no WAL); a follower keeps one for each follower cascading from it."""
    if node in t.pair:
        others = [n for n in t.pair if n != node] + [f.name for f in t.followers]
    else:
        others = [f.name for f in t.followers if f.upstream == node]
    return SlotPlan(slot_name(node), tuple(slot_name(n) for n in others))


@dataclass(frozen=True)
class SlotSeen:
    """One row of pg_replication_slots, as the release rule reads it."""

    name: str
    active: bool  # a WAL sender streams through it now
    reserved: bool  # it has a restart_lsn: it pins WAL from there
    lost: bool  # PostgreSQL invalidated it (max_slot_wal_keep_size): no WAL behind it any more


def unused_here(t: Topology, node: str, primary: bool) -> tuple[str, ...]:
    """The follower slots pair node ``node`` keeps that no follower streams through in its present role: on
    the standby, those of the followers streaming from the primary; on the primary, those of the followers
    cascading from the standby (they come to the primary only while the standby is gone)."""
    if node not in t.pair:
        return ()
    away = STANDBY if primary else PRIMARY
    return tuple(slot_name(f.name) for f in t.followers if f.upstream == away)


def slots_to_release(t: Topology, node: str, primary: bool, seen: Sequence[SlotSeen]) -> tuple[str, ...]:
    """The follower slots to drop and make again unreserved, so that they pin no WAL.

    A slot keeps the WAL from the last position its follower confirmed *through it*. Once the follower
    streams elsewhere (a switchover moved the primary, a cascaded follower went back to the standby), the
    slot left behind pins every segment written since, on a server that needs none of it: its pg_wal grows
    to max_slot_wal_keep_size, a rewind from it copies all of that, and PostgreSQL finally invalidates the
    slot, which a follower sent back to this node then cannot stream through. Released are: the reserved
    slots ``unused_here`` (never one a WAL sender is using: an active slot is in use whatever the plan says),
    and any follower slot PostgreSQL invalidated (it holds nothing, and it refuses its follower)."""
    mine = set(slot_plan(t, node).slots) - {slot_name(n) for n in t.pair}
    unused = set(unused_here(t, node, primary))
    return tuple(s.name for s in seen
                 if s.name in mine and not s.active and ((s.reserved and s.name in unused) or s.lost))


# -- WAL senders ---------------------------------------------------------------------------------------


def wal_senders_needed(t: Topology, node: str) -> int:
    """The WAL senders ``node``'s server may run at once. A pair node: its peer's stream, and for each
    follower its stream (a cascaded one falls back to the primary) and its agent's kept replication
    connection (IDENTIFY_SYSTEM between rounds, to each pair node), plus one for a clone (pg_basebackup -X
    stream takes two while the stream it replaces is down). A follower: the stream and the kept connection
    of each follower cascading from it, and a warm one each pair node's DR watch (decide.py rule 7)."""
    if node in t.pair:
        return 1 + 2 * len(t.followers) + 1
    me = t.follower(node)
    watched = len(t.pair) if me is not None and me.role is FollowerRole.WARM else 0
    return 2 * sum(1 for f in t.followers if f.upstream == node) + watched


def wal_sender_problems(t: Topology, max_wal_senders: int, key: str = "postgres.max_wal_senders") -> list[Problem]:
    """max_wal_senders (one value for every server: the followers' come from their clone) against the most
    any node needs; past it, a follower's stream or its agent's questions are refused."""
    need = max((wal_senders_needed(t, n) for n in (*t.pair, *(f.name for f in t.followers))), default=0)
    if max_wal_senders >= need:
        return []
    return [Problem(ProblemKind.WAL_SENDERS, key, str(max_wal_senders),
                    f"is too few for {len(t.followers)} follower(s): a pair node may run {need} WAL senders at once "
                    f"(its peer's stream, each follower's stream and its agent's kept connection, one more for a "
                    f"clone); set it to at least {need}")]
