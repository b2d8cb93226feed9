"""HTTP/1.1 for the agents' APIs: h11 parses and frames, asyncio carries, and the limits are ours.

Why not a web framework: the API is a dozen routes, one request per connection, answered from memory;
aiohttp, which served it before, was 12 MB of the agent's 66 MB resident (bench/agent.py). h11 is the
parser and framer (the part not to write by hand: request smuggling, chunked bodies, header limits);
what is left here is the routing table, the connection's deadline and the accept loop's cap.

It owns: accepting connections (turning away those beyond ``Limits.max_connections``, loopback excepted,
before any TLS handshake), the TLS handshake's and the request's deadline, parsing one request (head and
body bounded), calling its handler, writing the answer, and closing the connection (or keeping it for
the next request when ``keep`` says so, cut off when idle past the deadline).
It may not: know what a route means (handlers do), or let a handler's exception or a client's bytes end
the server: a bad request is a 4xx, a failed handler a 500, a failed accept a pause.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

log = logging.getLogger("standby.web")
IP_FREEBIND = 15  # <linux/in.h>: listen on an address whose link is down (the private one, at boot)
READ_CHUNK = 16 * 1024
JSON = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # decoded, without the query
    query: Mapping[str, str]  # the first value of each name
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    remote: str | None

    @classmethod
    def of(cls, method: str, target: str, headers: Mapping[str, str] | None = None, body: bytes = b"",
           remote: str | None = "127.0.0.1") -> Request:
        """The request the server builds from ``method``, ``target`` (path and query) and the rest."""
        split = urlsplit(target)  # ValueError for a target no URL parser takes (an unclosed "[", say)
        query: dict[str, str] = {}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(name, value)
        return cls(method=method, path=unquote(split.path), query=query,
                   headers={k.lower(): v for k, v in (headers or {}).items()}, body=body, remote=remote)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        """The body as JSON ({} if none); ValueError for anything that is not JSON."""
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except RecursionError:  # deeply nested arrays: not a request anyone means
            raise ValueError("JSON nested too deeply") from None
        except UnicodeDecodeError as e:
            raise ValueError(str(e)) from None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


def json_response(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, json.dumps(doc, default=str).encode(), JSON, dict(headers or {}))


def text_response(body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(200, body, f"{content_type}; charset=utf-8", dict(headers or {}))


Handler = Callable[[Request], Awaitable[Response]]


class Routes:
    """Exact paths to handlers, per method; HEAD is answered by GET's handler without its body."""

    def __init__(self) -> None:
        self._table: dict[str, dict[str, Handler]] = {}
        self.background: list[Callable[[], Coroutine[Any, Any, None]]] = []  # run while serving

    def get(self, path: str, handler: Handler) -> None:
        self._table.setdefault(path, {})["GET"] = handler

    def post(self, path: str, handler: Handler) -> None:
        self._table.setdefault(path, {})["POST"] = handler

    def find(self, method: str, path: str) -> Handler | Response:
        methods = self._table.get(path)
        if methods is None:
            return json_response({"error": f"no such path: {path}"}, 404)
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            return json_response({"error": f"{method} is not allowed on {path}"}, 405, {"Allow": allowed})
        return handler


@dataclass(frozen=True)
class Limits:
    max_connections: int
    request_timeout_s: float  # from the connection's start to its request's end (and a kept one's idle time)
    max_body: int = 64 * 1024
    max_head: int = 16 * 1024


class _Refused(Exception):
    """A request answered without its handler; ``method`` is the request's if its head was read (a HEAD's
    answer carries no body)."""

    def __init__(self, response: Response, method: str = "GET") -> None:
        self.response, self.method = response, method


def listen(address: str, port: int) -> socket.socket:
    """A listening socket on ``address:port``; OSError if it cannot be had (the caller says which key)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        s.bind((address, port))
        s.listen(128)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


class Server:
    """Serves ``routes`` on listening sockets until ``run``'s stop event is set.

    ``wrap`` is every handler's way in (the agent's "not started yet" and protocol checks); ``headers`` go on
    every answer, errors included; ``keep`` says which requests' connections stay open; ``exempt`` which
    clients are never turned away (loopback). A connection counts against the cap until its socket is closed.

    As h11 reads HTTP/1.1: a request without Host is a 400 (a load balancer's check written as HTTP/1.1
    must send one; HAProxy's ``option httpchk GET /primary`` sends HTTP/1.0 and needs none).
    """

    def __init__(self, routes: Routes, limits: Limits, context: ssl.SSLContext | None, *,
                 wrap: Callable[[Request, Handler], Awaitable[Response]] | None = None,
                 headers: Callable[[], Mapping[str, str]] = dict,
                 keep: Callable[[Request], bool] = lambda r: False,
                 exempt: Callable[[str], bool] = lambda a: ipaddress.ip_address(a).is_loopback) -> None:
        self.routes, self.limits, self.context = routes, limits, context
        self._wrap, self._headers, self._keep, self._exempt = wrap, headers, keep, exempt
        self.connections = 0  # accepted and not yet closed (handshakes included)
        self.turned_away = 0
        self._serving: set[asyncio.Task[None]] = set()

    async def run(self, socks: Iterable[socket.socket], stop: asyncio.Event,
                  ready: Callable[[], None] = lambda: None) -> None:
        tasks = [asyncio.create_task(self._accept(s)) for s in socks]
        tasks += [asyncio.create_task(job()) for job in self.routes.background]
        ready()
        try:
            await stop.wait()
        finally:
            for t in (*tasks, *self._serving):
                t.cancel()
            await asyncio.gather(*tasks, *self._serving, return_exceptions=True)

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(lsock)
            except OSError as e:  # out of descriptors, say: wait, never die
                log.warning("API accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            # Loopback clients (this host's own checks, the CLI) are never turned away (``exempt``).
            if self.connections >= self.limits.max_connections and not self._exempt(addr[0]):
                self.turned_away += 1
                # RST rather than FIN: no TIME_WAIT left behind per refused connection.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            self.connections += 1
            task = asyncio.create_task(self._connection(conn, addr[0]))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _connection(self, conn: socket.socket, remote: str) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.limits.request_timeout_s
        writer: asyncio.StreamWriter | None = None
        try:
            reader = asyncio.StreamReader(limit=READ_CHUNK)
            protocol = asyncio.StreamReaderProtocol(reader)
            # The handshake is bounded as the request is: a flood of half-open TLS connections would
            # otherwise hold a descriptor each until the kernel gave up on them.
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock=conn, ssl=self.context,
                **({"ssl_handshake_timeout": timeout, "ssl_shutdown_timeout": timeout} if self.context else {}))
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self._requests(h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head),
                                 reader, writer, remote)
        except (OSError, TimeoutError, ssl.SSLError, h11.ProtocolError):
            pass  # the client went away, was too slow, or spoke something else: nothing to answer
        except Exception:  # a defect here ends this connection, never the server
            log.exception("the API's connection from %s failed", remote)
        finally:
            try:
                if writer is None:
                    conn.close()
                else:
                    await _close(writer, timeout)
            finally:
                self.connections -= 1  # only once its socket is closed: until then it counts

    async def _requests(self, h: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        remote: str) -> None:
        """Requests on one connection, each within the deadline (a kept connection's wait for the next one
        counts too), until one is not to be kept."""
        while True:
            try:
                async with asyncio.timeout(self.limits.request_timeout_s):
                    request = await self._read(h, reader, writer, remote)
            except _Refused as e:
                if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(h, writer, e.method, e.response, keep=False)
                return
            if request is None:
                return
            response = await self._safely(request)
            keep = self._keep(request) and h.their_state is h11.DONE
            await self._send(h, writer, request.method, response, keep)
            if not keep or h.our_state is not h11.DONE:
                return
            h.start_next_cycle()

    async def _route(self, request: Request) -> Response:
        found = self.routes.find(request.method, request.path)
        return found if isinstance(found, Response) else await found(request)

    async def _safely(self, request: Request) -> Response:
        try:
            return await (self._route(request) if self._wrap is None else self._wrap(request, self._route))
        except Exception:  # a handler's defect answers 500 and is logged; the server serves on
            log.exception("the API's handler for %s %s failed", request.method, request.path)
            return json_response({"error": "internal error (logged by the agent)"}, 500)

    async def _read(self, h: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    remote: str) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        begun = False  # a byte of this request given to h11
        while True:
            method = "GET" if head is None else head.method.decode("latin-1")
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as e:
                raise _Refused(json_response({"error": f"bad request: {e}"}, e.error_status_hint), method) from None
            if event is h11.NEED_DATA:
                if head is not None and h.they_are_waiting_for_100_continue:
                    writer.write(h.send(h11.InformationalResponse(status_code=100, headers=[])))
                chunk = await reader.read(READ_CHUNK)
                if not begun:  # blank lines before a request line are ignored (RFC 9112, 2.2); h11 refuses them
                    if chunk and not (chunk := chunk.lstrip(b"\r\n")):
                        continue
                    begun = True
                h.receive_data(chunk)
            elif isinstance(event, h11.Request):
                head = event
                declared = dict(event.headers).get(b"content-length")
                if declared is not None and int(declared) > self.limits.max_body:
                    raise _Refused(json_response({"error": "request body too large"}, 413), event.method.decode("latin-1"))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body:
                    raise _Refused(json_response({"error": "request body too large"}, 413), method)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                try:
                    return _request(head, bytes(body), remote)
                except ValueError as e:  # h11 takes any visible characters as a target; a URL parser does not
                    raise _Refused(json_response({"error": f"bad request target: {e}"}, 400), method) from None
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send(self, h: h11.Connection, writer: asyncio.StreamWriter, method: str, response: Response,
                    keep: bool) -> None:
        # Date: HTTP asks it of a server with a clock, and people read the node's wall clock from it.
        headers = {"Date": email.utils.formatdate(usegmt=True), **self._headers(), **response.headers,
                   "Content-Type": response.content_type, "Content-Length": str(len(response.body))}
        if not keep:
            headers["Connection"] = "close"
        try:
            reason = HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        out = h.send(h11.Response(status_code=response.status, reason=reason,
                                  headers=[(k.encode(), v.encode()) for k, v in headers.items()]))
        if method != "HEAD" and response.body:
            out += h.send(h11.Data(data=response.body))
        out += h.send(h11.EndOfMessage())
        writer.write(out)
        async with asyncio.timeout(self.limits.request_timeout_s):  # a client that does not read: cut off
            await writer.drain()


async def _close(writer: asyncio.StreamWriter, timeout_s: float) -> None:
    """Closed within ``timeout_s`` (what is buffered sent first), or aborted: a client that does not read its
    answer must not keep a socket of this process open, however long it waits."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout_s)
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:  # noqa: BLE001 - not closed in time (the answer unread), or closed by a reset already
        writer.transport.abort()


def _request(head: h11.Request, body: bytes, remote: str) -> Request:
    return Request.of(head.method.decode("latin-1"), head.target.decode("latin-1"),
                      {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}, body, remote)
