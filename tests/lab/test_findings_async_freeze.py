"""Async chaos seed 77: a primary host frozen past the failover timeout, then thawed.

In ``async`` nothing holds the thawed old primary's commits back: they return
as soon as its server runs again. Until its agent fences it, it is a second
writer beside the promoted standby (the campaign's probe saw 5 samples with
two writable nodes, ~0.9 s after the thaw). The probe here samples every
20 ms, so a window of a few tens of milliseconds shows.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from standby.lab import Lab
from standby.lab.pair import agent_state, primaries, start_pair, under_load, wait_ready
from standby.lab.probe import DualPrimaryProbe


@contextlib.contextmanager
def busy_disk(where: Path) -> Iterator[None]:
    """Another program writing and syncing a large file on the agents' file system: each of the
    agent's own small fsyncs then waits for the journal behind it, as on a loaded server."""
    code = ("import os, sys\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
            "block = os.urandom(8 << 20)\n"
            "while True:\n"
            "    for _ in range(16):\n"
            "        os.write(fd, block)\n"
            "    os.fsync(fd)\n"
            "    os.lseek(fd, 0, os.SEEK_SET)\n")
    ballast = where / "ballast"
    proc = subprocess.Popen([sys.executable, "-c", code, str(ballast)])
    try:
        time.sleep(1.0)
        yield
    finally:
        proc.kill()
        proc.wait()
        ballast.unlink(missing_ok=True)


@pytest.mark.parametrize("disk", ["quiet", "busy"])
def test_chaos_seed_77_a_thawed_async_primary_takes_no_write_beside_the_new_primary(lab_factory, tmp_path: Path,
                                                                                      disk: str) -> None:
    lab: Lab = start_pair(lab_factory("async"))
    password = lab.spec.secret("app.password").read_text().strip()
    with under_load(lab, tmp_path):
        wait_ready(lab, timeout_s=30)
        probe = DualPrimaryProbe(lab.netns("client"), {"alpha": "192.0.2.11", "beta": "192.0.2.12"}, password,
                                 interval_s=0.02, timeout_s=0.05, synchronous_commit="off").start()
        try:
            lab.freeze("alpha")
            lab.wait_for("beta to be promoted", lambda: "beta" in primaries(lab), timeout_s=30)
            time.sleep(1.0)
            with busy_disk(lab.spec.root) if disk == "busy" else contextlib.nullcontext():
                t_thaw = time.time()
                lab.thaw("alpha")
                lab.wait_for("alpha's fence decision", lambda: agent_state(lab, "alpha").get("state", {}).get("fenced"),
                             timeout_s=15)
            lab.wait_for("alpha to fence itself after the thaw",
                         lambda: agent_state(lab, "alpha").get("state", {}).get("fenced"), timeout_s=15)
            time.sleep(1.0)
        finally:
            result = probe.stop()
    history = json.loads(lab.standby("alpha", "history", "--json", "--limit", "200").stdout)
    stamped = [(datetime.fromisoformat(e["time"]).timestamp() - t_thaw, e) for e in history]
    after = [(round(t, 3), e["event"], e.get("action", ""), e.get("reason", ""), e.get("observed_s"), e.get("step_s"))
             for t, e in stamped if t >= -0.5]
    print("alpha after the thaw (s, event, action, reason):", *after[:40], sep="\n  ")
    dual = result.dual
    assert result.samples, "the probe took no samples"
    assert dual == [], f"{len(dual)} samples with two writable nodes after the thaw, first {dual[:3]}"
