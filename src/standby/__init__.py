"""standby: two-server high availability for PostgreSQL-backed services."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Read on first use: importlib.metadata costs a few MB, and `agent --respawn`'s supervisor, a
    # stdlib-only module of this package that stays beside every agent, never asks for the version.
    if name != "__version__":
        raise AttributeError(f"module 'standby' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("standby")
    except PackageNotFoundError:  # running from a source tree
        value = "0.0.0+src"
    globals()["__version__"] = value
    return value
