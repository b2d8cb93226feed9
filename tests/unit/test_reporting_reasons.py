"""Each rule of the reporting IP's step names itself: the decision's reason is a ReportingReason
(its text is what the agent records and /status shows), the lag over the bound among them."""

from __future__ import annotations

from hypothesis import given, settings

from standby.model import DbState, Net, PeerView
from standby.reporting import ReportingInputs, ReportingPolicy, ReportingReason, ReportingState, step
from tests.unit.test_reporting import BOUND, inputs, policies, states


@settings(max_examples=2000, deadline=None)
@given(states, inputs, policies)
def test_every_decision_names_its_rule(s: ReportingState, inp: ReportingInputs, p: ReportingPolicy) -> None:
    _, d = step(s, inp, p)
    assert isinstance(d.reason, ReportingReason)


def test_a_standby_too_far_behind_says_so_with_its_lag() -> None:
    primary = PeerView(term=1, db=DbState.PRIMARY, services=True, lsn=5 * BOUND, sync_ok=True,
                       carrier={Net.PUBLIC: True, Net.PRIVATE: True}, tiebreaker_ok=None)
    inp = ReportingInputs(db=DbState.STANDBY, streaming=True, replay_lsn=0, peer=primary, public_ok=True, held=True,
                          now=1.0)
    _, d = step(ReportingState(episode=3), inp, ReportingPolicy(True, BOUND, 0.9))
    assert not d.hold and d.reason is ReportingReason.LAG_OVER_BOUND and d.lag_bytes == 5 * BOUND
    assert "over the bound" in d.reason  # what the lab's reporting test and people read
