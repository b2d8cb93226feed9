"""Finding: a pair rebuilt after a site loss reused the old site's terms.

A DR promotion happens at the follower, which has no say in the pair's terms; the rebuilt node took the
newest term *it* knew. Had the old standby (beta) promoted just before the site went, unheard by alpha,
the switchback promoted alpha into beta's very term: when beta's host came back, equal terms let it
restart its stale server as a primary beside a fenced alpha, or, as the preferred node, made the
serving alpha fence itself. A rebuild now starts the next block of terms (operations.SITE_TERMS),
which nothing at the lost site can have reached.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from standby import operations as ops
from standby.decide import State, decide
from standby.model import ActionKind, DbState, LocalPg, Reason
from tests.unit.test_findings_core import kinds, obs, pol, run_steps, view


def _site_lost_just_after_beta_promoted() -> tuple[State, State]:
    """alpha: the primary of term 2, fenced (isolated) as the site went; it never heard beta's term 3.
    beta: promoted to term 3 a moment before both hosts went down."""
    alpha = State(term=2, peer_term=2, fenced=True, resumable=True)
    beta = State(term=3, peer_term=2, was_primary=True, peer_could_promote=True)
    return alpha, beta


def _rebuilt_and_switched_back(alpha: State) -> State:
    """`standby rejoin --node alpha --from gamma`, then `standby switchback --node gamma` promotes alpha."""
    promoted = ops.promoting(ops.rebuilt(alpha), planned=True)
    return ops.serving(promoted)


def test_dr_term_an_old_primary_back_after_the_switchback_never_restarts_its_stale_server() -> None:
    alpha, beta = _site_lost_just_after_beta_promoted()
    alpha = _rebuilt_and_switched_back(alpha)
    p = pol()
    # beta's host boots once gamma is a standby again (so nothing fences it at start); alpha, serving,
    # has just fenced itself (isolated for a moment): it says FENCED in its term.
    down = LocalPg(DbState.DOWN)
    _, acts = run_steps(beta, p, lambda t: obs(t, down, view(DbState.FENCED, alpha.term), t), 0.1, 12.0)
    assert (ActionKind.RESTART_PG, Reason.PG_CRASHED_RESTART) not in kinds(acts), (
        f"beta (term {beta.term}) restarted its pre-site-loss server as primary beside alpha (term {alpha.term})")


def test_dr_term_a_stale_preferred_primary_never_makes_the_rebuilt_primary_fence() -> None:
    alpha, beta = _site_lost_just_after_beta_promoted()
    alpha = _rebuilt_and_switched_back(alpha)
    primary = LocalPg(DbState.PRIMARY, lsn=500)
    p_alpha, p_beta = pol(preferred=False), pol(preferred=True)
    alpha, _ = run_steps(alpha, p_alpha, lambda t: obs(t, primary, None, None), 0.1, 0.5)  # serving alone
    assert not alpha.promoting and not alpha.fenced
    # Then beta's server is found running as a primary (its host was cut off, not down): for a moment two
    # servers accept writes, and the old site's one must be the one to go.
    _, alpha_acts = decide(alpha, obs(1.0, primary, view(DbState.PRIMARY, beta.term, preferred=True), 1.0), p_alpha)
    assert ActionKind.FENCE not in [a.kind for a in alpha_acts], "the rebuilt, serving alpha fenced itself"
    beta_now, beta_acts = decide(beta, obs(1.0, primary, view(DbState.PRIMARY, alpha.term), 1.0), p_beta)
    assert (ActionKind.FENCE, Reason.SUPERSEDED) in kinds(beta_acts) and beta_now.fenced


@given(term=st.integers(0, 5 * ops.SITE_TERMS), peer_term=st.integers(0, 5 * ops.SITE_TERMS),
       automatic=st.integers(0, ops.SITE_TERMS - 1))
def test_dr_term_a_rebuilt_pair_outranks_any_term_the_lost_site_can_hold(term: int, peer_term: int,
                                                                       automatic: int) -> None:
    """The lost site's newest term is what the rebuilt node knew, plus any number of promotions it made
    unheard, as long as they stay inside their block (2**20 promotions)."""
    s = State(term=term, peer_term=peer_term)
    known = max(term, peer_term)
    old_site = min(known + automatic, (known // ops.SITE_TERMS + 1) * ops.SITE_TERMS - 1)
    new = ops.rebuilt(s)
    assert new.term > old_site and ops.promoting(new, planned=True).term > old_site
    assert not (new.fenced or new.was_primary or new.promoting)
