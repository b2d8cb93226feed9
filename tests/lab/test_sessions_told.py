"""CI run 42: a client waiting for an answer when its primary let go of the service IP waited for good.

The systemd pair's writer (libpq's defaults: no TCP keepalives) had an INSERT in flight when the unit's
`fence --if-unclean` removed the service IP and then stopped PostgreSQL; the server's goodbye could no
longer leave a removed address, the client sent nothing more, and it waited past the test's 60 s. The
lab's own clients all set keepalives, which is why no lab test had seen it. Here the client is a plain
one, and each test asks only that its query ends (with an answer or an error), never that it waits on.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from standby.lab import Lab, netns
from standby.lab.configfile import app_dsn_for
from standby.lab.pair import holders, primaries, start_pair, wait_ready
from standby.lab.topology import PG_PORT, SERVICE_IP
from tests.lab.netwatch import ArpClaims, TcpStates, public_mac

ENDED_WITHIN_S = 20  # the query sleeps 10 s (or longer): a client still waiting after this was never told


@pytest.fixture
def pair(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    return wait_ready(start_pair(lab_factory("sync")))


class InFlight:
    """One query through the service IP from the client network, as a client with libpq's defaults sends it."""

    def __init__(self, lab: Lab, sleep_s: int = 10) -> None:
        self.query = f"SELECT pg_sleep({sleep_s})"
        kept = conninfo_to_dict(lab.spec.secret(app_dsn_for("alpha")).read_text().strip())
        self.params: dict[str, Any] = {k: v for k, v in kept.items() if not k.startswith(("keepalives", "tcp_user"))}
        self.params.update(host=SERVICE_IP.split("/")[0], connect_timeout=2)
        self.outcome: str | None = None
        self.thread = threading.Thread(target=netns.call_in, args=(lab.netns("client"), self._run), daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(**self.params, autocommit=True) as conn:
                conn.execute(self.query.encode())
            self.outcome = "answered"
        except psycopg.Error as e:
            self.outcome = f"error: {str(e).strip().splitlines()[0]}"

    def start(self, lab: Lab, on: str) -> InFlight:
        self.thread.start()

        def sleeping() -> bool:
            with lab.pg_connect(on) as c:
                return bool(c.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'",
                                      (self.query,)).fetchone()[0] == 1)  # type: ignore[index]
        lab.wait_for(f"the client's query running on {on}", sleeping, timeout_s=10)
        return self

    def wait_ended(self) -> str:
        self.thread.join(ENDED_WITHIN_S)
        assert not self.thread.is_alive(), (f"the client's query had neither answer nor error {ENDED_WITHIN_S} s "
                                            "later: it was never told its server stopped")
        assert self.outcome is not None
        return self.outcome


def test_ci42_a_query_in_flight_at_a_switchover_ends_instead_of_waiting(pair: Lab) -> None:
    q = InFlight(pair).start(pair, "alpha")
    res = pair.standby("alpha", "switchover", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert primaries(pair) == ["beta"] and holders(pair) == ["beta"]
    assert q.wait_ended().startswith("error: terminating connection")


def test_ci42_a_query_in_flight_when_the_primarys_agent_dies_ends_instead_of_waiting(pair: Lab) -> None:
    """The agent killed: its supervisor's `fence --if-unclean` (the unit's ExecStopPost) either stops the
    server (the peer could be promoted) or keeps it; the client hears an error or gets its answer."""
    q = InFlight(pair).start(pair, "alpha")
    pair.kill_agent("alpha")
    started = time.monotonic()
    outcome = q.wait_ended()
    assert outcome == "answered" or outcome.startswith("error:"), outcome
    print(f"the client's query ended {time.monotonic() - started:.1f} s after the kill: {outcome}")


def test_ci42_a_query_in_flight_when_a_frozen_primary_thaws_and_fences_itself_ends_instead_of_waiting(
        pair: Lab) -> None:
    """The agent's own fence: alpha's host paused (every process, every packet) long enough for beta to take
    over; thawed, alpha's agent fences at once and its release waits for the sessions its server ends.
    The query sleeps longer than the test lasts: pg_sleep counts wall-clock time, so a pause longer than its
    sleep would let it answer at the thaw, before the fence's signal, whatever the fence does."""
    q = InFlight(pair, sleep_s=600).start(pair, "alpha")
    pair.freeze("alpha")
    # CI runs 54 and 57 saw the client wait for good here; what the next such run shows (on failure): how
    # alpha's session socket ended, and who claimed the service IP on the client network.
    with TcpStates(pair, "alpha", PG_PORT) as sockets, ArpClaims(pair, SERVICE_IP.split("/")[0]) as claims:
        try:
            # A paused alpha still has the address in its kernel: only beta's side can be waited for.
            pair.wait_for("beta primary with the service IP", lambda: primaries(pair) == ["beta"]
                          and "beta" in holders(pair), timeout_s=15)
        finally:
            thawed = time.time()
            pair.thaw("alpha")
        q.thread.join(ENDED_WITHIN_S)
    macs = {public_mac(pair, n): n for n in ("alpha", "beta")}
    seen = (f"thawed at {thawed:.3f}; alpha's sockets on {PG_PORT}:\n{sockets.told()}\nservice IP claimed by: "
            + ", ".join(f"{t:.3f} {macs.get(m, m)}" for t, m in claims.senders))
    assert not q.thread.is_alive(), seen
    # Told either way, never answered: alpha's stopping server sends its "terminating connection" and
    # FIN, but the client's acknowledgement goes to the service IP's new holder (beta's gratuitous ARP),
    # whose kernel knows no such connection and resets it; when the reset lands before libpq read the
    # message, the client sees "server closed the connection unexpectedly" (captured in the lab: the
    # message, the client's ACK, beta's RST 8 ms later; CI run of stop 33). An answer would mean the
    # fenced node's server still served the query.
    outcome = q.wait_ended()
    assert outcome.startswith(("error: terminating connection", "error: consuming input failed: server closed the "
                               "connection unexpectedly")), outcome
    pair.wait_for("alpha fenced and without the service IP", lambda: primaries(pair) == ["beta"]
                  and holders(pair) == ["beta"], timeout_s=15)
