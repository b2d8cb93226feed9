"""What the proxies in front read, without a lab: the read check's lag (what HAProxy routes reads by), and
the timings of etc/haproxy.cfg.example against the agents' own. tests/lab/test_proxies.py runs the
programs themselves."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby import api, config
from standby.agent.node import Agent
from standby.model import DbState, LocalPg, Net, PeerView
from standby.web.server import Request
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
    resp = asyncio.run(api.Api(a).replica(Request.of("GET", f"/replica{query}")))
    return resp.status, json.loads(resp.body)


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


def _ms(value: str) -> int:
    """An HAProxy time (``300ms``, ``1s``, ``2m``; a bare number is milliseconds) in milliseconds."""
    m = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert m, f"not an HAProxy time: {value!r}"
    scale = {"us": 0.001, "ms": 1, None: 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2)]
    return int(int(m.group(1)) * scale)


def _haproxy_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not raw[0].isspace():
            current = sections.setdefault(line, [])
        else:
            current.append(line)
    return sections


def _server_option(line: str, name: str) -> str:
    words = line.split()
    assert name in words, f"{name} missing from {line!r}"
    return words[words.index(name) + 1]


def test_haproxy_example_marks_a_silent_or_fenced_primary_down_before_the_promoted_standby_up() -> None:
    """The write backend of etc/haproxy.cfg.example against the default [timings]: the old primary is
    DOWN in HAProxy before the standby could even be UP, whether the old one died silently (a crash: its
    checks time out) or fenced itself (its checks answer 503)."""
    sections = _haproxy_sections(HAPROXY_EXAMPLE.read_text())
    defaults = dict(line.split(None, 2)[1:] for line in sections["defaults"] if line.startswith("timeout "))
    backend = sections["backend writes"]
    assert "option httpchk GET /primary" in backend
    ds = next(line for line in backend if line.startswith("default-server "))
    inter, fastinter = _ms(_server_option(ds, "inter")), _ms(_server_option(ds, "fastinter"))
    rise, fall = int(_server_option(ds, "rise")), int(_server_option(ds, "fall"))
    assert "shutdown-sessions" in ds.split()  # a server marked DOWN loses its sessions, not only new ones
    # With `timeout check`, a check may connect for min(timeout connect, inter), then wait that long for its answer.
    connect = min(_ms(defaults["connect"]), inter)
    answer = _ms(defaults["check"])
    t = config.Timings()
    # Crash: the first check that cannot reach it fails (one in flight at the crash waits for its answer),
    # each further one `fastinter` later (a server changing state is checked at that pace).
    down_silent = max(inter + connect, connect + answer) + (fall - 1) * (fastinter + connect)
    # The standby promotes failover_timeout_ms after the last heartbeat it heard, at the earliest one
    # interval before the crash; its first passing check may come at once, `rise` of them make it UP.
    up_after_crash = t.failover_timeout_ms - t.heartbeat_interval_ms + (rise - 1) * fastinter
    assert down_silent < up_after_crash, (down_silent, up_after_crash)
    # Fenced: the standby promotes no sooner than failover - fence after the primary fenced (both count
    # from the last word between them); the fenced primary's next check answers 503.
    down_fenced = inter + (fall - 1) * fastinter
    up_after_fence = t.failover_timeout_ms - t.fence_timeout_ms + (rise - 1) * fastinter
    assert down_fenced < up_after_fence, (down_fenced, up_after_fence)
