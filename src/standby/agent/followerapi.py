"""A follower agent's HTTP API: ``GET /status`` (its FollowerView) and ``GET /health``.

It owns: the listening sockets (api.listen, on the follower's own addresses, api.port) and turning the
agent's last view into JSON with the protocol header.
It may not: change anything (there is no POST: a follower's operations are the pair's or a person's), or
wait for a step: it serves the last view as it stands.
"""

from __future__ import annotations

from aiohttp import web

from standby import protocol, tls
from standby.agent.follower import FollowerAgent
from standby.config import ApiListen, Config
from standby.documents import FOLLOWER_VIEW

AGENT_KEY: web.AppKey[FollowerAgent] = web.AppKey("follower", FollowerAgent)


def addresses(cfg: Config, node: str) -> list[str]:
    """Where ``node``'s API listens, from api.listen (a pair node's or a follower's links)."""
    where = {ApiListen.PRIVATE: str(cfg.link(node, "private").ip), ApiListen.PUBLIC: str(cfg.link(node, "public").ip),
             ApiListen.LOCALHOST: "127.0.0.1"}
    return [where[w] for w in cfg.api.listen]


async def status(request: web.Request) -> web.Response:
    view = request.app[AGENT_KEY].view
    if view is None:
        return web.json_response({"error": "no step taken yet"}, status=503)
    return web.json_response(FOLLOWER_VIEW.encode(view))


async def health(request: web.Request) -> web.Response:
    view = request.app[AGENT_KEY].view
    ok = view is not None and view.running
    return web.json_response({"running": ok}, status=200 if ok else 503)


async def _protocol_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[protocol.HEADER] = protocol.header_value()


def make_app(agent: FollowerAgent) -> web.Application:
    app = web.Application()
    app[AGENT_KEY] = agent
    app.on_response_prepare.append(_protocol_header)
    app.router.add_get("/status", status)
    app.router.add_get("/health", health)
    return app


async def serve(agent: FollowerAgent) -> web.AppRunner:
    """Listening on every api.listen address of the follower; the caller cleans the runner up."""
    runner = web.AppRunner(make_app(agent), access_log=None)
    await runner.setup()
    # With [tls] every client (standby status, promote, the pair's tools) speaks https, as to a pair agent.
    context = tls.server_context(agent.cfg, agent.node)
    for host in addresses(agent.cfg, agent.node):
        await web.TCPSite(runner, host, agent.cfg.api.port, ssl_context=context).start()
    return runner
