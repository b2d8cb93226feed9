"""The lab's followers ([[followers]], docs/followers.md): each cloned from the pair's primary as an operator
clones one (`standby bootstrap --node NAME`), started in recovery, then left to its agent
(``standby agent --node NAME``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg

from standby.lab import pgnode
from standby.lab.errors import LabError
from standby.lab.lab import Lab
from standby.lab.topology import APP_DB, DB_NODES


@dataclass(frozen=True)
class Receiver:
    """A follower's WAL receiver as its own server reports it."""

    streaming: bool
    source: str | None  # the pair node (or follower) it streams from, by its private address
    timeline: int | None
    system_identifier: int


def clone(lab: Lab, name: str) -> None:
    """Fill the follower's empty data directory from the pair's primary and start it in recovery, as an operator
    does: `standby bootstrap --node NAME` on the follower (the pair bootstrapped: its slot and pg_hba.conf line
    for the follower exist)."""
    if (lab.node(name).pgdata / "PG_VERSION").exists():
        raise LabError(f"follower {name}: {lab.node(name).pgdata} already holds a database")
    lab.standby(name, "bootstrap")


def attach(lab: Lab) -> None:
    """Clone and start each follower of the lab that has no database yet (the pair bootstrapped)."""
    for name in lab.spec.followers:
        if not (lab.node(name).pgdata / "PG_VERSION").exists():
            clone(lab, name)


def receiver(lab: Lab, name: str) -> Receiver | None:
    """What the follower's server says of its WAL receiver, or None if it does not answer."""
    by_ip = {lab.node(n).private.ip: n for n in (*DB_NODES, *lab.spec.followers)}
    try:
        with pgnode.connect(lab.node(name), connect_timeout=2) as conn:
            row = conn.execute("SELECT status, sender_host, received_tli FROM pg_stat_wal_receiver").fetchone()
            ident = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    except (psycopg.Error, OSError):
        return None
    assert ident is not None
    if row is None:
        return Receiver(False, None, None, int(ident[0]))
    status, host, tli = row
    return Receiver(status == "streaming", by_ip.get(host), tli, int(ident[0]))


def streaming_from(lab: Lab, name: str, source: str, timeline: int | None = None) -> bool:
    """The follower streams from ``source`` (on ``timeline``, if given)."""
    r = receiver(lab, name)
    return bool(r and r.streaming and r.source == source and (timeline is None or r.timeline == timeline))


def identity(lab: Lab, name: str) -> tuple[int, int]:
    """The follower's system identifier and its PG_VERSION file's inode: a clone would make that file anew."""
    r = receiver(lab, name)
    if r is None:
        raise LabError(f"follower {name}: its server does not answer")
    return r.system_identifier, os.stat(lab.node(name).pgdata / "PG_VERSION").st_ino


def timeline(lab: Lab, node: str) -> int:
    """The timeline ``node`` (a primary) writes on now."""
    with pgnode.connect(lab.node(node)) as c:
        row = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    assert row is not None
    return int(row[0][:8], 16)


def wait_replayed(lab: Lab, name: str, primary: str, timeout_s: float = 60.0) -> None:
    """Until the follower replayed the WAL ``primary`` has written so far."""
    with pgnode.connect(lab.node(primary)) as c:
        row = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None

    def replayed() -> bool:
        with pgnode.connect(lab.node(name), connect_timeout=2) as g:
            done = g.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
        return bool(done and done[0])

    lab.wait_for(f"follower {name} to replay {primary}'s WAL up to {row[0]}", replayed, timeout_s=timeout_s)


def call_ids(lab: Lab, node: str) -> set[str]:
    """The sample softswitch's calls on ``node`` (a pair node or a follower)."""
    with pgnode.connect(lab.node(node), APP_DB) as c:
        return {r[0] for r in c.execute("SELECT call_id FROM cdrs").fetchall()}


def wait_streaming(lab: Lab, name: str, source: str, timeline: int | None = None, timeout_s: float = 60.0) -> None:
    """Until the follower streams from ``source`` (on ``timeline``); else LabError with what its agent and
    its server last said."""
    on = "" if timeline is None else f" on timeline {timeline}"
    try:
        lab.wait_for(f"follower {name} streaming from {source}{on}",
                     lambda: streaming_from(lab, name, source, timeline), timeout_s=timeout_s, every_s=0.05)
    except LabError as e:
        logs = lab.spec.role_dir(name) / "log"
        tails = {f: (logs / f).read_text(errors="replace").splitlines()[-15:] if (logs / f).exists() else []
                 for f in ("agent.log", "postgresql.log")}
        raise LabError(f"{e}; its WAL receiver: {receiver(lab, name)}\n"
                       + "\n".join(f"--- {f}\n" + "\n".join(t) for f, t in tails.items())) from None
