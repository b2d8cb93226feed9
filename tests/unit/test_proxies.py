"""What the proxies in front read, without a lab: the read check's lag (what HAProxy routes reads by), and
the timings of etc/haproxy.cfg.example against the agents' own. tests/lab/test_proxies.py runs the
programs themselves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from standby import api, config
from standby.agent.node import Agent
from standby.model import DbState, LocalPg, Net, PeerView
from tests.unit.configs import example_with_secrets

ROOT = Path(__file__).parents[2]
HAPROXY_EXAMPLE = ROOT / "etc" / "haproxy.cfg.example"
MIB = 1024 * 1024


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    raw, _ = example_with_secrets(tmp_path)
    a = Agent(config.parse(raw), "beta")
    try:
        yield a
    finally:
        for pool in (a.pg_pool, a.svc_pool, a.probe_pool):
            pool.shutdown(wait=False)


def _replica(a: Agent, query: str) -> tuple[int, dict[str, object]]:
    app = api.make_app(a)
    resp = asyncio.run(api.replica(make_mocked_request("GET", f"/replica{query}", app=app)))
    assert resp.body is not None
    return resp.status, json.loads(bytes(resp.body))  # type: ignore[arg-type]


def _standby(a: Agent, primary_at: int, received: int, replayed: int) -> None:
    a.link.peer_view = PeerView(term=1, db=DbState.PRIMARY, services=True, lsn=primary_at, sync_ok=True,
                                carrier={Net.PUBLIC: True, Net.PRIVATE: True}, tiebreaker_ok=True)
    a.pg = LocalPg(DbState.STANDBY, lsn=received, streaming=True, replay_lsn=replayed)


def test_replica_lag_bound_counts_what_reads_see_not_what_was_received(agent: Agent) -> None:
    """A standby that received everything but applied little (replay paused, or held up by a report's
    conflict) serves old rows: HAProxy's read check must not call it within a bound it is not."""
    _standby(agent, primary_at=100 * MIB, received=100 * MIB, replayed=10 * MIB)
    status, body = _replica(agent, f"?lag={16 * MIB}")
    assert status == 503 and body["lag_bytes"] == 90 * MIB, body
    assert _replica(agent, "")[0] == 200  # no bound: any streaming standby
    _standby(agent, primary_at=100 * MIB, received=100 * MIB, replayed=99 * MIB)
    status, body = _replica(agent, f"?lag={16 * MIB}")
    assert status == 200 and body["lag_bytes"] == 1 * MIB, body
    _standby(agent, primary_at=100 * MIB, received=100 * MIB, replayed=None)  # type: ignore[arg-type]
    assert _replica(agent, f"?lag={16 * MIB}")[0] == 503  # nothing applied yet that it could tell: not in bound
