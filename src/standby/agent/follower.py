"""A follower's agent (`standby agent --node NAME` for a ``[[followers]]`` name): the loop around
follow.decide_follower.

It owns: the follower's steps (its own server through followeract, the pair's views through
followerobs.Watcher, one decision, its actions), what it persists (the newest term, and the last
site-loss alert on the wall clock so a restart does not alert again at once), the site-loss alert
through the alert dispatcher, its view (``GET /status``: lag, what a DR promotion would lose now, and
its last rejoin), and the rejoin's thread: one at a time, started by a REJOIN action and left to run
for minutes while the steps go on (each tells the decision that it runs).
It may not: promote (no follower action does), vote or send heartbeats to the pair, act on the pair's
servers, or wait on the network inside a step (the Watcher's threads do the asking).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from standby import __version__
from standby.act.rejoin import RejoinRefused
from standby.agent.followeract import LocalFollowerDb, OwnServer
from standby.agent.followerip import OwnReportingIp
from standby.agent.followerobs import ANSWER_TIMEOUT_S, Watcher
from standby.alerts import AlertDispatcher, AlertKind, alert_key, make_alert
from standby.config import Config, FollowerRole, Reporting
from standby.documents import FollowerRejoin, FollowerRejoinPhase, FollowerView
from standby.follow import (
    FollowerAction,
    FollowerActionKind,
    FollowerObservation,
    FollowerPg,
    FollowerPolicy,
    FollowerState,
    PairView,
    decide_follower,
    fresh_lag,
    newest_term,
    serving_primary,
    site_silence,
)
from standby.model import Lsn
from standby.reporting import FollowerReportingInputs, FollowerReportingPolicy

log = logging.getLogger(__name__)
STATE_FILE = "follower-state.json"


class Views(Protocol):
    def snapshot(self) -> tuple[dict[str, PairView], dict[str, float]]: ...


class Alerts(Protocol):
    def notify(self, alert: object) -> None: ...
    def resolve(self, key: str, note: str = "") -> None: ...


def _lsn(v: int | None) -> str | None:
    return None if v is None else str(Lsn(v))


def step_interval_s(cfg: Config) -> float:
    return max(0.2, cfg.timings.heartbeat_interval_ms / 1000)


def follower_policy(cfg: Config, node: str) -> FollowerPolicy:
    """The follower's timings, from the pair's: it hears the pair as often as the pair hears itself."""
    f = cfg.follower(node)
    assert f is not None, node
    t, step = cfg.timings, step_interval_s(cfg)
    return FollowerPolicy(
        upstream=f.upstream,
        alerts=f.role is FollowerRole.WARM,
        fresh_s=max(2.0, 4 * step),  # a round of the Watcher may take its timeouts
        site_loss_after_s=max(10.0, 10 * t.failover_timeout_ms / 1000),  # well past any failover of the pair
        realert_after_s=3600.0,
        upstream_grace_s=t.link_timeout_ms / 1000,
        retry_s=5.0,
    )


def own_reporting_ip(cfg: Config, node: str, policy: FollowerPolicy) -> OwnReportingIp | None:
    """A reporting follower's own reporting IP, with the pair's bound ([reporting] max_lag_bytes); an unknown lag
    withdraws it after as long as a site loss takes to be called (a failover in the pair is far shorter)."""
    f = cfg.follower(node)
    if f is None or f.reporting_ip is None:
        return None
    bound = cfg.reporting.max_lag_bytes if cfg.reporting is not None else Reporting().max_lag_bytes
    return OwnReportingIp(f.reporting_ip, FollowerReportingPolicy(bound, policy.site_loss_after_s))


class FollowerAgent:
    def __init__(self, cfg: Config, node: str, db: OwnServer | None = None, views: Views | None = None,
                 alerts: Alerts | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg, self.node, self.clock, self.wall = cfg, node, clock, wall
        self.policy = follower_policy(cfg, node)
        self.db: OwnServer = db or LocalFollowerDb(cfg, node)
        self.stopping = threading.Event()
        self.watcher = views or Watcher(cfg, node, step_interval_s(cfg), clock)
        self.alerts = alerts or AlertDispatcher.from_config(cfg)
        self.state_path = cfg.state_dir_for(node) / STATE_FILE
        self.state = self._restore()
        self.last_step: float | None = None
        self.view: FollowerView | None = None
        self.alerted = False
        self._rejoin_thread: threading.Thread | None = None
        self.last_rejoin: FollowerRejoin | None = None  # the last one, for the view (its thread replaces it)
        self.own_ip = own_reporting_ip(cfg, node, self.policy)

    # -- persisted state -------------------------------------------------------------------------

    def _restore(self) -> FollowerState:
        now = self.clock()
        try:
            saved = json.loads(self.state_path.read_text())
            term, alert_wall = int(saved.get("term", 0)), saved.get("last_alert_wall")
        except FileNotFoundError:
            term, alert_wall = 0, None
        except (ValueError, TypeError, AttributeError, OSError) as e:  # damaged: the pair's views raise it again
            log.error("%s is unreadable (%s): starting from term 0", self.state_path, e)
            term, alert_wall = 0, None
        last_alert = -math.inf if alert_wall is None else now - max(0.0, self.wall() - float(alert_wall))
        return FollowerState(term=term, watching_since=now, last_alert_at=last_alert)

    def _save(self, s: FollowerState) -> None:
        alert_wall = None if s.last_alert_at == -math.inf else self.wall() - (self.clock() - s.last_alert_at)
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"term": s.term, "last_alert_wall": alert_wall}))
        os.replace(tmp, self.state_path)  # the term must never go back, even across a crash mid-write

    # -- one step --------------------------------------------------------------------------------

    def step(self) -> list[FollowerAction]:
        """Observe, decide, persist, act (blocking: run it off the event loop). Returns the actions."""
        now = self.clock()
        gap = 0.0 if self.last_step is None else now - self.last_step
        self.last_step = now
        read = self.db.read()
        if read is None:
            return []  # running but not answering (starting up, busy): nothing new is known
        pg, age = read
        pair, answered = self.watcher.snapshot()
        o = FollowerObservation(now=now, gap=gap, pg=pg, pair=pair, answered=answered, rejoining=self.rejoining)
        new, actions = decide_follower(self.state, o, self.policy)
        if (new.term, new.last_alert_at) != (self.state.term, self.state.last_alert_at):
            self._save(new)  # on disk before anything it allows
        self.state = new
        for a in actions:
            self._act(a)
        if self.own_ip is not None:
            self.own_ip.step(FollowerReportingInputs(pg.running, pg.in_recovery, fresh_lag(new, o, self.policy), now))
        report = next(a for a in actions if a.kind is FollowerActionKind.REPORT)
        self.view = self._view(o, pg, age, report)
        return actions

    def _act(self, a: FollowerAction) -> None:
        try:
            if a.kind is FollowerActionKind.POINT_AT and a.target is not None:
                log.warning("streaming from %s (%s: %s)", a.target, a.reason.value, a.detail)
                self.db.point_at(a.target)
            elif a.kind is FollowerActionKind.RESTART:
                log.warning("starting PostgreSQL in recovery (%s)", a.reason.value)
                self.db.start()
            elif a.kind is FollowerActionKind.REJOIN and a.target is not None:
                self._start_rejoin(a.target, f"{a.reason.value}: {a.detail}")
        except Exception as e:  # noqa: BLE001  (said; the next step decides again)
            log.error("%s for %s failed: %s", a.kind.value, a.target or self.node, e)

    # -- the rejoin, off the loop --------------------------------------------------------------------

    @property
    def rejoining(self) -> bool:
        return self._rejoin_thread is not None and self._rejoin_thread.is_alive()

    def _start_rejoin(self, target: str, why: str) -> None:
        if self.rejoining:
            return  # the decision never asks while one runs; one at a time even so
        log.warning("rejoining %s (salvage, rewind or clone, then stream): %s", target, why)
        self.last_rejoin = FollowerRejoin(FollowerRejoinPhase.RUNNING, target, why, datetime.now(UTC))
        self._rejoin_thread = threading.Thread(target=self._run_rejoin, args=(self.last_rejoin,),
                                               name=f"rejoin-{self.node}", daemon=True)
        self._rejoin_thread.start()

    def _run_rejoin(self, started: FollowerRejoin) -> None:
        steps: list[str] = []

        def report(step: str) -> None:
            steps.append(step)
            log.info("rejoin: %s", step)
            self.last_rejoin = replace(started, steps=list(steps))

        try:
            res = self.db.rejoin(started.source, lambda: self._confirm(started.source), report)
        except Exception as e:  # noqa: BLE001  (said in the view and the log; decided again after the backoff)
            why = "refused" if isinstance(e, RejoinRefused) else "failed"
            log.error("rejoin to %s %s: %s", started.source, why, e)
            self.last_rejoin = replace(started, phase=FollowerRejoinPhase.FAILED, finished_at=datetime.now(UTC),
                                       error=f"{why}: {e}", steps=steps)
            return
        done = replace(started, phase=FollowerRejoinPhase.DONE, finished_at=datetime.now(UTC), method=res.method,
                       salvage_report=str(res.salvage_report) if res.salvage_report else None,
                       salvaged_rows=res.salvaged_rows, kept_aside=str(res.kept_aside) if res.kept_aside else None,
                       steps=steps)
        self.last_rejoin = done
        log.warning("rejoined to %s by %s; %s", started.source, res.method.value,
                    f"the {res.salvaged_rows} rows only this follower had are in {done.salvage_report}: review them "
                    "with `standby salvage show`, apply them on the primary with `standby salvage apply`"
                    if done.salvage_report else "no row of this follower was missing on the primary")

    def _confirm(self, target: str) -> None:
        """The rejoin's target is still the primary of the newest term heard, as the pair says it now."""
        pair, answered = self.watcher.snapshot()
        o = FollowerObservation(now=self.clock(), gap=0.0, pg=FollowerPg(running=False), pair=pair, answered=answered)
        term = newest_term(self.state, o)
        primary = serving_primary(term, o, self.policy)
        if primary != target:
            raise RejoinRefused(f"{target} is not the primary of term {term} as the pair says it now "
                                f"({primary or 'no primary heard'}): its data is untouched")

    def _view(self, o: FollowerObservation, pg: FollowerPg, age: float | None, r: FollowerAction) -> FollowerView:
        f = self.cfg.follower(self.node)
        assert f is not None
        return FollowerView(
            node=self.node, cluster=self.cfg.cluster, role=f.role, upstream=f.upstream, standby_version=__version__,
            running=pg.running, in_recovery=pg.in_recovery, streaming=pg.streaming, streaming_from=pg.source,
            timeline=pg.timeline if pg.running else None, received_lsn=_lsn(pg.received_lsn),
            replay_lsn=_lsn(pg.replay_lsn), lag_bytes=r.lag_bytes, lag_seconds=age, loss_bytes=r.loss_bytes,
            term=self.state.term, primary=self.state.primary, target=self.state.target, reason=r.reason,
            site_silent_s=round(min(site_silence(self.state, o), 1e9), 3), promoted=self.state.promoted,
            pg_version_num=getattr(self.db, "version_num", None), rejoin=self.last_rejoin,
            reporting_ip=str(ip.sip.address) if (ip := self.own_ip) else None,
            reporting_ip_held=bool(ip and ip.on_host), reporting_ip_reason=ip.reason if ip else None)

    def alert(self, actions: list[FollowerAction]) -> None:
        """Site loss raised (and resolved once the pair is heard again): on the event loop's thread."""
        key = alert_key(AlertKind.PRIMARY_UNREACHABLE, self.node)
        for a in actions:
            if a.kind is FollowerActionKind.ALERT:
                self.alerts.notify(make_alert(
                    AlertKind.PRIMARY_UNREACHABLE, node=self.node, cluster=self.cfg.cluster,
                    summary=f"follower {self.node}: {a.detail}", next_command=f"standby promote --node {self.node}",
                    what_was_done="nothing: a follower never promotes itself", details={"term": self.state.term}))
                self.alerted = True
        heard = self.view is not None and self.view.site_silent_s < self.policy.fresh_s
        if self.alerted and heard:
            self.alerts.resolve(key, "a node of the hot pair is heard again")
            self.alerted = False


async def run(agent: FollowerAgent, stop: asyncio.Event) -> None:
    """The loop: a step every interval, off the event loop (its I/O blocks), alerts on it."""
    loop = asyncio.get_running_loop()
    dispatcher = agent.alerts if isinstance(agent.alerts, AlertDispatcher) else None
    if dispatcher is not None:
        await dispatcher.start()
    if isinstance(agent.watcher, Watcher):
        agent.watcher.start(agent.stopping)
    interval = step_interval_s(agent.cfg)
    try:
        while not stop.is_set():
            try:
                actions = await loop.run_in_executor(None, agent.step)
                agent.alert(actions)
            except Exception:  # a failed step is said; the next one observes and decides again
                log.exception("follower step")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass
    finally:
        agent.stopping.set()
        if isinstance(agent.watcher, Watcher):  # its threads close their kept connections as they end
            await loop.run_in_executor(None, agent.watcher.join, 3 * ANSWER_TIMEOUT_S)
        if dispatcher is not None:
            await dispatcher.stop()
