"""`standby promote` in warm mode says how much WAL the standby lacked at the last contact."""

from __future__ import annotations

import re
import time

import pytest

from standby.lab import Lab, LabSpec
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
    time.sleep(1.5)  # a few heartbeats with the new position
    lab.crash("alpha")
    lab.heal()
    res = lab.standby("beta", "promote", "--yes", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"what could be lost: .*\(at least (\d+) bytes of WAL behind at the last contact\)", res.stdout)
    assert m, res.stdout
    # The 20,000 rows' WAL (over a megabyte) never reached beta; no more than alpha ever wrote.
    assert 1_000_000 < int(m.group(1)) <= int(written)
    assert primaries(lab) == ["beta"]
