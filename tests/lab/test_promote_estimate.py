"""`standby promote` in warm mode says how much WAL the standby lacked at the last contact."""

from __future__ import annotations

import re

import pytest

from standby.apiclient import replica_lag
from standby.lab import Lab, LabSpec, netns
from standby.lab.pair import agent_state, primaries

pytestmark = pytest.mark.lab


@pytest.fixture
def warm_async(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    lab = Lab.up(LabSpec(lab_factory.reserve(), mode="warm", durability="async"))
    lab.bootstrap()
    for node in ("alpha", "beta"):
        lab.start_agent(node)
    lab.wait_for("beta streaming", lambda: agent_state(lab, "beta").get("postgres", {}).get("streaming"), timeout_s=60)
    return lab


def test_promote_prints_what_could_be_lost_in_wal_bytes(warm_async: Lab) -> None:
    lab = warm_async
    # WAL stops reaching beta (private network) while heartbeats, carrying alpha's position, still do (public).
    lab.loss("beta", "private", 100)
    with lab.pg_connect("alpha", autocommit=True) as c:
        c.execute("CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 20000) g")
        written = c.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]  # type: ignore[index]
    # Beta has heard alpha's new position (its heartbeats still arrive): what the promotion will read.
    cfg = lab.config()
    lab.wait_for("beta's lag past the table's WAL", lambda: (netns.call_in(lab.netns("beta"), replica_lag, cfg, "beta")
                                                             or 0) > 1_000_000, timeout_s=15, every_s=0.2)
    lab.crash("alpha")
    lab.heal()
    res = lab.standby("beta", "promote", "--yes", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"what could be lost: .*\(at least (\d+) bytes of WAL behind at the last contact\)", res.stdout)
    assert m, res.stdout
    # The 20,000 rows' WAL (over a megabyte) never reached beta; no more than alpha ever wrote.
    assert 1_000_000 < int(m.group(1)) <= int(written)
    assert primaries(lab) == ["beta"]
