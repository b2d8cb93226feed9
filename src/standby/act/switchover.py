"""A planned switchover, driven through both agents' APIs, with zero loss.

1. suspend automatic failover on both nodes (each agent ends that by itself
   after timings.maintenance_timeout_s, should this command die);
2. the primary lets go of its services and shuts PostgreSQL down cleanly; its
   shutdown checkpoint is the last WAL it will ever write in this role;
3. the standby promotes only once it has received WAL past that checkpoint,
   then takes the service IPs and services;
4. the old primary starts as a standby of the new one (sync is restored by
   the new primary's agent once it has caught up);
5. automatic failover is resumed.
If step 3 cannot happen in time, the old primary is started again as it was:
it has every commit, the standby never promoted, nothing is lost.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from standby import tls
from standby.cli.common import TokenRefused, auth_header
from standby.config import Config, read_secret
from standby.status import agent_status

Say = Callable[[str], None]


class SwitchoverError(Exception):
    pass


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Outcome:
    old_primary: str
    new_primary: str
    completed: bool
    steps: list[tuple[str, float]] = field(default_factory=list)
    reason: str = ""


CONNECT_TIMEOUT_S = 3.0  # to one of an agent's addresses, before the next one is tried


class Api:
    """The agents' action endpoints, reached over the private network first."""

    def __init__(self, cfg: Config) -> None:
        if cfg.api.token_file is None:
            raise SwitchoverError("api.token_file is not set: the agents' action endpoints are disabled")
        self.cfg = cfg
        self.token = read_secret(cfg.api.token_file, "api.token_file")
        self.ssl = tls.client_context(cfg)

    def post(self, node: str, path: str, body: dict[str, Any] | None = None, timeout_s: float = 120) -> dict[str, Any]:
        last: Exception | None = None
        for link in (self.cfg.nodes[node].private, self.cfg.nodes[node].public):
            try:
                auth = auth_header(self.cfg, str(link.ip), self.token)
            except TokenRefused as e:
                last = e
                continue
            # An address that drops packets would hold the whole timeout (minutes, with both
            # nodes' maintenance waiting on it) before the other network is tried.
            try:
                socket.create_connection((str(link.ip), self.cfg.api.port), timeout=CONNECT_TIMEOUT_S).close()
            except OSError as e:
                last = e
                continue
            req = urllib.request.Request(
                tls.api_url(self.cfg, link.ip, path), data=json.dumps(body or {}).encode(), method="POST",
                headers={"Content-Type": "application/json", **auth})
            try:
                with urllib.request.urlopen(req, timeout=timeout_s, context=self.ssl) as r:
                    return json.loads(r.read())  # type: ignore[no-any-return]
            except urllib.error.HTTPError as e:
                try:
                    msg = json.loads(e.read()).get("error", str(e))
                except ValueError:
                    msg = str(e)
                raise ApiError(e.code, msg) from None
            except (urllib.error.URLError, OSError) as e:
                last = e
        raise ApiError(0, f"{node}'s agent does not answer ({last})")


def roles(cfg: Config) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """(primary, standby, each agent's status), refusing anything but a healthy pair."""
    views = {n: agent_status(cfg, n, timeout_s=2.0) for n in cfg.nodes}
    for n, v in views.items():
        if v is None:
            raise SwitchoverError(f"{n}'s agent does not answer; a switchover needs both agents")
    prim = [n for n, v in views.items() if v["postgres"]["state"] == "primary"]  # type: ignore[index]
    if len(prim) != 1:
        raise SwitchoverError(f"expected exactly one primary, found {prim or 'none'}")
    primary = prim[0]
    standby = cfg.peer_of(primary)
    sv = views[standby]
    if sv["postgres"]["state"] != "standby" or not sv["postgres"]["streaming"]:  # type: ignore[index]
        raise SwitchoverError(f"{standby} is not a streaming standby ({sv['postgres']['state']}); "  # type: ignore[index]
                              f"rejoin it first")
    return primary, standby, views  # type: ignore[return-value]


def switchover(cfg: Config, to: str | None = None, catch_up_timeout_s: float = 10.0,
               say: Say = lambda m: None) -> Outcome:
    api = Api(cfg)
    primary, standby, _ = roles(cfg)
    if to is not None and to != standby:
        if to == primary:
            raise SwitchoverError(f"{to} is already the primary")
        raise SwitchoverError(f"unknown node {to!r}")
    out = Outcome(primary, standby, completed=False)
    t = time.monotonic()

    def step(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        out.steps.append((name, now - t))
        say(f"{name:<58} {1000 * (now - t):8.1f} ms")
        t = now

    try:
        # Inside the try: if the second node cannot be suspended, the first is resumed below.
        for n in (primary, standby):
            api.post(n, "/maintenance", {"suspend": True})
        step("automatic failover suspended on both nodes")
        try:
            demoted = api.post(primary, "/switchover/demote")
        except ApiError as e:
            _resume(api, primary, say)
            raise SwitchoverError(f"{primary} could not be stopped cleanly: {e}; it serves again") from None
        step(f"{primary}: services released, shut down at {demoted['checkpoint_lsn']}")
        try:
            promoted = api.post(standby, "/switchover/promote",
                                {"min_lsn": demoted["checkpoint_lsn"], "timeout_s": catch_up_timeout_s},
                                timeout_s=catch_up_timeout_s + 60)
        except ApiError as e:
            still = _still_standby(cfg, standby)
            if still is not True:
                # The error may have come after the promotion (or the answer was lost):
                # starting the old primary again could make two. A person decides.
                out.reason = f"{e}; {still}"
                raise SwitchoverError(
                    f"switchover stopped: promoting {standby} failed ({e}), and {still}. {primary} stays "
                    f"stopped so that two primaries cannot happen. Look with `standby status`: if {standby} is "
                    f"primary, run `standby rejoin --node {primary}`; if it is a streaming standby, run "
                    f"`standby switchover` again.") from None
            _resume(api, primary, say)
            out.reason = str(e)
            step(f"aborted: {primary} is primary again")
            raise SwitchoverError(f"switchover aborted, nothing lost: {e}. {primary} serves again.") from None
        step(f"{standby}: received past it, promoted (term {promoted['term']}), services taken")
        for problem in promoted.get("problems", []):
            say(f"warning: {standby}: {problem}; its agent retries, check `standby status`")
        out.completed = True
        try:
            api.post(primary, "/switchover/follow")
            step(f"{primary}: streaming from {standby}")
        except ApiError as e:
            say(f"warning: {primary} did not start as a standby ({e}); run `standby rejoin --node {primary}`")
    finally:
        for n in (primary, standby):
            try:
                api.post(n, "/maintenance", {"suspend": False})
            except ApiError as e:
                say(f"warning: could not resume automatic failover on {n}: {e}")
        step("automatic failover resumed")
    return out


def _still_standby(cfg: Config, node: str) -> bool | str:
    """True if ``node``'s agent says its PostgreSQL is a standby that is not being promoted; else why not."""
    st = agent_status(cfg, node, timeout_s=5.0)
    if st is None:
        return f"{node}'s agent does not answer, so it may have been promoted"
    pg, state = st.get("postgres") or {}, st.get("state") or {}
    if pg.get("state") != "standby" or state.get("promoting"):
        return f"{node} is {pg.get('state')}{' (promoting)' if state.get('promoting') else ''}"
    return True


def _resume(api: Api, node: str, say: Say) -> None:
    try:
        api.post(node, "/switchover/resume")
    except ApiError as e:
        say(f"ERROR: {node} could not resume as primary: {e}; check it at once (`standby status`)")
