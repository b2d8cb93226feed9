"""A follower past the fork on the lab: an async pair with the warm follower gamma streaming from alpha. Beta's
replication from alpha is held back (its packets from alpha's PostgreSQL dropped in beta's namespace) while calls
commit on alpha and reach gamma; then alpha's host crashes and beta promotes. Gamma replayed WAL that no primary
has: its agent must rejoin it to beta (salvage, pg_rewind) so that it streams from beta on the new timeline, the
same data directory (no clone), the calls only it had in a salvage report in its state directory, applied by
nobody until a person applies it on the primary.

How long the rejoin took is printed, never asserted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from standby import apiclient
from standby.documents import FollowerRejoinPhase, FollowerView, RejoinMethod
from standby.lab import Lab, followers, netns
from standby.lab.pair import primaries, start_pair, under_load, verify
from standby.lab.topology import PG_PORT
from tests.lab.test_failover import settle

HOLD_TABLE = "hold_replication"


def _hold_beta_replication(lab: Lab, on: bool) -> None:
    """Drop what alpha's PostgreSQL sends to beta: beta's WAL receiver gets nothing more (nothing waits in its
    socket either), while the agents' heartbeats and gamma's stream go on."""
    ns = lab.netns("beta")
    script = [f"table inet {HOLD_TABLE} {{}}", f"delete table inet {HOLD_TABLE}"]
    if on:
        script += [f"table inet {HOLD_TABLE} {{", "  chain input {",
                   "    type filter hook input priority -20; policy accept;",
                   f"    ip saddr {lab.node('alpha').private.ip} tcp sport {PG_PORT} drop", "  }", "}"]
    netns.run_in(ns, ["nft", "-f", "-"], input="\n".join(script) + "\n")


def _gamma_view(lab: Lab) -> FollowerView | None:
    return netns.call_in(lab.netns("gamma"), apiclient.follower_status, lab.config(), "gamma", 2.0, None)


def _lsn(lab: Lab, node: str, query: str) -> int:
    with lab.pg_connect(node) as c:
        row = c.execute(f"SELECT ({query}) - '0/0'::pg_lsn").fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def test_i12_a_follower_past_the_fork_is_rewound_and_streams_from_the_new_primary_with_its_calls_salvaged(  # type: ignore[no-untyped-def]
        lab_factory, tmp_path: Path) -> None:
    lab = start_pair(lab_factory("async", followers=("gamma",)))
    before = followers.identity(lab, "gamma")
    with under_load(lab, tmp_path) as run:
        _hold_beta_replication(lab, True)
        try:
            time.sleep(3.0)  # calls commit on alpha; gamma receives and replays them, beta does not
            followers.wait_replayed(lab, "gamma", "alpha")
            beta_has = _lsn(lab, "beta", "pg_last_wal_receive_lsn()")
            lab.crash("alpha")
            t0 = time.monotonic()
            time.sleep(0.5)  # what alpha had sent is replayed; beta takes longer than this to promote
            only_gamma_saw = followers.call_ids(lab, "gamma")  # read before its agent stops it for the rejoin
            assert _lsn(lab, "gamma", "pg_last_wal_replay_lsn()") > beta_has, "gamma did not get past beta"
        finally:
            _hold_beta_replication(lab, False)
        settle(lab, db="beta", services="beta")
        timeline = followers.timeline(lab, "beta")
        assert timeline == 2
        followers.wait_streaming(lab, "gamma", "beta", timeline, timeout_s=240)
        took = time.monotonic() - t0
    assert primaries(lab) == ["beta"] and run.probe is not None and run.probe.dual == []
    # The same data directory: rewound, not cloned; still a follower (in recovery).
    assert followers.identity(lab, "gamma") == before, "gamma was cloned again"
    with lab.pg_connect("gamma") as g:
        assert g.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    # Its view says what was done, and where the rows only it had are.
    view = lab.wait_for("gamma's view of its rejoin", lambda: (v := _gamma_view(lab)) and v.rejoin
                        and v.rejoin.phase is FollowerRejoinPhase.DONE and v, timeout_s=30)
    assert view.rejoin.source == "beta" and view.rejoin.method is RejoinMethod.REWIND, view.rejoin
    assert view.rejoin.salvage_report is not None, view.rejoin
    report = Path(view.rejoin.salvage_report)
    assert report.parent == lab.config().state_dir_for("gamma") / "salvage"
    # gamma now has what beta has, and beta lacks the calls gamma alone had: nothing was applied.
    followers.wait_replayed(lab, "gamma", "beta")
    on_beta = followers.call_ids(lab, "beta")
    assert followers.call_ids(lab, "gamma") == on_beta
    lost = only_gamma_saw - on_beta
    assert lost, "the scenario should have given gamma calls beta never got"
    doc = json.loads(lab.standby("gamma", "salvage", "show", "--json", str(report)).stdout)
    assert doc["node"] == "gamma" and doc["new_primary"] == "beta" and doc["status"] == "pending"
    cdrs = next(t for t in doc["tables"] if t["name"] == "cdrs")
    salvaged = {r["values"]["call_id"] for r in cdrs["rows"]}
    # Not compared with beta (its server lets gamma stream, not read rows): a call the load retried on beta is in
    # it too, and applying skips it.
    assert lost <= salvaged <= only_gamma_saw
    # Applied by a person on the primary (the lab's hosts share one file system: no copy needed), every
    # acknowledged call is there again, once.
    applied = lab.standby("beta", "salvage", "apply", "--yes", str(report), check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    verdict = verify(lab, run, on="beta")
    assert verdict["missing_acked"] == [] and not verdict["duplicate_call_ids"], verdict
    print(f"\nalpha's host crashed with gamma {len(lost)} calls past beta: gamma rewound and streaming from beta on "
          f"timeline {timeline} {took:.2f}s after the crash; {len(salvaged)} calls in {report}; steps: "
          + "; ".join(view.rejoin.steps))
