"""The cluster's shape (standby.topology): each bad input of issue 12 is a problem naming the key, the bad
value and the fix; the durability and slot plans follow from the topology."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from standby import config
from standby.topology import (
    Follower,
    FollowerRole,
    Problem,
    ProblemKind,
    Topology,
    cascade_loop,
    check,
    major,
    quorum_problems,
    SlotSeen,
    slot_name,
    slot_plan,
    slots_to_release,
    sync_plan,
    version_problems,
    wal_sender_problems,
    wal_senders_needed,
)

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"
PAIR = config.load(EXAMPLE).nodes  # alpha and beta


def follower(name: str, n: int, role: str = "warm", upstream: str = "primary", **extra: Any) -> Follower:
    """A follower with addresses of its own (203.0.113.(50+n), 198.51.100.(50+n))."""
    return Follower.model_validate({
        "name": name, "role": role, "upstream": upstream,
        "public": {"address": f"203.0.113.{50 + n}/24", "interface": "eth0"},
        "private": {"address": f"198.51.100.{50 + n}/24", "interface": "eth1"}, **extra})


def topo(*followers: Follower) -> Topology:
    return Topology(PAIR, list(followers))


def kinds(problems: list[Problem]) -> list[ProblemKind]:
    return [p.kind for p in problems]


def test_a_good_topology_has_no_problem() -> None:
    t = topo(follower("dr", 1), follower("reports", 2, "reporting", "standby",
                                         reporting_ip={"address": "203.0.113.80/24", "interface": "eth0"}),
             follower("reports2", 3, "reporting", "reports"))
    assert check(t) == []


def test_the_followers_table_parses_from_toml() -> None:
    text = """
    [[followers]]
    name = "dr"
    role = "warm"
    upstream = "standby"
    public = { address = "203.0.113.21/24", interface = "eth0" }
    private = { address = "10.9.0.21/24", interface = "eth1" }
    """
    (f,) = [Follower.model_validate(d) for d in tomllib.loads(text)["followers"]]
    assert f.role is FollowerRole.WARM and f.upstream == "standby" and f.reporting_ip is None


@pytest.mark.parametrize(("bad", "where"), [
    ({"role": "hot"}, "role"), ({"name": "dr 1"}, "name"), ({"name": ""}, "name"), ({"colour": "red"}, "colour"),
])
def test_a_malformed_follower_is_refused_by_its_key(bad: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as e:
        rest = dict(bad)
        follower(rest.pop("name", "dr"), 1, **rest)
    assert [err["loc"][0] for err in e.value.errors()] == [where]


def test_follower_named_as_the_hot_standby() -> None:
    (p,) = check(topo(follower("beta", 1)))
    assert p.kind is ProblemKind.NAME_OF_PAIR_NODE and p.key == "followers[0].name" and p.value == "beta"
    assert "nodes.beta" in p.fix and "name of its own" in p.fix
    assert str(p).startswith("followers[0].name: 'beta' is a node of the hot pair")


@pytest.mark.parametrize("name", ["primary", "standby"])
def test_follower_named_as_an_upstream_keyword(name: str) -> None:
    assert kinds(check(topo(follower(name, 1)))) == [ProblemKind.RESERVED_NAME]


def test_two_followers_with_the_same_name() -> None:
    (p,) = check(topo(follower("dr", 1), follower("dr", 2)))
    assert p.kind is ProblemKind.DUPLICATE_NAME and p.key == "followers[1].name" and "followers[0]" in p.fix


@pytest.mark.parametrize(("a", "b"), [("dr-1", "dr_1"), ("DR", "dr")])
def test_two_names_that_make_one_slot(a: str, b: str) -> None:
    (p,) = check(topo(follower(a, 1), follower(b, 2)))
    assert p.kind is ProblemKind.SLOT_CLASH and p.key == "followers[1].name" and slot_name(b) in p.fix


def test_a_follower_whose_slot_is_a_pair_nodes() -> None:
    (p,) = check(topo(follower("Alpha", 1)))
    assert p.kind is ProblemKind.SLOT_CLASH and "nodes.alpha" in p.fix


def test_two_followers_with_the_same_address() -> None:
    a = follower("dr", 1)
    b = follower("dr2", 2).model_copy(update={"private": a.private})
    (p,) = check(topo(a, b))
    assert p.kind is ProblemKind.DUPLICATE_ADDRESS and p.key == "followers[1].private.address"
    assert p.value == "198.51.100.51" and "followers[0].private.address" in p.fix


def test_a_follower_with_a_pair_nodes_address() -> None:
    f = follower("dr", 1).model_copy(update={"public": PAIR["alpha"].public})
    (p,) = check(topo(f))
    assert p.kind is ProblemKind.DUPLICATE_ADDRESS and "nodes.alpha.public.address" in p.fix


def test_a_reporting_ip_that_is_another_address() -> None:
    f = follower("reports", 1, "reporting", reporting_ip={"address": "203.0.113.51/24", "interface": "eth0"})
    (p,) = check(topo(f))
    assert p.kind is ProblemKind.DUPLICATE_ADDRESS and p.key == "followers[0].reporting_ip.address"


def test_a_reporting_ip_on_a_warm_follower() -> None:
    f = follower("dr", 1, reporting_ip={"address": "203.0.113.80/24", "interface": "eth0"})
    (p,) = check(topo(f))
    assert p.kind is ProblemKind.REPORTING_IP_ON_WARM and 'role = "reporting"' in p.fix


def test_an_unknown_upstream() -> None:
    (p,) = check(topo(follower("dr", 1, upstream="dr2")))
    assert p.kind is ProblemKind.UNKNOWN_UPSTREAM and p.key == "followers[0].upstream" and p.value == "dr2"


def test_an_upstream_naming_a_pair_node() -> None:
    (p,) = check(topo(follower("dr", 1, upstream="beta")))
    assert p.kind is ProblemKind.UPSTREAM_IS_PAIR_NODE and '"standby"' in p.fix


def test_a_cascade_loop_is_named_for_each_member() -> None:
    t = topo(follower("a1", 1, upstream="b1"), follower("b1", 2, upstream="c1"), follower("c1", 3, upstream="a1"),
             follower("d1", 4, upstream="a1"))
    problems = check(t)
    assert kinds(problems) == [ProblemKind.CASCADE_LOOP] * 3  # d1 streams from the loop but is not in it
    assert [p.key for p in problems] == [f"followers[{i}].upstream" for i in range(3)]
    assert "a1 -> b1 -> c1 -> a1" in problems[0].fix


def test_a_follower_streaming_from_itself_is_a_loop() -> None:
    assert kinds(check(topo(follower("dr", 1, upstream="dr")))) == [ProblemKind.CASCADE_LOOP]


names = st.sampled_from(["f0", "f1", "f2", "f3", "f4"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, st.sampled_from(["primary", "standby", "f0", "f1", "f2", "f3", "f4"])),
                min_size=1, max_size=5, unique_by=lambda x: x[0]))
def test_every_follower_reaches_the_pair_unless_a_loop_is_reported(edges: list[tuple[str, str]]) -> None:
    t = topo(*(follower(n, i, upstream=u) for i, (n, u) in enumerate(edges)))
    looped = {p.key for p in check(t) if p.kind is ProblemKind.CASCADE_LOOP}
    known = {n for n, _ in edges}
    for i, (n, _) in enumerate(edges):
        seen, cur = [n], n
        while (f := t.follower(cur)) is not None and f.upstream in known and f.upstream not in seen:
            seen.append(cur := f.upstream)
        f = t.follower(cur)
        in_loop = f is not None and f.upstream == n
        assert (f"followers[{i}].upstream" in looped) == in_loop == (cascade_loop(t, n) is not None)


# -- versions ---------------------------------------------------------------------------------------------


def test_major_versions() -> None:
    assert (major(150018), major(160002), major(90624)) == (15, 16, 906)


def test_a_follower_of_a_different_major_version() -> None:
    t = topo(follower("dr", 1), follower("reports", 2, "reporting"))
    (p,) = version_problems(t, {"alpha": 150018, "beta": 150007, "dr": 160002, "reports": 150018})
    assert p.kind is ProblemKind.MAJOR_VERSION and p.key == "followers[0]" and "install 15 on dr" in p.fix
    assert version_problems(t, {"dr": 160002}) == []  # the pair's version unknown: nothing to compare with


# -- durability and slots -----------------------------------------------------------------------------------


def test_sync_waits_for_the_hot_standby_only_by_default() -> None:
    t = topo(follower("dr", 1), follower("reports", 2, "reporting"))
    plan = sync_plan(t, "beta", sync=True)
    assert plan.value == '"beta"' and plan.members == ("beta",) and plan.hot_standby_has_every_commit
    assert "DR promotion can still lose" in plan.says
    assert sync_plan(t, "beta", sync=False).value == ""


def test_a_quorum_only_when_asked_and_it_says_what_it_costs() -> None:
    t = topo(follower("dr", 1), follower("dr2", 2, upstream="standby"), follower("reports", 3, "reporting"))
    plan = sync_plan(t, "beta", sync=True, quorum=1)
    # Reporting followers are never promoted and cascaded ones are invisible to the primary: neither counts.
    assert plan.value == 'ANY 1 ("beta", "dr")' and plan.waits_for == 1
    assert not plan.hot_standby_has_every_commit and "may lack a commit" in plan.says
    assert sync_plan(t, "beta", sync=True, quorum=2).hot_standby_has_every_commit


def test_a_quorum_larger_than_its_members_is_refused() -> None:
    t = topo(follower("dr", 1), follower("reports", 2, "reporting"))
    assert quorum_problems(t, 2) == []
    (p,) = quorum_problems(t, 3)
    assert p.kind is ProblemKind.QUORUM and p.key == "replication.quorum" and "1..2" in p.fix


def test_slots_for_every_node_that_may_stream_from_it() -> None:
    t = topo(follower("dr", 1, upstream="standby"), follower("dr-b", 2, upstream="dr"))
    assert slot_plan(t, "alpha").slots == ("standby_beta", "standby_dr", "standby_dr_b")
    assert slot_plan(t, "beta").slots == ("standby_alpha", "standby_dr", "standby_dr_b")
    assert slot_plan(t, "dr").slots == ("standby_dr_b",) and slot_plan(t, "dr").primary_slot_name == "standby_dr"
    assert slot_plan(t, "dr-b").slots == ()


# Finding "slot left behind": a follower slot a switchover left on the node that is no longer its
# follower's upstream pinned every WAL segment written since (up to max_slot_wal_keep_size, 8 GB by
# default), which a rewind from that node then copied, until PostgreSQL invalidated the slot and the
# follower, sent back there by the next switchover, could not stream through it.
SLOTS = topo(follower("dr", 1), follower("rep", 2, upstream="standby"), follower("dr-b", 3, upstream="dr"))


def _seen(name: str, active: bool = False, reserved: bool = True, lost: bool = False) -> SlotSeen:
    return SlotSeen(name, active, reserved, lost)


def test_slot_left_behind_the_standby_releases_the_slots_of_followers_streaming_from_the_primary() -> None:
    seen = [_seen("standby_dr"), _seen("standby_rep"), _seen("standby_dr_b"), _seen("standby_beta")]
    assert slots_to_release(SLOTS, "alpha", False, seen) == ("standby_dr",)


def test_slot_left_behind_the_primary_releases_the_slots_of_followers_cascading_from_the_standby() -> None:
    seen = [_seen("standby_dr"), _seen("standby_rep"), _seen("standby_dr_b"), _seen("standby_beta")]
    assert slots_to_release(SLOTS, "alpha", True, seen) == ("standby_rep",)


def test_slot_left_behind_never_a_slot_in_use_the_peers_or_an_unreserved_one() -> None:
    seen = [_seen("standby_dr", active=True), _seen("standby_beta", lost=True), _seen("standby_rep", reserved=False),
            _seen("standby_dr_b", active=True, lost=True), _seen("someone_elses")]
    assert slots_to_release(SLOTS, "alpha", False, seen) == ()
    assert slots_to_release(SLOTS, "alpha", True, seen) == ()


def test_slot_left_behind_an_invalidated_slot_is_made_again_in_either_role() -> None:
    """An invalidated slot refuses its follower ("can no longer get changes"), wherever the follower streams."""
    seen = [_seen("standby_dr", lost=True), _seen("standby_rep", lost=True, reserved=False)]
    assert slots_to_release(SLOTS, "alpha", True, seen) == ("standby_dr", "standby_rep")
    assert slots_to_release(SLOTS, "beta", False, seen) == ("standby_dr", "standby_rep")
    assert slots_to_release(SLOTS, "dr", True, [_seen("standby_dr_b", lost=True)]) == ("standby_dr_b",)
    assert slots_to_release(SLOTS, "dr", True, [_seen("standby_dr_b")]) == ()  # a follower: no role moves


@given(st.lists(st.tuples(st.sampled_from(["standby_dr", "standby_rep", "standby_dr_b", "standby_beta", "x"]),
                          st.booleans(), st.booleans(), st.booleans()), unique_by=lambda r: r[0]),
       st.sampled_from(["alpha", "beta", "dr", "dr-b"]), st.booleans())
def test_slot_left_behind_what_is_released_is_idle_and_belongs_to_a_follower_streaming_elsewhere(
        rows: list[tuple[str, bool, bool, bool]], node: str, primary: bool) -> None:
    seen = [SlotSeen(*r) for r in rows]
    for name in slots_to_release(SLOTS, node, primary, seen):
        rows_of = [s for s in seen if s.name == name]
        assert all(not s.active for s in rows_of)
        assert name in slot_plan(SLOTS, node).slots and name not in ("standby_alpha", "standby_beta")
        upstream = next(f.upstream for f in SLOTS.followers if slot_name(f.name) == name)
        elsewhere = node in SLOTS.pair and upstream == ("standby" if primary else "primary")
        assert elsewhere or any(s.lost for s in rows_of)


def test_kept_watch_connections_count_as_wal_senders() -> None:
    """Each follower's agent keeps a replication connection to each pair node between rounds: a WAL sender
    there beside the follower's own stream, on either node (roles move, cascades fall back)."""
    t = topo(follower("dr", 1, upstream="standby"), follower("dr-b", 2, upstream="dr"),
             follower("rep", 3, role="reporting"))
    assert wal_senders_needed(t, "alpha") == wal_senders_needed(t, "beta") == 1 + 2 * 3 + 1
    # A warm follower also answers each pair node's DR watch (decide.py rule 7: the primary and, since finding
    # DR-window, the hot standby keep a replication connection to it); a reporting one is never asked.
    assert wal_senders_needed(t, "dr") == 2 + 2 and wal_senders_needed(t, "dr-b") == 0 + 2
    assert wal_senders_needed(t, "rep") == 0
    assert wal_senders_needed(topo(), "alpha") == 2  # the peer and a clone: the key's minimum
    assert wal_sender_problems(t, 8) == []
    (p,) = wal_sender_problems(t, 7)
    assert p.kind is ProblemKind.WAL_SENDERS and p.key == "postgres.max_wal_senders" and p.value == "7"
    assert "at least 8" in p.fix


def test_slot_names_are_the_configurations() -> None:
    cfg = config.load(EXAMPLE)
    assert all(slot_name(n) == cfg.slot_name(n) for n in ("alpha", "beta", "dr-1", "DR_2"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["dr", "dr2", "DR", "alpha", "beta", "primary", "standby"]),
                          st.sampled_from(["primary", "standby", "dr", "dr2", "beta", "nowhere"]),
                          st.sampled_from(["warm", "reporting"]), st.integers(1, 3), st.booleans()),
                max_size=5))
def test_any_topology_gets_problems_that_name_key_value_and_fix(spec: list[tuple[str, str, str, int, bool]]) -> None:
    fs = [follower(name, n, role, up, **({"reporting_ip": {"address": "203.0.113.80/24", "interface": "eth0"}}
                                         if rip else {}))
          for name, up, role, n, rip in spec]
    problems = check(topo(*fs))
    for p in problems:
        assert p.key.startswith("followers[") and p.value and p.fix and str(p).startswith(f"{p.key}: ")
    names = [f.name for f in fs]
    clean = (len({slot_name(n) for n in names}) == len(names) and not {"alpha", "beta", "primary", "standby"} & set(names)
             and all(f.upstream in ("primary", "standby", *names) for f in fs)
             and all(cascade_loop(topo(*fs), f.name) is None for f in fs)
             and len({(f.public.ip, f.private.ip) for f in fs}) == len(fs)
             and sum(f.reporting_ip is not None for f in fs) <= 1
             and all(f.reporting_ip is None or f.role is FollowerRole.REPORTING for f in fs))
    assert (problems == []) == clean
