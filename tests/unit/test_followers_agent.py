"""Issue 12, the follower's agent: its loop around follow.decide_follower against fakes at the edges only
(its own server, the pair's views, the alert channel, the clocks); its /status read by the real client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from standby import apiclient, config
from standby.act.postgres import PostgresActionError
from standby.act.rejoin import RejoinResult
from standby.agent import follower as follower_mod
from standby.agent.follower import FollowerAgent
from standby.agent.followerapi import serving
from standby.agent.followerobs import parse_history
from standby.alerts import Alert, AlertKind
from standby.config import FollowerRole
from standby.documents import FollowerRejoinPhase, FollowerView, RejoinMethod
from standby.follow import FollowerActionKind, FollowerPg, FollowerReason, PairView
from standby.model import DbState, Lsn
from tests.unit.configs import example_with_secrets
from tests.unit.loopback import free_port
from tests.unit.test_followers_config import follower

MB = 1 << 20


@dataclass
class Clock:
    t: float = 1000.0
    wall0: float = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall0 + self.t


@dataclass
class FakeOwn:
    """The follower's server: a reload re-points its receiver at once; it has no way to promote."""

    pg: FollowerPg | None = field(default_factory=lambda: FollowerPg(running=True, timeline=1, received_lsn=5 * MB,
                                                                     replay_lsn=5 * MB))
    pointed: list[str] = field(default_factory=list)
    starts: int = 0
    # Rejoins: (target, the thread that ran it); each waits for ``go``, then ends as ``rejoin_ends`` says.
    rejoins: list[tuple[str, str]] = field(default_factory=list)
    go: threading.Event = field(default_factory=threading.Event)
    rejoin_ends: list[str] = field(default_factory=list)  # "rewind" or an error, one per rejoin

    def read(self) -> tuple[FollowerPg, float | None] | None:
        return None if self.pg is None else (self.pg, 0.25)

    def point_at(self, target: str) -> None:
        self.pointed.append(target)
        assert self.pg is not None
        self.pg = replace(self.pg, streaming=True, source=target)

    def start(self) -> None:
        self.starts += 1
        self.pg = FollowerPg(running=True, timeline=1, received_lsn=5 * MB, replay_lsn=5 * MB)

    def rejoin(self, target: str, confirm: Callable[[], None], report: Callable[[str], None]) -> RejoinResult:
        """As act.rejoin for a follower: stop the server, salvage, pg_rewind, stream from ``target`` on its timeline."""
        self.rejoins.append((target, threading.current_thread().name))
        assert self.go.wait(10)
        end = self.rejoin_ends.pop(0)
        confirm()
        self.pg = FollowerPg(running=False)
        report("the follower's server stopped")
        if end != "rewind":
            raise PostgresActionError(end)
        self.pg = FollowerPg(running=True, streaming=True, source=target, timeline=2, received_lsn=7 * MB,
                             replay_lsn=7 * MB)
        return RejoinResult(method=RejoinMethod.REWIND, fork_lsn="0/400000", old_timeline=1,
                            salvage_report=Path("/var/lib/standby/salvage/20261202T100000Z.json"), salvaged_rows=3)


@dataclass
class FakeViews:
    views: dict[str, PairView] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> tuple[dict[str, PairView], dict[str, float]]:
        return dict(self.views), dict(self.answered)


@dataclass
class FakeAlerts:
    raised: list[Alert] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)

    def notify(self, alert: object) -> None:
        assert isinstance(alert, Alert)
        self.raised.append(alert)

    def resolve(self, key: str, note: str = "") -> None:
        self.resolved.append(key)


def cfg_with(tmp_path: Path, upstream: str = "primary", port: int = 8008) -> config.Config:
    raw, _ = example_with_secrets(tmp_path, api_port=port)
    raw["followers"] = [follower("dr", 21, upstream=upstream)]
    return config.parse(raw)


@dataclass
class World:
    cfg: config.Config
    clock: Clock = field(default_factory=Clock)
    own: FakeOwn = field(default_factory=FakeOwn)
    views: FakeViews = field(default_factory=FakeViews)
    alerts: FakeAlerts = field(default_factory=FakeAlerts)

    def agent(self) -> FollowerAgent:
        return FollowerAgent(self.cfg, "dr", db=self.own, views=self.views, alerts=self.alerts,
                             clock=self.clock.monotonic, wall=self.clock.wall)

    def hear(self, node: str, term: int, db: DbState, timeline: int = 1, lsn: int = 6 * MB,
             history: tuple[tuple[int, int], ...] = (), streaming: bool = False) -> None:
        self.views.views[node] = PairView(term, db, timeline, lsn, self.clock.t, streaming, history)
        self.views.answered[node] = self.clock.t

    def wait(self, agent: FollowerAgent, seconds: float) -> None:
        """Steps every 0.2 s for ``seconds`` (one big gap would be this follower's own stall, not silence)."""
        for _ in range(round(seconds / 0.2)):
            self.step(agent)

    def step(self, agent: FollowerAgent, dt: float = 0.2) -> list[FollowerActionKind]:
        self.clock.t += dt
        acts = agent.step()
        agent.alert(acts)
        return [a.kind for a in acts]


def test_i12_the_follower_streams_from_the_primary_and_follows_a_failover_without_a_clone(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    agent = w.agent()
    w.hear("alpha", 3, DbState.PRIMARY)
    w.hear("beta", 3, DbState.STANDBY, streaming=True)
    w.step(agent)
    assert w.own.pointed == ["alpha"]
    w.step(agent)
    assert w.own.pointed == ["alpha"] and agent.view is not None
    v = agent.view
    assert (v.streaming_from, v.reason, v.loss_bytes, v.lag_bytes) == ("alpha", FollowerReason.STREAMING, MB, MB)
    # alpha's host crashes; beta promotes in term 4 onto timeline 2, forking after all the follower received.
    w.clock.t += 1.0
    w.hear("beta", 4, DbState.PRIMARY, timeline=2, lsn=7 * MB, history=((1, 6 * MB),))
    assert FollowerActionKind.POINT_AT in w.step(agent)
    assert w.own.pointed == ["alpha", "beta"] and w.own.starts == 0
    assert agent.view is not None and agent.view.primary == "beta" and agent.view.term == 4


def test_i12_a_follower_past_the_fork_is_not_pointed_at_the_new_primary(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    agent = w.agent()
    w.hear("alpha", 3, DbState.PRIMARY)
    w.step(agent)
    w.hear("beta", 4, DbState.PRIMARY, timeline=2, history=((1, 4 * MB),))  # it left timeline 1 before 5 MB
    assert FollowerActionKind.REJOIN in w.step(agent)
    assert w.own.pointed == ["alpha"] and agent.view is not None and agent.view.reason is FollowerReason.PAST_FORK
    assert agent.view.loss_bytes is None  # its WAL left the primary's line: the loss is unknown, not zero


def _past_the_fork(tmp_path: Path) -> tuple[World, FollowerAgent]:
    """gamma-like: streaming from alpha, it replayed up to 5 MB; beta took over in term 4 from 4 MB on."""
    w = World(cfg_with(tmp_path))
    agent = w.agent()
    w.hear("alpha", 3, DbState.PRIMARY)
    w.step(agent)
    w.hear("beta", 4, DbState.PRIMARY, timeline=2, history=((1, 4 * MB),))
    return w, agent


def _keep_hearing_beta(w: World) -> None:
    w.hear("beta", 4, DbState.PRIMARY, timeline=2, history=((1, 4 * MB),))


def _rejoin_ended(agent: FollowerAgent) -> None:
    thread = agent._rejoin_thread
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive()


def test_i12_a_follower_past_the_fork_is_rejoined_to_the_new_primary_off_the_loop_and_says_so(tmp_path: Path) -> None:
    w, agent = _past_the_fork(tmp_path)
    w.own.rejoin_ends = ["rewind"]
    assert FollowerActionKind.REJOIN in w.step(agent)
    # The rejoin runs on a thread of its own: the steps go on, and leave its stopped server to it.
    for _ in range(100):
        _keep_hearing_beta(w)
        assert w.step(agent, dt=1.0) == [FollowerActionKind.REPORT]
    assert [t for t, _ in w.own.rejoins] == ["beta"] and w.own.rejoins[0][1] != threading.current_thread().name
    assert w.own.starts == 0 and w.own.pointed == ["alpha"]
    v = agent.view
    assert v is not None and v.reason is FollowerReason.REJOINING and v.rejoin is not None
    assert (v.rejoin.phase, v.rejoin.source) == (FollowerRejoinPhase.RUNNING, "beta") and "past_fork" in v.rejoin.why
    _keep_hearing_beta(w)
    w.own.go.set()
    _rejoin_ended(agent)
    _keep_hearing_beta(w)
    w.step(agent)
    v = agent.view
    assert v is not None and v.rejoin is not None and v.reason is FollowerReason.STREAMING
    assert (v.streaming_from, v.timeline, v.rejoin.phase, v.rejoin.method) == (
        "beta", 2, FollowerRejoinPhase.DONE, RejoinMethod.REWIND)
    assert v.rejoin.salvage_report == "/var/lib/standby/salvage/20261202T100000Z.json" and v.rejoin.salvaged_rows == 3
    assert "the follower's server stopped" in v.rejoin.steps
    assert len(w.own.rejoins) == 1 and w.own.pointed == ["alpha"]


def test_i12_a_failed_rejoin_is_said_and_tried_again_once_per_backoff(tmp_path: Path) -> None:
    w, agent = _past_the_fork(tmp_path)
    w.own.rejoin_ends = ["pg_rewind: could not connect to beta", "rewind"]
    w.own.go.set()
    w.step(agent)
    _rejoin_ended(agent)
    _keep_hearing_beta(w)
    w.step(agent)  # its server stopped: started again, in recovery, still past the fork
    v = agent.view
    assert v is not None and v.rejoin is not None and v.rejoin.phase is FollowerRejoinPhase.FAILED
    assert v.rejoin.error is not None and "could not connect to beta" in v.rejoin.error
    backoff = agent.policy.rejoin_backoff_s
    for _ in range(round(backoff) - 2):
        _keep_hearing_beta(w)
        w.step(agent, dt=1.0)
    assert len(w.own.rejoins) == 1
    for _ in range(3):
        _keep_hearing_beta(w)
        w.step(agent, dt=1.0)
    _rejoin_ended(agent)
    assert [t for t, _ in w.own.rejoins] == ["beta", "beta"]


def test_i12_a_rejoin_to_a_node_no_longer_the_newest_terms_primary_is_refused(tmp_path: Path) -> None:
    w, agent = _past_the_fork(tmp_path)
    w.own.rejoin_ends = ["rewind"]
    w.step(agent)
    w.hear("alpha", 5, DbState.PRIMARY, timeline=3, history=((1, 3 * MB), (2, 8 * MB)))  # a newer term's primary
    w.own.go.set()
    _rejoin_ended(agent)
    w.step(agent)
    v = agent.view
    assert v is not None and v.rejoin is not None and v.rejoin.phase is FollowerRejoinPhase.FAILED
    assert v.rejoin.error is not None and v.rejoin.error.startswith("refused") and "term 5" in v.rejoin.error
    assert w.own.pg is not None and w.own.pg.running and w.own.pg.timeline == 1  # nothing was changed


def test_i12_a_stopped_follower_is_started_again_in_recovery(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    w.own.pg = FollowerPg(running=False)
    agent = w.agent()
    w.hear("alpha", 3, DbState.PRIMARY)
    assert FollowerActionKind.RESTART in w.step(agent)
    assert w.own.starts == 1 and w.own.pointed == []
    w.step(agent)
    assert w.own.pointed == ["alpha"]


def test_i12_a_server_that_does_not_answer_is_left_alone(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    w.own.pg = None
    agent = w.agent()
    w.hear("alpha", 3, DbState.PRIMARY)
    assert w.step(agent) == [] and w.own.starts == 0 and w.own.pointed == []


def test_i12_site_loss_alerts_once_and_a_restarted_agent_neither_alerts_again_nor_forgets_the_term(
        tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    agent = w.agent()
    w.hear("alpha", 5, DbState.PRIMARY)
    w.step(agent)
    quiet = agent.policy.site_loss_after_s
    w.wait(agent, quiet + 1)  # the whole pair silent
    (a,) = w.alerts.raised
    assert a.kind is AlertKind.PRIMARY_UNREACHABLE and a.node == "dr" and "never promotes" in a.what_was_done
    assert a.next_command == "standby promote --node dr"
    w.wait(agent, quiet)
    assert len(w.alerts.raised) == 1
    again = w.agent()  # a new process: the term and the alert's time come from its state file
    assert again.state.term == 5
    w.wait(again, quiet + 1)
    assert len(w.alerts.raised) == 1


def test_i12_the_site_heard_again_resolves_the_alert(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    agent = w.agent()
    w.hear("alpha", 5, DbState.PRIMARY)
    w.wait(agent, agent.policy.site_loss_after_s + 1)
    assert len(w.alerts.raised) == 1
    w.hear("alpha", 5, DbState.PRIMARY)
    w.step(agent)
    assert w.alerts.resolved == ["primary_unreachable@dr"]


def test_i12_the_term_never_goes_back_across_a_restart(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    agent = w.agent()
    w.hear("beta", 9, DbState.PRIMARY, timeline=3, history=((1, 9 * MB), (2, 9 * MB)))
    w.step(agent)
    w.views.views.clear()
    w.hear("alpha", 8, DbState.PRIMARY)  # an old primary not yet fenced, heard after a restart
    again = w.agent()
    w.step(again)
    assert again.state.term == 9 and w.own.pointed == ["beta"]


def test_i12_timeline_history_is_read_as_the_primary_writes_it() -> None:
    text = "1\t0/5000000\tno recovery target specified\n\n2\t1/A0\tbefore 2026-12-02\n"
    assert parse_history(text) == ((1, 0x5000000), (2, (1 << 32) + 0xA0))
    assert parse_history("") == ()


def _served_status(cfg: config.Config) -> tuple[FollowerAgent, object]:
    """A follower that heard alpha as primary, its API served, and its /status read by the real client."""
    w = World(cfg)
    agent = w.agent()
    w.hear("alpha", 3, DbState.PRIMARY)
    w.step(agent)

    async def go() -> object:
        async with serving(agent):
            return await asyncio.to_thread(apiclient.follower_status, cfg, "dr", 2.0, ("127.0.0.1",))

    return agent, asyncio.run(go())


def test_i12_the_followers_status_is_served_and_read_by_the_client(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path, port=free_port())
    agent, got = _served_status(cfg)
    assert got == agent.view and got is not None
    assert got.received_lsn == str(Lsn(5 * MB)) and got.primary == "alpha"


def test_i12_the_followers_status_is_served_over_tls_when_the_pair_speaks_tls(tmp_path: Path) -> None:
    """With [tls] every client asks https: a follower serving plain http read as "does not answer"
    to `standby status` and `standby promote` (found on the lab, which always runs with TLS)."""
    import getpass

    from standby.lab import tls as labtls

    tls_dir = tmp_path / "tls"
    labtls.make_ca(tls_dir, "unit")
    labtls.make_node_cert(tls_dir, "dr", ["127.0.0.1"], getpass.getuser())
    raw, _ = example_with_secrets(tmp_path, api_port=free_port())
    raw["followers"] = [follower("dr", 21)]
    raw["tls"] = {"ca_file": str(tls_dir / labtls.CA_CERT), "cert_file": str(labtls.cert_path(tls_dir, "{node}")),
                  "key_file": str(labtls.key_path(tls_dir, "{node}"))}
    agent, got = _served_status(config.parse(raw))
    assert got == agent.view and got is not None


def test_i12_standby_agent_with_a_followers_name_runs_the_follower_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from standby.cli.agent import agent_command

    ran: list[str] = []
    monkeypatch.setattr("standby.cli.agent._run_follower", lambda cfg, name, verbose: ran.append(name))
    path = tmp_path / "standby.toml"
    from tests.unit.test_followers_config import _toml

    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("dr", 21)]
    path.write_text(_toml(raw))
    res = CliRunner().invoke(agent_command, ["--config", str(path), "--node", "dr"])
    assert res.exit_code == 0, res.output
    assert ran == ["dr"]


def test_i12_the_follower_policy_follows_the_pairs_timings(tmp_path: Path) -> None:
    p = follower_mod.follower_policy(cfg_with(tmp_path, upstream="standby"), "dr")
    assert p.upstream == "standby" and p.alerts and p.fresh_s < p.site_loss_after_s


# -- `standby status`: the followers after the pair --------------------------------------------------


def _view(name: str, **kw: object) -> FollowerView:
    base = dict(node=name, cluster="softswitch", role=FollowerRole.WARM, upstream="standby", standby_version="0.1.0",
                running=True, in_recovery=True, streaming=True, streaming_from="beta", timeline=1,
                received_lsn="0/5000000", replay_lsn="0/4F00000", lag_bytes=MB, lag_seconds=0.5, loss_bytes=4096,
                term=3, primary="alpha", target="beta", reason=FollowerReason.STREAMING, site_silent_s=0.1,
                promoted=False)
    return FollowerView(**{**base, **kw})  # type: ignore[arg-type]


def test_i12_status_lists_the_followers_after_the_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from standby.cli.status import render
    from standby.documents import PAIR_STATUS
    from standby.status import IpHolders, Observations, assemble
    from tests.unit.test_status_rules import primary, standby

    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("dr", 21, upstream="standby"), follower("dr2", 22), follower("dr3", 23)]
    cfg = config.parse(raw)
    o = Observations("alpha", {"alpha": primary(), "beta": standby()}, (IpHolders("192.0.2.100", ("alpha",), True),),
                     followers={"dr": _view("dr"), "dr2": _view("dr2", streaming=False, streaming_from=None,
                                                                reason=FollowerReason.NO_PRIMARY, loss_bytes=None),
                                "dr3": None})
    doc = assemble(cfg, o)
    assert list(doc.followers) == ["dr", "dr2", "dr3"] and doc.followers["dr"] == _view("dr")
    assert PAIR_STATUS.decode(PAIR_STATUS.encode(doc)) == doc
    assert "follower dr2 is not streaming (no_primary); a promotion of it now would lose an unknown amount" \
        in doc.warnings
    assert "follower dr3's agent does not answer on its API" in doc.warnings
    assert not any("follower dr " in w or "follower dr'" in w for w in doc.warnings)
    render(doc)
    out = capsys.readouterr().out
    assert out.index("alpha") < out.index("followers") < out.index("dr2")
    row = next(line for line in out.splitlines() if "│ dr " in line)
    assert "warm" in row and "standby" in row and "beta" in row and "1.0 MiB" in row


def test_i12_status_says_where_a_rejoined_followers_salvage_is_and_that_a_failed_rejoin_is_tried_again(
        tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from standby.documents import FollowerRejoin
    from standby.status import IpHolders, Observations, assemble
    from tests.unit.test_status_rules import primary, standby

    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("dr", 21), follower("dr2", 22)]
    cfg = config.parse(raw)
    at = datetime(2026, 12, 2, 10, tzinfo=UTC)
    done = FollowerRejoin(FollowerRejoinPhase.DONE, "beta", "past_fork", at, at, RejoinMethod.REWIND,
                          "/var/lib/standby/salvage/x.json", 12)
    failed = FollowerRejoin(FollowerRejoinPhase.FAILED, "beta", "past_fork", at, at, error="failed: pg_rewind: boom")
    o = Observations("alpha", {"alpha": primary(), "beta": standby()}, (IpHolders("192.0.2.100", ("alpha",), True),),
                     followers={"dr": _view("dr", rejoin=done), "dr2": _view("dr2", rejoin=failed)})
    doc = assemble(cfg, o)
    assert ("follower dr was rejoined to beta: 12 rows only it had are in /var/lib/standby/salvage/x.json on its "
            "host (`standby salvage show --node dr`; apply them on the primary)") in doc.warnings
    assert "follower dr2's rejoin to beta did not complete (failed: pg_rewind: boom); it is tried again" in doc.warnings
    from standby.documents import PAIR_STATUS
    assert PAIR_STATUS.decode(PAIR_STATUS.encode(doc)) == doc


def test_i12_status_without_followers_has_no_follower_table(capsys: pytest.CaptureFixture[str]) -> None:
    from standby.cli.status import render
    from standby.status import IpHolders, Observations, assemble
    from tests.unit.test_status_rules import EXAMPLE, primary, standby

    doc = assemble(config.load(EXAMPLE), Observations("alpha", {"alpha": primary(), "beta": standby()},
                                                     (IpHolders("192.0.2.100", ("alpha",), True),)))
    assert doc.followers == {} and not any("follower" in w for w in doc.warnings)
    render(doc)
    assert "followers" not in capsys.readouterr().out


def test_i12_status_names_a_follower_of_another_postgresql_major(tmp_path: Path) -> None:
    from standby.status import IpHolders, Observations, assemble
    from tests.unit.test_status_rules import primary, standby

    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("dr", 21), follower("dr2", 22)]
    cfg = config.parse(raw)
    o = Observations("alpha", {"alpha": primary(), "beta": standby()}, (IpHolders("192.0.2.100", ("alpha",), True),),
                     followers={"dr": _view("dr", pg_version_num=160004), "dr2": _view("dr2", pg_version_num=150010)})
    problems = [w for w in assemble(cfg, o).warnings if "PostgreSQL" in w]
    assert problems == ["followers[0]: 'dr: PostgreSQL 16' differs from the pair's PostgreSQL 15; install 15 on dr"]


def test_i12_a_pair_agents_view_with_its_servers_timeline_is_what_the_follower_decides_on() -> None:
    from dataclasses import replace as dc_replace

    from standby import documents as d
    from standby.agent.followerobs import Upstream, pair_view
    from tests.unit.test_documents import view

    primary = view()  # alpha, primary in term 3, its agent's lsn 8 GiB
    up = Upstream(timeline=2, flush_lsn=(1 << 33) + 512, history=((1, 1 << 30),))
    pv = pair_view(primary, up, heard_at=42.0)
    assert (pv.term, pv.db, pv.timeline, pv.lsn, pv.history, pv.heard_at) == (
        3, DbState.PRIMARY, 2, (1 << 33) + 512, ((1, 1 << 30),), 42.0)
    # A standby's position is its agent's (received); a server that has not answered has no timeline yet.
    sb = dc_replace(primary, postgres=d.PostgresView(DbState.STANDBY, 1 << 32, True, False, None))
    pv = pair_view(sb, None, heard_at=43.0)
    assert (pv.db, pv.timeline, pv.lsn, pv.streaming, pv.history) == (DbState.STANDBY, 0, 1 << 32, True, ())


def test_i12_a_damaged_state_file_does_not_keep_the_follower_from_starting(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    path = w.cfg.state_dir_for("dr") / follower_mod.STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    agent = w.agent()
    w.hear("alpha", 4, DbState.PRIMARY)
    w.step(agent)
    assert agent.state.term == 4 and w.own.pointed == ["alpha"]


def test_i12_the_loop_outlives_a_failing_step_and_stops_when_asked(tmp_path: Path) -> None:
    w = World(cfg_with(tmp_path))
    reads: list[int] = []
    third = threading.Event()
    real_read = w.own.read

    def flaky() -> tuple[FollowerPg, float | None] | None:
        reads.append(1)
        if len(reads) == 1:
            raise RuntimeError("a bug in one step")
        if len(reads) >= 3:
            third.set()
        return real_read()

    w.own.read = flaky  # type: ignore[method-assign]
    agent = FollowerAgent(w.cfg, "dr", db=w.own, views=w.views, alerts=w.alerts)  # the real clocks
    w.views.views["alpha"] = PairView(3, DbState.PRIMARY, 1, 6 * MB, agent.clock())
    w.views.answered["alpha"] = agent.clock()

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(follower_mod.run(agent, stop))
        assert await asyncio.to_thread(third.wait, 10)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert w.own.pointed == ["alpha"] and agent.stopping.is_set()


def test_i12_a_followers_salvage_report_is_shown_from_its_state_directory_and_applied_on_the_primary(
        tmp_path: Path) -> None:
    from standby import salvage as sv
    from standby.cli.salvage import group
    from tests.unit.test_followers_config import _toml

    raw, _ = example_with_secrets(tmp_path)
    raw["followers"] = [follower("dr", 21)]
    path = tmp_path / "standby.toml"
    path.write_text(_toml(raw))
    cfg = config.load(path)
    report = sv.Report(cluster=cfg.cluster, node="dr", new_primary="beta", database="softswitch", old_timeline=1,
                       fork_lsn="0/4000000", created_at="2026-12-02T10:00:00Z", compared=False, transactions=[],
                       tables=[])
    saved = sv.save_report(report, sv.new_report_path(sv.reports_dir(cfg, "dr")))
    shown = CliRunner().invoke(group, ["show", "--config", str(path), "--node", "dr"])
    assert shown.exit_code == 0, shown.output
    assert str(saved) in shown.output and "old primary dr for new primary beta" in shown.output
    applied = CliRunner().invoke(group, ["apply", "--config", str(path), "--node", "dr", "--yes"])
    assert applied.exit_code != 0 and "copy" in applied.output and str(saved) in applied.output
