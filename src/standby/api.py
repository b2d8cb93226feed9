"""The node's HTTP API, with the health semantics HAProxy users know.

GET /primary   200 on the writable node, 503 elsewhere
GET /replica   200 on a streaming standby (optional ?lag=BYTES: at most BYTES left to replay), 503 elsewhere
               Both say 503 ("vouched": "paused") after a pause of the agent longer than the stall limit
               until a decision step has looked (standby.vouch), and /primary from the moment a fence is decided.
GET /health    200 while PostgreSQL runs here
GET /status    this agent's view, as JSON
GET /metrics   Prometheus text
GET /ui/       the status page, read-only (standby.web.routes)
POST /maintenance {"suspend": true|false}   suspends automatic failover
POST /switchover/demote | /switchover/promote {"min_lsn", "timeout_s"} | /switchover/follow | /switchover/resume
POST /rejoin | /rebuild {"source": FOLLOWER} | /promote (a person's decision) | /fence
Every POST needs the API token (Authorization: Bearer ...); without it: 401 and nothing happens.
Every answer carries Standby-Protocol: MAJOR.MINOR; a POST announcing another major gets 409 and
nothing happens (standby.protocol).
With api.token_for_status, GET /status and /metrics need it too.

The server runs in a thread of its own with its own event loop, so no client, however many or
slow, can delay the heartbeats or the decisions: it listens only on api.listen, turns away
connections beyond api.max_connections (loopback clients excepted), cuts off any connection that
has not delivered its request within api.request_timeout_s, and serves one request per
connection (standby.web.server). Handlers read the agent through copies made in one step under the interpreter lock;
operations run on the agent's own loop (`asyncio.run_coroutine_threadsafe`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from standby import __version__, protocol, tls, vouch
from standby.agent.node import Agent, OpError
from standby.config import Config, ConfigError, api_addresses, read_secret
from standby.documents import (
    AGENT_VIEW,
    HISTORY,
    MAINTENANCE_VIEW,
    AgentView,
    DocumentError,
    HeartbeatCounts,
    HistoryRecord,
    Operation,
    PeerSummary,
    PostgresView,
    ReportingView,
    StateView,
)
from standby.model import DbState
from standby.spool import state as spool_state
from standby.web import routes as web_routes
from standby.web.server import Handler, Limits, Request, Response, Routes, Server, json_response, listen, text_response

T = TypeVar("T")

log = logging.getLogger("standby.api")
MAX_PROMOTE_WAIT_S = 3600


def agent_view(a: Agent) -> AgentView:
    """This agent's view; may run in the API's thread while the agent's loop changes it."""
    for _ in range(3):
        try:
            return _agent_view(a)
        except RuntimeError:  # a container changed size while read: read again
            continue
    return _agent_view(a)


def _agent_view(a: Agent) -> AgentView:
    now = time.monotonic()
    s, pg, peer = a.state, a.pg, a.peer_view
    # dict()/list() copy in one step under the interpreter lock; the agent replaces its
    # state objects (frozen dataclasses) rather than changing them.
    heard, carrier, recent = dict(a.heard), dict(a.carrier), list(a.recent)
    rejected, sent, send_errors = dict(a.receiver.rejected), dict(a.counters.sent), dict(a.counters.send_errors)
    maintenance = a.maintenance_view()
    return AgentView(
        node=a.node,
        peer=a.peer,
        cluster=a.cfg.cluster,
        mode=a.cfg.mode,
        durability=a.cfg.replication.durability,
        standby_version=__version__,
        suspended=a.suspended,
        maintenance=None if maintenance is None else MAINTENANCE_VIEW.decode(maintenance),
        postgres=PostgresView(state=DbState.FENCED if s.fenced else pg.db, lsn=pg.lsn, streaming=pg.streaming,
                              peer_sync=pg.peer_sync, synchronous_standby_names=a.sync_names,
                              unanswered_s=round(a.observer.silent_now(), 1),
                              wal_stuck_s=round(a.observer.wal.stuck_s(), 1)),
        state=StateView(term=s.term, fenced=s.fenced, services=s.services, degraded=s.degraded,
                        eligible=s.eligible, promoting=s.promoting, sync_established=s.sync_established,
                        dr_serves=s.dr_serves, dr_writable_seen=s.dr_writable_seen),
        peer_heard_s_ago={n.value: (None if t is None else round(now - t, 3)) for n, t in heard.items()},
        peer_view=None if peer is None else PeerSummary(
            term=peer.term, db=peer.db, services=peer.services, sync_ok=peer.sync_ok, reporting=peer.reporting),
        carrier={n.value: c for n, c in carrier.items()},
        tiebreaker_ok=a._tiebreaker_ok(),
        services_healthy=a.services_healthy,
        heartbeats=HeartbeatCounts(accepted=a.receiver.accepted, rejected=rejected, sent=sent, send_errors=send_errors,
                                   protocol=protocol.MAJOR, peer_protocol=a.receiver.peer_protocol),
        recent=_records(recent[-10:]),
        reporting=_reporting_view(a),
        spool=spool_state.status_view(a.cfg, a.node),  # the shipper's backlog, from its status file
    )


def _records(entries: list[dict[str, Any]]) -> list[HistoryRecord]:
    """The agent's recent history entries as records; one that is not a record is left out, not the view."""
    out = []
    for e in entries:
        try:
            out.append(HISTORY.decode(e))
        except DocumentError as err:
            log.warning("a recent history entry is not a record: %s", err)
    return out


def _reporting_view(a: Agent) -> ReportingView | None:
    if a.reporting_ip is None or a.cfg.reporting is None:
        return None
    d = a.reporting_decision
    return ReportingView(address=str(a.reporting_ip.address.ip), held=bool(a.reporting_held),
                         fallback=a.cfg.reporting.fallback, max_lag_bytes=a.cfg.reporting.max_lag_bytes,
                         reason=d.reason if d else None, lag_bytes=d.lag_bytes if d else None,
                         episode=a.reporting_state.episode, ack=a.reporting_state.ack)


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
        for n, t in dict(a.heard).items():
            ages.add_metric([n.value], float("inf") if t is None else now - t)
        yield ages
        rej = CounterMetricFamily("standby_heartbeats_rejected", "heartbeats refused, by reason", labels=["reason"])
        for k, v in dict(a.receiver.rejected).items():
            rej.add_metric([k], v)
        yield rej
        yield CounterMetricFamily("standby_heartbeats_accepted", "valid heartbeats received", value=a.receiver.accepted)
        yield CounterMetricFamily("standby_decisions", "decision steps taken", value=a.counters.decisions)
        steps = sorted(a.step_times)
        if steps:
            q = GaugeMetricFamily("standby_decision_step_seconds",
                                  "a decision step's own duration over the last steps, by quantile", labels=["quantile"])
            for label, f in (("0.5", 0.5), ("0.99", 0.99), ("1", 1.0)):
                q.add_metric([label], steps[min(len(steps) - 1, int(f * len(steps)))])
            yield q
        yield from spool_state.metric_families(spool_state.status_view(a.cfg, a.node))


def _unauthorised() -> Response:
    return json_response({"error": "a valid API token is required (Authorization: Bearer ...)"}, 401)


def keeps_connection(cfg: Config, method: str, path: str, remote: str | None) -> bool:
    """Whether a request's connection stays open after its answer: only a follower's GET /status, asked from
    its private address every step interval (a connection and a TLS handshake per question cost this node
    more than the follower's WAL stream); its idle connection is cut off after api.request_timeout_s."""
    return method == "GET" and path == "/status" and remote in {str(f.private.ip) for f in cfg.followers}


class Api:
    """The routes of one agent's API and their handlers.

    It owns: turning requests into answers (health checks, views, metrics) and operations handed to the
    agent's loop. It may not: change the agent's state from this thread (operations run on the agent's
    loop), or wait on anything but that loop's answer.
    """

    def __init__(self, agent: Agent, agent_loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.agent, self.agent_loop = agent, agent_loop  # agent_loop None: the API shares it (tests)
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(agent))
        # The agent's own footprint (process_cpu_seconds_total, process_resident_memory_bytes, the interpreter's
        # collections): read from /proc and the gc module at scrape time only, nothing at rest.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.routes = Routes()
        r = self.routes
        r.get("/primary", self.primary)
        r.get("/replica", self.replica)
        r.get("/health", self.health)
        r.get("/status", self.status)
        r.get("/metrics", self.metrics)
        web_routes.install(r, agent, self.registry, self.may_read)  # the status page (/ui/) and its series
        r.post("/maintenance", self.maintenance)
        for op in Operation:
            r.post(op.path, self._op(op))

    async def checked(self, request: Request, route: Handler) -> Response:
        """Until the agent has restored its state, its view is a new agent's (term 0, not fenced): nothing is
        read from it and nothing is run on it. An operation asked in another protocol major could mean
        something else here: refused, not run."""
        a = self.agent
        if not a.started:
            return json_response({"error": f"{a.node}'s agent is starting: it has not restored its state yet",
                                  "node": a.node}, 503)
        if request.method == "POST":
            mismatch = protocol.check_header(request.headers.get(protocol.HEADER.lower()), "the client")
            if mismatch is not None:
                return json_response({"error": str(mismatch)}, 409)
        return await route(request)

    def keep(self, request: Request) -> bool:
        return keeps_connection(self.agent.cfg, request.method, request.path, request.remote)

    def server(self, limits: Limits) -> Server:
        """These routes served with ``limits`` and the pair's TLS; every answer says which protocol it speaks."""
        return Server(self.routes, limits, tls.server_context(self.agent.cfg, self.agent.node), wrap=self.checked,
                      headers=lambda: {protocol.HEADER: protocol.header_value()}, keep=self.keep)

    async def primary(self, request: Request) -> Response:
        a = self.agent
        looked = a.looked()  # read once: the agent's loop changes it meanwhile
        verdict = vouch.primary(looked, a.policy)
        ok = verdict is vouch.Verdict.PRIMARY
        role = DbState.FENCED if looked.fenced else looked.db
        return json_response({"role": role.value, "vouched": verdict.value, "node": a.node}, 200 if ok else 503)

    async def replica(self, request: Request) -> Response:
        a = self.agent
        raw = request.query.get("lag")
        try:
            bound = None if raw is None else int(raw)
            if bound is not None and bound < 0:
                raise ValueError
        except ValueError:
            return json_response({"error": f"lag must be a whole number of bytes, got {raw!r}"}, 400)
        # Replayed, not received: a read sees only what was applied (replay paused or held up by a conflict
        # leaves a standby that received everything serving old rows), as the reporting IP's bound counts it.
        # The body's role is the verdict's (one read); the lag is from a read after it, so no older than it.
        looked, peer = a.looked(), a.peer_view
        lag, applied = None, a.pg.replay_lsn
        if peer is not None and peer.db is DbState.PRIMARY and peer.lsn is not None and applied is not None:
            lag = max(0, peer.lsn - applied)
        verdict = vouch.replica(looked, a.policy)
        ok = verdict is vouch.Verdict.STANDBY and (bound is None or (lag is not None and lag <= bound))
        return json_response({"role": looked.db.value, "streaming": looked.streaming, "lag_bytes": lag,
                              "vouched": verdict.value, "node": a.node}, 200 if ok else 503)

    async def health(self, request: Request) -> Response:
        a = self.agent
        ok = a.pg.db in (DbState.PRIMARY, DbState.STANDBY)
        return json_response({"postgres": a.pg.db.value, "node": a.node}, 200 if ok else 503)

    async def status(self, request: Request) -> Response:
        if not self.may_read(request):
            return _unauthorised()
        return json_response(AGENT_VIEW.encode(agent_view(self.agent)))

    async def metrics(self, request: Request) -> Response:
        if not self.may_read(request):
            return _unauthorised()
        return text_response(generate_latest(self.registry), "text/plain")

    def authorised(self, request: Request) -> bool:
        a = self.agent
        if a.cfg.api.token_file is None:
            return False
        try:
            expected = read_secret(a.cfg.api.token_file, "api.token_file")
        except ConfigError as e:  # made readable by others (or removed) since start-up: refuse, say why here
            log.error("refusing API actions: %s", " ".join(str(e).split()))
            return False
        given = request.header("Authorization").removeprefix("Bearer ").strip()
        return bool(given) and hmac.compare_digest(given.encode(), expected.encode())

    def may_read(self, request: Request) -> bool:
        """/status and /metrics: open, unless api.token_for_status."""
        return not self.agent.cfg.api.token_for_status or self.authorised(request)

    async def _on_agent(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Await ``fn(*args)`` on the agent's loop: its state is that loop's alone."""
        loop = self.agent_loop
        if loop is None or loop is asyncio.get_running_loop():
            return await fn(*args)
        # Shielded: a client hanging up must not cut an operation in half.
        return await asyncio.shield(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(*args), loop)))

    async def maintenance(self, request: Request) -> Response:
        a = self.agent
        if not self.authorised(request):
            return _unauthorised()
        try:
            suspend = request.json()["suspend"]
            if not isinstance(suspend, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return json_response({"error": 'expected a JSON body {"suspend": true|false}'}, 400)

        async def apply() -> None:
            await a.set_maintenance(suspend)

        await self._on_agent(apply)
        return json_response({"suspended": suspend})

    def _op(self, op: Operation) -> Handler:
        """An operator request (Agent.operate) handled by the agent; its refusal is a 409 with the reason."""

        async def handler(request: Request) -> Response:
            a = self.agent
            if not self.authorised(request):
                return _unauthorised()
            try:
                body = request.json()
                if not isinstance(body, dict):
                    raise ValueError
            except ValueError:
                return json_response({"error": "expected a JSON object"}, 400)
            try:
                if op is Operation.PROMOTE:
                    lsn, timeout = body.get("min_lsn"), body.get("timeout_s", 10)
                    if (not isinstance(lsn, str) or not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                            or not 0 <= timeout <= MAX_PROMOTE_WAIT_S):  # also NaN, inf: a wait must end
                        return json_response(
                            {"error": f'expected {{"min_lsn": "X/Y", "timeout_s": 0 to {MAX_PROMOTE_WAIT_S} seconds}}'},
                            400)
                    result = await self._on_agent(a.operate, op.value, lsn, float(timeout))
                elif op is Operation.REBUILD:
                    source = body.get("source")
                    if not isinstance(source, str) or not source:
                        return json_response({"error": 'expected {"source": "<the promoted follower\'s name>"}'}, 400)
                    result = await self._on_agent(a.operate, op.value, source)
                else:
                    result = await self._on_agent(a.operate, op.value)
            except OpError as e:
                return json_response({"error": str(e)}, 409)
            except Exception as e:  # noqa: BLE001 - a failed operation is reported and recorded; the API serves on
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                a.event("operation_failed", operation=op.value, error=why)
                return json_response({"error": f"{op.value} failed: {why}"}, 500)
            return json_response(result)

        return handler


class ApiServer:
    """The API in a thread of its own, with its own event loop and its own limits (web.server.Server)."""

    def __init__(self, agent: Agent, agent_loop: asyncio.AbstractEventLoop | None,
                 addresses: tuple[str, ...] | None = None) -> None:
        """``addresses``: where to listen, api.listen's by default."""
        self.agent, self.agent_loop = agent, agent_loop
        self.cfg = agent.cfg.api
        self.addresses = addresses
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve; raises what prevented it (an address in use, say)."""
        # Started from the agent's thread, it would inherit a real-time priority; a new thread
        # starts at normal scheduling (SCHED_RESET_ON_FORK), below the agent: what we want.
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the API did not start in time")
        if self._error is not None:
            raise self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - handed to start() if it happens there; logged otherwise
            if not self._ready.is_set():
                self._error = e
                self._ready.set()
            else:
                log.error("the API stopped: %s", e)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.server = Api(self.agent, self.agent_loop).server(Limits(self.cfg.max_connections, self.cfg.request_timeout_s))
        socks: list[socket.socket] = []
        try:
            for address in self.addresses or [str(a) for a in api_addresses(self.agent.cfg, self.agent.node)]:
                socks.append(_listen(address, self.cfg.port))
            await self.server.run(socks, self._stop, ready=self._ready.set)
        finally:
            for s in socks:
                s.close()


def _listen(address: str, port: int) -> socket.socket:
    try:
        return listen(address, port)
    except OSError as e:
        raise ConfigError([f"api.listen: cannot listen on {address}:{port} ({e.strerror}); free the port "
                           "(api.port) or remove that address from api.listen"]) from None
