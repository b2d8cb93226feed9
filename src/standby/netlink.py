"""pyroute2's IPRoute and NetlinkError, imported without the rest of pyroute2.

pyroute2's package ``__init__`` imports every part of the library (IPDB, NDB with sqlite3, WireGuard,
nl80211, conntrack, ...): about 6 MB that would stay in the agent for its whole life, which uses one
socket class. So the package is registered here without running its ``__init__``; its submodules load
as usual. Code that asks the package itself for one of its names (``from pyroute2 import NetNS``)
still gets it: the first such question runs the real ``__init__`` into the same module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

PACKAGE = "pyroute2"


def _register_bare(name: str) -> None:
    if name in sys.modules:
        return  # already imported (whole or bare): nothing to save any more
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an importable package", name=name)
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)
    whole = False

    def __getattr__(attr: str) -> Any:
        nonlocal whole
        if attr.startswith("__") and attr != "__all__":
            raise AttributeError(attr)
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")  # a submodule: no need for the rest
        if whole:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        whole = True
        loader.exec_module(package)  # a name only the package's own __init__ defines
        try:
            return package.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = package


_register_bare(PACKAGE)

from pyroute2.iproute import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError"]
