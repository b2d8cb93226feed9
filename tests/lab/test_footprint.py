"""Issue 13, part 3: the agent's one-round-trip observation of its server, on real PostgreSQL."""

from __future__ import annotations

from standby.agent.localdb import read_local
from standby.lab import Lab
from standby.lab.pair import start_pair
from standby.model import DbState


def test_i13_one_round_trip_reads_the_primary_and_the_streaming_standby(lab: Lab) -> None:
    start_pair(lab)  # waits for the agents to see alpha primary with beta in sync: they read through it too
    with lab.pg_connect("alpha", autocommit=True) as a, lab.pg_connect("beta", autocommit=True) as b:
        primary, names = read_local(a, "beta")
        standby, _ = read_local(b, "alpha")
        current = a.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]  # type: ignore[index]
    assert primary.db is DbState.PRIMARY and primary.peer_sync and names
    assert primary.lsn is not None and primary.lsn <= current
    assert primary.peer_flush_lsn is not None and primary.peer_flush_lsn <= primary.lsn
    # Its own flush position too (standby.observe.walstuck): never past what was written.
    assert primary.flush_lsn is not None and primary.flush_lsn <= primary.lsn
    assert standby.flush_lsn is None and not standby.wal_waiting
    assert standby.db is DbState.STANDBY and standby.streaming
    assert standby.lsn is not None and standby.replay_lsn is not None and standby.replay_lsn <= standby.lsn
    assert standby.upstream_age_s is not None and standby.upstream_age_s >= 0
