"""Wall-clock jumps on both nodes change nothing: the agents time everything with the monotonic clock.

Both agents (and what they start) run under libfaketime (standby.lab.clock),
with the monotonic clock left real: the wall clock jumps 10 minutes ahead, then
20 minutes back, under the sample load.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from standby import tls
from standby.lab import Lab, clock, netns
from standby.lab.pair import agent_state, holders, primaries, role_changes, start_pair, under_load
from tests.lab.test_failover import no_loss_no_dual
from tests.sizing import hold_s

NODES = ("alpha", "beta")


def _seen_offset_s(lab: Lab, node: str) -> float | None:
    """How far the agent's wall clock is from ours: the Date header of its API's answer."""
    cfg = lab.config()
    url = tls.api_url(cfg, lab.node(node).public.address.split("/")[0], "/health")
    ctx = tls.client_context(cfg)

    def get() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                return r.headers.get("Date")
        except urllib.error.HTTPError as e:  # 503 (not healthy) still carries the date
            return e.headers.get("Date")
        except OSError:
            return None

    date = netns.call_in(lab.netns(node), get)
    return None if date is None else parsedate_to_datetime(date).timestamp() - time.time()


def test_wall_clock_jumps_change_no_role(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not clock.LIBFAKETIME.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{clock.LIBFAKETIME} missing (apt-get install faketime); CI must not pass by skipping")
        pytest.skip(f"{clock.LIBFAKETIME} missing (apt-get install faketime)")
    lab = lab_factory("sync")
    start_pair(lab, own_clock=True)
    for n in NODES:
        seen = _seen_offset_s(lab, n)
        assert seen is not None and abs(seen) < 5, f"{n} clock before any jump: {seen}"

    with under_load(lab, tmp_path) as run:
        for offset_s in (600, -600):
            for n in NODES:
                lab.set_clock(n, offset_s)

            def jumped(expected: float = offset_s) -> bool:
                seen = [_seen_offset_s(lab, n) for n in NODES]
                return all(s is not None and abs(s - expected) < 5 for s in seen)

            lab.wait_for(f"both agents' wall clocks at {offset_s:+d} s", jumped, timeout_s=10)
            time.sleep(hold_s(8.0, 5.0))  # many failover windows (750 ms) with the clock where it jumped to

    alpha, beta = agent_state(lab, "alpha"), agent_state(lab, "beta")
    # The history's own timestamps jumped too (wall clock, for people): every entry is checked.
    assert role_changes(lab, "alpha") == [] and role_changes(lab, "beta") == []
    assert primaries(lab) == ["alpha"] and holders(lab) == ["alpha"]
    assert alpha["state"]["term"] == 0 and not alpha["state"]["fenced"] and alpha["services_healthy"]
    assert beta["state"]["eligible"] and beta["postgres"]["streaming"]
    no_loss_no_dual(lab, run, on="alpha")
