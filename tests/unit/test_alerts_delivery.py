"""Alert delivery against real servers on loopback: an SMTP server (aiosmtpd) and an HTTP receiver.

No timing assertions: tests wait until something has arrived (with a generous
limit that only catches a hang) and count what arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import inspect
import json
import logging
import os
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from standby.alerts import (
    AlertDispatcher,
    AlertKind,
    DeliveryError,
    EmailChannel,
    Message,
    Notice,
    Phase,
    RateLimits,
    WebhookChannel,
    alert_key,
    make_alert,
)
from standby.config import Email, Webhook
from tests.unit.loopback import free_port

LOOPBACK = "127.0.0.1"
PASSWORD = "s3cret-Pa55-for-smtp"
SINCE = datetime(2026, 11, 26, 11, 40, 5, tzinfo=UTC)
HANG_LIMIT_S = 30.0  # only to turn a hang into a failure; never a performance claim


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_LIMIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


# -- an SMTP server --------------------------------------------------------------------------


@dataclass
class Received:
    message: EmailMessage
    authenticated: bool
    login: str | None
    tls: bool


@dataclass
class MailSink:
    got: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        auth = session.auth_data
        with self.lock:
            self.got.append(Received(msg, bool(session.authenticated),  # type: ignore[arg-type]
                                     auth.login.decode() if isinstance(auth, LoginPassword) else None,
                                     session.ssl is not None))
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [r.message for r in self.got]


def check_password(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"alerts" and data.password == PASSWORD.encode()
    # handled=False: the server itself answers a failure with 535
    return AuthResult(success=ok, handled=False, auth_data=data if ok else None)


@contextlib.contextmanager
def smtp_server(port: int, sink: MailSink, **kw: Any) -> Iterator[Controller]:
    ctl = Controller(sink, hostname=LOOPBACK, port=port, **kw)
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()


# -- an HTTP receiver ---------------------------------------------------------------------------


@dataclass
class HookSink:
    got: list[dict[str, Any]] = field(default_factory=list)
    entered: int = 0
    gate: asyncio.Event | None = None  # when set: hold every request until the gate opens

    async def handle(self, request: web.Request) -> web.Response:
        self.entered += 1
        if self.gate is not None:
            await self.gate.wait()
        self.got.append(await request.json())
        return web.json_response({"ok": True})


@contextlib.asynccontextmanager
async def hook_site(path: str, handle: Any) -> AsyncIterator[str]:
    """A webhook receiver on loopback answering POSTs to ``path`` with ``handle``; yields its "host:port"."""
    app = web.Application()
    app.router.add_post(path, handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, LOOPBACK, 0).start()
        host, port = runner.addresses[0][:2]
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hook_server(sink: HookSink) -> AsyncIterator[str]:
    async with hook_site("/hook/{token}", sink.handle) as where:
        try:
            yield f"http://{where}/hook/T0KEN-in-path"
        finally:
            if sink.gate is not None:
                sink.gate.set()  # let held requests finish so the runner can close


# -- the dispatcher under test ---------------------------------------------------------------------


def mail_cfg(port: int, **kw: Any) -> Email:
    return Email(smtp_host=LOOPBACK, smtp_port=port, sender="standby@example.net",
                 recipients=["noc@example.net", "oncall@example.net"], **kw)


@contextlib.asynccontextmanager
async def dispatcher(*channels: Any, limits: RateLimits = RateLimits(0, 1000),
                     **kw: Any) -> AsyncIterator[AlertDispatcher]:
    d = AlertDispatcher(list(channels), limits=limits, tick_s=0.05, retry_base_s=0.05, retry_max_s=0.2, **kw)
    await d.start()
    try:
        yield d
    finally:
        await d.stop(timeout_s=2)


def alert(kind: AlertKind, node: str = "beta", **kw: Any) -> Any:
    return make_alert(kind, node=node, cluster="sw1", peer="alpha", since=SINCE, **kw)


def body_of(m: EmailMessage) -> str:
    part = m.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def standby_log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("standby"))


# -- the tests ---------------------------------------------------------------------------------------


def test_every_kind_arrives_once_with_its_content() -> None:
    mail, hook = MailSink(), HookSink()
    port = free_port()

    async def main() -> None:
        async with hook_server(hook) as url, dispatcher(
            EmailChannel(mail_cfg(port)), WebhookChannel(Webhook(url=url, retries=0))
        ) as d:
            with smtp_server(port, mail):
                for kind in AlertKind:
                    d.notify(alert(kind, details={"lag_bytes": 99}))
                    if not kind.is_event:  # an event happens anew with every call
                        d.notify(alert(kind))  # raised again: no second message
                d.resolve(alert_key(AlertKind.REPLICATION_BROKEN, "beta"), note="streaming again")
                d.resolve(alert_key(AlertKind.FAILOVER, "beta"))  # an event never resolves
                d.resolve(alert_key(AlertKind.LAG_HIGH, "nosuchnode"))  # never raised: nothing
                await until(lambda: len(mail.got) == len(AlertKind) + 1 and len(hook.got) == len(AlertKind) + 1,
                            "every alert by mail and webhook")
                await d.stop(timeout_s=5)  # flush; anything extra would now have arrived
                stats = d.stats()

        n = len(AlertKind) + 1
        assert len(mail.got) == n and len(hook.got) == n
        assert stats["email"].sent == n and stats["webhook"].sent == n
        assert stats["email"].queued == stats["webhook"].queued == 0
        for kind in AlertKind:
            a = alert(kind)
            (m,) = [m for m in mail.messages() if m["X-Standby-Key"] == a.key and m["X-Standby-State"] == "firing"]
            assert kind.value in m["Subject"] and "beta" in m["Subject"] and "FIRING" in m["Subject"]
            assert m["To"] == "noc@example.net, oncall@example.net"
            body = body_of(m)
            for text in (a.summary, SINCE.isoformat(), a.what_was_done, a.next_command, "lag_bytes: 99"):
                assert text in body
            (j,) = [j for j in hook.got if j["kind"] == kind.value and j["state"] == "firing"]
            assert j["node"] == "beta" and j["cluster"] == "sw1" and j["since"] == SINCE.isoformat()
            assert j["what_was_done"] == a.what_was_done and j["next_command"] == a.next_command
            assert j["summary"] == a.summary and j["details"] == {"lag_bytes": 99}
        (r,) = [j for j in hook.got if j["state"] == "resolved"]
        assert r["kind"] == "replication_broken" and r["note"] == "streaming again"
        (rm,) = [m for m in mail.messages() if m["X-Standby-State"] == "resolved"]
        assert "RESOLVED" in rm["Subject"] and "streaming again" in body_of(rm)

    asyncio.run(main())


def test_flapping_condition_sends_a_bounded_number_of_messages() -> None:
    mail, hook = MailSink(), HookSink()
    port = free_port()
    interval = 1.0
    flaps = 50

    async def main() -> None:
        with smtp_server(port, mail):
            async with hook_server(hook) as url, dispatcher(
                EmailChannel(mail_cfg(port)), WebhookChannel(Webhook(url=url, retries=0)),
                limits=RateLimits(min_interval_s=interval, max_per_hour=1000),
            ) as d:
                a = alert(AlertKind.REPLICATION_BROKEN)
                began = time.monotonic()
                for _ in range(flaps):
                    d.notify(a)
                    await asyncio.sleep(0.005)
                    d.resolve(a.key)
                    await asyncio.sleep(0.005)

                def told(msgs: list[dict[str, Any]]) -> int:
                    # every episode is either announced or counted in a later message's repeats
                    return sum(m["repeats"] + (m["state"] == "firing") for m in msgs if m["state"] != "resolved")

                await until(lambda: told(hook.got) == flaps, "all 50 episodes accounted for")
                await until(lambda: len(mail.got) == len(hook.got), "mail caught up")
                await d.stop(timeout_s=5)
                elapsed = time.monotonic() - began

        bound = 2 * (int(elapsed // interval) + 1) + 1  # the policy's documented per-key bound
        assert len(hook.got) <= bound and len(mail.got) <= bound
        assert len(hook.got) < 2 * flaps
        assert hook.got[0]["state"] == "firing" and hook.got[1]["state"] == "resolved"
        # it ended clear: the last word is a RESOLVED, or a FLAPPED summary of what was held back
        assert hook.got[-1]["state"] in ("resolved", "flapped")

    asyncio.run(main())


def test_smtp_down_webhook_still_arrives_and_mail_follows_when_smtp_returns() -> None:
    mail, hook = MailSink(), HookSink()
    port = free_port()  # nothing listens here yet

    async def main() -> None:
        async with hook_server(hook) as url, dispatcher(
            EmailChannel(mail_cfg(port)), WebhookChannel(Webhook(url=url, retries=0))
        ) as d:
            assert not inspect.iscoroutinefunction(d.notify) and not inspect.iscoroutinefunction(d.resolve)
            result = d.notify(alert(AlertKind.FENCED, node="alpha"))
            # Returned without yielding to the loop, so no delivery can have been attempted yet.
            assert result is None and hook.entered == 0 and d.stats()["email"].failed == 0
            await until(lambda: len(hook.got) == 1, "webhook despite the dead SMTP server")
            await until(lambda: d.stats()["email"].retrying == 1, "mail kept for retry")
            assert mail.got == []
            with smtp_server(port, mail):
                await until(lambda: len(mail.got) == 1, "mail after the SMTP server came up")
                await until(lambda: d.stats()["email"].queued == 0, "outbox emptied")
            stats = d.stats()
        assert stats["email"].sent == 1 and stats["email"].failed >= 1 and stats["email"].dropped == 0
        assert stats["webhook"].sent == 1 and stats["webhook"].failed == 0
        assert hook.got[0]["kind"] == "fenced" and hook.got[0]["node"] == "alpha"
        assert "fenced" in mail.messages()[0]["Subject"]

    asyncio.run(main())


def test_slow_webhook_does_not_delay_email(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    mail = MailSink()
    port = free_port()

    async def main() -> None:
        hook = HookSink(gate=asyncio.Event())  # answers only when the test ends
        with smtp_server(port, mail):
            async with hook_server(hook) as url, dispatcher(
                EmailChannel(mail_cfg(port)), WebhookChannel(Webhook(url=url, timeout_s=0.5, retries=0))
            ) as d:
                d.notify(alert(AlertKind.DUAL_PRIMARY_SUSPECTED))
                await until(lambda: hook.entered >= 1, "webhook request reached the receiver")
                await until(lambda: len(mail.got) == 1, "mail while the webhook hangs")
                assert hook.got == []  # the webhook still had no answer when the mail arrived
                await until(lambda: d.stats()["webhook"].failed >= 1, "webhook timed out")
                assert d.stats()["email"].sent == 1
        text = standby_log(caplog)
        assert "no answer within 0.5 s" in text
        assert "T0KEN-in-path" not in text  # a URL path may carry a token: only the host is logged

    asyncio.run(main())


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", f"subjectAltName=IP:{LOOPBACK}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def secret_file(tmp: Path, value: str) -> Path:
    p = tmp / "smtp.password"
    p.write_text(value + "\n")
    os.chmod(p, 0o600)
    return p


def test_starttls_and_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = make_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))  # verifies the server, no shortcuts
    mail = MailSink()
    port = free_port()
    cfg = mail_cfg(port, starttls=True, username="alerts", password_file=secret_file(tmp_path, PASSWORD))

    async def main() -> None:
        with smtp_server(port, mail, tls_context=server_tls, require_starttls=True,
                         authenticator=check_password, auth_required=True, auth_require_tls=True):
            async with dispatcher(EmailChannel.from_config(cfg, tls_context=client_tls)) as d:
                d.notify(alert(AlertKind.LAG_HIGH))
                await until(lambda: len(mail.got) == 1, "mail over STARTTLS with AUTH")
                assert PASSWORD not in repr(d.__dict__)

    asyncio.run(main())
    (got,) = mail.got
    assert got.tls and got.authenticated and got.login == "alerts"
    assert PASSWORD not in got.message.as_string()
    assert PASSWORD not in standby_log(caplog)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_refused_login_is_dropped_and_the_password_never_logged(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mail = MailSink()
    port = free_port()
    wrong = "not-the-" + PASSWORD
    cfg = mail_cfg(port, username="alerts", password_file=secret_file(tmp_path, wrong))

    async def main() -> None:
        # AUTH without TLS here, so the STARTTLS test above is not the only path through login
        with smtp_server(port, mail, authenticator=check_password, auth_required=True, auth_require_tls=False):
            async with dispatcher(EmailChannel.from_config(cfg)) as d:
                d.notify(alert(AlertKind.REJOIN_WAITING, node="alpha"))
                await until(lambda: d.stats()["email"].dropped == 1, "refused message given up")
                assert d.stats()["email"].sent == 0 and d.stats()["email"].queued == 0

    asyncio.run(main())
    assert mail.got == []
    text = standby_log(caplog)
    assert "refused, dropped" in text and "535" in text
    assert wrong not in text and PASSWORD not in text


def test_full_outbox_drops_the_oldest_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # never served

    async def main() -> None:
        d = AlertDispatcher([EmailChannel(mail_cfg(port))], limits=RateLimits(0, 1000), queue_size=3)
        kinds = list(AlertKind)[:5]
        for kind in kinds:  # before start(): they wait in the outbox
            d.notify(alert(kind))
        s = d.stats()["email"]
        assert (s.queued, s.dropped) == (3, 2)
        await d.start()
        await d.stop(timeout_s=0.5)  # the server never comes: what is left is counted as dropped
        assert d.stats()["email"].dropped == 5 and d.stats()["email"].sent == 0

    asyncio.run(main())
    text = standby_log(caplog)
    assert "outbox full (3), dropped the oldest message firing primary_unreachable@beta" in text
    assert "undelivered at shutdown" in text


def test_stop_flushes_what_is_queued() -> None:
    hook = HookSink()

    async def main() -> None:
        async with hook_server(hook) as url:
            d = AlertDispatcher([WebhookChannel(Webhook(url=url))])
            await d.start()
            d.notify(alert(AlertKind.FAILOVER))
            await d.stop(timeout_s=10)
            d.notify(alert(AlertKind.FENCED))  # after stop: logged, not sent, no error
        assert [j["kind"] for j in hook.got] == ["failover"]

    asyncio.run(main())


def test_notify_never_raises_into_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    d = AlertDispatcher([])
    d.notify(None)  # type: ignore[arg-type]
    d.resolve(None)  # type: ignore[arg-type]
    assert "could not be queued" in standby_log(caplog)


def test_webhook_payload_is_json_with_stable_fields() -> None:
    hook = HookSink()

    async def main() -> None:
        async with hook_server(hook) as url, dispatcher(WebhookChannel(Webhook(url=url))) as d:
            d.notify(alert(AlertKind.PRIMARY_UNREACHABLE, details={"since_s": 12.5, "when": SINCE}))
            await until(lambda: len(hook.got) == 1, "webhook")
        (j,) = hook.got
        assert set(j) >= {"cluster", "node", "kind", "key", "state", "summary", "since", "what_was_done",
                          "next_command", "details", "repeats", "sent_at"}
        assert j["next_command"] == "standby promote --node beta"
        assert j["details"]["when"] == str(SINCE)  # non-JSON values are sent as text, not dropped
        json.dumps(j)

    asyncio.run(main())


def _message() -> Message:
    a = alert(AlertKind.FAILOVER)
    return Message(Notice(alert_key(a.kind, a.node), Phase.FIRING, 0.0), a, SINCE)


def test_webhook_credentials_in_the_url_are_sent_as_basic_authentication() -> None:
    """Review of the move to urllib: a webhook URL with user:secret@ (allowed by the configuration) failed to
    resolve its host; aiohttp had sent them as HTTP basic authentication, as curl does."""
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"ok": True})

    async def main() -> None:
        async with hook_site("/hook", handle) as where:
            ch = WebhookChannel(Webhook(url=f"http://al%40rts:s3cr%3At@{where}/hook", retries=0))
            await ch.send(_message())
            await ch.close()
            assert "s3cr" not in repr(ch)

    asyncio.run(main())
    assert seen == ["Basic " + base64.b64encode(b"al@rts:s3cr:t").decode()]


def test_a_redirected_webhook_is_a_permanent_failure_that_names_the_fix() -> None:
    """A redirect is not followed (urllib would turn the POST into a GET and carry the credentials along):
    the delivery fails at once, saying so, rather than retrying what cannot change."""
    posts: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        posts.append(request.path)
        raise web.HTTPFound("/elsewhere")

    async def main() -> None:
        async with hook_site("/hook", handle) as where:
            ch = WebhookChannel(Webhook(url=f"http://{where}/hook", retries=2), quick_backoff_s=0.01)
            with pytest.raises(DeliveryError) as e:
                await ch.send(_message())
            await ch.close()
            assert e.value.permanent and "302" in str(e.value) and "webhook.url" in str(e.value)

    asyncio.run(main())
    assert posts == ["/hook"]  # once: not retried, not followed
