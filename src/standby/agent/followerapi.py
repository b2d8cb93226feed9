"""A follower agent's HTTP API: ``GET /status`` (its FollowerView) and ``GET /health``.

It owns: the listening sockets (api.listen, on the follower's own addresses, api.port) and turning the
agent's last view into JSON with the protocol header.
It may not: change anything (there is no POST: a follower's operations are the pair's or a person's), or
wait for a step: it serves the last view as it stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from standby import protocol, tls
from standby.agent.follower import FollowerAgent
from standby.config import ApiListen, Config, ConfigError
from standby.documents import FOLLOWER_VIEW
from standby.web.server import Limits, Request, Response, Routes, Server, json_response, listen


def addresses(cfg: Config, node: str) -> list[str]:
    """Where ``node``'s API listens, from api.listen (a pair node's or a follower's links)."""
    where = {ApiListen.PRIVATE: str(cfg.link(node, "private").ip), ApiListen.PUBLIC: str(cfg.link(node, "public").ip),
             ApiListen.LOCALHOST: "127.0.0.1"}
    return [where[w] for w in cfg.api.listen]


def routes(agent: FollowerAgent) -> Routes:
    async def status(request: Request) -> Response:
        view = agent.view
        if view is None:
            return json_response({"error": "no step taken yet"}, 503)
        return json_response(FOLLOWER_VIEW.encode(view))

    async def health(request: Request) -> Response:
        view = agent.view
        ok = view is not None and view.running
        return json_response({"running": ok}, 200 if ok else 503)

    r = Routes()
    r.get("/status", status)
    r.get("/health", health)
    return r


@contextlib.asynccontextmanager
async def serving(agent: FollowerAgent) -> AsyncIterator[Server]:
    """Listening on every api.listen address of the follower, on the caller's loop, until the block ends;
    with the pair agents' limits (api.max_connections, api.request_timeout_s)."""
    cfg = agent.cfg
    # With [tls] every client (standby status, promote, the pair's tools) speaks https, as to a pair agent.
    server = Server(routes(agent), Limits(cfg.api.max_connections, cfg.api.request_timeout_s),
                    tls.server_context(cfg, agent.node), headers=lambda: {protocol.HEADER: protocol.header_value()})
    socks: list[socket.socket] = []
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        for host in addresses(cfg, agent.node):
            try:
                socks.append(listen(host, cfg.api.port))
            except OSError as e:
                raise ConfigError([f"api.listen: cannot listen on {host}:{cfg.api.port} ({e.strerror}); free the "
                                   "port (api.port) or remove that address from api.listen"]) from None
        task = asyncio.create_task(server.run(socks, stop))
        yield server
    finally:
        stop.set()
        if task is not None:
            await task
        for s in socks:
            s.close()
