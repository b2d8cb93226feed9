"""Finding DR-restart: the old site's primary restarted beside a DR node it could not see.

After a site loss and `standby promote --node gamma`, the old site's hosts come back (power restored) while
the WAN to gamma is still down. The start check (rebuild.fence_at_start) sees no writable warm follower, so
nothing fences; alpha's agent finds its server down, its peer beta a standby in no newer term, and restarts
alpha as a primary (decide.py rule 4): two primaries, one per site, each serving whoever reaches it. With
warm followers configured, a rebooted primary now restarts in place only once every warm follower answered
and none accepts writes; one that accepts writes fences it, as at start.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from standby.decide import State
from standby.model import ActionKind, DbState, DrSeen, LocalPg, Reason
from tests.unit.test_findings_core import kinds, obs, pol, run_steps, view

DOWN = LocalPg(DbState.DOWN)


def _rebooted_primary() -> State:
    """alpha after its host came back: it was the primary, its server is down, this agent never saw it run."""
    return State(term=2, peer_term=2, was_primary=True, peer_could_promote=True)


@pytest.mark.parametrize("dr", [None, DrSeen.UNKNOWN])
def test_dr_restart_a_rebooted_primary_waits_while_a_warm_follower_cannot_be_seen(dr: DrSeen | None) -> None:
    p = pol(dr_watch=True)
    _, acts = run_steps(_rebooted_primary(), p, lambda t: obs(t, DOWN, view(DbState.STANDBY, 2), t, dr=dr), 0.1, 15.0)
    assert (ActionKind.RESTART_PG, Reason.PG_CRASHED_RESTART) not in kinds(acts), \
        "restarted as a primary while the DR node could be serving"


def test_dr_restart_a_rebooted_primary_fences_when_a_warm_follower_accepts_writes() -> None:
    p = pol(dr_watch=True)
    s, acts = run_steps(_rebooted_primary(), p,
                        lambda t: obs(t, DOWN, view(DbState.STANDBY, 2), t, dr=DrSeen.WRITABLE), 0.1, 1.0)
    assert (ActionKind.FENCE, Reason.DR_SERVES) in kinds(acts) and s.fenced and not s.resumable
    assert (ActionKind.RESTART_PG, Reason.PG_CRASHED_RESTART) not in kinds(acts)


def test_dr_restart_a_rebooted_primary_restarts_once_every_warm_follower_is_a_standby() -> None:
    p = pol(dr_watch=True)
    _, acts = run_steps(_rebooted_primary(), p,
                        lambda t: obs(t, DOWN, view(DbState.STANDBY, 2), t, dr=DrSeen.CLEAR), 0.1, 6.0)
    assert (ActionKind.RESTART_PG, Reason.PG_CRASHED_RESTART) in kinds(acts)


def test_dr_restart_without_warm_followers_the_pair_restarts_as_ever() -> None:
    _, acts = run_steps(_rebooted_primary(), pol(), lambda t: obs(t, DOWN, view(DbState.STANDBY, 2), t), 0.1, 6.0)
    assert (ActionKind.RESTART_PG, Reason.PG_CRASHED_RESTART) in kinds(acts)


def test_dr_restart_a_server_this_agent_saw_die_restarts_whatever_the_wan() -> None:
    """The site was never lost: this agent watched its own primary's server die (crash recovery in place)."""
    s = replace(_rebooted_primary(), primary_this_run=True)
    _, acts = run_steps(s, pol(dr_watch=True),
                        lambda t: obs(t, DOWN, view(DbState.STANDBY, 2), t, dr=DrSeen.UNKNOWN), 0.1, 6.0)
    assert (ActionKind.RESTART_PG, Reason.PG_CRASHED_RESTART) in kinds(acts)


def _fenced_as_a_precaution() -> State:
    """alpha fenced itself when its agent found it had been away (a stall, an unclean restart): resumable."""
    return State(term=2, peer_term=2, fenced=True, resumable=True)


@pytest.mark.parametrize("dr", [None, DrSeen.UNKNOWN])
def test_dr_restart_a_precautionary_fence_does_not_resume_while_a_warm_follower_cannot_be_seen(
        dr: DrSeen | None) -> None:
    """Found by the lab test of this finding: the host's quick return read as an unclean agent death, alpha fenced
    itself as a precaution, then resumed by rule 4's exception (a), beta being a standby in its term."""
    _, acts = run_steps(_fenced_as_a_precaution(), pol(dr_watch=True),
                        lambda t: obs(t, DOWN, view(DbState.STANDBY, 2, eligible=False), t, dr=dr), 0.1, 15.0)
    assert not any(a.kind is ActionKind.RESTART_PG for a in acts), "resumed while the DR node could be serving"


def test_dr_restart_a_precautionary_fence_is_made_final_when_a_warm_follower_accepts_writes() -> None:
    s, acts = run_steps(_fenced_as_a_precaution(), pol(dr_watch=True),
                        lambda t: obs(t, DOWN, view(DbState.STANDBY, 2, eligible=False), t, dr=DrSeen.WRITABLE), 0.1, 5.0)
    assert kinds(acts) == [(ActionKind.FENCE, Reason.DR_SERVES)] and s.fenced and not s.resumable


def test_dr_restart_a_precautionary_fence_resumes_once_every_warm_follower_is_a_standby() -> None:
    _, acts = run_steps(_fenced_as_a_precaution(), pol(dr_watch=True),
                        lambda t: obs(t, DOWN, view(DbState.STANDBY, 2, eligible=False), t, dr=DrSeen.CLEAR), 0.1, 5.0)
    assert (ActionKind.RESTART_PG, Reason.RESUMED_PRIMARY) in kinds(acts)
