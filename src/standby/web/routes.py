"""The status page's routes on the agent's API, and what keeps them cheap.

GET /ui/                 the page (static, from this package: no build step, nothing from elsewhere)
GET /ui/{app.js,style.css}
GET /ui/node.json        this node: its view, its newest history entries
GET /ui/pair.json        this node, the lag samples, and the peer's node.json as last fetched

The agent proxies the peer rather than the browser fetching it: the browser may reach only the node it
was pointed at (the peer's API is on the private network), the pair's TLS CA is not one the browser
trusts, and the token is asked for once. The peer is fetched in the background (only while someone
watches), one request at a time with a short timeout; a request for the page only reads the last result,
so an unreachable or slow peer never holds the page up, and nothing here runs on the agent's own loop.
/ui/node.json and /ui/pair.json need what /status needs (the token with api.token_for_status).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from standby import tls
from standby.apiclient import open_direct
from standby.config import ConfigError, read_secret, token_may_travel
from standby.observe import postgres as pgobs
from standby.web.metrics import PairCollector
from standby.web.pair import Sampler, history_tail
from standby.web.server import Request, Response, Routes, json_response
from standby.web.view import node_view, positions

if TYPE_CHECKING:
    from standby.agent.node import Agent

log = logging.getLogger("standby.web")

WATCH_S = 30.0  # after the last page request, the background work goes on this long
PEER_TIMEOUT_S = 1.5  # one attempt at the peer, per address
PEER_STALE_S = 3.0  # a peer not fetched for this long is shown unreachable
PG_EVERY_S = 3.0  # timeline and replication rows: read from PostgreSQL this often while watched
HISTORY_LIMIT = 150
CACHE_S = 0.5  # a JSON body serves every request this long
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
# The page runs only its own script and talks only to the node that served it.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:"


@dataclass
class PeerCache:
    view: dict[str, Any] | None = None
    fetched_at: float | None = None  # monotonic, last success
    tried_at: float | None = None  # monotonic, the end of the last attempt (success or not)
    error: str | None = None
    via: str | None = None


@dataclass
class Page:
    agent: Agent
    sampler: Sampler = field(default_factory=Sampler)
    peer: PeerCache = field(default_factory=PeerCache)
    watched_until: float = 0.0  # monotonic: node.json or pair.json asked for recently
    pair_watched_until: float = 0.0  # pair.json: the peer is fetched too
    pg_detail: dict[str, Any] | None = None
    pg_read_at: float = -1e9
    history: list[dict[str, Any]] = field(default_factory=list)
    history_read_at: float = -1e9
    files: dict[str, bytes] = field(default_factory=dict)
    bodies: dict[str, tuple[float, bytes]] = field(default_factory=dict)  # monotonic time built, JSON


def install(routes: Routes, agent: Agent, registry: CollectorRegistry, may_read: Callable[[Request], bool]) -> Page:
    page = Page(agent)
    base = resources.files("standby.web") / "static"
    page.files = {name: (base / name).read_bytes() for name in STATIC}
    registry.register(PairCollector(agent))

    async def index_redirect(request: Request) -> Response:
        return Response(302, b"", "text/plain", {"Location": "/ui/"})

    def static(name: str) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:
            return Response(200, page.files[name], f"{STATIC[name]}; charset=utf-8",
                            {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Cache-Control": "no-cache"})
        return serve

    async def node_json(request: Request) -> Response:
        if not may_read(request):
            return _unauthorised()
        page.watched_until = time.monotonic() + WATCH_S
        return await _cached(page, "node", lambda: {**node_view(agent, page.pg_detail), "history": page.history})

    async def pair_json(request: Request) -> Response:
        if not may_read(request):
            return _unauthorised()
        page.watched_until = page.pair_watched_until = time.monotonic() + WATCH_S
        return await _cached(page, "pair", lambda: _pair_doc(page))

    routes.get("/ui", index_redirect)
    routes.get("/ui/", static("index.html"))
    for name in STATIC:
        routes.get(f"/ui/{name}", static(name))
    routes.get("/ui/node.json", node_json)
    routes.get("/ui/pair.json", pair_json)
    routes.background.append(lambda: _run(page))
    return page


def _pair_doc(page: Page) -> dict[str, Any]:
    now = time.monotonic()
    p = page.peer
    reachable = None if p.tried_at is None else (p.fetched_at is not None and now - p.fetched_at <= PEER_STALE_S)
    return {
        "here": {**node_view(page.agent, page.pg_detail), "history": page.history},
        "peer": {"name": page.agent.peer, "reachable": reachable, "error": p.error, "via": p.via,
                 "age_s": None if p.fetched_at is None else round(now - p.fetched_at, 1), "view": p.view},
        "samples": [asdict(s) for s in page.sampler.samples],
    }


async def _cached(page: Page, key: str, build: Callable[[], dict[str, Any]]) -> Response:
    """The same body for every request within CACHE_S: many clients cost one build, not one each."""
    now = time.monotonic()
    hit = page.bodies.get(key)
    if hit is None or now - hit[0] >= CACHE_S:
        await _refresh_history(page)
        hit = (now, json.dumps(build(), default=str).encode())
        page.bodies[key] = hit
    return Response(200, hit[1], "application/json", {"Cache-Control": "no-store"})


def _unauthorised() -> Response:
    return json_response({"error": "a valid API token is required (Authorization: Bearer ...)"}, 401,
                         {"Cache-Control": "no-store"})


async def _refresh_history(page: Page) -> None:
    """The history file's tail, read at most once a second whoever asks (off the API's loop)."""
    now = time.monotonic()
    if now - page.history_read_at < 1.0:
        return
    page.history_read_at = now
    path = page.agent.store.history_path
    page.history = await asyncio.get_running_loop().run_in_executor(None, history_tail, path, HISTORY_LIMIT)


async def _run(page: Page) -> None:
    """Once a second: a lag sample (no I/O); while watched, PostgreSQL's details and the peer's view,
    each in a task of its own so a slow one skips beats rather than delaying the samples."""
    pg_task: asyncio.Future[None] | None = None
    peer_task: asyncio.Task[None] | None = None
    try:
        while True:
            now = time.monotonic()
            try:
                _sample(page)
            except Exception as e:  # noqa: BLE001 - a sample read while the agent changes must not end the graph
                log.debug("lag sample skipped: %s", e)
            if now < page.watched_until and (pg_task is None or pg_task.done()) and now - page.pg_read_at >= PG_EVERY_S:
                page.pg_read_at = now
                pg_task = asyncio.ensure_future(_read_pg(page))
            if now < page.pair_watched_until and (peer_task is None or peer_task.done()):
                peer_task = asyncio.create_task(_fetch_peer(page))
            await asyncio.sleep(1.0)
    finally:
        for t in (pg_task, peer_task):
            if t is not None:
                t.cancel()


def _sample(page: Page) -> None:
    primary_lsn, standby_lsn = positions(page.agent)
    lag = None if primary_lsn is None or standby_lsn is None else max(0, primary_lsn - standby_lsn)
    page.sampler.add(time.time(), primary_lsn, standby_lsn, lag)


async def _read_pg(page: Page) -> None:
    """Timeline, positions and replication rows from this node's PostgreSQL, in a thread of this loop."""
    a = page.agent
    try:
        o = await asyncio.get_running_loop().run_in_executor(None, pgobs.observe_local, a.cfg, a.node)
    except Exception as e:  # noqa: BLE001 - the page shows what it has; the agent's own reads are elsewhere
        page.pg_detail = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        return
    page.pg_detail = {
        "read_at": o.observed_at.timestamp(), "timeline": o.timeline, "error": o.error,
        "current_lsn": _s(o.current_lsn), "receive_lsn": _s(o.receive_lsn), "replay_lsn": _s(o.replay_lsn),
        "receiver_status": o.receiver_status,
        "replicas": [{"name": r.application_name, "state": r.state, "sync_state": r.sync_state.value,
                      "flush_lsn": _s(r.flush_lsn), "replay_lsn": _s(r.replay_lsn), "replay_lag_s": r.replay_lag_s}
                     for r in o.replicas],
    }


def _s(x: object) -> str | None:
    return None if x is None else str(x)


def _get_json(url: str, headers: dict[str, str], context: Any) -> tuple[int, Any]:
    """(status, JSON body) of one GET, blocking (run in a thread); OSError and ValueError as they come."""
    try:
        with open_direct(urllib.request.Request(url, headers=headers), PEER_TIMEOUT_S, context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


async def _fetch_peer(page: Page) -> None:
    """The peer's /ui/node.json over the private network first, then the public one (in a thread of the
    API's loop, one attempt at a time: a slow peer holds one thread, never the page)."""
    a = page.agent
    cfg = a.cfg
    errors = []
    for net, link in (("private", cfg.nodes[a.peer].private), ("public", cfg.nodes[a.peer].public)):
        host = str(link.ip)
        headers = {}
        if cfg.api.token_for_status and cfg.api.token_file is not None and token_may_travel(cfg, host):
            try:
                headers["Authorization"] = f"Bearer {read_secret(cfg.api.token_file, 'api.token_file')}"
            except ConfigError as e:
                errors.append(str(e).splitlines()[0])
        try:
            status, view = await asyncio.get_running_loop().run_in_executor(
                None, _get_json, tls.api_url(cfg, host, "/ui/node.json"), headers, tls.client_context(cfg))
            if status != 200:
                errors.append(f"{net}: HTTP {status}")
                continue
        except (OSError, ValueError, http.client.HTTPException) as e:
            errors.append(f"{net}: {type(e).__name__}{': ' + str(e).splitlines()[0] if str(e) else ''}")
            continue
        if isinstance(view, dict) and view.get("node") == a.peer:
            now = time.monotonic()
            page.peer = PeerCache(view=view, fetched_at=now, tried_at=now, via=net)
            return
        errors.append(f"{net}: not {a.peer}'s agent")
    page.peer.error = "; ".join(errors)
    page.peer.tried_at = time.monotonic()
