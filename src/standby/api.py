"""The node's HTTP API, with the health semantics HAProxy users know.

GET /primary   200 on the writable node, 503 elsewhere
GET /replica   200 on a streaming standby (optional ?lag=BYTES bound), 503 elsewhere
GET /health    200 while PostgreSQL runs here
GET /status    this agent's view, as JSON
GET /metrics   Prometheus text
POST /maintenance {"suspend": true|false}   suspends automatic failover
POST /switchover/demote | /switchover/promote {"min_lsn", "timeout_s"} | /switchover/follow | /switchover/resume
POST /rejoin | /promote (a person's decision) | /fence
Every POST needs the API token (Authorization: Bearer ...); without it: 401 and nothing happens.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from standby import __version__, tls
from standby.agent.node import Agent, OpError
from standby.config import ConfigError, read_secret
from standby.model import DbState

log = logging.getLogger("standby.api")
AGENT_KEY = web.AppKey("agent", Agent)
MAX_PROMOTE_WAIT_S = 3600


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str))


def agent_view(a: Agent) -> dict[str, Any]:
    now = time.monotonic()
    s = a.state
    return {
        "node": a.node,
        "peer": a.peer,
        "cluster": a.cfg.cluster,
        "mode": a.cfg.mode.value,
        "durability": a.cfg.replication.durability.value,
        "standby_version": __version__,
        "suspended": a.suspended,
        "maintenance": a.maintenance_view(),  # who suspended, until when
        "postgres": {"state": "fenced" if s.fenced else a.pg.db.value, "lsn": a.pg.lsn, "streaming": a.pg.streaming,
                     "peer_sync": a.pg.peer_sync, "synchronous_standby_names": a.sync_names},
        "state": {"term": s.term, "fenced": s.fenced, "services": s.services, "degraded": s.degraded,
                  "eligible": s.eligible, "promoting": s.promoting, "sync_established": s.sync_established},
        "peer_heard_s_ago": {n.value: (None if t is None else round(now - t, 3)) for n, t in a.heard.items()},
        "peer_view": None if a.peer_view is None else {
            "term": a.peer_view.term, "db": a.peer_view.db.value, "services": a.peer_view.services,
            "sync_ok": a.peer_view.sync_ok, "reporting": a.peer_view.reporting},
        "carrier": {n.value: c for n, c in a.carrier.items()},
        "tiebreaker_ok": a._tiebreaker_ok(),
        "services_healthy": a.services_healthy,
        "heartbeats": {"accepted": a.receiver.accepted, "rejected": dict(a.receiver.rejected),
                       "sent": a.counters.sent, "send_errors": a.counters.send_errors},
        "recent": list(a.recent)[-10:],
        "reporting": _reporting_view(a),
    }


def _reporting_view(a: Agent) -> dict[str, Any] | None:
    if a.reporting_ip is None or a.cfg.reporting is None:
        return None
    d = a.reporting_decision
    return {"address": str(a.reporting_ip.address.ip), "held": bool(a.reporting_held),
            "fallback": a.cfg.reporting.fallback.value, "max_lag_bytes": a.cfg.reporting.max_lag_bytes,
            "reason": d.reason if d else None, "lag_bytes": d.lag_bytes if d else None,
            "episode": a.reporting_state.episode, "ack": a.reporting_state.ack}


async def primary(request: web.Request) -> web.Response:
    a = request.app[AGENT_KEY]
    ok = a.pg.db is DbState.PRIMARY and not a.state.fenced
    return _json(200 if ok else 503, {"role": "primary" if ok else a.pg.db.value, "node": a.node})


async def replica(request: web.Request) -> web.Response:
    a = request.app[AGENT_KEY]
    raw = request.query.get("lag")
    try:
        bound = None if raw is None else int(raw)
        if bound is not None and bound < 0:
            raise ValueError
    except ValueError:
        return _json(400, {"error": f"lag must be a whole number of bytes, got {raw!r}"})
    lag = None
    if a.peer_view is not None and a.peer_view.db is DbState.PRIMARY and a.peer_view.lsn is not None and a.pg.lsn is not None:
        lag = max(0, a.peer_view.lsn - a.pg.lsn)
    ok = a.pg.db is DbState.STANDBY and a.pg.streaming and (bound is None or (lag is not None and lag <= bound))
    return _json(200 if ok else 503, {"role": a.pg.db.value, "streaming": a.pg.streaming, "lag_bytes": lag, "node": a.node})


async def health(request: web.Request) -> web.Response:
    a = request.app[AGENT_KEY]
    ok = a.pg.db in (DbState.PRIMARY, DbState.STANDBY)
    return _json(200 if ok else 503, {"postgres": a.pg.db.value, "node": a.node})


async def status(request: web.Request) -> web.Response:
    return _json(200, agent_view(request.app[AGENT_KEY]))


class _Collector:
    """Reads the agent at scrape time, so metrics are never stale."""

    def __init__(self, a: Agent) -> None:
        self.a = a

    def collect(self) -> Any:
        a = self.a
        g = GaugeMetricFamily("standby_role", "1 for this node's current PostgreSQL state", labels=["state"])
        for st in ("primary", "standby", "down", "fenced"):
            cur = "fenced" if a.state.fenced else a.pg.db.value
            g.add_metric([st], 1.0 if cur == st else 0.0)
        yield g
        yield GaugeMetricFamily("standby_term", "current term", value=a.state.term)
        yield GaugeMetricFamily("standby_service_role", "1 if this node holds the service IPs", value=float(a.state.services))
        if a.reporting_ip is not None:
            yield GaugeMetricFamily("standby_reporting_ip", "1 if this node holds the reporting IP",
                                    value=float(bool(a.reporting_held)))
        yield GaugeMetricFamily("standby_degraded", "1 if commits do not wait for the standby", value=float(a.state.degraded))
        ages = GaugeMetricFamily("standby_peer_heard_seconds", "seconds since the peer was heard", labels=["network"])
        now = time.monotonic()
        for n, t in a.heard.items():
            ages.add_metric([n.value], float("inf") if t is None else now - t)
        yield ages
        rej = CounterMetricFamily("standby_heartbeats_rejected", "heartbeats refused, by reason", labels=["reason"])
        for k, v in a.receiver.rejected.items():
            rej.add_metric([k], v)
        yield rej
        yield CounterMetricFamily("standby_heartbeats_accepted", "valid heartbeats received", value=a.receiver.accepted)
        yield CounterMetricFamily("standby_decisions", "decision steps taken", value=a.counters.decisions)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")


REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


def _authorised(request: web.Request) -> bool:
    a = request.app[AGENT_KEY]
    if a.cfg.api.token_file is None:
        return False
    try:
        expected = read_secret(a.cfg.api.token_file, "api.token_file")
    except ConfigError as e:  # made readable by others (or removed) since start-up: refuse, say why here
        log.error("refusing API actions: %s", " ".join(str(e).split()))
        return False
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body ({} if none); ValueError for anything that is not JSON."""
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except RecursionError:  # deeply nested arrays: not a request anyone means
        raise ValueError("JSON nested too deeply") from None


async def maintenance(request: web.Request) -> web.Response:
    a = request.app[AGENT_KEY]
    if not _authorised(request):
        return _json(401, {"error": "a valid API token is required (Authorization: Bearer ...)"})
    try:
        body = await _json_body(request)
        suspend = body["suspend"]
        if not isinstance(suspend, bool):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _json(400, {"error": 'expected a JSON body {"suspend": true|false}'})
    a.set_maintenance(suspend)
    return _json(200, {"suspended": suspend})


def _op(fn_name: str) -> Any:
    """An operator request (Agent.operate) handled by the agent; its refusal is a 409 with the reason."""

    async def handler(request: web.Request) -> web.Response:
        a = request.app[AGENT_KEY]
        if not _authorised(request):
            return _json(401, {"error": "a valid API token is required (Authorization: Bearer ...)"})
        try:
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return _json(400, {"error": "expected a JSON object"})
        try:
            if fn_name == "promote":
                lsn, timeout = body.get("min_lsn"), body.get("timeout_s", 10)
                if (not isinstance(lsn, str) or not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                        or not 0 <= timeout <= MAX_PROMOTE_WAIT_S):  # also NaN, inf: a wait must end
                    return _json(400, {"error": f'expected {{"min_lsn": "X/Y", "timeout_s": 0 to {MAX_PROMOTE_WAIT_S} seconds}}'})
                result = await a.operate("promote", lsn, float(timeout))
            else:
                result = await a.operate(fn_name)
        except OpError as e:
            return _json(409, {"error": str(e)})
        except Exception as e:  # reported to the caller, and recorded
            a.event("operation_failed", operation=fn_name, error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            return _json(500, {"error": f"{fn_name} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"})
        return _json(200, result)

    return handler


def make_app(agent: Agent) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[AGENT_KEY] = agent
    registry = CollectorRegistry()
    registry.register(_Collector(agent))  # type: ignore[arg-type]
    app[REGISTRY_KEY] = registry
    app.router.add_get("/primary", primary)
    app.router.add_get("/replica", replica)
    app.router.add_get("/health", health)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/maintenance", maintenance)
    for path, fn in (("/switchover/demote", "demote"), ("/switchover/promote", "promote"),
                     ("/switchover/follow", "follow"), ("/switchover/resume", "resume"), ("/rejoin", "rejoin"),
                     ("/promote", "manual_promote"), ("/fence", "fence")):
        app.router.add_post(path, _op(fn))
    return app


async def serve(agent: Agent) -> web.AppRunner:
    runner = web.AppRunner(make_app(agent), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, str(agent.cfg.api.bind), agent.cfg.api.port, reuse_address=True,
                       ssl_context=tls.server_context(agent.cfg, agent.node))
    await site.start()
    return runner

