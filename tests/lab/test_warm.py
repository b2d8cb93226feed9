"""Warm standby in another subnet: it watches and alerts, never promotes by itself, and a
person's `standby promote` makes it serve, safely."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import tomli_w
from aiohttp import web

from standby import config
from standby.lab import Lab, LabSpec, netns
from standby.lab.pair import agent_state, primaries
from standby.lab.probe import DualPrimaryProbe

HOOK_PORT = 8099


class Receiver:
    """A real HTTP webhook receiver, listening inside beta's namespace on loopback."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.received: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=netns.call_in, args=(ns, self._serve), daemon=True)

    def _serve(self) -> None:
        async def main() -> None:
            async def hook(request: web.Request) -> web.Response:
                self.received.append(await request.json())
                return web.Response(text="ok")

            app = web.Application()
            app.router.add_post("/hook", hook)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", HOOK_PORT).start()
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
            await runner.cleanup()

        asyncio.run(main())

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def kinds(self) -> list[tuple[str, str, str]]:
        return [(m["kind"], m["node"], m["state"]) for m in self.received]


@pytest.fixture
def warm(lab_factory) -> Iterator[tuple[Lab, Receiver]]:  # type: ignore[no-untyped-def]
    name = lab_factory.reserve()
    lab = Lab.up(LabSpec(name, mode="warm"))
    data = config.load(lab.config_path).model_dump(mode="json", exclude_none=True)
    data["alerts"]["webhook"] = {"url": f"http://127.0.0.1:{HOOK_PORT}/hook", "timeout_s": 2, "retries": 1}
    lab.config_path.write_text(tomli_w.dumps(data))
    lab.bootstrap()
    with Receiver(lab.netns("beta")) as rx:
        for node in ("alpha", "beta"):
            lab.start_agent(node)
        lab.wait_for("beta in sync", lambda: agent_state(lab, "beta").get("state", {}).get("eligible"), timeout_s=60)
        yield lab, rx


def http_status(lab: Lab, url: str) -> int:
    def get() -> int:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    return netns.call_in(lab.netns("client"), get)  # type: ignore[no-any-return]


def test_nodes_in_two_subnets_pass_the_preflight(warm: tuple[Lab, Receiver]) -> None:
    lab, _ = warm
    res = lab.standby("beta", "check", "--json", check=False)
    doc = json.loads(res.stdout)
    assert {c["check"]: c["verdict"] for c in doc["checks"]}["addresses"] == "pass"
    assert str(config.load(lab.config_path).nodes["beta"].public.address) == "203.0.113.12/24"


def test_primary_crash_alerts_but_never_promotes_then_promote_serves(warm: tuple[Lab, Receiver]) -> None:
    lab, rx = warm
    lab.crash("alpha")
    lab.wait_for("the alert", lambda: ("primary_unreachable", "beta", "firing") in rx.kinds(), timeout_s=20)
    failover_s = config.load(lab.config_path).timings.failover_timeout_ms / 1000
    time.sleep(4 * failover_s)  # well past twice the hot failover timeout
    assert agent_state(lab, "beta")["postgres"]["state"] == "standby" and primaries(lab) == []
    alert = next(m for m in rx.received if m["kind"] == "primary_unreachable")
    assert "standby promote" in alert["next_command"] and alert["since"]
    assert rx.kinds().count(("primary_unreachable", "beta", "firing")) == 1

    res = lab.standby("beta", "promote", "--yes", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "what could be lost: nothing acknowledged" in res.stdout
    assert primaries(lab) == ["beta"]
    # alpha's slot on beta, reserved before beta left recovery: it holds WAL from before the fork.
    with lab.pg_connect("beta") as c:
        fork = (c.execute("SELECT pg_read_file('pg_wal/00000002.history')").fetchone() or [""])[0].split()[1]
        row = c.execute("SELECT restart_lsn IS NOT NULL AND restart_lsn < %s::pg_lsn FROM pg_replication_slots "
                        "WHERE slot_name = %s", (fork, config.load(lab.config_path).slot_name("alpha"))).fetchone()
    assert row == (True,), f"alpha's slot on beta: {row} (the timeline forked at {fork})"
    changes = (lab.root / "address-changes.log").read_text().split()
    assert changes[-2:] == ["beta", "203.0.113.12"]  # the hook got the new primary and its address
    lab.wait_for("the softswitch on beta", lambda: http_status(lab, "http://203.0.113.12:8080/health") == 200,
                 timeout_s=20)


def test_promote_while_primary_alive_refused_or_fenced_first(warm: tuple[Lab, Receiver]) -> None:
    lab, _ = warm
    password = lab.spec.secret("app.password").read_text().strip()
    probe = DualPrimaryProbe(lab.netns("client"), {"alpha": "192.0.2.11", "beta": "203.0.113.12"}, password).start()
    try:
        res = lab.standby("beta", "promote", "--yes", check=False)
        assert res.returncode == 1 and "two writable primaries" in res.stderr
        assert primaries(lab) == ["alpha"]
        res = lab.standby("beta", "promote", "--yes", "--force", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "alpha is fenced" in res.stdout
        assert primaries(lab) == ["beta"]
        time.sleep(1.0)
    finally:
        result = probe.stop()
    assert result.samples and result.dual == []
    assert agent_state(lab, "alpha")["state"]["fenced"] is True
