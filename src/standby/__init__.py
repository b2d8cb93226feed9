"""standby: two-server high availability for PostgreSQL-backed services."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("standby")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"
