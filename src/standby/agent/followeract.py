"""A follower agent's one connection to its own PostgreSQL, and the actions it runs there.

It owns: the connection (opened on first use, dropped after any error), reading the server (through
followerobs.read_own), the slots of the followers cascading from it, re-pointing it (the passfile for
every possible upstream, ``ALTER SYSTEM SET primary_conninfo`` and ``primary_slot_name``, then
``pg_reload_conf()``: PostgreSQL 15 reconnects its WAL receiver without a restart, and
``recovery_target_timeline`` stays at its default, ``latest``), starting a stopped server
(with ``standby.signal``: it comes back in recovery), and rejoining it to a primary it can no longer
follow (act.rejoin for a follower: stop, salvage, pg_rewind or clone, stream from that primary).
It may not: decide, promote (nothing here takes a server out of recovery), or touch the pair's servers
(on the primary a rejoin runs a checkpoint, makes this follower's slot, and reads).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import psycopg
from psycopg import sql

from standby.act import postgres as pgact
from standby.act import rejoin as rj
from standby.agent import followerobs
from standby.agent.localdb import close_quietly, open_agent_connection
from standby.config import Config, read_secret
from standby.follow import FollowerPg
from standby.observe import postgres as pgobs

log = logging.getLogger(__name__)


class OwnServer(Protocol):
    """What the follower's loop does with its own server (a fake in unit tests)."""

    def read(self) -> tuple[FollowerPg, float | None] | None: ...  # None: it runs but does not answer
    def point_at(self, target: str) -> None: ...
    def start(self) -> None: ...
    # Blocking (minutes): run off the decision loop. ``confirm`` raises RejoinRefused once ``target`` is not the
    # primary to follow any more; ``report`` hears each step.
    def rejoin(self, target: str, confirm: Callable[[], None], report: Callable[[str], None]) -> rj.RejoinResult: ...


def passfile_text(cfg: Config, node: str) -> str:
    """One line per member this follower may stream from: the pair nodes and the other followers."""
    pg = cfg.pg(node)
    password = read_secret(pg.replication_password_file, "postgres.replication_password_file")
    members = [*cfg.nodes, *(f.name for f in cfg.followers if f.name != node)]
    return "".join(pgact.pgpass_line(str(cfg.link(m).ip), cfg.pg(m).port, pg.replication_user, password)
                   for m in members)


def conninfo_settings(cfg: Config, node: str, target: str) -> dict[str, str]:
    return {"primary_conninfo": pgact.standby_conninfo(cfg, node, target), "primary_slot_name": cfg.slot_name(node)}


class LocalFollowerDb:
    def __init__(self, cfg: Config, node: str) -> None:
        self.cfg, self.node = cfg, node
        self._conn: psycopg.Connection | None = None
        self._names = followerobs.names_by_ip(cfg)
        self._timeline = 0  # the last received timeline seen: kept while the receiver is away
        self.version_num: int | None = None  # server_version_num, read once per connection

    def _local(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = open_agent_connection(self.cfg, self.node)
            row = self._conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
            self.version_num = int(row[0]) if row else None
            # The slots of the followers cascading from this one (PostgreSQL allows them in recovery).
            if made := pgact.ensure_follower_slots(self._conn, self.cfg, self.node):
                log.info("replication slots for cascading followers created: %s", ", ".join(made))
        return self._conn

    def _drop(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def read(self) -> tuple[FollowerPg, float | None] | None:
        """(the server, the replay age in seconds); a stopped server reads as not running."""
        try:
            conn = self._local()
            pg = followerobs.read_own(conn, self._names, self._timeline)
            age = followerobs.replay_age_s(conn) if pg.in_recovery else None
        except psycopg.Error as e:
            self._drop()
            if not pgobs.postmaster_running(self.cfg.pg(self.node).data_dir):
                return FollowerPg(running=False), None
            log.info("own PostgreSQL runs but does not answer: %s", e)
            return None
        self._timeline = pg.timeline
        return pg, age

    def point_at(self, target: str) -> None:
        pg = self.cfg.pg(self.node)
        path = pg.data_dir / pgact.STANDBY_PASSFILE
        text = passfile_text(self.cfg, self.node)
        if pgact.read_as(pg.os_user, path) != text:
            pgact.write_as(pg.os_user, path, text)
        conn = self._local()
        for key, value in conninfo_settings(self.cfg, self.node, target).items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(key), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")

    def start(self) -> None:
        self._drop()
        self._in_recovery_at_start()
        pgact.start(self.cfg, self.node, 60)

    def _in_recovery_at_start(self) -> None:
        """A data directory left by a rejoin that stopped after pg_rewind (or a clone) and before starting it lacks
        standby.signal (pg_rewind removes the files its source, a primary, lacks): alone it would end recovery as
        a primary. It starts in recovery, and streams once pointed at the primary. (A server an operator promoted
        has no backup_label: it is left as it is.)"""
        pg = self.cfg.pg(self.node)
        if pgact.awaits_wal_from_source(self.cfg, self.node) and \
                pgact.read_as(pg.os_user, pg.data_dir / "standby.signal") is None:
            pgact.write_as(pg.os_user, pg.data_dir / "standby.signal", "")

    def rejoin(self, target: str, confirm: Callable[[], None], report: Callable[[str], None]) -> rj.RejoinResult:
        from standby.salvage import salvage_for_rejoin

        who = rj.Rejoining.follower(self.cfg, self.node, target, confirm)
        confirm()  # before the server is stopped
        pg = self.cfg.pg(self.node)
        if pgobs.postmaster_running(pg.data_dir):
            # A connection of its own: the loop's thread keeps reading the server through the agent's.
            with pgobs.connect_local(self.cfg, self.node) as conn:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            if not in_recovery:
                raise rj.RejoinRefused(f"{self.node}'s server is out of recovery (promoted by an operator): "
                                       "it is never rejoined automatically")
            pgact.stop(self.cfg, self.node, pgact.StopMode.FAST)
            report("the follower's server stopped")
        return rj.rejoin(self.cfg, who, state_dir=self.cfg.state_dir_for(self.node), report=report,
                         salvage=salvage_for_rejoin if self.cfg.salvage.tables else None)
