"""Issue 13, part 3: what the agent holds for its whole life, and what each decision step costs."""

from __future__ import annotations

import subprocess
import sys

AGENT_IMPORTS = "import standby.cli.main, standby.cli.agent, standby.api, standby.agent.stallwatch"


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}; import sys; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                              text=True).stdout.split())


def test_i13_the_agent_holds_only_the_netlink_parts_it_uses() -> None:
    """pyroute2's package imports all of itself (IPDB, NDB and sqlite3, WireGuard, nl80211...); the
    agent adds and removes addresses with one socket class."""
    loaded = _loaded_after(AGENT_IMPORTS)
    assert "pyroute2.iproute.linux" in loaded
    unused = {m for m in loaded if m.startswith(("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.ipset", "pyroute2.iwutil",
                                                 "pyroute2.conntrack", "pyroute2.plan9", "pyroute2.netlink.nl80211",
                                                 "pyroute2.netlink.generic.wireguard"))}
    assert unused == set()
    assert "sqlite3" not in loaded


def test_i13_pyroute2_still_gives_its_own_names_to_whoever_asks() -> None:
    """The lab and the tests import pyroute2's names from the package, in the agent's process or not."""
    probe = ("import standby.netlink, pyroute2; from pyroute2 import NetNS, IPRoute; "
             "assert IPRoute is standby.netlink.IPRoute, IPRoute; assert pyroute2.NetNS is NetNS; "
             "assert isinstance(pyroute2.__version__, str); "
             "import pyroute2.netlink.exceptions as e; assert e.NetlinkError is standby.netlink.NetlinkError; "
             "ok = False\n"
             "try:\n    pyroute2.no_such_name\nexcept AttributeError:\n    ok = True\n"
             "assert ok")
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_i13_pyroute2_imported_whole_first_is_left_as_it_is() -> None:
    probe = ("import pyroute2; whole = pyroute2.__dict__.get('NDB'); import standby.netlink; "
             "assert whole is not None and pyroute2.IPRoute is standby.netlink.IPRoute")
    subprocess.run([sys.executable, "-c", probe], check=True)


class _OneRowConnection:
    """Answers every statement with ``row``; records what was asked (a fake of psycopg's connection)."""

    def __init__(self, row: tuple[object, ...]) -> None:
        self.row, self.asked = row, []  # type: list[tuple[str, object]]

    def execute(self, sql: str, params: object = None) -> _OneRowConnection:
        self.asked.append((sql, params))
        return self

    def fetchone(self) -> tuple[object, ...]:
        return self.row


def test_i13_the_step_reads_a_primary_in_one_round_trip() -> None:
    from standby.agent.localdb import read_local
    from standby.model import DbState, LocalPg, Lsn

    conn = _OneRowConnection((False, '"beta"', "0/3000060", "sync", "0/3000000", None, None, None, None))
    local, names = read_local(conn, "beta")  # type: ignore[arg-type]
    assert len(conn.asked) == 1 and conn.asked[0][1] == ("beta",)
    assert names == '"beta"'
    assert local == LocalPg(DbState.PRIMARY, lsn=Lsn.parse("0/3000060").value, peer_sync=True,  # type: ignore[union-attr]
                            peer_flush_lsn=Lsn.parse("0/3000000").value)  # type: ignore[union-attr]
    # A standby connected but not (yet) in sync, or none connected at all.
    assert not read_local(_OneRowConnection((False, "", "0/5", "async", "0/4", None, None, None, None)),  # type: ignore[arg-type]
                          "beta")[0].peer_sync
    alone, _ = read_local(_OneRowConnection((False, "", "0/5", None, None, None, None, None, None)), "beta")  # type: ignore[arg-type]
    assert (alone.peer_sync, alone.peer_flush_lsn) == (False, None)


def test_i13_the_step_reads_a_standby_in_one_round_trip() -> None:
    from standby.agent.localdb import read_local
    from standby.model import DbState, LocalPg, Lsn

    conn = _OneRowConnection((True, "", None, None, None, "0/3000100", "0/3000080", "streaming", 0.25))
    local, names = read_local(conn, "alpha")  # type: ignore[arg-type]
    assert len(conn.asked) == 1 and names == ""
    assert local == LocalPg(DbState.STANDBY, lsn=Lsn.parse("0/3000100").value,  # type: ignore[union-attr]
                            replay_lsn=Lsn.parse("0/3000080").value, streaming=True, upstream_age_s=0.25)  # type: ignore[union-attr]
    # No WAL receiver (the upstream is gone): not streaming, no age; the position is what was replayed.
    gone, _ = read_local(_OneRowConnection((True, "", None, None, None, None, "0/7", None, None)), "alpha")  # type: ignore[arg-type]
    assert gone == LocalPg(DbState.STANDBY, lsn=7, replay_lsn=7, streaming=False, upstream_age_s=None)
