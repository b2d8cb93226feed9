"""bench/benchlib.py: what the cost benchmarks compute from /proc and cgroup files (pure parts only).

The readings themselves come from a running lab (bench/replication.py, bench/followers.py --cost).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import benchlib
from benchlib import LinkBytes, ProcStat, ServerMark

# A postmaster whose command name holds a space and a parenthesis: the name must not shift the fields.
STAT = ("4242 (postgres: a (b) c) S 1 4242 4242 0 -1 4194560 900 8000 0 3 "
        "150 70 900 400 20 0 1 0 48134 3133440 389 18446744073709551615 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0")

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 4451879    3434    0    0    0     0          0         0  4451879    3434    0    0    0     0       0          0
  pub0:    1000      10    0    0    0     0          0         0     5000      20    0    0    0     0       0          0
 priv0: 200000    300    0    0    0     0          0         0   7000000    900    0    0    0     0       0          0
"""


def test_a_stat_line_is_read_after_the_last_parenthesis() -> None:
    assert benchlib.parse_proc_stat(STAT) == ProcStat(pid=4242, ppid=1, utime=150, stime=70, cutime=900, cstime=400)


def test_a_server_tree_counts_the_postmaster_what_it_reaped_and_its_live_children_only() -> None:
    stats = [
        ProcStat(10, 1, utime=5, stime=3, cutime=100, cstime=50),  # postmaster; 150 ticks of exited backends
        ProcStat(11, 10, utime=7, stime=2, cutime=0, cstime=0),  # a backend
        ProcStat(12, 10, utime=1, stime=1, cutime=4, cstime=0),  # the archiver, with a reaped archive_command
        ProcStat(20, 1, utime=999, stime=999, cutime=0, cstime=0),  # the softswitch beside it
        ProcStat(21, 11, utime=999, stime=0, cutime=0, cstime=0),  # not a child of the postmaster
    ]
    assert benchlib.tree_ticks(10, stats) == (5 + 3 + 100 + 50) + (7 + 2) + (1 + 1 + 4)
    assert benchlib.server_pids(10, stats) == [10, 11, 12]
    assert benchlib.tree_ticks(99, stats) is None


def test_cgroup_cpu_stat_and_net_dev_parse_to_counters() -> None:
    assert benchlib.parse_cpu_stat("usage_usec 177771\nuser_usec 177000\nsystem_usec 771\n")["usage_usec"] == 177771
    links = benchlib.parse_net_dev(NET_DEV)
    assert links == {"pub0": LinkBytes(1000, 5000), "priv0": LinkBytes(200000, 7000000)}  # loopback left out


def test_bytes_sent_count_only_links_present_in_both_readings() -> None:
    a = {"pub0": LinkBytes(0, 100), "priv0": LinkBytes(0, 1000)}
    b = {"pub0": LinkBytes(0, 150), "priv0": LinkBytes(0, 4000), "new0": LinkBytes(0, 10**9)}
    assert benchlib.tx_between(a, b) == 50 + 3000


def test_server_cpu_prefers_the_cgroup_and_drops_the_tree_across_a_restart() -> None:
    a, b = ServerMark(10, 1.0, 2.0, wall=100.0), ServerMark(10, 1.5, 2.75, wall=110.0)
    d = benchlib.server_cpu_between(a, b)
    assert d == {"source": "cgroup", "cpu_s": 0.75, "cgroup_s": 0.75, "tree_s": 0.5, "same_postmaster": True,
                 "wall_s": 10.0}
    restarted = benchlib.server_cpu_between(a, ServerMark(11, 0.1, 2.5, wall=110.0))
    assert restarted["tree_s"] is None and restarted["cpu_s"] == 0.5 and not restarted["same_postmaster"]
    no_cgroup = benchlib.server_cpu_between(ServerMark(10, 1.0, None, 0.0), ServerMark(10, 1.25, None, 1.0))
    assert no_cgroup["source"] == "tree" and no_cgroup["cpu_s"] == 0.25


@pytest.mark.parametrize(("total", "calls", "expected"), [(3.0, 1500, 0.002), (None, 10, None), (3.0, 0, None)])
def test_per_call(total: float | None, calls: int, expected: float | None) -> None:
    assert benchlib.per_call(total, calls) == expected


def test_ratio_is_unknown_without_a_base() -> None:
    assert benchlib.ratio(1.15, 1.0) == pytest.approx(1.15)
    assert benchlib.ratio(1.0, 0.0) is None and benchlib.ratio(None, 1.0) is None


def test_distribution_p99_is_an_observed_value() -> None:
    d = benchlib.distribution([float(v) for v in range(1, 201)])
    assert (d["p50"], d["p99"], d["max"]) == (100.0, 198.0, 200.0)


@pytest.mark.parametrize(("title", "kind"), [
    ("postgres: walsender replicator 198.51.100.12(40112) streaming 0/3000148", "walsender"),
    ("postgres: 15/lab-alpha: walsender replicator 198.51.100.12(40112) streaming 0/3000148", "walsender"),
    ("postgres: 15/lab-alpha: walwriter ", "walwriter"),
    ("postgres: background writer", "background_writer"),
    ("postgres: 15/main: autovacuum launcher", "autovacuum_launcher"),
    ("postgres: softswitch softswitch 192.0.2.11(50212) idle", "backend"),
    ("postgres: 15/main: walsender_fan checkpointer 192.0.2.11(1) idle", "backend"),  # a user named like one
    ("", "backend"),
])
def test_a_server_process_is_told_apart_by_its_title(title: str, kind: str) -> None:
    assert benchlib.process_kind(title) == kind


def test_cpu_by_process_charges_each_kind_its_own_ticks_and_exits_to_exited() -> None:
    a = ServerMark(10, None, None, 0.0, children={11: ("walsender", 100), 12: ("backend", 50), 13: ("backend", 30)},
                   own_ticks=5, reaped_ticks=1000)
    # 13 exited (30 ticks at mark a, 40 by its end: the postmaster reaped 40, of which 10 fall between the
    # marks); 14 started between them.
    b = ServerMark(10, None, None, 1.0, children={11: ("walsender", 160), 12: ("backend", 80), 14: ("backend", 20)},
                   own_ticks=6, reaped_ticks=1040)
    got = benchlib.cpu_by_process(a, b)
    tick = 1 / benchlib.CLK_TCK
    assert got == pytest.approx({"postmaster": 1 * tick, "walsender": 60 * tick, "backend": (30 + 20) * tick,
                                 "exited": 10 * tick})
    assert benchlib.cpu_by_process(a, ServerMark(99, None, None, 1.0)) is None  # a restart: nothing comparable
    # 12's pid taken by a new walsender: the backend's 50 ticks at mark a are not charged to "exited".
    c = ServerMark(10, None, None, 1.0, children={11: ("walsender", 100), 12: ("walsender", 5), 13: ("backend", 30)},
                   own_ticks=5, reaped_ticks=1060)
    assert benchlib.cpu_by_process(a, c) == pytest.approx({"postmaster": 0.0, "walsender": 5 * tick,
                                                           "backend": 0.0, "exited": 10 * tick})


def _phase(cpu_ms: float, wal: float, p50: float) -> dict[str, object]:
    return {"primary_cpu_ms_per_call": cpu_ms, "wal_bytes_per_call": wal, "commit_latency_ms": {"p50": p50}}


def test_a_standby_is_priced_against_both_phases_without_one() -> None:
    """The phases drift in the order they run (a growing table): the standby's ratio is taken against the mean
    of the phase before it and the one after, and against the first alone as before."""
    import replication

    cost = {"none": _phase(0.6, 1000, 2.0), "async": _phase(0.75, 1100, 2.2), "sync": _phase(0.84, 1100, 2.9),
            "none_after": _phase(0.8, 1000, 2.4)}
    g = replication.against_goal(cost)
    assert g["sync_cpu_per_call_ratio"] == pytest.approx(0.84 / 0.7)
    assert g["sync_cpu_per_call_ratio_to_first_none"] == pytest.approx(0.84 / 0.6)
    assert g["sync_latency_p50_added_ms"] == pytest.approx(0.7)
    assert g["async_wal_per_call_ratio"] == pytest.approx(1.1)
    del cost["none_after"]  # a run from before the last phase existed
    assert replication.against_goal(cost)["sync_cpu_per_call_ratio"] == pytest.approx(0.84 / 0.6)
    assert replication.against_goal(cost)["base"] == "none"
