"""The configuration's small tables that the cluster's shape (standby.topology) is made of.

They live apart from standby.config so that the configuration can check its topology with
standby.topology while topology reads these tables: config imports both, neither imports config.
Pure models only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _interface(value: str) -> str:
    if not value or len(value) > 15 or any(c in value for c in " /\t\n:"):
        raise ValueError("expected a Linux interface name (1-15 characters, no spaces, '/' or ':')")
    return value


Interface = Annotated[str, AfterValidator(_interface)]


class Link(Strict):
    """One of a node's two networks: an address with its prefix and an interface."""

    address: ipaddress.IPv4Interface = Field(description="address with prefix, e.g. 192.0.2.11/24")
    interface: Interface

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return self.address.ip


class ServiceIP(Strict):
    address: ipaddress.IPv4Interface = Field(description="floating address with prefix")
    interface: Interface


class FollowerRole(StrEnum):
    WARM = "warm"  # disaster recovery: promoted by an operator only
    REPORTING = "reporting"  # serves reads; never promoted


def _valid_name(name: str) -> bool:
    # The rule of node names: a slot name, an application_name and a file name can be made from it.
    return bool(name) and len(name) <= 32 and all(c.isalnum() or c in "-_" for c in name)


class FollowerPostgres(Strict):
    """A follower's own overrides of [postgres]: normally none (one follower to a host, the file's paths)."""

    data_dir: Path | None = None
    socket_dir: Path | None = None
    bin_dir: Path | None = None


class Follower(Strict):
    """One ``[[followers]]`` table (standby.topology checks the whole shape)."""

    name: str
    public: Link
    private: Link
    role: FollowerRole
    upstream: str = "primary"  # "primary", "standby" or another follower's name (topology.KEYWORDS)
    # Reports connect here; it stays on this follower (a follower's address never floats).
    reporting_ip: ServiceIP | None = None
    # Several followers on one host (the lab) need a data directory each.
    postgres: FollowerPostgres | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _valid_name(v):
            raise ValueError("expected letters, digits, '-' or '_' (max 32)")
        return v

    def addresses(self) -> Iterator[tuple[str, ipaddress.IPv4Address]]:
        """(key suffix, address) of every address this follower uses."""
        yield "public.address", self.public.ip
        yield "private.address", self.private.ip
        if self.reporting_ip is not None:
            yield "reporting_ip.address", self.reporting_ip.address.ip
