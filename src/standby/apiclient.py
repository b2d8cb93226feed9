"""The one client of the agents' HTTP API (status, maintenance, operations), used by every command,
the lab and the chaos campaign.

Blocking on purpose: its callers are commands and lab helpers that do one thing at a time (the lab
runs it inside a network namespace's thread). Each agent is tried over the private network first,
then the public one; an address that does not take a TCP connection within ``CONNECT_TIMEOUT_S``
is passed over at once rather than holding the whole request timeout.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any, Generic, TypeVar

from standby import protocol, tls
from standby.config import Config, read_secret, token_may_travel
from standby.documents import (
    AGENT_VIEW,
    DEMOTED,
    FOLLOWER_VIEW,
    MANUALLY_PROMOTED,
    PROMOTED,
    REJOINED,
    AgentView,
    Codec,
    Demoted,
    DocumentError,
    FollowerView,
    ManuallyPromoted,
    Operation,
    Promoted,
    Rejoined,
)

T = TypeVar("T")
log = logging.getLogger("standby.apiclient")

CONNECT_TIMEOUT_S = 3.0  # to one of an agent's addresses, before the next one is tried


class ApiError(Exception):
    """The agent refused (``status`` is the HTTP status) or did not answer (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProtocolMismatch(ApiError):
    """The agent answered in another protocol major: its answer is not read (standby.protocol)."""

    def __init__(self, mismatch: protocol.Mismatch) -> None:
        super().__init__(0, str(mismatch))


# Sent with every request, so an agent of another major refuses an operation instead of misreading it.
_PROTOCOL = {protocol.HEADER: protocol.header_value()}


def open_direct(req: urllib.request.Request, timeout_s: float, context: ssl.SSLContext | None = None
                ) -> http.client.HTTPResponse:
    """urlopen, but never through the proxies the environment names (http_proxy, https_proxy): an agent's API,
    and the token sent to it, go straight to the agent, whatever the shell or the unit running this says."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    resp: http.client.HTTPResponse = urllib.request.build_opener(*handlers).open(req, timeout=timeout_s)
    return resp


def _same_protocol(node: str, headers: Any) -> None:
    """Raises ProtocolMismatch unless an answer with these headers (a Message or None) may be read."""
    mismatch = protocol.check_header(None if headers is None else headers.get(protocol.HEADER), f"{node}'s agent")
    if mismatch is not None:
        raise ProtocolMismatch(mismatch)


class TokenRefused(ApiError):
    """The API token would travel in clear to an address outside this host and the private network."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


def auth_header(cfg: Config, host: str, token: str) -> dict[str, str]:
    """The Authorization header for an agent API at ``host``; refused where the token would cross
    a network in clear (without [tls]) other than loopback and the private one."""
    if not token_may_travel(cfg, host):
        raise TokenRefused(
            f"not sending the API token to {host} over plain HTTP: it would cross the public network in clear; "
            "configure [tls], or set api.token_in_clear = true to accept that")
    return {"Authorization": f"Bearer {token}"}


def _status_auth(cfg: Config, host: str) -> dict[str, str]:
    """What GET /status needs at ``host``: the token with api.token_for_status (where it may go), else nothing."""
    if not cfg.api.token_for_status or cfg.api.token_file is None:
        return {}
    try:
        return auth_header(cfg, host, read_secret(cfg.api.token_file, "api.token_file"))
    except TokenRefused:
        return {}


def _links(cfg: Config, node: str) -> tuple[str, str]:
    n = cfg.nodes[node]
    return str(n.private.ip), str(n.public.ip)


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _get(cfg: Config, node: str, hosts: tuple[str, ...], path: str, timeout_s: float, auth: bool
         ) -> tuple[int, object] | None:
    """(HTTP status, JSON body) from the first of ``hosts`` that answers; None if none does; raises
    ProtocolMismatch when the agent answers in another protocol major."""
    ctx = tls.client_context(cfg)
    for host in hosts:
        req = urllib.request.Request(tls.api_url(cfg, host, path),
                                     headers={**_PROTOCOL, **(_status_auth(cfg, host) if auth else {})})
        try:
            with open_direct(req, timeout_s, ctx) as r:
                _same_protocol(node, r.headers)
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            _same_protocol(node, e.headers)
            try:
                return e.code, json.loads(e.read())
            except ValueError:
                continue
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
            continue  # cut off mid-answer too (a frozen or flooded agent): as good as no answer
    return None


def agent_status(cfg: Config, node: str, timeout_s: float = 1.0, via: tuple[str, ...] | None = None) -> AgentView | None:
    """A node agent's own view (GET /status), asked at ``via`` (default: its private address, then
    its public one); None when it does not answer or answers with something that is not such a view."""
    return _view(cfg, node, via or _links(cfg, node), AGENT_VIEW, timeout_s)


def follower_status(cfg: Config, name: str, timeout_s: float = 1.0,
                    via: tuple[str, ...] | None = None) -> FollowerView | None:
    """A follower agent's own view (GET /status at its private address, or ``via``); None as agent_status."""
    return _view(cfg, name, via or (str(cfg.link(name).ip),), FOLLOWER_VIEW, timeout_s)


def _view(cfg: Config, name: str, hosts: tuple[str, ...], codec: Codec[T], timeout_s: float) -> T | None:
    try:
        got = _get(cfg, name, hosts, "/status", timeout_s, auth=True)
    except ProtocolMismatch as e:
        log.warning("%s", e)  # said, not hidden behind "does not answer"
        return None
    return _decoded_view(name, got, codec)


def _decoded_view(name: str, got: tuple[int, object] | None, codec: Codec[T]) -> T | None:
    if got is None or got[0] != 200:
        return None
    try:
        return codec.decode(got[1])
    except DocumentError as e:
        # Said, not hidden behind "does not answer": an agent of another version, or a bug.
        log.warning("%s's agent answered /status with something this client cannot read: %s", name, e)
        return None


# The agent closed a kept connection (its idle timer, a restart) before this question reached it.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class StatusSession(Generic[T]):
    """One agent's GET /status at one address, asked again and again over one kept connection (HTTP/1.1
    keep-alive, which a pair agent grants a follower's private address until it idles for
    api.request_timeout_s, api.keeps_connection; an agent that closes it gets a new one per
    question): a follower asking several times a second makes no TCP connection and no TLS handshake per
    question. The TLS context, the token and the timeout are agent_status's. A question that fails closes
    the connection, and the next question opens a new one; a kept connection the agent had
    already closed is asked once more on a new one, as a new connection would have been."""

    def __init__(self, cfg: Config, name: str, host: str, codec: Codec[T], timeout_s: float = 1.0) -> None:
        self.cfg, self.name, self.host, self.codec, self.timeout_s = cfg, name, host, codec, timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self.connections = 0  # opened or tried so far

    def view(self) -> T | None:
        """The agent's view; None when it does not answer or answers with something that is not such a view."""
        try:
            got = self._get()
        except ProtocolMismatch as e:
            log.warning("%s", e)
            return None
        return _decoded_view(self.name, got, self.codec)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _get(self) -> tuple[int, object] | None:
        for _ in range(2):
            reused = self._conn is not None and self._conn.sock is not None
            conn = self._connection()  # outside the try: a [tls] CA that cannot be read is said, not silence
            try:
                return self._ask(conn)
            except _STALE:
                self.close()
                if not reused:
                    return None
            except (OSError, ValueError, http.client.HTTPException):
                self.close()  # cut off, timed out or garbled: the next question starts afresh
                return None
        return None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            port, timeout = self.cfg.api.port, self.timeout_s
            self._conn = (http.client.HTTPSConnection(self.host, port, timeout=timeout, context=tls.client_context(self.cfg))
                          if self.cfg.tls else http.client.HTTPConnection(self.host, port, timeout=timeout))
        return self._conn

    def _ask(self, conn: http.client.HTTPConnection) -> tuple[int, object]:
        if conn.sock is None:
            self.connections += 1  # request() connects it
        conn.request("GET", "/status", headers={**_PROTOCOL, **_status_auth(self.cfg, self.host)})
        r = conn.getresponse()
        body = r.read()  # all of it, or the connection cannot carry the next question
        _same_protocol(self.name, r.headers)
        return r.status, json.loads(body)


def replica_lag(cfg: Config, node: str, timeout_s: float = 2.0) -> int | None:
    """GET /replica's lag_bytes: the WAL the primary had written, by its last heartbeat, beyond this
    standby's position. The agent answers 503 with the same body when the standby does not stream."""
    try:
        got = _get(cfg, node, _links(cfg, node), "/replica", timeout_s, auth=False)
    except ProtocolMismatch as e:
        log.warning("%s", e)
        return None
    body = None if got is None else got[1]
    lag = body.get("lag_bytes") if isinstance(body, dict) else None
    return lag if isinstance(lag, int) and not isinstance(lag, bool) else None


class AgentApi:
    """The agents' action endpoints (they need the API token)."""

    def __init__(self, cfg: Config) -> None:
        if cfg.api.token_file is None:
            raise ApiError(0, "api.token_file is not set: the agents' action endpoints are disabled")
        self.cfg = cfg
        self.token = read_secret(cfg.api.token_file, "api.token_file")
        self.ssl = tls.client_context(cfg)

    def post(self, node: str, path: str, body: dict[str, Any] | None = None, timeout_s: float = 120) -> dict[str, Any]:
        last: Exception | None = None
        for host in _links(self.cfg, node):
            try:
                auth = auth_header(self.cfg, host, self.token)
            except TokenRefused as e:
                last = e
                continue
            # An address that drops packets would hold the whole timeout (minutes, with both
            # nodes' maintenance waiting on it) before the other network is tried.
            if not _answers(host, self.cfg.api.port):
                last = OSError(f"no connection to {host}:{self.cfg.api.port} within {CONNECT_TIMEOUT_S:g} s")
                continue
            req = urllib.request.Request(
                tls.api_url(self.cfg, host, path), data=json.dumps(body or {}).encode(), method="POST",
                headers={"Content-Type": "application/json", **_PROTOCOL, **auth})
            try:
                with open_direct(req, timeout_s, self.ssl) as r:
                    _same_protocol(node, r.headers)
                    raw = r.read()
            except urllib.error.HTTPError as e:
                _same_protocol(node, e.headers)
                try:
                    msg = json.loads(e.read()).get("error", str(e))
                except (ValueError, AttributeError):
                    msg = str(e)
                raise ApiError(e.code, msg) from None
            except (urllib.error.URLError, OSError) as e:
                last = e
                continue
            except http.client.HTTPException as e:  # it took the request, then broke off: not sent again
                raise ApiError(0, f"{node}'s agent broke off its answer to {path}: {type(e).__name__}: {e}") from None
            # The agent took the request: whatever it answered, it is not asked again elsewhere.
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise ApiError(0, f"{node}'s agent answered {path} with something other than a JSON object")
            return answer
        raise ApiError(0, f"{node}'s agent does not answer ({last})")

    def maintenance(self, node: str, suspend: bool, timeout_s: float = 120) -> None:
        self.post(node, "/maintenance", {"suspend": suspend}, timeout_s=timeout_s)

    def _operate(self, node: str, op: Operation, body: dict[str, Any] | None = None,
                 timeout_s: float = 120) -> dict[str, Any]:
        return self.post(node, op.path, body, timeout_s)

    def demote(self, node: str) -> Demoted:
        return _decoded(DEMOTED, self._operate(node, Operation.DEMOTE))

    def promote(self, node: str, min_lsn: str, catch_up_timeout_s: float) -> Promoted:
        answer = self._operate(node, Operation.PROMOTE, {"min_lsn": min_lsn, "timeout_s": catch_up_timeout_s},
                               timeout_s=catch_up_timeout_s + 60)
        return _decoded(PROMOTED, answer)

    def follow(self, node: str) -> None:
        self._operate(node, Operation.FOLLOW)

    def resume(self, node: str) -> None:
        self._operate(node, Operation.RESUME)

    def fence(self, node: str) -> None:
        self._operate(node, Operation.FENCE)

    def manual_promote(self, node: str, timeout_s: float = 600) -> ManuallyPromoted:
        return _decoded(MANUALLY_PROMOTED, self._operate(node, Operation.MANUAL_PROMOTE, timeout_s=timeout_s))

    def rejoin(self, node: str, timeout_s: float = 3600) -> Rejoined:
        return _decoded(REJOINED, self._operate(node, Operation.REJOIN, timeout_s=timeout_s))

    def rebuild(self, node: str, source: str, timeout_s: float = 3600) -> Rejoined:
        """``node`` rebuilt as a standby of ``source``, a follower an operator promoted (standby.rebuild)."""
        return _decoded(REJOINED, self._operate(node, Operation.REBUILD, {"source": source}, timeout_s=timeout_s))


def _decoded(codec: Codec[T], answer: dict[str, Any]) -> T:
    # The operation ran: an answer this client cannot read is reported, not retried.
    try:
        return codec.decode(answer)
    except DocumentError as e:
        raise ApiError(0, f"the agent's answer is not understood: {e}") from None
