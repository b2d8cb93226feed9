"""The chaos schedule: a reproducible, endless sequence of faults drawn from a seed. Pure.

A campaign (standby.lab.campaign) takes faults from ``faults(seed)`` until its
time is up, so the same seed always gives the same sequence, whatever the
run's length. Targets are roles ("the primary", "the standby"), resolved when
the fault is injected: a fault aimed at whichever node is primary at that
moment finds the interesting cases, where a fixed node name would often hit a
standby twice.

A lab with followers adds kinds aimed at them (a follower by name) and at the WAN link between the
sites; they are drawn only when the lab has what they hit, so a pair-only lab draws the same
sequence from a seed as it did before followers existed.
"""

from __future__ import annotations

import enum
import importlib.util
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from standby.lab.topology import WAN_FOLLOWERS


class Kind(enum.StrEnum):
    CRASH = "crash"  # power loss; the host reboots at the heal (its agent is started again)
    FREEZE = "freeze"  # a paused VM: processes stopped, no packet in or out; thawed at the heal
    LINK_DOWN = "link-down"  # one network's cable
    ISOLATE = "isolate"  # both cables
    LOSS = "loss"  # a share of the packets dropped on one network
    KILL_AGENT = "kill-agent"  # SIGKILL; its supervisor fences if needed and starts a new one
    KILL_POSTGRES = "kill-postgres"  # SIGKILL the postmaster
    WAL_DISK_FULL = "wal-disk-full"  # the WAL file system (a small tmpfs) filled up; freed at the heal
    CLOCK_JUMP = "clock-jump"  # the agent's wall clock steps by minutes; steps back at the heal
    SWITCHOVER = "switchover"  # a planned swap, run by the operator in the middle of it all
    BUSY_PRIMARY = "busy-primary"  # the primary agent's own database sessions stall for seconds; no failover may follow
    STANDBY_LONG_FREEZE = "standby-long-freeze"  # the standby paused past degrade_after_s (or 2 x failover timeout)
    MAINTENANCE_LEFT_ON = "maintenance-left-on"  # an operator switches maintenance on and forgets it
    API_FLOOD = "api-flood"  # many connections held open against one agent's HTTP API
    HEARTBEAT_REPLAY = "heartbeat-replay"  # heartbeats captured earlier are sent again to a node
    # The server's processes stopped (SIGSTOP), the host and its agent running on: a hung disk or a debugger.
    # The agent's readings hang meanwhile; a fence decided then must still stop the server (SIGKILL).
    POSTGRES_FREEZE = "postgres-freeze"
    # The WAL file system completes no write (fsfreeze): the server answers from memory, no commit finishes; thawed
    # at the heal. Held past timings.wal_flush_stuck_ms on the primary, the database is handed over.
    WAL_DISK_HANG = "wal-disk-hang"
    # Followers and the WAN (a lab with followers only). A follower never promotes, whatever it meets.
    FOLLOWER_CRASH = "follower-crash"  # a follower's host loses power; it reboots at the heal (its agent started)
    FOLLOWER_FREEZE = "follower-freeze"  # a follower's host paused; thawed at the heal
    FOLLOWER_ISOLATE = "follower-isolate"  # both of a follower's cables
    WAN_DOWN = "wan-down"  # the link between the sites, cut on the pair's side of the router
    WAN_LOSS = "wan-loss"  # a share of what the router forwards between the sites dropped


class Target(enum.StrEnum):
    PRIMARY = "primary"
    STANDBY = "standby"
    BOTH = "both"  # MAINTENANCE_LEFT_ON only; resolved to the primary's name in the records
    FOLLOWER = "follower"  # the follower named in the fault
    WAN = "wan"  # the WAN router's link between the sites


FOLLOWER_KINDS: frozenset[Kind] = frozenset({Kind.FOLLOWER_CRASH, Kind.FOLLOWER_FREEZE, Kind.FOLLOWER_ISOLATE})
WAN_KINDS: frozenset[Kind] = frozenset({Kind.WAN_DOWN, Kind.WAN_LOSS})


ALL_KINDS: tuple[Kind, ...] = tuple(Kind)

# Kinds whose lab functions live in a module of their own, possibly not installed:
# they are left out of the default draw when it is missing. Both live in standby.lab.flood (the
# replay was gated on a module that never existed, so no campaign drew it).
MODULE_OF: dict[Kind, str] = {Kind.API_FLOOD: "standby.lab.flood", Kind.HEARTBEAT_REPLAY: "standby.lab.flood"}

# How often each kind comes up, relative. The network and host faults are what
# a two-server pair meets most; a switchover is a planned event, so rarer.
WEIGHTS: dict[Kind, int] = {
    Kind.CRASH: 3, Kind.FREEZE: 3, Kind.LINK_DOWN: 3, Kind.ISOLATE: 3, Kind.LOSS: 2,
    Kind.KILL_AGENT: 2, Kind.KILL_POSTGRES: 2, Kind.WAL_DISK_FULL: 1, Kind.CLOCK_JUMP: 2, Kind.SWITCHOVER: 1,
    Kind.BUSY_PRIMARY: 2, Kind.STANDBY_LONG_FREEZE: 1, Kind.MAINTENANCE_LEFT_ON: 1, Kind.API_FLOOD: 2,
    Kind.HEARTBEAT_REPLAY: 2, Kind.POSTGRES_FREEZE: 2, Kind.WAL_DISK_HANG: 2,
    Kind.FOLLOWER_CRASH: 2, Kind.FOLLOWER_FREEZE: 2, Kind.FOLLOWER_ISOLATE: 2, Kind.WAN_DOWN: 2, Kind.WAN_LOSS: 2,
}

# timings.postgres_unresponsive_ms's default, in seconds (tests/unit/test_chaos.py holds them equal; not imported:
# the configuration's models are more than the schedule needs): a longer postgres-freeze of the primary hands it over.
UNRESPONSIVE_S = 15.0
# timings.wal_flush_stuck_ms's default, in seconds, held equal the same way: a longer wal-disk-hang of the primary
# hands it over.
WAL_STUCK_S = 30.0

# A standby-long-freeze outlasts this (seconds) unless the campaign says otherwise:
# twice the default failover timeout.
DEFAULT_LONG_FREEZE_S = 1.5


def kind_available(kind: Kind) -> bool:
    module = MODULE_OF.get(kind)
    return module is None or importlib.util.find_spec(module) is not None


def available_kinds() -> tuple[Kind, ...]:
    """Every kind this installation can inject."""
    return tuple(k for k in ALL_KINDS if kind_available(k))


def drawable(kind: Kind, followers: Sequence[str]) -> bool:
    """Whether a lab with ``followers`` has what ``kind`` hits: a follower, or a WAN (a follower in the
    other site)."""
    if kind in FOLLOWER_KINDS:
        return bool(followers)
    if kind in WAN_KINDS:
        return any(f in WAN_FOLLOWERS for f in followers)
    return True


def long_freeze_s(failover_timeout_ms: int, degrade_after_s: float = 0.0) -> float:
    """How long a standby-long-freeze must last to matter: past the primary's wait for its standby
    (degrade_after_s) when there is one, otherwise past twice the failover timeout."""
    return degrade_after_s if degrade_after_s > 0 else 2 * failover_timeout_ms / 1000


@dataclass(frozen=True)
class Fault:
    number: int  # 1, 2, ... in the order drawn
    kind: Kind
    target: Target
    net: str | None = None  # "public" | "private" for LINK_DOWN and LOSS
    percent: int | None = None  # LOSS
    offset_s: int | None = None  # CLOCK_JUMP: seconds, + or -
    hold_s: float = 0.0  # how long the fault lasts before the heal
    quiet_s: float = 0.0  # after the pair has converged, before the next fault
    connections: int | None = None  # API_FLOOD
    follower: str | None = None  # Target.FOLLOWER: which one

    def describe(self) -> str:
        what = self.kind.value
        if self.kind is Kind.LINK_DOWN:
            what = f"{self.net} link down"
        elif self.kind is Kind.LOSS:
            what = f"{self.percent}% loss on {self.net}"
        elif self.kind is Kind.WAN_LOSS:
            what = f"{self.percent}% loss"
        elif self.kind is Kind.CLOCK_JUMP:
            what = f"wall clock {self.offset_s or 0:+d} s"
        elif self.kind is Kind.API_FLOOD:
            what = f"api-flood of {self.connections} connections"
        if self.target is Target.BOTH:
            return f"#{self.number} {what} on both nodes for {self.hold_s:.1f} s"
        if self.target is Target.FOLLOWER:
            return f"#{self.number} {what} on follower {self.follower} for {self.hold_s:.1f} s"
        if self.target is Target.WAN:
            return f"#{self.number} {what} on the WAN link for {self.hold_s:.1f} s"
        return f"#{self.number} {what} on the {self.target.value} for {self.hold_s:.1f} s"

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items() if v is not None}


def faults(seed: int, kinds: Sequence[Kind] = ALL_KINDS, long_freeze: float = DEFAULT_LONG_FREEZE_S,
           followers: Sequence[str] = ()) -> Iterator[Fault]:
    """The endless fault sequence for ``seed``, restricted to ``kinds`` and to what a lab with
    ``followers`` has (see drawable); a standby-long-freeze lasts longer than ``long_freeze`` seconds
    (see long_freeze_s)."""
    pool = sorted({k for k in kinds if drawable(k, followers)}, key=ALL_KINDS.index)
    if not pool:
        raise ValueError("no fault kinds to draw from")
    rng = random.Random(seed)
    names = sorted(followers)
    weights = [WEIGHTS[k] for k in pool]
    number = 0
    while True:
        number += 1
        kind = rng.choices(pool, weights)[0]
        # Faults on the primary are the ones that move things; the standby gets a share too.
        target = Target.PRIMARY if rng.random() < 0.7 else Target.STANDBY
        net = percent = offset = connections = follower = None
        if kind in (Kind.LINK_DOWN, Kind.LOSS):
            net = rng.choice(("public", "private"))
        if kind in FOLLOWER_KINDS:
            # Drawn only for these kinds: the pair's kinds consume the generator as they always did.
            target, follower = Target.FOLLOWER, rng.choice(names)
        elif kind in WAN_KINDS:
            target = Target.WAN
        if kind in (Kind.LOSS, Kind.WAN_LOSS):
            percent = rng.choice((10, 30, 50, 80))
        if kind is Kind.CLOCK_JUMP:
            offset = rng.choice((-1, 1)) * rng.randint(60, 600)
        if kind is Kind.SWITCHOVER:
            target = Target.PRIMARY  # a switchover is asked of the pair; it moves the primary away
        if kind is Kind.API_FLOOD:
            connections = rng.choice((50, 200, 500))
        # Short holds hit the detection window (about a second); long ones let everything move.
        hold = round(rng.choice((rng.uniform(0.3, 1.5), rng.uniform(2.0, 8.0))), 1)
        if kind is Kind.BUSY_PRIMARY:
            target = Target.PRIMARY
            hold = round(rng.uniform(3.0, 4.0), 1)  # slow enough to look dead, short of any timeout that moves roles
        elif kind is Kind.STANDBY_LONG_FREEZE:
            target = Target.STANDBY
            hold = round(long_freeze + rng.uniform(1.0, 3.0), 1)
        elif kind is Kind.MAINTENANCE_LEFT_ON:
            target = rng.choice((Target.PRIMARY, Target.BOTH))
            hold = round(rng.uniform(8.0, 15.0), 1)  # the pair runs a while with failover suspended
        elif kind is Kind.HEARTBEAT_REPLAY:
            hold = round(rng.uniform(2.0, 6.0), 1)
        elif kind is Kind.POSTGRES_FREEZE and rng.random() < 0.25:
            # Now and then past timings.postgres_unresponsive_ms (its default): the primary's server is handed over.
            hold = round(UNRESPONSIVE_S + rng.uniform(1.0, 5.0), 1)
        elif kind is Kind.WAL_DISK_HANG and rng.random() < 0.25:
            # Now and then past timings.wal_flush_stuck_ms: the fence's SIGKILL is then held by the processes that
            # wait on the disk until the thaw, while the postmaster's end is what the standby waits for.
            hold = round(WAL_STUCK_S + rng.uniform(1.0, 12.0), 1)
        quiet = round(rng.uniform(1.0, 4.0), 1)
        yield Fault(number, kind, target, net, percent, offset, hold, quiet, connections=connections, follower=follower)


def parse_kinds(text: str | None) -> tuple[Kind, ...]:
    """'crash,freeze' -> kinds; None or '' -> every available kind. Unknown names, or kinds whose
    module is missing, raise ValueError naming the choices."""
    if not text:
        return available_kinds()
    out = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        try:
            kind = Kind(name)
        except ValueError:
            raise ValueError(f"unknown fault kind {name!r}; expected some of: {', '.join(k.value for k in Kind)}") from None
        if not kind_available(kind):
            raise ValueError(f"fault kind {name!r} needs the module {MODULE_OF[kind]}, which is not installed; "
                             f"leave it out of --kinds")
        out.append(kind)
    return tuple(out)
