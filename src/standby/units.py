"""The systemd units of a node, derived from the configuration: what `standby show systemd` prints.

One template per unit, filled from the configuration, the node and where `standby` is installed, so
the agent's sandbox always opens exactly the directories this node's configuration names.
etc/standby.service and etc/standby-ship.service are these templates printed for the example
configuration (tests/unit/test_units.py keeps them equal).

Pure: the caller finds the installation (``Install``); nothing here reads files or the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

from standby.act.postgres import unit_name as postgres_unit
from standby.config import Config

# Characters a path may have to be written into a unit as it is: no quoting, no specifier ('%'),
# no separator (space) for systemd to interpret.
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9/._+@:-]*$")
# systemd's own rule for a unit name (unit_name_is_valid): ASCII letters, digits and ":-_.\".
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+$")
# What ProtectHome= and PrivateTmp= hide from the unit's processes.
_HOMES = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))
_TMPS = (PurePosixPath("/tmp"), PurePosixPath("/var/tmp"))


class UnitName(StrEnum):
    AGENT = "standby"
    SHIPPER = "standby-ship"

    @property
    def file(self) -> str:
        return f"{self.value}.service"


class UnitError(Exception):
    """The configuration or the installation cannot be written into a unit; says which key and the fix."""


@dataclass(frozen=True)
class Install:
    """Where the running `standby` lives: its command and the directories its code is loaded from."""

    exe: PurePosixPath  # the `standby` command, symbolic links resolved
    roots: tuple[PurePosixPath, ...]  # the virtualenv, the package's directory


def parse_unit_name(text: str) -> UnitName:
    """``standby`` or ``standby-ship`` (``.service`` may follow); anything else is refused with the choices."""
    try:
        return UnitName(text.removesuffix(".service"))
    except ValueError:
        choices = " or ".join(f"--unit {u.value}" for u in UnitName)
        raise UnitError(f"unknown unit {text!r}: `standby show systemd` prints {UnitName.AGENT.file} and, with "
                        f"[spool], {UnitName.SHIPPER.file}; pass {choices}") from None


def render(cfg: Config, node: str, config_path: PurePosixPath, install: Install, unit: UnitName) -> str:
    """The unit file ``unit`` for ``node``; raises UnitError naming the key and the fix."""
    name = postgres_unit(node)  # the transient unit the agent runs this node's PostgreSQL in
    if not _UNIT_NAME.match(name):
        raise UnitError(f"nodes.{node}: the agent runs this node's PostgreSQL as {name}, a name systemd refuses "
                        "(unit names are ASCII); rename the node with letters a-z, digits, '-' or '_'")
    exe = _plain(install.exe, "the standby command",
                 "install standby where its path has only letters, digits and / . _ + @ : -")
    config = _plain(config_path, "--config", "use a configuration path without spaces, quotes or '%'")
    head = {"node": node, "cluster": cfg.cluster, "exe": exe, "config": config, "sandbox": _sandbox(install)}

    def run(command: str) -> str:  # what both units run, and how
        return "\n".join(("Type=simple", f"Environment=STANDBY_CONFIG={config}", f"Environment=STANDBY_NODE={node}",
                          f"ExecStart={exe} {command}"))

    if unit is UnitName.AGENT:
        return _AGENT.format(**head, run=run("agent"), postgres_unit=name, writable=_writable(cfg, node))
    if cfg.spool is None:
        raise UnitError(f"spool: {config_path} has no [spool] section, so this node runs no shipper and "
                        f"{UnitName.SHIPPER.file} has nothing to do; add [spool] (see etc/standby.example.toml) "
                        f"or print {UnitName.AGENT.file} (--unit {UnitName.AGENT.value})")
    return _SHIPPER.format(**head, run=run("ship"), writable=_shipper_writable(cfg, node))


def _plain(path: PurePosixPath | Path, key: str, fix: str) -> str:
    text = str(path)
    if not _PLAIN_PATH.match(text):
        raise UnitError(f"{key}: {text!r} cannot be written into a unit file as it is (only an absolute path of "
                        f"letters, digits and / . _ + @ : -); {fix}")
    # /var/run is a link to /run; systemd wants (and reports) the real path.
    return "/run" + text.removeprefix("/var/run") if text == "/var/run" or text.startswith("/var/run/") else text


def _under(path: PurePosixPath, tops: tuple[PurePosixPath, ...]) -> bool:
    return any(path == t or t in path.parents for t in tops)


def _sandbox(install: Install) -> str:
    """ProtectHome and the read-only views of an installation the sandbox would otherwise hide (a pipx
    install under /root, a virtualenv under /tmp): the unit must be able to load its own code."""
    hidden = sorted({r for r in install.roots if _under(r, _HOMES + _TMPS)})
    lines = ["ProtectHome=" + ("tmpfs" if any(_under(r, _HOMES) for r in hidden) else "yes")]
    if hidden:
        lines.insert(0, "# The installation lives where ProtectHome/PrivateTmp hide everything else: bound in read-only.")
        lines.extend(f"BindReadOnlyPaths={_plain(r, 'the installation', 'install standby elsewhere')}" for r in hidden)
    return "\n".join(lines)


def _cover(paths: list[tuple[PurePosixPath, bool, str]]) -> str:
    """ReadWritePaths= for (path, may be missing, its key), in the given order: a path inside another listed
    one is left out; '-' marks the ones whose absence is fine (systemd otherwise refuses to start the unit)."""
    required = {p for p, optional, _ in paths if not optional}
    seen: set[PurePosixPath] = set()
    keep = []
    for p, _, key in paths:
        if p not in seen and not any(q in p.parents for q, _, _ in paths):
            seen.add(p)
            keep.append(("" if p in required else "-") + _plain(p, key, "choose a path without spaces, quotes or '%'"))
    return " ".join(keep)


def _writable(cfg: Config, node: str) -> str:
    pg = cfg.pg(node)
    return _cover([
        (PurePosixPath(cfg.state_dir_for(node)), False, "state_dir"),
        # The parent too: a rejoin moves the old data directory aside next to it, salvage works beside it.
        (PurePosixPath(pg.data_dir).parent, True, "postgres.data_dir"),
        (PurePosixPath(pg.socket_dir), True, "postgres.socket_dir"),
        (PurePosixPath("/etc/postgresql"), True, "/etc/postgresql"),  # Debian's pg_hba.conf, for a Debian cluster
    ])


def _shipper_writable(cfg: Config, node: str) -> str:
    state = PurePosixPath(cfg.state_dir_for(node))
    own = [(PurePosixPath(cfg.spool_state_dir(node)), "spool.state_dir"),
           (PurePosixPath(cfg.spool_status_file(node)).parent, "spool.status_file")]
    # Under the agent's state directory (the default) that directory exists already; elsewhere it must.
    return _cover([(state, False, "state_dir") if state in p.parents or p == state else (p, False, key)
                   for p, key in own])


_AGENT = """\
# standby.service: the standby node agent of node {node} (cluster {cluster}), printed by
# `standby show systemd` from {config}.
# Print it again after changing state_dir or [postgres]'s directories, or moving the installation.
# Install:
#   standby show systemd > /etc/systemd/system/standby.service && systemctl enable --now standby
[Unit]
Description=standby node agent (PostgreSQL, service IPs, services)
After=network-online.target
Wants=network-online.target
# Never give up restarting: a node without its agent decides nothing (the default start limit,
# 5 starts in 10 s, would leave it so for good after a burst of quick deaths).
StartLimitIntervalSec=0

[Service]
{run}
# If the agent dies without stopping cleanly, nobody decides for this node any
# more: drop the service IPs, stop the services, and stop PostgreSQL if the peer
# could take over meanwhile. A clean stop (systemctl stop/restart) leaves all as is.
ExecStopPost={exe} fence --if-unclean
# PostgreSQL does not live in this unit: the agent starts it as a transient unit of its own
# (systemd-run, {postgres_unit}), so restarting the agent never touches it.
# Services are started through systemctl for the same reason. What is left here when the agent
# has gone (a hung pg_ctl, a probe) is the agent's own and is killed.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=always
RestartSec=0.2
LimitNOFILE=65536
# Its log (stderr) goes to the journal: journalctl -u standby, and -u {postgres_unit}.

# Root, with only the capabilities the agent uses:
#   NET_ADMIN         service IPs over netlink
#   NET_RAW           gratuitous ARP, ARP and ICMP probes
#   SETUID SETGID     run PostgreSQL's tools as its account (runuser, files written as that account)
#   CHOWN FOWNER      hand the account what it must own (a fresh data directory, its log directory)
#   DAC_OVERRIDE DAC_READ_SEARCH  look into the account's 0700 data directory (postmaster.pid)
#   KILL              signal the postmaster of another account (a fence's last step)
#   SYS_NICE          the agent's real-time priority (timings.realtime_priority)
#   AUDIT_WRITE       runuser's PAM session logs to the audit system
User=root
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SETUID CAP_SETGID CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE \
CAP_DAC_READ_SEARCH CAP_KILL CAP_SYS_NICE CAP_AUDIT_WRITE
# No exec may gain privileges. Nothing here needs to: runuser is not set-user-ID and is run by root,
# which already holds SETUID/SETGID and only gives privileges up; a set-user-ID program would gain
# nothing, so none is relied on (and RestrictSUIDSGID keeps any from being made).
NoNewPrivileges=yes
RestrictSUIDSGID=yes
# The file system is read-only but for the agent's state_dir and PostgreSQL's own directories (the
# data directory's parent, the socket directory, Debian's /etc/postgresql), as the configuration
# names them. A server started by pg_ctl (no systemd-run) inherits this view.
ProtectSystem=strict
ReadWritePaths={writable}
{sandbox}
PrivateTmp=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
LockPersonality=yes
RestrictRealtime=no
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""

_SHIPPER = """\
# standby-ship.service: the call-record shipper (`standby ship`, [spool]) of node {node} (cluster {cluster}),
# printed by `standby show systemd --unit standby-ship` from {config}.
# Install:
#   standby show systemd --unit standby-ship > /etc/systemd/system/standby-ship.service
#   systemctl enable --now standby-ship
#
# A unit of its own, not part of the agent: reading the spool, waiting on a primary that is
# failing over or on a full disk never delays the agent's heartbeats and decisions, and either
# can restart without stopping the other. Its status file is what the agent shows in
# `standby status` and /metrics.
[Unit]
Description=standby call-record shipper (spool -> the current primary, each record once)
After=network-online.target standby.service
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
{run}
# Progress is saved after every commit: a restart at any moment sends at most one batch again,
# which the unique key turns into duplicates, never into double rows.
Restart=always
RestartSec=1
KillSignal=SIGTERM
TimeoutStopSec=15

# It reads the spool, writes its own state and connects to PostgreSQL: root with one capability,
#   DAC_READ_SEARCH   read the spool files the service (kamailio, freeswitch, asterisk) owns
User=root
CapabilityBoundingSet=CAP_DAC_READ_SEARCH
NoNewPrivileges=yes
ProtectSystem=strict
# spool.state_dir (default state_dir/spool) and spool.status_file's directory, as configured.
ReadWritePaths={writable}
{sandbox}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""
