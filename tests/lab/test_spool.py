"""Issue 16 on the lab: call records written to a node's spool reach the primary exactly once.

Real namespaces, real PostgreSQL (sync), the real `standby ship` process: the primary's host crashed
in the middle of shipping, the shipper killed and started again, a malformed line, a key already in
the table; and a full disk under the shipper's state (a real tmpfs), which must be an alert, not a crash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.documents import ShipperStatus, ShipPhase, ShipProblem
from standby.lab import Lab, procs
from standby.lab.pair import primaries, start_pair
from standby.lab.sip import start_shipper
from standby.spool import state
from standby.spool.plan import Outcome
from standby.spool.shipper import Shipper

TABLE = "cdr_spool"
STANDBY = str(Path(sys.executable).with_name("standby"))


def spool_dir(lab: Lab, node: str) -> Path:
    return lab.spec.role_dir(node) / "spool"


def with_spool(lab: Lab) -> Lab:
    """The lab's configuration with a [spool] (the same file on both nodes, as in production), then the pair."""
    with open(lab.config_path, "a") as f:
        f.write(f"""
[spool]
path = "{lab.root}/{{node}}/spool"
pattern = "*.jsonl"
format = "json"
key = ["id"]
table = "{TABLE}"
database = "softswitch"
user = "softswitch"
password_file = "{lab.spec.secret('app.password')}"
batch_size = 50
poll_interval_ms = 50
retry_max_ms = 500
""")
    for node in ("alpha", "beta"):
        spool_dir(lab, node).mkdir()
    return start_pair(lab)


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A sync pair shared by the tests below, in order."""
    from tests.lab.conftest import LabFactory, _failed, _keep_dir

    factory = LabFactory()
    try:
        yield with_spool(factory("sync"))
    finally:
        factory.keep, factory.failed = _keep_dir(request), _failed(request)
        factory.destroy_all()


def rows(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    with lab.pg_connect(node, "softswitch", connect_timeout=2) as c:
        if not c.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()[0]:
            return {}
        return {k: r for k, r in c.execute(f"SELECT key, record FROM {TABLE}").fetchall()}


def count(lab: Lab, node: str) -> int:
    try:
        return len(rows(lab, node))
    except Exception:  # noqa: BLE001 - a server restarting or crashed: not yet
        return -1


class Writer:
    """A service appending call records to a spool file, one line each, flushed as it goes."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path, self.prefix, self.written = path, prefix, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with open(self.path, "ab", buffering=0) as f:
            while not self.stop.is_set():
                f.write(self.line(self.written))
                self.written += 1
                if self.written % 10 == 0:
                    time.sleep(0.005)

    def line(self, i: int) -> bytes:
        return json.dumps({"id": f"{self.prefix}-{i}", "seconds": i % 300, "cost": f"0.{i:04d}"}).encode() + b"\n"

    def keys(self) -> set[str]:
        return {f"{self.prefix}-{i}" for i in range(self.written)}

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_i16_primary_crashed_mid_shipping_every_record_once_in_the_new_primary(pair: Lab) -> None:
    crash_mid_shipping(pair)


def test_i16_async_primary_crashed_mid_shipping_lost_commits_sent_again(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """In async the new primary may lack the old one's last commits: the shipper's resend window brings them."""
    crash_mid_shipping(with_spool(lab_factory("async")))


def crash_mid_shipping(pair: Lab) -> None:
    with Writer(spool_dir(pair, "alpha") / "acc.jsonl", "a") as w:
        start_shipper(pair, "alpha")
        # Mid-shipping: some records are in (on the in-sync standby too), many are not yet.
        pair.wait_for("the first records on the standby", lambda: count(pair, "beta") >= 200, timeout_s=60)
        # The shipper dies with its host, between two batches or inside one, while lines still arrive:
        # stopping the writer first let a fast shipper catch up before the crash.
        pair.crash("alpha")
    written = w.keys()
    assert count(pair, "beta") < len(written), "the crash came after everything was shipped: not mid-shipping"
    pair.wait_for("beta to be the primary", lambda: primaries(pair) == ["beta"], timeout_s=60)
    # `standby status` on the survivor: a host with its cables cut is unreachable, said so plainly.
    doc = json.loads(pair.standby("beta", "status", "--no-arp", "--json").stdout)
    assert doc["nodes"]["alpha"]["role"] == "unreachable"
    print("alpha, as libpq saw it:", doc["nodes"]["alpha"]["postgres"]["error"])
    assert any(x.startswith("alpha is UNREACHABLE from beta") for x in doc["warnings"]), doc["warnings"]
    assert not any("closed the connection" in x for x in doc["warnings"]), doc["warnings"]
    pair.heal()  # the host comes back; its PostgreSQL stays down (fenced by the peer's newer term)
    start_shipper(pair, "alpha")  # its own node first: refused there, then the new primary
    pair.wait_for("every record in the new primary", lambda: count(pair, "beta") >= len(written), timeout_s=90)
    got = rows(pair, "beta")
    assert set(got) == written  # each exactly once (the key is the table's primary key), none extra
    assert got["a-7"] == {"id": "a-7", "seconds": 7, "cost": "0.0007"}
    pair.wait_for("the shipper to report itself caught up", lambda: _phase(pair, "alpha") is ShipPhase.CAUGHT_UP,
                  timeout_s=30)
    st = _status(pair, "alpha")
    assert st.shipped + st.duplicates >= len(written) and st.rejected == 0
    pair.stop_spawned("alpha", "ship")


def _phase(lab: Lab, node: str) -> ShipPhase | None:
    view = state.status_view(lab.config(), node)
    return view.status.phase if view and view.status else None


def _status(lab: Lab, node: str) -> ShipperStatus:
    view = state.status_view(lab.config(), node)
    assert view is not None and view.status is not None, view
    return view.status


def test_i16_restart_malformed_line_and_duplicate_key(pair: Lab) -> None:
    node = pair_primary = primaries(pair)[0]
    spool = spool_dir(pair, node) / "calls.jsonl"
    known = next(iter(rows(pair, pair_primary)))  # a key the table has already
    lines = [json.dumps({"id": f"b-{i}", "n": i}).encode() for i in range(400)]
    lines.insert(100, b'{"id": "b-broken", "n": ')  # malformed: set aside, never blocking what follows
    lines.insert(250, json.dumps({"id": known, "n": -1}).encode())  # a duplicate key: counted, not inserted
    spool.write_bytes(b"\n".join(lines) + b"\n")
    start_shipper(pair, node)
    pair.wait_for("part of the spool shipped", lambda: 0 < _mine(pair, pair_primary), timeout_s=60)
    pid = procs.read_pid(pair.spec.role_dir(node) / "procs" / "ship.pid")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # killed: no chance to save anything more
    start_shipper(pair, node)
    pair.wait_for("the spool shipped", lambda: _mine(pair, pair_primary) == 400, timeout_s=60)
    got = rows(pair, pair_primary)
    assert got[known].get("n") != -1  # the first record under that key stands
    pair.wait_for("the shipper caught up", lambda: _phase(pair, node) is ShipPhase.CAUGHT_UP, timeout_s=30)
    st = _status(pair, node)
    assert st.rejected == 1 and st.duplicates >= 1
    (bad,) = [json.loads(x) for x in Path(st.rejects_file).read_text().splitlines()]
    assert (bad["file"], bad["line"], bad["reason"], bad["text"]) == ("calls.jsonl", 101, "not_json", '{"id": "b-broken", "n": ')
    # The agent shows it: /status, /metrics and `standby status`.
    agent = pair.agent_status(node)
    assert agent is not None and agent.spool is not None and agent.spool.running
    assert agent.spool.status is not None and agent.spool.status.rejected == 1
    assert f"spool {node}: caught up" in pair.standby(node, "status", "--no-arp").stdout
    doc = json.loads(pair.standby(node, "status", "--no-arp", "--json").stdout)
    assert doc["nodes"][node]["agent"]["spool"]["status"]["rejected"] == 1
    assert any(w.startswith(f"{node}: 1 spool lines set aside") for w in doc["warnings"])
    pair.stop_spawned(node, "ship")


def _mine(lab: Lab, node: str) -> int:
    try:
        return sum(1 for k in rows(lab, node) if k.startswith("b-"))
    except Exception:  # noqa: BLE001 - not answering yet
        return -1


def test_i16_full_disk_under_the_spool_is_an_alert_not_a_crash(tmp_path: Path) -> None:
    """A real tmpfs filled to the last block under the spool and the shipper's state."""
    disk = Path(tempfile.mkdtemp(prefix="spool-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        raw = {**tomllib.loads((Path(__file__).parents[2] / "etc" / "standby.example.toml").read_text()),
               "state_dir": str(disk / "state"),
               "spool": {"path": str(disk / "spool"), "format": "json", "database": "x", "user": "x",
                         "min_free_mb": 1}}
        (disk / "spool").mkdir()
        sh = Shipper(config.parse(raw), "alpha")
        (disk / "spool" / "a.jsonl").write_bytes(b"not json\n" * 50)
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:  # every block taken
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        assert sh._read() is Outcome.SERVER_ERROR  # cannot set the lines aside: nothing moves, nothing lost
        st = sh.status()
        assert ShipProblem.NOT_SAVED in st.problems and ShipProblem.DISK_LOW in st.problems
        assert "No space left" in (st.last_error or "")
        filler.unlink()
        assert sh._read() is Outcome.COMMITTED
        assert sh.progress.rejected == 50 and sh.backlog() == (0, 0) and not sh.save_failed
        entries = [json.loads(x) for x in sh.rejects_path.read_text().splitlines()]  # no half line left by the full disk
        assert [e["line"] for e in entries] == list(range(1, 51))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        disk.rmdir()
