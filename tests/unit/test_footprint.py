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
