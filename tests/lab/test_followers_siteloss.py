"""Issue 12, site loss, on the lab: the warm follower gamma is promoted by hand (`standby promote --node
gamma`), never beside a pair node that could still write.

- The pair alive: refused, gamma stays in recovery.
- --force with the pair alive: both pair nodes are fenced first (a hot standby left answering would promote
  itself once its primary is fenced), then gamma is the one writable node.
- Both pair hosts crashed under load: gamma is promoted and takes writes; the calls it lacks are printed
  beside what its agent predicted (WAL bytes not received), never asserted (sync waits for beta only).
- The WAN cut while the pair serves, gamma promoted anyway: when the WAN heals, alpha fences itself (DR-split).
- The same, alpha still unable to reach gamma when the WAN heals, then its host crashed: beta, which can,
  promotes nothing beside gamma (DR-window).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from standby.lab import Lab, followers, netns
from standby.lab.pair import primaries, start_pair, under_load


def _pair_with_gamma(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    lab = start_pair(lab_factory("sync", followers=("gamma",)))
    followers.wait_streaming(lab, "gamma", "alpha")
    return lab


def _writable(lab: Lab, node: str) -> bool:
    with lab.pg_connect(node) as c:
        return c.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)


def test_i12_promote_gamma_is_refused_while_the_pair_serves(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = _pair_with_gamma(lab_factory)
    res = lab.standby("gamma", "promote", "--yes", check=False)
    assert res.returncode != 0 and "still answers, not fenced" in res.stderr + res.stdout, res.stdout + res.stderr
    assert not _writable(lab, "gamma") and primaries(lab) == ["alpha"]


def test_i12_promote_gamma_with_force_fences_both_pair_nodes_first(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = _pair_with_gamma(lab_factory)
    res = lab.standby("gamma", "promote", "--yes", "--force", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _writable(lab, "gamma")
    # Some seconds for beta's agent: had it been left unfenced, it would promote on alpha's fence by now.
    time.sleep(5.0)
    assert primaries(lab) == [], "a pair node accepts writes beside the promoted follower"
    assert _writable(lab, "gamma")


def test_i12_site_lost_under_load_gamma_promoted_by_hand(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = _pair_with_gamma(lab_factory)
    with under_load(lab, tmp_path) as run:
        time.sleep(2.0)
        lab.crash("alpha")
        lab.crash("beta")
    res = lab.standby("gamma", "promote", "--yes", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "answers nowhere" in res.stdout  # the person is told a cut-off site could still serve
    assert _writable(lab, "gamma")
    with lab.pg_connect("gamma") as c:
        c.execute("CREATE TABLE IF NOT EXISTS dr_write_check (x int)")
        c.execute("INSERT INTO dr_write_check VALUES (1)")
    acked = {a["call_id"] for a in map(json.loads, run.history.read_text().splitlines()) if a["outcome"] == "ack"}
    on_gamma = followers.call_ids(lab, "gamma")
    assert acked and on_gamma, "no calls were carried before the site was lost"
    predicted = next((line for line in res.stdout.splitlines() if line.startswith("what could be lost")), "?")
    print(f"\nsite loss: {len(acked - on_gamma)} of {len(acked)} acknowledged calls not on gamma; the command "
          f"said: {predicted}")


def test_dr_restart_the_old_site_back_before_its_wan_starts_no_primary(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """Finding DR-restart: after a site loss and gamma's promotion, the old site's power comes back before its
    WAN. The start check cannot see gamma, so nothing fences; alpha's agent found its server down and beta a
    standby in its own term, and restarted alpha as a primary beside gamma. Now the restart waits for every warm
    follower to answer; once the WAN is back, gamma's answer (it accepts writes) fences alpha."""
    lab = _pair_with_gamma(lab_factory)
    lab.crash("alpha")
    lab.crash("beta")
    res = lab.standby("gamma", "promote", "--yes", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    lab.heal()
    lab.wan_link(False)  # the site's power is back, its WAN is not
    lab.start_agent("alpha")
    lab.start_agent("beta")
    lab.wait_for("both agents", lambda: all(lab.agent_status(n) is not None for n in ("alpha", "beta")),
                 timeout_s=30)
    deadline = time.monotonic() + 10.0  # several restart backoffs: the pair's rule alone restarted it in ~5 s
    while time.monotonic() < deadline:
        assert primaries(lab) == [], "the old site started a primary beside the DR node"
        time.sleep(0.5)
    assert not _dr_fenced(lab, "alpha"), "alpha saw gamma across a WAN that is down: the test's premise"
    lab.wan_link(True)
    lab.wait_for("alpha fenced for good on gamma's answer", lambda: _dr_fenced(lab, "alpha"), timeout_s=20)
    st = lab.agent_status("alpha")
    assert st is not None and st.state.fenced
    assert primaries(lab) == [] and _writable(lab, "gamma")


def test_dr_split_the_wan_heals_after_gamma_was_promoted_alpha_stops_and_beta_stays(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """Finding DR-split: the WAN is cut, the pair's site is alive, and a person at the other site promotes gamma
    (the pair answers nowhere, so nothing is fenced). When the WAN comes back, alpha, still serving, asks gamma
    (a running primary asks every second) and fences itself for good; beta, which takes the database over from a
    fenced primary, hears that this fence is no hand-over and stays a standby."""
    lab = _pair_with_gamma(lab_factory)
    lab.wan_link(False)
    try:
        res = lab.standby("gamma", "promote", "--yes", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert _writable(lab, "gamma") and primaries(lab) == ["alpha"]  # two primaries, one per site
        time.sleep(3.0)
        assert primaries(lab) == ["alpha"], "alpha stopped while gamma could not be reached: the test's premise"
    finally:
        lab.wan_link(True)
    healed = time.monotonic()
    lab.wait_for("alpha fenced for good on gamma's answer", lambda: _dr_fenced(lab, "alpha"), timeout_s=30)
    took = time.monotonic() - healed
    lab.wait_for("alpha's server stopped", lambda: primaries(lab) == [], timeout_s=30)
    deadline = time.monotonic() + 6.0  # beta would have promoted on alpha's fence within a failover timeout
    while time.monotonic() < deadline:
        assert primaries(lab) == [], "a pair node took over beside the promoted follower"
        time.sleep(0.5)
    beta = lab.agent_status("beta")
    assert beta is not None and not beta.state.fenced and not beta.state.eligible
    alpha = lab.agent_status("alpha")
    assert alpha is not None and alpha.state.fenced and alpha.state.dr_serves
    status = lab.standby("beta", "status", check=False)
    assert "alpha is FENCED because a warm follower accepts writes" in status.stdout, status.stdout + status.stderr
    assert _writable(lab, "gamma")
    print(f"\nthe WAN healed; alpha fenced itself {took:.1f}s later on gamma's answer; beta stayed a standby")


def test_dr_relay_alpha_cut_off_from_gamma_stops_on_betas_answer_and_beta_does_not_promote_when_alpha_dies(
        lab_factory) -> None:  # type: ignore[no-untyped-def]
    """Finding DR-window, with the race taken out, and finding DR-relay: alpha cannot reach gamma at all (a filter
    in alpha's host), so it never learns of gamma's promotion by itself; beta can. Before DR-relay alpha served on
    beside gamma for as long as that path stayed cut; now beta's heartbeats say it sees a warm follower accept
    writes, and alpha fences itself for good on that. Then alpha's host crashes: before DR-window beta promoted
    on alpha's silence (it was eligible: alpha said "sync" to the end) beside gamma."""
    lab = _pair_with_gamma(lab_factory)
    gamma = lab.config().follower("gamma")
    assert gamma is not None
    to_gamma = ", ".join(str(link.address.ip) for link in (gamma.public, gamma.private))
    netns.run_in(lab.netns("alpha"), ["nft", "-f", "-"], input=(
        "table inet standby_test_no_gamma {\n chain out {\n  type filter hook output priority 0; policy accept;\n"
        f"  ip daddr {{ {to_gamma} }} drop\n }}\n}}\n"))
    lab.wan_link(False)
    try:
        res = lab.standby("gamma", "promote", "--yes", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        lab.wan_link(True)

    def beta_knows() -> bool:
        beta = lab.agent_status("beta")
        return beta is not None and beta.postgres.state.value == "standby" and not beta.state.eligible

    lab.wait_for("beta no longer eligible on gamma's answer", beta_knows, timeout_s=30)
    lab.wait_for("alpha fenced on beta's word", lambda: _dr_fenced(lab, "alpha") and primaries(lab) == [],
                 timeout_s=15)
    records = json.loads(lab.standby("alpha", "history", "--json", "--limit", "500").stdout)
    said = [r.get("detail", "") for r in records if r.get("reason") == "dr_serves" and r.get("action") == "fence"]
    assert said and "the standby sees a warm follower accept writes" in said[0], said
    status = " ".join(lab.standby("beta", "status", check=False).stdout.split())  # as one line: status wraps
    assert "gamma accepts writes (a DR promotion): it promotes nothing beside it" in status, status
    lab.crash("alpha")
    deadline = time.monotonic() + 8.0  # beta promoted within about a failover timeout before DR-window's fix
    while time.monotonic() < deadline:
        assert primaries(lab) == [], "beta promoted beside the promoted follower"
        time.sleep(0.5)
    records = json.loads(lab.standby("beta", "history", "--json", "--limit", "500").stdout)
    assert not any(r.get("action") == "promote" for r in records), records[-10:]
    assert _writable(lab, "gamma")


def _dr_fenced(lab: Lab, node: str) -> bool:
    """The node's agent decided it stays down because a warm follower accepts writes (its history says so)."""
    records = json.loads(lab.standby(node, "history", "--json", "--limit", "500").stdout)
    # A decision of rule DR_SERVES, or the fence at start (the agent's start record holds its state, whose
    # dr_serves flag names the rule too: the words alone say nothing).
    return any(r.get("reason") == "dr_serves" or r.get("event") == "fenced_superseded" for r in records)
