"""The road back after a site loss, on the lab: "site rebuilt and switched back with 0 lost".

Under the lab's call load both pair hosts crash; gamma (the warm follower in the other site) is promoted by
hand and carries calls (a softswitch pointed at it); the pair's hosts come back; alpha is rebuilt as gamma's
standby (`standby rejoin --node alpha --from gamma`: salvage first, then pg_rewind or a clone) while calls go on
against gamma; `standby switchback --node gamma` hands the service back to alpha (gamma stopped cleanly, alpha
promoted only with gamma's shutdown checkpoint); beta is rejoined as alpha's standby, gamma follows alpha again,
and the salvage is applied on alpha. Every acknowledged call (before the crash, on gamma, after the switchback)
is on alpha; never two writable nodes (the dual-primary probe samples all three).

How long each step took is printed, never asserted.

Not covered here: beta promoted by its agent in the second before the site went (alpha's crash heard
first). Beta then holds commits on a timeline of its own past an ancestor's fork, which salvage does not
read yet (it reads the fork's timeline only): its rejoin stops before the rewind, nothing destroyed.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from standby.lab import Lab, followers
from standby.lab.pair import SERVICE_URL, STANDBY, LoadRun, database_servers, primaries, start_pair, verify, wait_first_ack
from standby.lab.probe import DualPrimaryProbe
from standby.lab.softswitch import CLI as SOFTSWITCH
from standby.lab.topology import PG_PORT
from standby.operations import SITE_TERMS

DR_LISTEN = "127.0.0.1:8081"  # the DR site's softswitch, in the client's namespace, writing to gamma


class Steps:
    """Each step's wall time, printed at the end."""

    def __init__(self) -> None:
        self.t = time.monotonic()
        self.done: list[tuple[str, float]] = []

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.done.append((name, now - self.t))
        self.t = now

    def print(self) -> None:
        print()
        for name, secs in self.done:
            print(f"  {name:<72} {secs:7.2f} s")


def _load(lab: Lab, url: str, out: Path, name: str) -> None:
    lab.spawn("client", [STANDBY, "lab", "load", "--url", url, "--rate", "100", "--duration", "3600",
                         "--out", str(out)], name)
    wait_first_ack(lab, out)  # each phase's few seconds count from its first call (CI run 34: none in 3 s)


def _acked(path: Path) -> set[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return {a["call_id"] for a in map(json.loads, lines) if a["outcome"] == "ack"}


def _dr_softswitch(lab: Lab) -> tuple[list[str], list[str]]:
    """Start and stop commands of a softswitch in the client's namespace writing to gamma (as clients pointed
    at the DR node by the address-change hook would)."""
    dsn = lab.spec.secret("app-dr.dsn")
    password = lab.spec.secret("app.password").read_text().strip()
    fd = os.open(dsn, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"host={lab.node('gamma').public.ip} port={PG_PORT} dbname=softswitch user=softswitch "
                f"password={password} target_session_attrs=read-write connect_timeout=2\n")
    d = lab.spec.role_dir("client")
    pidfile = str(d / "procs" / "softswitch-dr.pid")
    (d / "procs").mkdir(exist_ok=True)
    start = [*SOFTSWITCH, "start", "--dsn-file", str(dsn), "--listen", DR_LISTEN, "--pidfile", pidfile,
             "--logfile", str(d / "log" / "softswitch-dr.log")]
    return start, [*SOFTSWITCH, "stop", "--pidfile", pidfile]


def _report(output: str) -> str | None:
    """The salvage report a rejoin's output names, if any."""
    m = re.search(r"rows only \w+ had are in (\S+?);", output)
    return m.group(1) if m else None


HOLD_TABLE = "hold_replication"


def _hold_gamma_replication(lab: Lab, on: bool) -> None:
    """Drop what alpha's PostgreSQL sends to gamma: the calls alpha and beta commit from here on never reach
    the DR node, as when the WAN lags at the moment the site goes."""
    script = [f"table inet {HOLD_TABLE} {{}}", f"delete table inet {HOLD_TABLE}"]
    if on:
        script += [f"table inet {HOLD_TABLE} {{", "  chain input {",
                   "    type filter hook input priority -20; policy accept;",
                   f"    ip saddr {lab.node('alpha').private.ip} tcp sport {PG_PORT} drop", "  }", "}"]
    lab.run("gamma", ["nft", "-f", "-"], input="\n".join(script) + "\n")


def test_site_rebuilt_from_the_dr_node_and_switched_back_with_0_lost(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _road_back(lab_factory, tmp_path, gamma_behind=False)


def test_calls_the_dr_node_never_received_come_back_by_salvage_after_the_switchback(  # type: ignore[no-untyped-def]
        lab_factory, tmp_path: Path) -> None:
    """Gamma misses the last seconds of calls before the site goes: alpha's rebuild salvages them, beta (past
    gamma's fork) is stopped and rewound by its rejoin, and the salvage applied on alpha brings them back."""
    _road_back(lab_factory, tmp_path, gamma_behind=True)


def _road_back(lab_factory, tmp_path: Path, gamma_behind: bool) -> None:  # type: ignore[no-untyped-def]
    lab = start_pair(lab_factory("sync", followers=("gamma",)))
    followers.wait_streaming(lab, "gamma", "alpha")
    step = Steps()
    histories = [tmp_path / f"{phase}.jsonl" for phase in ("pair", "dr", "back")]
    password = lab.spec.secret("app.password").read_text().strip()
    targets = {n: str(lab.node(n).public.ip) for n in ("alpha", "beta", "gamma")}
    probe = DualPrimaryProbe(lab.netns("client"), targets, password).start()
    dr_start, dr_stop = _dr_softswitch(lab)
    alpha_report: str | None = None
    try:
        _load(lab, SERVICE_URL, histories[0], "load-pair")
        time.sleep(3.0)
        if gamma_behind:
            _hold_gamma_replication(lab, True)
            time.sleep(2.0)
        step("the pair under load" + (", gamma held back for the last 2 s" if gamma_behind else ""))
        # The whole site at once: one after the other, beta's agent (failover timeout 0.9 s) may promote beta
        # before its own crash, and that is another road (see the module's docstring).
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lab.crash, ("alpha", "beta")))
        lab.stop_spawned("client", "load-pair")
        if gamma_behind:
            _hold_gamma_replication(lab, False)  # gamma streams from alpha again after the switchback
        step("both pair hosts crashed")
        res = lab.standby("gamma", "promote", "--yes", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        # Reserved before the promotion, the pair's slots hold gamma's WAL from before the fork: the site,
        # rebuilt however much later, is rewound rather than cloned over the WAN.
        with lab.pg_connect("gamma") as c:
            slots = dict(c.execute("SELECT slot_name, restart_lsn IS NOT NULL FROM pg_replication_slots").fetchall())
        assert slots.get("standby_alpha") is True and slots.get("standby_beta") is True, (slots, res.stdout)
        step("gamma promoted by hand (standby promote --node gamma)")
        lab.run("client", dr_start)
        _load(lab, f"http://{DR_LISTEN}", histories[1], "load-dr")
        time.sleep(3.0)
        step("calls on gamma")

        # The pair's hosts come back; alpha's agent starts (its server down: a rebooted old primary whose
        # peer is silent waits for a person); beta's stays stopped until alpha serves.
        lab.heal()
        lab.start_agent("alpha")
        lab.wait_for("alpha's agent", lambda: lab.agent_status("alpha") is not None, timeout_s=30)
        assert primaries(lab) == [], "a pair node came back writable"
        step("alpha's host back, its agent started")
        res = lab.standby("alpha", "rejoin", "--from", "gamma", "--yes", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        print(res.stdout)
        alpha_report = _report(res.stdout)
        followers.wait_streaming(lab, "alpha", "gamma")
        step("alpha rebuilt as gamma's standby (standby rejoin --node alpha --from gamma)")
        time.sleep(2.0)  # calls go on against gamma while alpha streams

        lab.stop_agent("gamma")
        res = lab.standby("gamma", "switchback", "--timeout", "30", check=False)
        print(res.stdout)
        assert res.returncode == 0, res.stdout + res.stderr
        step("switchback to alpha (standby switchback --node gamma)")
        lab.stop_spawned("client", "load-dr")
        lab.run("client", dr_stop, check=False)
        _load(lab, SERVICE_URL, histories[2], "load-back")
        lab.start_agent("gamma")

        lab.start_agent("beta")
        lab.wait_for("beta's agent", lambda: lab.agent_status("beta") is not None, timeout_s=30)
        # Its agent restarts its server as a standby: past the fork it cannot stream and is rewound; one that
        # holds nothing past it streams from alpha by itself, and the rejoin says there is nothing to do.
        # (A pause before deciding which of the two to expect lost that race in a CI run.)
        res = lab.standby("beta", "rejoin", "--yes", check=False)
        print(res.stdout)
        assert res.returncode == 0, res.stdout + res.stderr
        beta_report = _report(res.stdout)
        followers.wait_streaming(lab, "beta", "alpha")
        step("beta rejoined as alpha's standby (standby rejoin --node beta)")
        followers.wait_streaming(lab, "gamma", "alpha", timeout_s=120)
        step("gamma a follower again, streaming from alpha")
        for report, node in ((alpha_report, "alpha"), (beta_report, "beta")):
            if report:
                res = lab.standby(node, "salvage", "apply", report, "--yes", check=False)
                print(res.stdout)
                assert res.returncode == 0, res.stdout + res.stderr
        step("salvage applied on alpha")
        time.sleep(3.0)
    finally:
        for name in ("load-pair", "load-dr", "load-back"):
            lab.stop_spawned("client", name)
        lab.run("client", dr_stop, check=False)
        _hold_gamma_replication(lab, False)
        result = probe.stop()
    step.print()

    assert primaries(lab) == ["alpha"]
    alpha = lab.agent_status("alpha")
    assert alpha is not None and alpha.state.services
    # The rebuilt pair's terms are in a block the lost site cannot have reached (finding DR-term).
    assert alpha.state.term > SITE_TERMS, alpha.state.term
    assert followers.streaming_from(lab, "beta", "alpha") and followers.streaming_from(lab, "gamma", "alpha")
    assert result.dual == [], f"{len(result.dual)} samples with two writable nodes: {result.dual[:3]}"
    acked = [_acked(h) for h in histories]
    assert all(acked), [len(a) for a in acked]
    on_alpha = followers.call_ids(lab, "alpha")
    lost = set().union(*acked) - on_alpha
    print(f"acknowledged calls: {' + '.join(str(len(a)) for a in acked)} (pair, DR, back); lost: {len(lost)}")
    assert not lost, sorted(lost)[:10]
    if gamma_behind:
        assert alpha_report is not None, "alpha had nothing gamma lacked: the hold did not hold"
    for h in histories:  # the independent checker too, each load's history against alpha's database
        verdict = verify(lab, LoadRun(h, database_servers(lab)), "alpha")
        assert verdict["missing_acked"] == [], (h.name, verdict)
