"""Finding DR-relay: a primary cut off from the DR site served on beside the DR node its standby could see.

A person promotes the warm follower gamma while the WAN is cut. The WAN comes back, but not every path: alpha,
the pair's primary, still cannot reach gamma, beta can. Beta reads gamma writable and gives up its claim to
promotion (finding DR-window), but alpha, whose own question never comes back, serves on: two writers, alpha for
the clients in the pair's site and gamma for those in the DR site, for as long as that path stays cut (CI run 31's
lab scenario, where the test cut it on purpose, showed it and took it as given). Now the standby says in its
heartbeat that it read a warm follower accepting writes, and in which term it asked; the primary of that term
fences itself for good on it, as on its own answer (decide.py rule 7). The term is what keeps the switchback's
new primary safe: it is promoted in a new term only once gamma has stopped, and a question the standby asked
before that carries the old term.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from standby.agent import heartbeat as hb
from standby.decide import PgCrashPolicy, State, advertise
from standby.model import ActionKind, DbState, DrSeen, LocalPg, Net, PeerView, Reason
from tests.unit.sim import World
from tests.unit.test_decide import policies
from tests.unit.test_findings_core import BOTH_UP, kinds, obs, pol, run_steps, view

PRIMARY = LocalPg(DbState.PRIMARY, lsn=100, peer_sync=True, peer_flush_lsn=100)
STANDBY = LocalPg(DbState.STANDBY, lsn=100, streaming=True)


def _serving_primary() -> State:
    return State(term=2, peer_term=2, was_primary=True, primary_this_run=True, services=True, sync_established=True)


def _standby_says(term: int, dr_writable_term: int | None, db: DbState = DbState.STANDBY) -> PeerView:
    return view(db, term, eligible=False, dr_writable_term=dr_writable_term)


@pytest.mark.parametrize("own", [None, DrSeen.UNKNOWN, DrSeen.CLEAR])
def test_dr_relay_a_primary_that_cannot_read_the_dr_node_stops_on_its_standbys_answer(own: DrSeen | None) -> None:
    """Its own answer missing or slow (the usual case across a cut WAN), or even CLEAR: an answer the standby
    asked in this very term saw the DR node accept writes, and a stale CLEAR here costs two writers."""
    s, acts = run_steps(_serving_primary(), pol(dr_watch=True),
                        lambda t: obs(t, PRIMARY, _standby_says(2, 2), t, dr=own), 0.1, 0.1)
    assert kinds(acts) == [(ActionKind.FENCE, Reason.DR_SERVES), (ActionKind.RELEASE_SERVICES, Reason.DR_SERVES)]
    assert s.fenced and s.dr_serves and not s.resumable and not s.services
    # For good, as on its own answer: said in every heartbeat, never resumed.
    assert advertise(s, LocalPg(DbState.DOWN), dict(BOTH_UP), True, False, True).dr_serves
    s, acts = run_steps(s, pol(dr_watch=True), lambda t: obs(t, LocalPg(DbState.DOWN), _standby_says(2, None), t,
                                                             dr=DrSeen.CLEAR), 0.2, 20.0)
    assert s.fenced and not any(a.kind is ActionKind.RESTART_PG for a in acts), kinds(acts)


def test_dr_relay_an_answer_asked_in_an_older_term_fences_nothing() -> None:
    """The switchback: alpha is promoted in a new term once gamma has stopped; beta's question that left before
    (gamma still writable) comes back after. It carries the old term and says nothing of gamma now."""
    s, acts = run_steps(_serving_primary(), pol(dr_watch=True),
                        lambda t: obs(t, PRIMARY, _standby_says(2, 1), t, dr=DrSeen.UNKNOWN), 0.1, 5.0)
    assert acts == [] and not s.fenced, kinds(acts)


@pytest.mark.parametrize("db", [DbState.FENCING, DbState.FENCED, DbState.DOWN, DbState.PRIMARY])
def test_dr_relay_only_a_running_standbys_word_counts(db: DbState) -> None:
    """A peer that is not this primary's running standby is not relaying what it saw of this term."""
    _s, acts = run_steps(_serving_primary(), pol(dr_watch=True),
                         lambda t: obs(t, PRIMARY, _standby_says(2 if db is not DbState.PRIMARY else 1, 2, db), t),
                         0.1, 0.5)
    assert not any(a.reason is Reason.DR_SERVES for a in acts), kinds(acts)


def test_dr_relay_a_word_no_longer_fresh_fences_nothing() -> None:
    """The standby's last heartbeat is older than the failover timeout: what it said then is not relayed now."""
    _s, acts = run_steps(_serving_primary(), pol(dr_watch=True),
                         lambda t: obs(t, PRIMARY, _standby_says(2, 2), 0.0, tiebreaker_ok=True), 1.5, 1.5)
    assert not any(a.reason is Reason.DR_SERVES for a in acts), kinds(acts)


def test_dr_relay_the_standby_says_the_term_its_question_left_in() -> None:
    """Beta asked in term 2 and hears alpha's new term 3 in the same step: it relays 2, which alpha in term 3
    ignores; an answer that is not WRITABLE relays nothing, nor does a node that is not a running standby."""
    s = State(term=2, peer_term=2, watching_since=0.0)
    new_primary = view(DbState.PRIMARY, 3, sync_ok=True)
    s, _ = run_steps(s, pol(dr_watch=True), lambda t: obs(t, STANDBY, new_primary, t, dr=DrSeen.WRITABLE,
                                                          dr_term=2), 0.1, 0.1)
    said = advertise(s, STANDBY, dict(BOTH_UP), True, False, True)
    assert s.term == 3 and said.dr_writable_term == 2
    for dr in (DrSeen.UNKNOWN, DrSeen.CLEAR, None):
        s2, _ = run_steps(s, pol(dr_watch=True), lambda t, d=dr: obs(t, STANDBY, new_primary, t, dr=d, dr_term=3),
                          0.2, 0.2)
        assert advertise(s2, STANDBY, dict(BOTH_UP), True, False, True).dr_writable_term is None, dr
    down = advertise(replace(s, fenced=True), LocalPg(DbState.DOWN), dict(BOTH_UP), True, False, True)
    assert down.dr_writable_term is None


def test_dr_relay_the_heartbeat_carries_it_and_older_peers_do_not_say() -> None:
    key = b"k" * 32
    base = hb.Heartbeat(cluster="c", sender="beta", boot=1, seq=1, net=Net.PRIVATE, digest="d",
                        view=_standby_says(2, 2))
    assert hb.decode(hb.encode(base, key), key).view.dr_writable_term == 2
    quiet = replace(base, view=_standby_says(2, None))
    assert hb.decode(hb.encode(quiet, key), key).view.dr_writable_term is None
    assert "dr_writable_term" not in hb.view_to_dict(quiet.view)  # as an older peer's: nothing to misread


@pytest.mark.parametrize("bad", [-1, True, "2", 2.0])
def test_dr_relay_a_malformed_term_is_refused(bad: object) -> None:
    import hashlib
    import hmac
    import json

    key = b"k" * 32
    body = json.loads(hb.encode(hb.Heartbeat(cluster="c", sender="beta", boot=1, seq=1, net=Net.PRIVATE, digest="d",
                                             view=_standby_says(2, 2)), key)[:-32])
    body["view"]["dr_writable_term"] = bad
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    with pytest.raises(hb.Reject):
        hb.decode(raw + hmac.new(key, raw, hashlib.sha256).digest(), key)


def test_dr_relay_simulated_alpha_cut_off_from_the_dr_site_stops_once_beta_reads_it() -> None:
    """The world of CI run 31's lab test: alpha never gets an answer from the DR site, beta does."""
    base = policies(sync=True)
    with World({n: replace(p, dr_watch=True) for n, p in base.items()}, seed=7, stop_delay=0.3) as w:
        w.set_dr_loss("a", 100)
        w.run(2.0)
        w.promote_dr()
        w.run(4.0)
        a, b = w.nodes["a"], w.nodes["b"]
        assert w.primaries() == [], w.log
        assert a.state.fenced and a.state.dr_serves and not a.holds_ips, w.log
        assert b.pg is DbState.STANDBY and not b.state.eligible, w.log
        w.crash("a")
        w.run(10.0)
        assert w.primaries() == [] and not any(" b promote " in line for line in w.log), w.log


def test_dr_relay_without_warm_followers_configured_nothing_is_relayed_or_heard() -> None:
    """A primary that asks no warm follower does not act on the word either (the two nodes share one
    configuration: a standby that relays has followers configured, so this is the stale-message case)."""
    _s, acts = run_steps(_serving_primary(), pol(dr_watch=False),
                         lambda t: obs(t, PRIMARY, _standby_says(2, 2), t), 0.1, 0.5)
    assert not any(a.reason is Reason.DR_SERVES for a in acts), kinds(acts)


def test_dr_relay_a_primary_whose_server_crashed_does_not_restart_it_beside_the_dr_node() -> None:
    """Its server died (restarted in place by policy): the word stops the restart, as its own answer would."""
    s, acts = run_steps(_serving_primary(), pol(dr_watch=True, pg_crash=PgCrashPolicy.RESTART),
                        lambda t: obs(t, LocalPg(DbState.DOWN), _standby_says(2, 2), t, dr=DrSeen.UNKNOWN), 0.1, 3.0)
    assert kinds(acts)[:1] == [(ActionKind.FENCE, Reason.DR_SERVES)], kinds(acts)
    assert not any(a.kind is ActionKind.RESTART_PG for a in acts) and s.fenced and s.dr_serves


def test_dr_relay_a_fenced_primary_that_could_resume_stays_down_for_good() -> None:
    """Fenced with the right to resume (rule 4), its own answer not in: the standby's word ends that right."""
    fenced = replace(_serving_primary(), fenced=True, resumable=True, services=False, was_primary=False)
    s, acts = run_steps(fenced, pol(dr_watch=True),
                        lambda t: obs(t, LocalPg(DbState.DOWN), _standby_says(2, 2), t, dr=DrSeen.UNKNOWN), 0.1, 5.0)
    assert (ActionKind.FENCE, Reason.DR_SERVES) in kinds(acts), kinds(acts)
    assert s.dr_serves and not s.resumable and not any(a.kind is ActionKind.RESTART_PG for a in acts)
