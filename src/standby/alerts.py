"""Alerts: what to tell people, how often, and getting it to them by e-mail and webhook.

Three layers, each usable alone:

* ``Alert`` / ``AlertKind`` / ``make_alert``: what happened, since when, what the
  agent did about it and the exact command a person runs next.
* ``AlertPolicy``: pure bookkeeping (no I/O, no clock of its own) that turns
  raise/clear calls into the few messages worth sending.
* ``AlertDispatcher``: the asyncio side. ``notify``/``resolve`` never block and
  never raise; every channel has its own bounded outbox and its own worker, so a
  dead SMTP server never holds back the webhook and a slow webhook never holds
  back e-mail.

Rate-limiting rule (per key, i.e. per kind and node):

* A condition that is raised gets one FIRING message; raising it again while it
  is raised sends nothing. Clearing it sends one RESOLVED message, always (even
  over the hourly cap), because whoever read the FIRING is waiting for it.
* At most one FIRING or FLAPPED message per key per ``min_interval_s``. A raise
  inside that window is held back. If the condition is still raised when the
  window ends, its FIRING goes out then. Episodes that came and went unannounced
  are not lost: their number rides along as ``repeats`` in the next message for
  the key, or, if the condition is clear when the window ends, in one FLAPPED
  message ("came and went N times, clear now").
* Events (a failover) have no "clear": each one is a FIRING under the same
  per-key limit; held-back ones are folded into the next as ``repeats``.
* Across all keys, at most ``max_per_hour`` FIRING/FLAPPED messages in any hour;
  what the cap holds back is sent, folded, once there is room again.

So per key, any window of ``w`` seconds holds at most ``2 * (w // min_interval_s + 1) + 1``
messages, and every hour at most ``2 * max_per_hour`` in total.
"""

from __future__ import annotations

import asyncio
import base64
import email.errors
import http.client
import json
import logging
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from standby.config import Alerts, Config, ConfigError, Email, Webhook, read_secret

log = logging.getLogger(__name__)

class _NotFollowed(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not followed: urllib would turn the POST into a GET (the alert lost) and carry
    the credentials to wherever it points. The delivery error names the new address."""

    def redirect_request(self, *args: Any) -> None:
        return None


# Straight to the webhook's host, whatever http_proxy says in the agent's environment (a proxy the unit
# inherited by accident would hold every alert).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NotFollowed())

# smtplib has no timeout unless given one; a hung server would pin a thread forever.
SMTP_TIMEOUT_S = 20.0


# -- what an alert says ---------------------------------------------------------


class AlertKind(StrEnum):
    PRIMARY_UNREACHABLE = "primary_unreachable"  # warm mode: a person decides on promotion
    FAILOVER = "failover"  # hot mode: the standby took over (an event, never "resolved")
    REPLICATION_BROKEN = "replication_broken"
    LAG_HIGH = "lag_high"
    FENCED = "fenced"
    DUAL_PRIMARY_SUSPECTED = "dual_primary_suspected"
    REJOIN_WAITING = "rejoin_waiting"
    MAINTENANCE = "maintenance"  # automatic promotions and role moves held back on this node

    @property
    def is_event(self) -> bool:
        """Something that happened once, as opposed to a condition that holds until cleared."""
        return self is AlertKind.FAILOVER


def alert_key(kind: AlertKind, node: str) -> str:
    """The identity under which an alert is de-duplicated, rate-limited and resolved."""
    return f"{kind.value}@{node}"


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    node: str  # the node the alert is about
    cluster: str
    summary: str  # one line: what happened
    since: datetime  # when it started (timezone-aware)
    what_was_done: str  # what the agent did, or deliberately did not do
    next_command: str  # the exact command a person would run next
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.since.tzinfo is None:
            raise ValueError("Alert.since must be timezone-aware (a naive time is ambiguous in a message)")

    @property
    def key(self) -> str:
        return alert_key(self.kind, self.node)


def make_alert(
    kind: AlertKind,
    *,
    node: str,
    cluster: str,
    peer: str | None = None,
    since: datetime | None = None,
    summary: str | None = None,
    what_was_done: str | None = None,
    next_command: str | None = None,
    details: dict[str, Any] | None = None,
) -> Alert:
    """An alert with the default wording for its kind; any text may be overridden.

    ``node`` is the node the alert is about (for PRIMARY_UNREACHABLE: the standby
    that would be promoted); ``peer`` is the other one, named in the texts.
    """
    other = peer or "the peer"
    defaults: dict[AlertKind, tuple[str, str, str]] = {
        AlertKind.PRIMARY_UNREACHABLE: (
            f"primary {other} is unreachable from standby {node}",
            "nothing: in warm mode the standby is never promoted automatically",
            f"standby promote --node {node}",
        ),
        AlertKind.FAILOVER: (
            f"{node} took over as primary from {other}",
            f"promoted PostgreSQL on {node} and moved the service IPs and services to it",
            "standby status",
        ),
        AlertKind.REPLICATION_BROKEN: (
            f"the standby is not streaming from primary {node}",
            "nothing: the primary keeps serving; in sync mode its commits wait for the standby "
            "unless replication.degrade_after_s is set",
            "standby status",
        ),
        AlertKind.LAG_HIGH: (
            f"standby {node} lags behind the primary more than the alert threshold",
            "nothing: replication continues; an automatic failover may refuse a standby this far behind",
            "standby status",
        ),
        AlertKind.FENCED: (
            f"{node} fenced itself: its PostgreSQL is stopped and it serves nothing until rejoined",
            f"stopped PostgreSQL and released the service IPs on {node}",
            f"standby history --node {node}",
        ),
        AlertKind.DUAL_PRIMARY_SUSPECTED: (
            f"{node} and {other} may both be accepting writes",
            "the agents keep applying their fencing rules; no data was discarded",
            "standby status",
        ),
        AlertKind.MAINTENANCE: (
            f"{node} is in maintenance: automatic failover and role moves are held back",
            "nothing automatic moves on this node until maintenance ends (the fences still apply); "
            "it ends by itself at timings.maintenance_timeout_s",
            "standby status",
        ),
        AlertKind.REJOIN_WAITING: (
            f"{node} was primary before the failover and waits to be rejoined as a standby",
            f"kept PostgreSQL stopped on {node} so it cannot diverge further",
            f"standby rejoin --node {node} --yes",
        ),
    }
    d_summary, d_done, d_next = defaults[kind]
    return Alert(
        kind=kind,
        node=node,
        cluster=cluster,
        summary=summary or d_summary,
        since=since or datetime.now(UTC),
        what_was_done=what_was_done or d_done,
        next_command=next_command or d_next,
        details=dict(details or {}),
    )


# -- the policy: pure, driven by the caller's monotonic clock -----------------------


class Phase(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"  # follows exactly one FIRING
    FLAPPED = "flapped"  # summary of episodes that came and went unannounced; clear now


@dataclass(frozen=True)
class Notice:
    """One message the policy decided to send."""

    key: str
    phase: Phase
    at: float  # monotonic time of the decision
    # Episodes (raise..clear) or events of this key since its previous message that
    # got no message of their own.
    repeats: int = 0


@dataclass(frozen=True)
class RateLimits:
    min_interval_s: float = 300.0
    max_per_hour: int = 60

    def __post_init__(self) -> None:
        if self.min_interval_s < 0 or self.max_per_hour < 1:
            raise ValueError("min_interval_s must be >= 0 and max_per_hour >= 1")


@dataclass
class _Key:
    raised: bool = False
    announced: bool = False  # a FIRING went out for the current episode
    event: bool = False  # the key is an event kind (no clear, no RESOLVED)
    event_owed: bool = False  # an event was held back and still needs its FIRING
    last_sent: float | None = None  # last FIRING/FLAPPED (the rate-limited messages)
    unannounced: int = 0


HOUR_S = 3600.0


class AlertPolicy:
    """Which messages to send, given raise/clear/event calls and ``tick`` at monotonic times.

    Times must not go backwards; an earlier time is treated as the latest one seen.
    """

    def __init__(self, limits: RateLimits = RateLimits()) -> None:
        self.limits = limits
        self._keys: dict[str, _Key] = {}
        self._sent: deque[float] = deque()  # times of capped messages within the last hour
        self._now = float("-inf")

    # -- inputs --

    def raise_(self, key: str, now: float) -> list[Notice]:
        now = self._advance(now)
        st = self._keys.setdefault(key, _Key())
        if st.raised:
            return []
        st.raised, st.announced = True, False
        return self._fire_if_allowed(key, st, now)

    def clear(self, key: str, now: float) -> list[Notice]:
        now = self._advance(now)
        st = self._keys.get(key)
        if st is None or not st.raised:
            return []
        st.raised = False
        if st.announced:
            st.announced = False
            return [Notice(key, Phase.RESOLVED, now)]
        st.unannounced += 1
        return []

    def event(self, key: str, now: float) -> list[Notice]:
        now = self._advance(now)
        st = self._keys.setdefault(key, _Key())
        st.event = True
        if st.event_owed:  # the one held back before is now an earlier repeat
            st.unannounced += 1
        st.event_owed = True
        return self._fire_if_allowed(key, st, now)

    def tick(self, now: float) -> list[Notice]:
        """Send what was held back and may go now; forget keys with nothing left to say."""
        now = self._advance(now)
        out: list[Notice] = []
        for key, st in list(self._keys.items()):
            if self._owes_firing(st):
                out += self._fire_if_allowed(key, st, now)
            elif not st.raised and st.unannounced and self._allowed(st, now):
                out.append(Notice(key, Phase.FLAPPED, now, st.unannounced))
                st.unannounced = 0
                self._spend(st, now)
            elif not (st.raised or st.unannounced or st.event_owed) and not self._within_interval(st, now):
                del self._keys[key]  # nothing it could still affect
        return out

    # -- queries --

    def is_raised(self, key: str) -> bool:
        st = self._keys.get(key)
        return bool(st and st.raised)

    def pending(self) -> int:
        """Keys with a message held back by a limit."""
        return sum(1 for st in self._keys.values() if self._owes_firing(st) or (not st.raised and st.unannounced))

    # -- rules --

    @staticmethod
    def _owes_firing(st: _Key) -> bool:
        return st.event_owed if st.event else st.raised and not st.announced

    def _fire_if_allowed(self, key: str, st: _Key, now: float) -> list[Notice]:
        if not self._allowed(st, now):
            return []
        notice = Notice(key, Phase.FIRING, now, st.unannounced)
        st.unannounced = 0
        if st.event:
            st.event_owed = False
        else:
            st.announced = True
        self._spend(st, now)
        return [notice]

    def _within_interval(self, st: _Key, now: float) -> bool:
        return st.last_sent is not None and now - st.last_sent < self.limits.min_interval_s

    def _allowed(self, st: _Key, now: float) -> bool:
        while self._sent and now - self._sent[0] >= HOUR_S:
            self._sent.popleft()
        return not self._within_interval(st, now) and len(self._sent) < self.limits.max_per_hour

    def _spend(self, st: _Key, now: float) -> None:
        st.last_sent = now
        self._sent.append(now)

    def _advance(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now


# -- messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A rendered notice: the same content for every channel."""

    notice: Notice
    alert: Alert
    sent_at: datetime  # wall-clock time of the decision
    note: str = ""  # the resolver's words, for RESOLVED

    @property
    def phase(self) -> Phase:
        return self.notice.phase

    def subject(self) -> str:
        a = self.alert
        label = {Phase.FIRING: "FIRING", Phase.RESOLVED: "RESOLVED", Phase.FLAPPED: "FLAPPING"}[self.phase]
        # One line: a line break in a header is refused by the mail library (and would inject headers).
        return " ".join(f"[standby {a.cluster}] {label} {a.kind.value} on {a.node}: {a.summary}".split())

    def body(self) -> str:
        a, n = self.alert, self.notice
        lines = [f"Cluster {a.cluster}, node {a.node}: {a.kind.value}", ""]
        if self.phase is Phase.FIRING:
            lines += [
                f"What happened:  {a.summary}",
                f"Since:          {a.since.isoformat()}",
                f"What was done:  {a.what_was_done}",
                f"Run next:       {a.next_command}",
            ]
            if n.repeats:
                lines.append(f"Also: it happened {n.repeats} more time(s) since the previous message, "
                             "held back by the rate limit.")
        elif self.phase is Phase.RESOLVED:
            lines += [
                f"Resolved:       {a.summary}",
                f"Had held since: {a.since.isoformat()}",
                f"Resolved at:    {self.sent_at.isoformat()}",
            ]
            if self.note:
                lines.append(f"Note:           {self.note}")
        else:
            lines += [
                f"Flapping:       {a.summary}",
                f"It came and went {n.repeats} time(s) since the previous message and is clear now.",
                f"Last began:     {a.since.isoformat()}",
                f"Check with:     {a.next_command}",
            ]
        if a.details:
            lines += ["", "Details:"] + [f"  {k}: {v}" for k, v in sorted(a.details.items())]
        return "\n".join(lines) + "\n"

    def payload(self) -> dict[str, Any]:
        a = self.alert
        return {
            "cluster": a.cluster,
            "node": a.node,
            "kind": a.kind.value,
            "key": a.key,
            "state": self.phase.value,
            "summary": a.summary,
            "since": a.since.isoformat(),
            "what_was_done": a.what_was_done,
            "next_command": a.next_command,
            "details": a.details,
            "repeats": self.notice.repeats,
            "note": self.note,
            "sent_at": self.sent_at.isoformat(),
        }


# -- channels ------------------------------------------------------------------------


class DeliveryError(Exception):
    """A failed delivery; ``permanent`` ones are not retried (the message is dropped)."""

    def __init__(self, text: str, *, permanent: bool = False) -> None:
        super().__init__(text)
        self.permanent = permanent


class Channel(Protocol):
    name: str

    async def open(self) -> None: ...

    async def send(self, message: Message) -> None:
        """Deliver or raise (``DeliveryError`` for a known outcome, anything else counts as transient)."""
        ...

    async def close(self) -> None: ...

    def redact(self, text: str) -> str:
        """``text`` with this channel's secrets removed, for log lines."""
        ...


class EmailChannel:
    """SMTP with optional STARTTLS and AUTH; smtplib blocks, so sends run on a thread of their own."""

    name = "email"

    def __init__(self, cfg: Email, password: str | None = None, *,
                 tls_context: ssl.SSLContext | None = None, timeout_s: float = SMTP_TIMEOUT_S) -> None:
        if cfg.username and password is None:
            raise ValueError("alerts.email.username is set but no password was given")
        self.cfg = cfg
        self._password = password
        self._tls = tls_context
        self._timeout = timeout_s
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_config(cls, cfg: Email, **kw: Any) -> EmailChannel:
        password = None
        if cfg.username:
            if cfg.password_file is None:
                raise ConfigError(["alerts.email.password_file: required when alerts.email.username is set"])
            password = read_secret(cfg.password_file, "alerts.email.password_file")
        return cls(cfg, password, **kw)

    def __repr__(self) -> str:  # never show the password, not even in a traceback's locals
        return f"EmailChannel({self.cfg.smtp_host}:{self.cfg.smtp_port})"

    async def open(self) -> None:
        # One thread: sends are sequential anyway, and a hung one cannot multiply.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="standby-smtp")

    async def close(self) -> None:
        if self._pool is not None:
            # Do not wait: a send stuck on a dead server ends by its own timeout.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def send(self, message: Message) -> None:
        if self._pool is None:
            await self.open()
        try:
            composed = self._compose(message)
        except (ValueError, TypeError, LookupError, email.errors.MessageError) as e:
            # Bad content stays bad: retrying would only block the outbox.
            raise DeliveryError(f"cannot compose the message: {type(e).__name__}: {e}", permanent=True) from None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._send_blocking, composed)

    def redact(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _compose(self, message: Message) -> EmailMessage:
        m = EmailMessage()
        m["Subject"] = message.subject()
        m["From"] = self.cfg.sender
        m["To"] = ", ".join(self.cfg.recipients)
        m["Date"] = format_datetime(message.sent_at)
        m["Message-ID"] = make_msgid(domain="standby")
        m["X-Standby-Key"] = message.alert.key
        m["X-Standby-State"] = message.phase.value
        m.set_content(message.body())
        return m

    def _send_blocking(self, msg: EmailMessage) -> None:
        c = self.cfg
        try:
            with smtplib.SMTP(c.smtp_host, c.smtp_port, timeout=self._timeout) as smtp:
                smtp.ehlo()
                if c.starttls:
                    smtp.starttls(context=self._tls or ssl.create_default_context())
                    smtp.ehlo()
                if c.username:
                    assert self._password is not None
                    smtp.login(c.username, self._password)
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as e:
            codes = sorted({code for code, _ in e.recipients.values()})
            raise DeliveryError(f"all recipients refused (codes {codes})",
                                permanent=all(code >= 500 for code in codes)) from None
        except smtplib.SMTPResponseException as e:
            # 5xx is the server's final word; 4xx asks us to try again later.
            reply = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
            raise DeliveryError(f"{type(e).__name__} {e.smtp_code}: {reply}", permanent=e.smtp_code >= 500) from None
        except smtplib.SMTPNotSupportedError as e:
            raise DeliveryError(f"server lacks a required extension: {e}", permanent=True) from None
        except (OSError, smtplib.SMTPException) as e:
            raise DeliveryError(f"{type(e).__name__}: {e}") from None


class WebhookChannel:
    """A JSON POST; ``retries`` quick re-attempts per delivery round, then the outbox's slower retry."""

    name = "webhook"

    def __init__(self, cfg: Webhook, *, quick_backoff_s: float = 0.5) -> None:
        self.cfg = cfg
        self._quick_backoff = quick_backoff_s
        # Its own threads: a webhook that hangs holds them, never the loop or another channel's work.
        self._pool: ThreadPoolExecutor | None = None
        parts = urlsplit(cfg.url)
        # The URL itself is often the secret (a token in the path): log only its host.
        self.safe_url = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/..."

    def __repr__(self) -> str:
        return f"WebhookChannel({self.safe_url})"

    async def open(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="webhook")

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _post(self, body: bytes) -> tuple[int, str]:
        """One POST, blocking: (status, reason); OSError and HTTPException as they come."""
        parts = urlsplit(self.cfg.url)
        url, headers = self.cfg.url, {"Content-Type": "application/json"}
        if parts.username is not None:  # https://user:secret@host/...: HTTP basic authentication, as curl does it
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with _DIRECT.open(req, timeout=self.cfg.timeout_s) as r:
                r.read()
                return r.status, r.reason
        except urllib.error.HTTPError as e:  # an answer, if not the one hoped for
            if 300 <= e.code < 400:
                return e.code, f"{e.reason}; redirects are not followed: set webhook.url to the address it names"
            return e.code, e.reason

    async def send(self, message: Message) -> None:
        await self.open()
        assert self._pool is not None
        try:
            body = json.dumps(message.payload(), default=str).encode()
        except (TypeError, ValueError) as e:  # e.g. a circular structure in details
            raise DeliveryError(f"cannot encode the message: {e}", permanent=True) from None
        last: DeliveryError | None = None
        loop = asyncio.get_running_loop()
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                await asyncio.sleep(self._quick_backoff * 2 ** (attempt - 1))
            try:
                # The socket's timeout bounds each wait; this bounds the whole request, as a person reads it.
                status, reason = await asyncio.wait_for(loop.run_in_executor(self._pool, self._post, body),
                                                        self.cfg.timeout_s)
            except TimeoutError:
                last = DeliveryError(f"no answer within {self.cfg.timeout_s:g} s")
                continue
            except (OSError, http.client.HTTPException) as e:
                reason_of = getattr(e, "reason", None)  # urllib's URLError wraps the socket's error
                if isinstance(reason_of, TimeoutError) or isinstance(e, TimeoutError):
                    last = DeliveryError(f"no answer within {self.cfg.timeout_s:g} s")
                else:
                    last = DeliveryError(f"{type(e).__name__}: {reason_of if reason_of is not None else e}")
                continue
            if status < 300:
                return
            # A redirect, or a 4xx other than timeout/too-many, will not change by repeating the request.
            permanent = 300 <= status < 500 and status not in (408, 425, 429)
            last = DeliveryError(f"HTTP {status} {reason or ''}".strip(), permanent=permanent)
            if permanent:
                raise last
        assert last is not None
        raise last

    def redact(self, text: str) -> str:
        return text.replace(self.cfg.url, self.safe_url)


# -- the dispatcher ------------------------------------------------------------------------


@dataclass
class ChannelStats:
    sent: int = 0  # messages delivered
    failed: int = 0  # delivery attempts that failed
    dropped: int = 0  # messages given up on (permanent error, full outbox, stop timeout)
    queued: int = 0  # messages waiting in the outbox now
    retrying: int = 0  # of those, ones that have failed at least once


@dataclass
class _Pending:
    message: Message
    attempts: int = 0


class _Outbox:
    """One channel's bounded queue and worker state."""

    def __init__(self, channel: Channel, size: int) -> None:
        self.channel = channel
        self.items: deque[_Pending] = deque()
        self.size = size
        self.stats = ChannelStats()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def put(self, message: Message) -> None:
        if len(self.items) >= self.size:
            old = self.items.popleft()
            self.stats.dropped += 1
            log.error("alert channel %s: outbox full (%d), dropped the oldest message %s %s",
                      self.channel.name, self.size, old.message.phase.value, old.message.alert.key)
        self.items.append(_Pending(message))
        self.wake.set()

    def refresh(self) -> None:
        self.stats.queued = len(self.items)
        self.stats.retrying = sum(1 for p in self.items if p.attempts)


class AlertDispatcher:
    """Takes alerts from the agent without ever blocking or raising, and delivers them.

    ``notify`` and ``resolve`` are plain functions for the event-loop thread; they
    may be called before ``start()`` (messages wait in the outboxes). Each channel
    keeps up to ``queue_size`` messages while it is down, retrying the oldest with
    backoff from ``retry_base_s`` up to ``retry_max_s``; a permanent refusal (SMTP
    5xx, HTTP 4xx) drops that message. Messages the rate limit still holds back
    when ``stop()`` is called are not sent.
    """

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        limits: RateLimits = RateLimits(),
        queue_size: int = 100,
        tick_s: float = 5.0,
        retry_base_s: float = 2.0,
        retry_max_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.policy = AlertPolicy(limits)
        self._outboxes = [_Outbox(ch, queue_size) for ch in channels]
        self._tick_s = tick_s
        self._retry_base = retry_base_s
        self._retry_max = retry_max_s
        self._clock = clock
        self._wall = wall_clock
        self._latest: dict[str, Alert] = {}  # the newest content per key, for held-back and RESOLVED messages
        self._stopping = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    @classmethod
    def from_config(cls, cfg: Alerts | Config, **kw: Any) -> AlertDispatcher:
        """Channels from ``[alerts]``; reads the SMTP password now, so a bad secret file fails at startup."""
        alerts = cfg.alerts if isinstance(cfg, Config) else cfg
        channels: list[Channel] = []
        if alerts.email is not None:
            channels.append(EmailChannel.from_config(alerts.email))
        if alerts.webhook is not None:
            channels.append(WebhookChannel(alerts.webhook))
        return cls(channels, **kw)

    # -- the caller's side: never blocks, never raises --

    def notify(self, alert: Alert) -> None:
        """Raise (or, for an event kind, report) ``alert``; repeated calls while raised update its content."""
        try:
            if self._closed:
                log.warning("alert %s after the dispatcher stopped: not sent", alert.key)
                return
            self._latest[alert.key] = alert
            now = self._clock()
            notices = self.policy.event(alert.key, now) if alert.kind.is_event else self.policy.raise_(alert.key, now)
            self._emit(notices)
        except Exception:
            log.exception("alert %s could not be queued", getattr(alert, "key", "?"))

    def resolve(self, key: str, note: str = "") -> None:
        """Clear the condition ``key`` (see ``alert_key``); sends RESOLVED if its FIRING went out."""
        try:
            if self._closed:
                return
            self._emit(self.policy.clear(key, self._clock()), note)
        except Exception:
            log.exception("alert %s could not be resolved", key)

    def stats(self) -> dict[str, ChannelStats]:
        out = {}
        for box in self._outboxes:
            box.refresh()
            out[box.channel.name] = ChannelStats(**vars(box.stats))
        return out

    # -- lifecycle --

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for box in self._outboxes:
            try:
                await box.channel.open()
            except Exception as e:  # noqa: BLE001 - a channel that cannot open must not stop the agent's other alerts
                log.error("alert channel %s could not be opened: %s", box.channel.name, box.channel.redact(str(e)))
            box.task = asyncio.create_task(self._deliver(box), name=f"alerts-{box.channel.name}")
        self._ticker = asyncio.create_task(self._tick_loop(), name="alerts-tick")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued for at most ``timeout_s`` seconds, then give up on the rest."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.cancel()
        tasks = [b.task for b in self._outboxes if b.task is not None]
        for box in self._outboxes:
            box.wake.set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout_s)
            for t in late:
                t.cancel()
        await asyncio.gather(*tasks, *([self._ticker] if self._ticker else []), return_exceptions=True)
        for box in self._outboxes:
            if box.items:
                box.stats.dropped += len(box.items)
                log.error("alert channel %s: %d message(s) undelivered at shutdown", box.channel.name, len(box.items))
                box.items.clear()
            try:
                await box.channel.close()
            except Exception as e:  # noqa: BLE001 - shutdown goes on to the other channels whatever this one raised
                log.warning("alert channel %s did not close cleanly: %s", box.channel.name, box.channel.redact(str(e)))

    # -- inside --

    def _emit(self, notices: Iterable[Notice], note: str = "") -> None:
        for n in notices:
            alert = self._latest.get(n.key)
            if alert is None:  # a resolve for a key never notified: nothing to say
                continue
            msg = Message(n, alert, self._wall(), note if n.phase is Phase.RESOLVED else "")
            log.info("alert %s %s (repeats %d) queued for %s", n.phase.value, n.key, n.repeats,
                     ", ".join(b.channel.name for b in self._outboxes) or "no channel")
            for box in self._outboxes:
                box.put(msg)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                self._emit(self.policy.tick(self._clock()))
            except Exception:
                log.exception("alert policy tick failed")

    async def _deliver(self, box: _Outbox) -> None:
        ch = box.channel
        failures = 0  # consecutive, for the backoff
        while True:
            if not box.items:
                if self._stopping.is_set():
                    return
                box.wake.clear()
                await box.wake.wait()
                continue
            item = box.items[0]
            try:
                await ch.send(item.message)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any delivery failure is retried or dropped, never ends the outbox
                item.attempts += 1
                box.stats.failed += 1
                permanent = isinstance(e, DeliveryError) and e.permanent
                what = f"{item.message.phase.value} {item.message.alert.key}"
                reason = ch.redact(str(e) or type(e).__name__)
                if permanent:
                    if box.items and box.items[0] is item:  # else already counted when pushed out
                        box.items.popleft()
                        box.stats.dropped += 1
                    log.error("alert channel %s: %s refused, dropped: %s", ch.name, what, reason)
                    continue
                failures += 1
                delay = min(self._retry_max, self._retry_base * 2 ** (failures - 1))
                log.warning("alert channel %s: %s not delivered (attempt %d), retrying in %.3g s: %s",
                            ch.name, what, item.attempts, delay, reason)
                if self._stopping.is_set():
                    return  # stop() gave the channel one more go; it is still down
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    pass
                continue
            failures = 0
            if box.items and box.items[0] is item:  # it may have been pushed out meanwhile
                box.items.popleft()
            box.stats.sent += 1
            log.info("alert channel %s: delivered %s %s", ch.name, item.message.phase.value, item.message.alert.key)
