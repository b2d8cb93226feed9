"""The typed documents between parts: each round-trips through its codec and JSON, and input that
is not the document is refused with an error naming the document and the field."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from standby import apiclient
from standby import documents as d
from standby.api import ApiServer
from standby.config import Durability, Mode, ReportingFallback
from standby.model import DbState
from tests.unit.test_findings_surface import _AgentLoop, api  # noqa: F401 - api: a real agent's API on a free port

NOW = datetime(2026, 12, 1, 3, 0, 0, 125000, tzinfo=UTC)


def through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


def view(**changes: Any) -> d.AgentView:
    v = d.AgentView(
        node="alpha", peer="beta", cluster="c", mode=Mode.HOT, durability=Durability.SYNC, standby_version="0.1.0",
        suspended=True, maintenance=d.MaintenanceView("switchover", "2026-12-01T03:00:00Z", "2026-12-01T03:10:00Z", 590),
        postgres=d.PostgresView(DbState.PRIMARY, 1 << 33, False, True, "beta"),
        state=d.StateView(term=3, fenced=False, services=True, degraded=False, eligible=False, promoting=False,
                          sync_established=True),
        peer_heard_s_ago={"public": 0.1, "private": None},
        peer_view=d.PeerSummary(term=3, db=DbState.STANDBY, services=False, sync_ok=True, reporting=True),
        carrier={"public": True, "private": False}, tiebreaker_ok=None, services_healthy=True,
        heartbeats=d.HeartbeatCounts(accepted=7, rejected={"replay": 1}, sent={"public": 9}, send_errors={}),
        recent=[d.HistoryRecord(NOW, "alpha", "decision", {"action": "promote", "reason": "peer_dead"})],
        reporting=d.ReportingView("192.0.2.200", False, ReportingFallback.WITHDRAW, 1 << 20, "in bound", 10, 3, 0),
    )
    return replace(v, **changes)


def test_agent_view_round_trips_through_json() -> None:
    for v in (view(), view(maintenance=None, peer_view=None, reporting=None, recent=[])):
        assert d.AGENT_VIEW.decode(through_json(d.AGENT_VIEW.encode(v))) == v


def test_agent_view_keeps_the_wire_format_clients_read() -> None:
    # /status's JSON as the status page, `standby status`, the lab and scripts have always read it.
    doc = through_json(d.AGENT_VIEW.encode(view()))
    assert doc["postgres"]["state"] == "primary" and doc["state"]["term"] == 3
    assert doc["peer_view"]["db"] == "standby" and doc["mode"] == "hot" and doc["durability"] == "sync"
    assert doc["recent"] == [{"time": "2026-12-01T03:00:00.125+00:00", "node": "alpha", "event": "decision",
                              "action": "promote", "reason": "peer_dead"}]
    assert doc["maintenance"] == {"by": "switchover", "since": "2026-12-01T03:00:00Z", "until": "2026-12-01T03:10:00Z",
                                  "remaining_s": 590}
    assert doc["reporting"]["fallback"] == "withdraw"


@pytest.mark.parametrize(("path", "value", "field"), [
    (("postgres", "state"), "writable", "postgres.state"),
    (("state", "term"), "three", "state.term"),
    (("peer_view", "db"), 1, "peer_view.db"),
    (("recent",), [{"node": "alpha"}], "recent.0"),
])
def test_agent_view_refuses_a_bad_field_by_name(path: tuple[str, ...], value: Any, field: str) -> None:
    doc = through_json(d.AGENT_VIEW.encode(view()))
    inner = doc
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    with pytest.raises(d.DocumentError, match=rf"^agent status: .*{field}"):
        d.AGENT_VIEW.decode(doc)


@pytest.mark.parametrize("data", [None, [], "x", 3])
def test_a_document_must_be_an_object(data: object) -> None:
    with pytest.raises(d.DocumentError, match="agent status: expected a JSON object"):
        d.AGENT_VIEW.decode(data)


def test_agent_view_refuses_a_missing_part() -> None:
    doc = through_json(d.AGENT_VIEW.encode(view()))
    del doc["heartbeats"]
    with pytest.raises(d.DocumentError, match="heartbeats: Field required"):
        d.AGENT_VIEW.decode(doc)


def spool_view() -> d.SpoolView:
    return d.SpoolView(running=True, error=None, age_s=0.25, status=d.ShipperStatus(
        node="alpha", pid=41, updated_at=1.7e9, phase=d.ShipPhase.NO_PRIMARY, backlog_bytes=2048, backlog_files=1,
        shipped=5, duplicates=1, rejected=0, blank=2, rejects_file="/var/lib/standby/spool/rejected.jsonl",
        last_error="connection refused", problems=(d.ShipProblem.NO_PRIMARY,)))


def test_agent_view_carries_the_shippers_view() -> None:
    for sp in (spool_view(), d.SpoolView(running=False, error="no status", age_s=None, status=None)):
        v = view(spool=sp)
        assert d.AGENT_VIEW.decode(through_json(d.AGENT_VIEW.encode(v))) == v
        assert d.SPOOL_VIEW.decode(through_json(d.SPOOL_VIEW.encode(sp))) == sp
    doc = through_json(d.AGENT_VIEW.encode(view(spool=spool_view())))
    assert doc["spool"]["running"] and doc["spool"]["status"]["phase"] == "no_primary"
    assert doc["spool"]["status"]["problems"] == ["no_primary"] and doc["spool"]["status"]["backlog_bytes"] == 2048


def test_agent_view_from_an_agent_without_the_spool_decodes() -> None:
    # A peer not yet upgraded serves /status without "spool": `standby status` still reads it.
    doc = through_json(d.AGENT_VIEW.encode(view()))
    del doc["spool"]
    assert d.AGENT_VIEW.decode(doc).spool is None


@pytest.mark.parametrize(("path", "value", "field"), [
    (("status", "phase"), "flying", "spool.status.phase"),
    (("status", "problems"), ["bored"], "spool.status.problems.0"),
    (("status", "backlog_bytes"), "lots", "spool.status.backlog_bytes"),
    (("running",), None, "spool.running"),
])
def test_agent_view_refuses_a_bad_spool_field_by_name(path: tuple[str, ...], value: Any, field: str) -> None:
    doc = through_json(d.AGENT_VIEW.encode(view(spool=spool_view())))
    inner = doc["spool"]
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    with pytest.raises(d.DocumentError, match=rf"^agent status: .*{field}"):
        d.AGENT_VIEW.decode(doc)


# -- history -----------------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)


@given(event=st.text(min_size=1, max_size=12),
       detail=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("time", "node", "event")), json_values,
                              max_size=5))
def test_history_record_round_trips_flat(event: str, detail: dict[str, Any]) -> None:
    rec = d.HistoryRecord(NOW, "beta", event, detail)
    line = json.dumps(d.HISTORY.encode(rec))
    assert d.HISTORY.decode(json.loads(line)) == rec


def test_history_encoding_never_fails() -> None:
    enc = d.HISTORY.encode(d.HistoryRecord(NOW, "alpha", "x", {"node": "beta", "path": Path("/p"), "db": DbState.DOWN,
                                                              "pair": (1, 2)}))
    assert enc["node"] == "alpha" and enc["node_"] == "beta"  # the record's own field is never hidden
    assert enc["path"] == "/p" and enc["db"] == "down" and enc["pair"] == [1, 2]
    json.dumps(enc)


@pytest.mark.parametrize(("line", "field"), [
    ({"node": "a", "event": "e"}, "time"),
    ({"time": "yesterday", "node": "a", "event": "e"}, "time"),
    ({"time": "2026-12-01T03:00:00+00:00", "node": "a"}, "event"),
    ({"time": "2026-12-01T03:00:00+00:00", "node": 5, "event": "e"}, "node"),
])
def test_history_record_refuses_a_bad_line(line: dict[str, Any], field: str) -> None:
    with pytest.raises(d.DocumentError, match=rf"^history record: .*{field}"):
        d.HISTORY.decode(line)


# -- node facts and operation results ----------------------------------------------------------------

def test_node_facts_round_trip_and_refusal() -> None:
    facts = d.NodeFacts("alpha", "0.1.0", 15, "15.18", 2, 8 << 30, "a", NOW)
    assert d.NODE_FACTS.decode(through_json(d.NODE_FACTS.encode(facts))) == facts
    assert d.NODE_FACTS.decode({**d.NODE_FACTS.encode(facts), "updated_at": NOW}) == facts  # a database row
    with pytest.raises(d.DocumentError, match="node facts: pg_major"):
        d.NODE_FACTS.decode({**d.NODE_FACTS.encode(facts), "pg_major": "fifteen"})


def test_operation_results() -> None:
    assert d.DEMOTED.decode({"checkpoint_lsn": "0/3000028", "timeline": 1}) == d.Demoted("0/3000028", 1)
    assert d.PROMOTED.decode({"term": 4, "received_lsn": "0/3000100"}).problems == []
    rejoined = d.REJOINED.decode({"method": "rewind", "fork_lsn": "0/3000028", "old_timeline": 1, "salvage_report": None,
                                  "salvaged_rows": 0, "kept_aside": None, "steps": [["pg_rewind done", 1.5]]})
    assert rejoined.method is d.RejoinMethod.REWIND and rejoined.steps == [("pg_rewind done", 1.5)]
    with pytest.raises(d.DocumentError, match="rejoin result: method"):
        d.REJOINED.decode({**d.REJOINED.encode(rejoined), "method": "copy"})
    with pytest.raises(d.DocumentError, match="manual promotion result: term"):
        d.MANUALLY_PROMOTED.decode({"steps": []})


def test_every_operation_has_its_own_path() -> None:
    paths = [op.path for op in d.Operation]
    assert len(set(paths)) == len(paths) == len(d.Operation) and all(p.startswith("/") for p in paths)


def test_the_agents_status_is_a_view_the_client_reads(api: tuple[ApiServer, str, _AgentLoop]) -> None:  # noqa: F811
    server, _, _ = api
    server.agent.event("hello", n=1)
    got = apiclient.agent_status(server.agent.cfg, "alpha", timeout_s=5, via=("127.0.0.1",))
    assert got is not None and got.node == "alpha" and got.peer == "beta"
    assert got.recent[-1].event == "hello" and got.recent[-1].detail == {"n": 1}
    assert got.postgres.state is DbState.DOWN and got.peer_view is None
    server.agent.recent.append({"event": "not a record"})  # a view still comes, without it
    got = apiclient.agent_status(server.agent.cfg, "alpha", timeout_s=5, via=("127.0.0.1",))
    assert got is not None and got.recent[-1].event == "hello"


def test_pair_status_round_trips_and_refuses_a_bad_role() -> None:
    from standby import config
    from standby.status import IpHolders, Observations, assemble
    from tests.unit.test_status_rules import EXAMPLE, primary, standby

    doc = assemble(config.load(EXAMPLE), Observations("alpha", {"alpha": primary(), "beta": standby()},
                                                      (IpHolders("192.0.2.100", ("alpha",), True),)))
    wire = through_json(d.PAIR_STATUS.encode(doc))
    assert d.PAIR_STATUS.decode(wire) == doc
    assert wire["nodes"]["beta"]["postgres"]["sync_state"] == "sync" and wire["mode"] == "hot"
    wire["nodes"]["alpha"]["role"] = "leader"
    with pytest.raises(d.DocumentError, match=r"pair status: nodes\.alpha\.role"):
        d.PAIR_STATUS.decode(wire)


def test_lab_status_holders_clients_can_reach() -> None:
    def node(public: str, frozen: bool = False) -> d.LabNode:
        link = d.LabLink("192.0.2.11/24", "eth0", "p-alpha")
        return d.LabNode("lab-alpha", link, link, "/d", "/s", "/st", "/l", 5432, "", "", True, True,
                         {"public": public, "private": "up"}, frozen, {"public": 0, "private": 0})

    sip = d.LabFloatingIp("192.0.2.100/24", "eth0", ["alpha", "beta", "gamma"])
    st = d.LabStatus("lab", "/r", "/c", "sync", "hot", {}, d.LabSwitch("lab-sw", {}),
                     {"alpha": node("up"), "beta": node("down"), "gamma": node("up", frozen=True)},
                     d.LabClient("lab-client", "192.0.2.50/24", "eth0", {"public": "up"}, False), [sip], None,
                     "192.0.2.1", "192.0.2.1")
    assert st.reachable_holders(sip) == ["alpha"] and st.reachable_holders(None) == []
    assert d.LAB_STATUS.decode(through_json(d.LAB_STATUS.encode(st))) == st
