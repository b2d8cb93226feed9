"""A reporting follower's own reporting IP (standby.reporting.follower_step), and the lag it is decided on
(standby.follow.fresh_lag): per-step properties and schedules of a pair failover and a site loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby import config
from standby.agent.follower import FollowerAgent
from standby.agent.followerip import OwnReportingIp
from standby.cli.status import render
from standby.config import FollowerRole, ServiceIP
from standby.documents import PAIR_STATUS, FollowerView, PairStatus
from standby.follow import FollowerObservation, FollowerPg, FollowerPolicy, FollowerState, PairView, fresh_lag
from standby.model import DbState
from standby.reporting import (
    FollowerReportingInputs,
    FollowerReportingPolicy,
    FollowerReportingReason,
    FollowerReportingState,
    follower_step,
)
from standby.status import IpHolders, Observations, assemble
from tests.unit.configs import example_with_secrets
from tests.unit.test_followers_agent import MB, World, _view, cfg_with
from tests.unit.test_followers_config import follower
from tests.unit.test_status_rules import primary, standby

BOUND = 1000
GRACE = 10.0
P = FollowerReportingPolicy(max_lag_bytes=BOUND, unknown_grace_s=GRACE)

states = st.builds(FollowerReportingState, held=st.booleans(), unknown_since=st.none() | st.floats(0, 30))
inputs = st.builds(FollowerReportingInputs, running=st.booleans(), in_recovery=st.booleans(),
                   lag_bytes=st.none() | st.integers(0, 3 * BOUND), now=st.floats(30, 60))


@settings(max_examples=3000, deadline=None)
@given(states, inputs)
def test_each_step_holds_only_a_running_replica_within_the_bound(s: FollowerReportingState,
                                                                 inp: FollowerReportingInputs) -> None:
    new, why = follower_step(s, inp, P)
    if new.held:
        assert inp.running and inp.in_recovery, why
        if inp.lag_bytes is None:
            # Kept through a moment of silence only, and only if it was held.
            assert s.held and new.unknown_since is not None and inp.now - new.unknown_since < GRACE, why
        else:
            assert inp.lag_bytes <= BOUND, why
            if not s.held:
                assert inp.lag_bytes <= BOUND // 2, "taken back before the lag fell under half the bound"
    assert (new.unknown_since is None) == (inp.lag_bytes is not None)


@given(st.integers(BOUND // 2 + 1, BOUND))
def test_a_lag_between_half_and_the_bound_keeps_what_was_decided(lag: int) -> None:
    for held in (True, False):
        new, _ = follower_step(FollowerReportingState(held=held), FollowerReportingInputs(True, True, lag, 1.0), P)
        assert new.held is held


def _run(schedule: list[int | None], step_s: float = 0.2) -> list[tuple[bool, FollowerReportingReason]]:
    s, out = FollowerReportingState(), []
    for i, lag in enumerate(schedule):
        s, why = follower_step(s, FollowerReportingInputs(True, True, lag, i * step_s), P)
        out.append((s.held, why))
    return out


def test_a_failover_in_the_pair_does_not_break_the_reports_running_here() -> None:
    # Streaming in bound, then 3 s without a primary heard (the pair fails over), then in bound again.
    out = _run([10] * 10 + [None] * 15 + [20] * 5)
    assert all(held for held, _ in out), out
    assert FollowerReportingReason.LAG_UNKNOWN_A_MOMENT in {why for _, why in out}


def test_a_site_loss_withdraws_the_address_after_the_grace_and_not_before() -> None:
    steps = int(GRACE / 0.2)
    out = _run([10] * 5 + [None] * (steps + 5))
    first_out = next(i for i, (held, _) in enumerate(out) if not held)
    assert first_out == 5 + steps, (first_out, out[first_out])
    assert out[-1] == (False, FollowerReportingReason.LAG_UNKNOWN)


def test_an_unknown_lag_at_start_never_takes_the_address() -> None:
    assert not any(held for held, _ in _run([None] * 10))


def test_a_promoted_or_stopped_server_lets_go_at_once() -> None:
    s = FollowerReportingState(held=True)
    assert follower_step(s, FollowerReportingInputs(False, True, 0, 1.0), P) == (
        FollowerReportingState(held=False), FollowerReportingReason.PG_DOWN)
    assert follower_step(s, FollowerReportingInputs(True, False, 0, 1.0), P)[1] is FollowerReportingReason.PROMOTED


# -- the lag it is decided on --------------------------------------------------------------------------------

FP = FollowerPolicy(upstream="primary", alerts=False, fresh_s=2.0, site_loss_after_s=10.0, realert_after_s=3600.0,
                    upstream_grace_s=1.0, retry_s=5.0)


def _obs(heard_at: float, term: int = 3, replay: int = 900) -> FollowerObservation:
    alpha = PairView(term=term, db=DbState.PRIMARY, timeline=2, lsn=1000, heard_at=heard_at)
    pg = FollowerPg(running=True, streaming=True, source="alpha", timeline=2, received_lsn=950, replay_lsn=replay)
    return FollowerObservation(now=10.0, gap=0.2, pg=pg, pair={"alpha": alpha})


def test_fresh_lag_is_known_only_from_a_fresh_heartbeat_of_the_newest_terms_primary() -> None:
    s = FollowerState(term=3, primary="alpha")
    assert fresh_lag(s, _obs(heard_at=9.5), FP) == 100
    # The primary's last position, 5 s old: the copy may be far behind it by now.
    assert fresh_lag(s, _obs(heard_at=5.0), FP) is None
    # A view from an older term than the newest heard: not the primary to measure against.
    assert fresh_lag(FollowerState(term=4, primary="alpha"), _obs(heard_at=9.5), FP) is None
    assert fresh_lag(FollowerState(term=3, primary=None), _obs(heard_at=9.5), FP) is None


# -- the agent's shell: the address on the host follows the rule ------------------------------------------------


class Kernel:
    """The follower host's addresses: add and remove as netlink does (False when nothing changed)."""

    def __init__(self, held: bool = False, broken: bool = False) -> None:
        self.on, self.broken, self.announced, self.calls = held, broken, 0, 0

    def held(self, sip: ServiceIP) -> bool:
        return self.on

    def add(self, sip: ServiceIP) -> bool:
        self.calls += 1
        if self.broken:
            raise RuntimeError(f"interface {sip.interface} does not exist on this node")
        was, self.on = self.on, True
        return not was

    def remove(self, sip: ServiceIP) -> bool:
        self.calls += 1
        was, self.on = self.on, False
        return was

    def announce(self, sip: ServiceIP, count: int) -> None:
        self.announced += count


def _reporting_agent(tmp_path: Path, kernel: Kernel) -> tuple[World, FollowerAgent]:
    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("dr", 21, role="reporting",
                                 reporting_ip={"address": "203.0.113.121/24", "interface": "eth0"})]
    w = World(config.parse(raw))
    agent = w.agent()
    assert agent.own_ip is not None
    agent.own_ip = OwnReportingIp(agent.own_ip.sip, agent.own_ip.policy, held=kernel.held, add=kernel.add,
                                  remove=kernel.remove, announce=kernel.announce)
    return w, agent


def test_a_reporting_follower_holds_its_own_address_while_in_bound_and_through_a_pair_failover(tmp_path: Path) -> None:
    k = Kernel()
    w, agent = _reporting_agent(tmp_path, k)
    w.hear("alpha", 3, DbState.PRIMARY)
    w.step(agent)
    assert k.on and k.announced == 3
    assert agent.view is not None and agent.view.reporting_ip == "203.0.113.121/24" and agent.view.reporting_ip_held
    # alpha's host crashes: nothing heard for 3 s, then beta in term 4. The reports running here go on.
    w.wait(agent, 3.0)
    assert k.on and agent.view.reporting_ip_reason is FollowerReportingReason.LAG_UNKNOWN_A_MOMENT
    w.hear("beta", 4, DbState.PRIMARY, timeline=2, lsn=7 * MB, history=((1, 6 * MB),))
    w.step(agent)
    assert k.on and agent.view.reporting_ip_reason is FollowerReportingReason.IN_BOUND
    for _ in range(26):  # 5 s on: announced again (switches and ARP caches forget)
        w.hear("beta", 4, DbState.PRIMARY, timeline=2, lsn=7 * MB, history=((1, 6 * MB),))
        w.step(agent)
    assert k.on and k.announced == 4


def test_a_reporting_follower_withdraws_its_address_when_the_site_is_gone_and_when_its_server_stops(
        tmp_path: Path) -> None:
    k = Kernel()
    w, agent = _reporting_agent(tmp_path, k)
    w.hear("alpha", 3, DbState.PRIMARY)
    w.step(agent)
    assert k.on
    w.wait(agent, agent.policy.fresh_s + agent.policy.site_loss_after_s + 1)
    assert not k.on and agent.view is not None and not agent.view.reporting_ip_held
    assert agent.view.reporting_ip_reason is FollowerReportingReason.LAG_UNKNOWN
    w.hear("alpha", 3, DbState.PRIMARY)
    w.step(agent)
    assert k.on
    w.own.pg = FollowerPg(running=False)
    w.hear("alpha", 3, DbState.PRIMARY)
    w.step(agent)
    assert not k.on and agent.view.reporting_ip_reason is FollowerReportingReason.PG_DOWN


def test_a_lagging_reporting_follower_withdraws_its_address_and_takes_it_back_under_half_the_bound(
        tmp_path: Path) -> None:
    k = Kernel()
    w, agent = _reporting_agent(tmp_path, k)
    bound = agent.own_ip.policy.max_lag_bytes if agent.own_ip else 0
    w.hear("alpha", 3, DbState.PRIMARY, lsn=5 * MB + bound + 1)  # the follower replayed 5 MB
    w.step(agent)
    assert not k.on and agent.view is not None and agent.view.reporting_ip_reason is \
        FollowerReportingReason.LAG_OVER_BOUND
    w.hear("alpha", 3, DbState.PRIMARY, lsn=5 * MB + bound // 2 + 1)
    w.step(agent)
    assert not k.on
    w.hear("alpha", 3, DbState.PRIMARY, lsn=5 * MB + bound // 2)
    w.step(agent)
    assert k.on


def test_an_agent_restart_keeps_the_address_the_kernel_has(tmp_path: Path) -> None:
    k = Kernel(held=True)
    w, agent = _reporting_agent(tmp_path, k)
    w.step(agent)  # nothing heard yet: within the grace, the reports reading here are not cut
    assert k.on and k.calls == 0


def test_a_missing_interface_is_said_once_and_tried_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    k = Kernel(broken=True)
    w, agent = _reporting_agent(tmp_path, k)
    w.hear("alpha", 3, DbState.PRIMARY)
    for _ in range(3):
        w.step(agent)
    assert not k.on and k.calls == 3 and agent.view is not None and not agent.view.reporting_ip_held
    assert [r.message for r in caplog.records if "does not exist" in r.message] == [
        "reporting IP: add 203.0.113.121/24 on eth0: interface eth0 does not exist on this node"]
    k.broken = False
    w.step(agent)
    assert k.on


def test_a_warm_follower_or_one_without_a_reporting_ip_has_none(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    assert w.agent().own_ip is None


# -- `standby status` ----------------------------------------------------------------------------------------


def _status_with(tmp_path: Path, views: dict[str, FollowerView | None], pair_primary: bool = True) -> PairStatus:
    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("dr", 21), follower("rep", 22, role="reporting",
                                                    reporting_ip={"address": "203.0.113.122/24", "interface": "eth0"})]
    pg = {"alpha": primary() if pair_primary else standby("alpha"), "beta": standby()}
    return assemble(config.parse(raw), Observations("alpha", pg, (IpHolders("192.0.2.100", ("alpha",), True),),
                                                    followers=views))


def test_status_says_whether_a_reporting_follower_holds_its_address_and_why_not(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one table row per line
    rep = _view("rep", role=FollowerRole.REPORTING, upstream="primary", reporting_ip="203.0.113.122/24")
    held = _status_with(tmp_path, {"dr": _view("dr"), "rep": replace(rep, reporting_ip_held=True,
                                                                     reporting_ip_reason=FollowerReportingReason.IN_BOUND)})
    assert not any("reporting IP" in w for w in held.warnings)
    assert PAIR_STATUS.decode(PAIR_STATUS.encode(held)) == held
    gone = _status_with(tmp_path, {"dr": _view("dr"), "rep": replace(
        rep, reporting_ip_reason=FollowerReportingReason.LAG_OVER_BOUND)})
    assert ("follower rep does not hold its reporting IP 203.0.113.122/24 (replay lag over the bound): reports go to "
            "the next host of `standby dsn --for reporting`") in gone.warnings
    render(gone)
    row = next(line for line in capsys.readouterr().out.splitlines() if "│ rep " in line)
    assert "reporting IP 203.0.113.122/24 not held" in row


def test_status_calls_a_promoted_follower_beside_a_serving_pair_a_dual_primary(tmp_path: Path) -> None:
    promoted = _view("dr", in_recovery=False, promoted=True)
    doc = _status_with(tmp_path, {"dr": promoted, "rep": None})
    dual = [w for w in doc.warnings if w.startswith("DUAL PRIMARY")]
    assert dual and "follower dr (promoted) and alpha" in dual[0] and "--from dr" in dual[0], doc.warnings
    # After the site loss the pair serves nowhere: the DR node alone is no dual primary.
    alone = _status_with(tmp_path, {"dr": promoted, "rep": None}, pair_primary=False)
    assert not any(w.startswith("DUAL PRIMARY") for w in alone.warnings)
