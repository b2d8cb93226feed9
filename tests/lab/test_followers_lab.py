"""Issue 12 on the lab: the pair fails over (host crash) or switches over under the sample load with the warm
follower gamma attached (another site's subnets behind the WAN router, the link shaped; its own server and
agent), and with the reporting follower delta beside it on the pair's subnets. Each follower must end up
streaming from the new primary on its new timeline without a clone (the same system and the same data
directory files), with every acknowledged call once caught up, and no two primaries ever.

How long each took to stream again is printed, never asserted (bench/ measures).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from standby.act import postgres as pgact
from standby.lab import Lab, followers, netns, pgnode, wan
from standby.lab.pair import STANDBY, LoadRun, primaries, reporting_holders, start_pair, under_load
from standby.lab.topology import FOLLOWER_REPORTING_IPS, PUBLIC_IF, REPORTING_IP
from tests.lab.test_failover import no_loss_no_dual, settle
from tests.lab.test_reporting import client_connect


def _pair_with_gamma(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    return start_pair(lab_factory("sync", followers=("gamma",)))


def _has_what_the_primary_has(lab: Lab, follower: str, primary: str, run: LoadRun) -> None:
    """Once the follower replayed the primary's current WAL: the same calls, every acknowledged one among them."""
    followers.wait_replayed(lab, follower, primary)
    acked = {a["call_id"] for a in map(json.loads, run.history.read_text().splitlines()) if a["outcome"] == "ack"}
    on_follower, on_primary = followers.call_ids(lab, follower), followers.call_ids(lab, primary)
    assert acked, "the load had no acknowledged call"
    assert sorted(acked - on_follower)[:5] == [], f"acknowledged calls missing on {follower}"
    assert on_follower == on_primary, f"{follower} and {primary} differ: {len(on_follower ^ on_primary)} calls"


def _follows_without_a_clone(lab: Lab, new: str, run: LoadRun, before: dict[str, tuple[int, int]]) -> None:
    no_loss_no_dual(lab, run, on=new)
    for name, identity in before.items():
        _has_what_the_primary_has(lab, name, new, run)
        assert followers.identity(lab, name) == identity, f"{name} was cloned again"
        with lab.pg_connect(name) as g:
            assert g.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)  # a follower never promotes
    assert primaries(lab) == [new]


def _gamma_follows_without_a_clone(lab: Lab, new: str, run: LoadRun, before: tuple[int, int]) -> None:
    _follows_without_a_clone(lab, new, run, {"gamma": before})


def _move_alpha_to_beta(lab: Lab, run: LoadRun, move: str) -> tuple[float, float, int]:
    """Alpha's host crashes or alpha switches over; once beta alone serves: (when it began, seconds since,
    beta's timeline)."""
    run.t_fault = t0 = time.monotonic()
    if move == "host_crash":
        lab.crash("alpha")
    else:
        res = lab.standby("alpha", "switchover", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
    settle(lab, db="beta", services="beta")
    moved = time.monotonic() - t0
    timeline = followers.timeline(lab, "beta")
    assert timeline == 2
    return t0, moved, timeline


@pytest.mark.parametrize("move", ["host_crash", "switchover"])
def test_i12_gamma_streams_from_the_new_primary(lab_factory, tmp_path: Path, move: str) -> None:  # type: ignore[no-untyped-def]
    lab = _pair_with_gamma(lab_factory)
    before = followers.identity(lab, "gamma")
    with under_load(lab, tmp_path) as run:
        t0, moved, timeline = _move_alpha_to_beta(lab, run, move)
        followers.wait_streaming(lab, "gamma", "beta", timeline)
        took = time.monotonic() - t0
        time.sleep(1.0)
    _gamma_follows_without_a_clone(lab, "beta", run, before)
    print(f"\n{move} of alpha: beta primary after {moved:.2f}s, gamma streaming from beta on timeline "
          f"{timeline} {took:.2f}s after it began, no clone")


def _api_connections(lab: Lab, node: str, ip: str, port: int) -> list[str]:
    """``node``'s established TCP connections to ip:port, by their local address and port."""
    out = lab.run(node, ["ss", "-Htn", "state", "established", "dst", f"{ip}:{port}"]).stdout
    return sorted(line.split()[2] for line in out.splitlines() if line.strip())


def _logged_from_offset(log: Path, offset: int) -> str:
    return log.read_bytes()[offset:].decode(errors="replace")


def test_a_followers_watching_makes_no_connection_per_round_to_the_pair(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """gamma's agent asks alpha's server (IDENTIFY_SYSTEM) and alpha's agent (GET /status) every step interval.
    Each round used to fork a new WAL sender on alpha and open a new TCP connection to its agent: backends and
    handshakes on the primary growing with time, cascaded or not. Over kept connections, a few seconds of
    rounds make none."""
    lab = _pair_with_gamma(lab_factory)
    cfg = lab.config()
    gamma_ip, alpha_ip = str(cfg.link("gamma").ip), str(cfg.nodes["alpha"].private.ip)
    log = pgact.log_path(cfg, "alpha")  # the server's own collector's file (the agent starts it)
    with lab.pg_connect("alpha", autocommit=True) as c:
        c.execute("ALTER SYSTEM SET log_connections = on")
        c.execute("SELECT pg_reload_conf()")
    offset = log.stat().st_size

    def logging_connections() -> bool:
        with lab.pg_connect("alpha", autocommit=True):
            pass
        return "connection received: host=[local]" in _logged_from_offset(log, offset)

    lab.wait_for("alpha to log connections", logging_connections, timeout_s=10)
    start, api_before = log.stat().st_size, _api_connections(lab, "gamma", alpha_ip, cfg.api.port)
    rounds_s = 3.0
    time.sleep(rounds_s)
    api_after = _api_connections(lab, "gamma", alpha_ip, cfg.api.port)
    from_gamma = [line for line in _logged_from_offset(log, start).splitlines()
                  if f"connection received: host={gamma_ip} " in line]
    print(f"\nin {rounds_s:g} s of gamma's rounds: {len(from_gamma)} connection(s) from gamma to alpha's PostgreSQL; "
          f"gamma's connections to alpha's agent: {api_before} before, {api_after} after")
    assert from_gamma == [], from_gamma[:3]
    assert len(api_after) == 1 and api_after == api_before


def test_a_follower_is_made_by_standby_bootstrap_and_a_rerun_changes_nothing(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """The lab clones gamma as an operator would (`standby bootstrap --node gamma`, lab.followers.clone). Run again:
    on the streaming follower it changes nothing; on its stopped clone it starts it, no new clone; on a stopped
    directory that is no clone (no standby.signal: a DR node promoted once) it refuses unless told to move that
    data aside, and then clones again from the primary and streams."""
    lab = _pair_with_gamma(lab_factory)
    assert followers.streaming_from(lab, "gamma", "alpha")
    again = lab.standby("gamma", "bootstrap")
    assert "nothing to do" in again.stdout, again.stdout
    first = followers.identity(lab, "gamma")
    lab.stop_agent("gamma")
    pgnode.stop(lab.node("gamma"))
    restarted = lab.standby("gamma", "bootstrap")
    assert "started the existing clone" in restarted.stdout and "pg_basebackup" not in restarted.stdout, restarted
    lab.wait_for("gamma streaming from alpha", lambda: followers.streaming_from(lab, "gamma", "alpha"), timeout_s=30)
    assert followers.identity(lab, "gamma") == first, "a stopped clone was cloned again"
    pgnode.stop(lab.node("gamma"))
    (lab.node("gamma").pgdata / "standby.signal").unlink()
    refused = lab.standby("gamma", "bootstrap", check=False)
    assert refused.returncode != 0 and "--replace-data" in refused.stdout + refused.stderr, refused
    redone = lab.standby("gamma", "bootstrap", "--replace-data")
    assert "moved aside" in redone.stdout and "pg_basebackup from alpha" in redone.stdout, redone.stdout
    lab.wait_for("gamma streaming from alpha", lambda: followers.streaming_from(lab, "gamma", "alpha"), timeout_s=30)
    assert followers.identity(lab, "gamma") != first, "the data directory was not cloned again"
    pgdata = lab.node("gamma").pgdata
    assert list(pgdata.parent.glob(f"{pgdata.name}.replaced-*")), "the old directory was not kept aside"


DELTA_REPORTING_IP = FOLLOWER_REPORTING_IPS["delta"]


def _delta_holds_its_own(lab: Lab) -> bool:
    return DELTA_REPORTING_IP in netns.addresses(lab.netns("delta"), PUBLIC_IF)


def _reporting_dsn(lab: Lab) -> str:
    return lab.run("alpha", [STANDBY, "dsn", "--for", "reporting", "--dbname", "softswitch", "--user", "softswitch",
                             "--config", str(lab.config_path)]).stdout.strip()


def _reports_land_on(lab: Lab, dsn: str) -> str:
    password = lab.spec.secret("app.password").read_text().strip()
    with client_connect(lab, f"{dsn} password={password}") as c:
        row = c.execute("SELECT host(inet_server_addr()), pg_is_in_recovery()").fetchone()
    assert row is not None and row[1], row  # reports never land on the primary while a replica answers
    return str(row[0])


def test_delta_holds_its_own_reporting_ip_only_while_it_hears_the_pair(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """A reporting follower's own reporting IP: held while its copy is known to be recent, withdrawn once it has
    not heard the primary for longer than a failover takes, so the reports go on to the next host of
    `standby dsn --for reporting` instead of reading a copy that stopped; back once it hears the pair again."""
    lab = start_pair(lab_factory("sync", followers=("delta",)))
    lab.wait_for("delta to hold its own reporting IP", lambda: _delta_holds_its_own(lab), timeout_s=30)
    dsn = _reporting_dsn(lab)
    assert dsn.startswith(f"host={DELTA_REPORTING_IP.split('/')[0]},"), dsn
    assert _reports_land_on(lab, dsn) == DELTA_REPORTING_IP.split("/")[0]
    # delta's private cable is pulled: neither the pair's views nor its WAL reach it any more.
    cut = time.monotonic()
    lab.link("delta", "private", False)
    try:
        time.sleep(3.0)  # as long as a failover in the pair: the reports running on delta are not cut for it
        assert _delta_holds_its_own(lab), "withdrawn after a silence as short as a failover"
        lab.wait_for("delta to withdraw its reporting IP", lambda: not _delta_holds_its_own(lab), timeout_s=60)
        gone = time.monotonic() - cut
        assert _reports_land_on(lab, dsn) == str(lab.node("beta").public.ip)
    finally:
        lab.link("delta", "private", True)
    lab.wait_for("delta to hold its reporting IP again", lambda: _delta_holds_its_own(lab), timeout_s=60)
    assert _reports_land_on(lab, dsn) == DELTA_REPORTING_IP.split("/")[0]
    print(f"\ndelta withdrew its reporting IP {gone:.1f}s after its private link was cut, and took it back")


def _reporting_ip_on(lab: Lab) -> list[str]:
    """Every node of the lab, pair or follower, with the pair's reporting IP on its public interface."""
    ip = REPORTING_IP
    return [n for n in ("alpha", "beta", *lab.spec.followers) if ip in netns.addresses(lab.netns(n), PUBLIC_IF)]


@pytest.mark.parametrize("move", ["host_crash", "switchover"])
def test_i12_gamma_over_the_wan_and_delta_stream_from_the_new_primary(  # type: ignore[no-untyped-def]
        lab_factory, tmp_path: Path, move: str) -> None:
    lab = start_pair(lab_factory("sync", followers=("gamma", "delta")))
    # gamma's link is the shaped WAN: a token bucket each way on the router.
    assert all("tbf" in q for q in wan.shaping(lab.spec).values()), wan.shaping(lab.spec)
    # The pair's reporting IP follows the hot standby, as ever: the reporting rule counts the pair only, and
    # delta serves reports at its own address, which `standby dsn --for reporting` lists first.
    lab.wait_for("beta to hold the reporting IP", lambda: reporting_holders(lab) == ["beta"], timeout_s=30)
    assert _reporting_ip_on(lab) == ["beta"]
    lab.wait_for("delta to hold its own reporting IP", lambda: _delta_holds_its_own(lab), timeout_s=30)
    dsn = _reporting_dsn(lab)
    delta_ip = DELTA_REPORTING_IP.split("/")[0]
    assert dsn.startswith(f"host={delta_ip},"), dsn
    password = lab.spec.secret("app.password").read_text().strip()
    with client_connect(lab, f"{dsn} password={password}") as c:
        assert c.execute("SELECT host(inet_server_addr()), pg_is_in_recovery()").fetchone() == (delta_ip, True)
    before = {name: followers.identity(lab, name) for name in ("gamma", "delta")}
    took: dict[str, float] = {}
    with under_load(lab, tmp_path) as run:
        t0, promoted, timeline = _move_alpha_to_beta(lab, run, move)
        pending = set(before)
        while pending:  # each timed on its own: the first to stream is not held up by the other's wait
            for name in sorted(pending):
                if followers.streaming_from(lab, name, "beta", timeline):
                    took[name] = time.monotonic() - t0
                    pending.discard(name)
            if pending and time.monotonic() - t0 > 60:
                for name in pending:
                    followers.wait_streaming(lab, name, "beta", timeline, timeout_s=0.1)  # raises, with its logs
            time.sleep(0.05)
        time.sleep(1.0)
    _follows_without_a_clone(lab, "beta", run, before)
    # After the crash no standby streams, and the new primary withdraws it (fallback "withdraw"); after the
    # switchover it follows the new standby, alpha. Never on delta.
    where = _reporting_ip_on(lab) if move == "host_crash" else lab.wait_for(
        "alpha to hold the reporting IP", lambda: _reporting_ip_on(lab) == ["alpha"] and ["alpha"], timeout_s=30)
    assert where == ([] if move == "host_crash" else ["alpha"]), where
    with client_connect(lab, f"{dsn} password={password}") as c:
        assert c.execute("SELECT host(inet_server_addr())").fetchone() == (delta_ip,)
    print(f"\n{move} alpha -> beta: beta primary after {promoted:.2f}s; on timeline {timeline}, gamma (WAN, "
          f"{lab.spec.wan_rate_kbit} kbit/s) streaming from beta {took['gamma']:.2f}s and delta {took['delta']:.2f}s "
          f"after the fault, neither cloned; reporting IP on beta before, on {where or 'no node'} after; reports "
          "through `standby dsn --for reporting` on delta before and after")
