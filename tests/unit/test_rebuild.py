"""The road back after a DR promotion (standby.rebuild), over every combination it can be given."""

from __future__ import annotations

import itertools

import pytest

from standby.confbase import FollowerRole
from standby.model import DbState
from standby.rebuild import (
    Decision,
    Next,
    Promotion,
    Reason,
    StartFence,
    TargetSeen,
    fence_at_start,
    may_hand_back,
    may_rebuild,
    next_step,
)

_ROLES = [None, *FollowerRole]


@pytest.mark.parametrize(("role", "source_writable", "other_writable"),
                         list(itertools.product(_ROLES, (False, True), (False, True))))
def test_rebuild_only_from_a_writable_warm_follower_beside_no_other_primary(
        role: FollowerRole | None, source_writable: bool, other_writable: bool) -> None:
    d = may_rebuild(role, source_writable, other_writable)
    assert d.go == (role is FollowerRole.WARM and source_writable and not other_writable)
    if role is not FollowerRole.WARM:
        assert d.reason is Reason.NOT_WARM_FOLLOWER
    elif not source_writable:
        assert d.reason is Reason.SOURCE_NOT_PRIMARY
    elif other_writable:
        assert d.reason is Reason.OTHER_WRITABLE
    else:
        assert d.reason is Reason.REBUILD


def test_rebuild_is_refused_while_the_other_pair_node_writes() -> None:
    """Breaks a rebuild that looks at the follower alone: beta came back writable (its own site's clients
    may have written there), so there are two primaries; copying gamma over alpha would not make one."""
    assert may_rebuild(FollowerRole.WARM, True, other_writable=True) == Decision(False, Reason.OTHER_WRITABLE)


def test_rebuild_is_refused_from_a_follower_never_promoted() -> None:
    """A follower still in recovery is no primary to copy: the pair's own rejoin is the road then."""
    assert may_rebuild(FollowerRole.WARM, False, False) == Decision(False, Reason.SOURCE_NOT_PRIMARY)


_HAND_BACK = list(itertools.product(_ROLES, (False, True), (False, True), TargetSeen, (False, True)))


@pytest.mark.parametrize(("role", "here_writable", "agent_answers", "target", "other_writable"), _HAND_BACK)
def test_hand_back_every_combination_keeps_the_rules(role: FollowerRole | None, here_writable: bool,
                                                     agent_answers: bool, target: TargetSeen,
                                                     other_writable: bool) -> None:
    d = may_hand_back(role, here_writable, agent_answers, target, other_writable)
    assert d.go == (role is FollowerRole.WARM and here_writable and not agent_answers and not other_writable
                    and target is TargetSeen.STREAMING_HERE)
    assert d.go == (d.reason is Reason.HAND_BACK)
    # A refusal names a rule that is broken.
    broken = {Reason.NOT_WARM_FOLLOWER: role is not FollowerRole.WARM, Reason.HERE_NOT_PRIMARY: not here_writable,
              Reason.AGENT_RUNNING: agent_answers, Reason.OTHER_WRITABLE: other_writable,
              Reason.TARGET_AGENT_SILENT: target is TargetSeen.AGENT_SILENT,
              Reason.TARGET_FENCED: target is TargetSeen.FENCED,
              Reason.TARGET_NOT_STREAMING: target is TargetSeen.NOT_STREAMING_HERE}
    assert d.go or broken[d.reason]


@pytest.mark.parametrize(("here_writable", "agent_answers", "other_writable", "target", "named"), [
    (False, True, True, TargetSeen.AGENT_SILENT, Reason.HERE_NOT_PRIMARY),
    (True, True, True, TargetSeen.AGENT_SILENT, Reason.AGENT_RUNNING),
    (True, False, True, TargetSeen.AGENT_SILENT, Reason.OTHER_WRITABLE),
    (True, False, False, TargetSeen.AGENT_SILENT, Reason.TARGET_AGENT_SILENT),
    (True, False, False, TargetSeen.FENCED, Reason.TARGET_FENCED),
    (True, False, False, TargetSeen.NOT_STREAMING_HERE, Reason.TARGET_NOT_STREAMING),
    (True, False, False, TargetSeen.STREAMING_HERE, Reason.HAND_BACK),
])
def test_hand_back_names_the_follower_side_first_then_the_pair_node(
        here_writable: bool, agent_answers: bool, other_writable: bool, target: TargetSeen, named: Reason) -> None:
    """Several rules broken at once: fixed one by one, the refusals come in the safety argument's order (what
    this follower is, its own agent, a second writable node, then what the pair node's agent says)."""
    assert may_hand_back(FollowerRole.WARM, here_writable, agent_answers, target, other_writable).reason is named


def test_hand_back_is_refused_while_the_followers_agent_runs() -> None:
    """Breaks a hand-back that stops the server under a running follower agent: the agent restarts a server
    it finds down, and a promoted follower's has no standby.signal, so it would come back writable beside the
    pair node promoted a moment later."""
    assert may_hand_back(FollowerRole.WARM, True, True, TargetSeen.STREAMING_HERE, False) == Decision(
        False, Reason.AGENT_RUNNING)


def test_hand_back_needs_the_pair_node_streaming_from_here() -> None:
    """A pair node that is not this follower's streaming standby cannot have its last WAL byte: refused before
    anything stops, so the follower never pauses writes for a promotion that cannot happen."""
    for seen in (TargetSeen.AGENT_SILENT, TargetSeen.FENCED, TargetSeen.NOT_STREAMING_HERE):
        assert not may_hand_back(FollowerRole.WARM, True, False, seen, False).go


@pytest.mark.parametrize(("clean", "promotion"), list(itertools.product((False, True), Promotion)))
def test_next_step_every_combination(clean: bool, promotion: Promotion) -> None:
    n = next_step(clean, promotion)
    if not clean:
        assert n is Next.RESUME_HERE
    else:
        assert n is {Promotion.NOT_ASKED: Next.PROMOTE_TARGET, Promotion.DONE: Next.FOLLOW_TARGET,
                     Promotion.FAILED_STILL_STANDBY: Next.RESUME_HERE,
                     Promotion.FAILED_UNKNOWN: Next.HOLD_STOPPED}[promotion]


def test_a_promotion_that_may_have_happened_never_resumes_the_follower() -> None:
    """Breaks a hand-back that resumes on any failed promotion: the answer may have been lost after the pair
    node was promoted, and resuming the follower then makes two primaries. It stays stopped."""
    assert next_step(True, Promotion.FAILED_UNKNOWN) is Next.HOLD_STOPPED
    assert next_step(True, Promotion.FAILED_STILL_STANDBY) is Next.RESUME_HERE


@pytest.mark.parametrize(("dr", "fenced", "here"), list(itertools.product(((), ("gamma",)), (False, True), DbState)))
def test_fence_at_start_every_combination(dr: tuple[str, ...], fenced: bool, here: DbState) -> None:
    f = fence_at_start(dr, fenced, here)
    assert f.fence == (bool(dr) and not fenced and here is not DbState.STANDBY)
    assert f.by == dr
    assert f.reason is (Reason.NO_DR_PRIMARY if not dr else Reason.ALREADY_FENCED if fenced
                        else Reason.RUNNING_STANDBY if here is DbState.STANDBY else Reason.SUPERSEDED)


def test_a_rebooted_old_primary_fences_itself_while_the_dr_node_serves() -> None:
    """Breaks an agent that trusts its own state after the site came back: alpha's host rebooted, its server
    down, the DR node gamma promoted meanwhile. Hearing beta as a standby, its agent would restart alpha's
    server as a primary beside gamma; fenced at start, it stays down until `standby rejoin --from gamma`."""
    assert fence_at_start(("gamma",), False, DbState.DOWN) == StartFence(True, Reason.SUPERSEDED, ("gamma",))
    assert fence_at_start(("gamma",), False, DbState.PRIMARY).fence
    # Rebuilt from gamma, it runs as a standby: left running.
    assert not fence_at_start(("gamma",), False, DbState.STANDBY).fence
