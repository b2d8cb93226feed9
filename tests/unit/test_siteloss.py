"""The DR promotion's decision (standby.siteloss), over every combination it can be given."""

from __future__ import annotations

import itertools

import pytest

from standby.confbase import FollowerRole
from standby.siteloss import Decision, FollowerSeen, PairSeen, Reason, Verdict, decide

_ME = [None, FollowerSeen(False, True), FollowerSeen(True, False), FollowerSeen(True, True)]
_CASES = list(itertools.product(FollowerRole, _ME, itertools.product(PairSeen, repeat=2), (False, True)))
_SAFE = {PairSeen.FENCED, PairSeen.UNREACHABLE}  # cannot write, and will not start to by itself


@pytest.mark.parametrize(("role", "me", "states", "force"), _CASES)
def test_i12_every_combination_keeps_the_rules(role: FollowerRole, me: FollowerSeen | None,
                                               states: tuple[PairSeen, PairSeen], force: bool) -> None:
    pair = dict(zip(("alpha", "beta"), states, strict=True))
    d = decide(role, me, pair, force)
    in_the_way = tuple(n for n, s in pair.items() if s not in _SAFE)
    silent = tuple(n for n, s in pair.items() if s is PairSeen.UNREACHABLE)
    may_act = role is FollowerRole.WARM and me is not None and me.running and me.in_recovery
    # Promotion needs a warm follower in recovery and no pair node that writes or could start to.
    assert (d.verdict is Verdict.PROMOTE) == (may_act and not in_the_way)
    if d.verdict is Verdict.PROMOTE:
        assert d.unreachable == silent and d.to_fence == () and d.in_the_way == ()
        assert d.reason is (Reason.SITE_GONE if len(silent) == 2 else Reason.PAIR_FENCED)
    # A fence is asked only with force, of every node in the way, and only if each can be fenced here.
    fenceable = PairSeen.LIVE_NO_AGENT not in states
    assert (d.verdict is Verdict.FENCE_FIRST) == (may_act and bool(in_the_way) and force and fenceable)
    if d.verdict is Verdict.FENCE_FIRST:
        assert d.to_fence == in_the_way and d.in_the_way == ()
    # Nodes named in a refusal are never ones to fence: only FENCE_FIRST asks for a fence.
    if d.verdict is Verdict.REFUSE:
        assert d.to_fence == ()
        if d.reason is Reason.PAIR_ALIVE:
            assert d.in_the_way == in_the_way
        if d.reason is Reason.UNFENCEABLE:
            assert d.in_the_way == tuple(n for n, s in pair.items() if s is PairSeen.LIVE_NO_AGENT)
    if d.verdict is not Verdict.PROMOTE:
        assert d.unreachable == ()


def test_i12_site_loss_never_promotes_beside_a_hot_standby_that_can_still_promote() -> None:
    """Breaks a rule that only looks for a primary: the pair's primary is gone, beta (a hot standby whose
    agent answers) is about to promote itself. Promoting the DR node beside it makes two primaries a
    second later, so it is refused; with --force beta is fenced first, and only a fenced beta lets it go."""
    me = FollowerSeen(running=True, in_recovery=True)
    primary_gone = {"alpha": PairSeen.UNREACHABLE, "beta": PairSeen.LIVE}
    assert decide(FollowerRole.WARM, me, primary_gone, force=False) == Decision(
        Verdict.REFUSE, Reason.PAIR_ALIVE, in_the_way=("beta",))
    assert decide(FollowerRole.WARM, me, primary_gone, force=True) == Decision(
        Verdict.FENCE_FIRST, Reason.FENCE_PAIR, to_fence=("beta",))
    # The second look is without force: a beta that promoted meanwhile (or did not take the fence) refuses.
    for still in (PairSeen.PRIMARY, PairSeen.LIVE):
        assert decide(FollowerRole.WARM, me, {"alpha": PairSeen.UNREACHABLE, "beta": still}, False).verdict \
            is Verdict.REFUSE
    fenced = {"alpha": PairSeen.UNREACHABLE, "beta": PairSeen.FENCED}
    assert decide(FollowerRole.WARM, me, fenced, force=False) == Decision(
        Verdict.PROMOTE, Reason.PAIR_FENCED, unreachable=("alpha",))


def test_i12_a_server_without_its_agent_is_not_fenced_from_afar_and_blocks_the_promotion() -> None:
    me = FollowerSeen(running=True, in_recovery=True)
    d = decide(FollowerRole.WARM, me, {"alpha": PairSeen.PRIMARY, "beta": PairSeen.LIVE_NO_AGENT}, force=True)
    assert d == Decision(Verdict.REFUSE, Reason.UNFENCEABLE, in_the_way=("beta",))


def test_i12_a_reporting_follower_is_never_promoted_even_with_the_site_gone() -> None:
    gone = {"alpha": PairSeen.UNREACHABLE, "beta": PairSeen.UNREACHABLE}
    d = decide(FollowerRole.REPORTING, FollowerSeen(True, True), gone, force=True)
    assert d == Decision(Verdict.REFUSE, Reason.REPORTING_FOLLOWER)


def test_i12_a_server_that_answers_its_port_but_refuses_the_question_is_never_read_as_gone() -> None:
    """A pair node whose PostgreSQL port answers while the question fails (a pg_hba line missing for the DR
    host, a server starting) is a host that is up: with its agent silent it is in the way, not gone."""
    from standby.cli.promote import _judged

    assert _judged(answers=True, writes=False, agent=None) is PairSeen.LIVE_NO_AGENT
    assert _judged(answers=False, writes=False, agent=None) is PairSeen.UNREACHABLE
    assert _judged(answers=True, writes=True, agent=None) is PairSeen.PRIMARY
