"""Bootstrap: turn a running primary plus an empty standby into a streaming pair.

Run on each node (the primary first). Every step checks before it changes, so
re-running on a healthy pair changes nothing, and a half-done pair is either
completed or the exact blocker is named. A data directory holding data is
never removed; with ``replace_data`` it is moved aside, not deleted.
"""

from __future__ import annotations

import time

import psycopg

from standby import __version__, salvage, tls, versioncheck
from standby.act import postgres as act
from standby.act.bootsteps import BootstrapBlocked, Report, Step, move_aside, refuse_foreign, refuse_unanswering
from standby.act.bootstrap_follower import bootstrap_follower
from standby.config import Config, Durability
from standby.documents import NodeFacts
from standby.model import PgRole
from standby.observe import postgres as obs
from standby.observe.system import local_facts


def bootstrap(cfg: Config, node: str, *, restart: bool = False, replace_data: bool = False,
              report: Report = lambda s: None) -> list[Step]:
    steps: list[Step] = []
    tls.check(cfg, node)  # before anything changes: PostgreSQL would refuse the files only at reload
    act.require_layout(cfg, node)  # a cluster missing here, or not its account's: refused before anything changes

    def note(step: Step) -> None:
        steps.append(step)
        report(step)

    if node not in cfg.nodes:  # a follower ([[followers]]): cloned from the pair's primary
        bootstrap_follower(cfg, node, replace_data, note)
        return steps
    local = obs.observe_local(cfg, node)
    if local.role is PgRole.PRIMARY:
        _primary(cfg, node, restart, note)
    elif local.role is PgRole.STANDBY:
        _running_standby(cfg, node, note)
    else:
        _standby_from_stopped(cfg, node, local.role, replace_data, note)
    return steps


# -- primary side ---------------------------------------------------------

def _hba_step(cfg: Config, peer: str, changed: bool) -> Step:
    return Step("pg_hba.conf", changed,
                f"replication allowed from {cfg.nodes[peer].private.ip} only" + ("" if changed else " (unchanged)"))


def _primary(cfg: Config, node: str, restart: bool, note: Report) -> None:
    peer = cfg.peer_of(node)
    with obs.connect_local(cfg, node) as conn:
        _refuse_version_mismatch(cfg, node, obs.read_node_facts(conn).get(peer))
        checksums = conn.execute("SHOW data_checksums").fetchone()[0] == "on"  # type: ignore[index]
        changed, pending = act.ensure_settings(conn, act.primary_settings(cfg, node, checksums),
                                               cfg.layout(node), cfg.pg(node).os_user)
        note(Step("replication settings", bool(changed), ", ".join(changed) or "already in place"))
        role_changes = act.ensure_replication_role(conn, cfg, node)
        role_changes += salvage.ensure_apply_rights(conn, cfg, node)
        note(Step(f"replication role {cfg.pg(node).replication_user}", bool(role_changes),
                  "; ".join(role_changes) or "exists, SCRAM password matches"))
        hba = act.ensure_hba(conn, cfg, node)
        note(_hba_step(cfg, peer, hba))
        slot = act.ensure_slot(conn, cfg.slot_name(peer))
        note(Step(f"replication slot {cfg.slot_name(peer)}", slot, "created" if slot else "exists"))
        if cfg.followers:
            made = act.ensure_follower_slots(conn, cfg, node)
            note(Step("replication slots for followers", bool(made), ", ".join(made) or "exist"))
        table = act.ensure_facts_table(conn, cfg.pg(node).replication_user)
        act.write_facts(conn, local_facts(cfg, node))
        note(Step("node facts", table, f"{node}: standby {__version__}"))
    if pending:
        if not restart:
            raise BootstrapBlocked(
                f"PostgreSQL on {node} must restart to apply {', '.join(sorted(set(pending)))}; "
                "re-run with --restart (a few seconds without the database) or restart it yourself, then re-run"
            )
        act.stop(cfg, node, act.StopMode.FAST)
        act.start(cfg, node)
        note(Step("restart", True, f"applied {', '.join(sorted(set(pending)))}"))
    with obs.connect_local(cfg, node) as conn:
        streaming = conn.execute(
            "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'", (peer,)
        ).fetchone()
        if not streaming:
            note(Step("standby", False, f"{peer} is not streaming yet: run `standby bootstrap --node {peer}` on {peer}"))
            return
        _durability(cfg, peer, conn, note)


def _durability(cfg: Config, standby: str, primary_conn: psycopg.Connection, note: Report) -> None:
    """Make the standby synchronous (or not) as configured, and check the result."""
    want = act.sync_names(cfg, standby) if cfg.replication.durability is Durability.SYNC else ""
    expected = "async" if not want else "quorum" if cfg.replication.quorum else "sync"
    changed = act.set_sync_names(primary_conn, want)
    deadline = time.monotonic() + 10
    state = None
    while time.monotonic() < deadline:
        row = primary_conn.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                                   (standby,)).fetchone()
        state = row[0] if row else None
        if state == expected:
            break
        time.sleep(0.1)
    else:
        raise BootstrapBlocked(f"{standby} reports sync_state {state!r} after setting synchronous_standby_names = {want!r}")
    note(Step(f"durability {cfg.replication.durability.value}", changed, f"{standby} is {state}"))


def _refuse_version_mismatch(cfg: Config, node: str, peer_facts: NodeFacts | None) -> None:
    if peer_facts is None:
        return
    mine = local_facts(cfg, node)
    peer = cfg.peer_of(node)
    if peer_facts.pg_major != mine.pg_major:
        raise BootstrapBlocked(
            f"PostgreSQL major versions differ: {node} has {mine.pg_major}, {peer} has {peer_facts.pg_major}; "
            "install the same major version on both nodes"
        )
    # The peer's record is as old as its last bootstrap: one release apart is a rolling upgrade under way
    # (README "Upgrades"), which the pair supports; `standby check` asks the running agents.
    skew = versioncheck.compare_release(mine.standby_version, peer_facts.standby_version)
    if skew is versioncheck.ReleaseSkew.BEYOND_ONE:
        raise BootstrapBlocked(
            f"standby releases more than one apart: {node} runs {mine.standby_version}, {peer} ran "
            f"{peer_facts.standby_version} at its bootstrap ({peer_facts.updated_at:%Y-%m-%d %H:%M} UTC); install "
            f"the same release on both nodes (or one apart during an upgrade), then run `standby bootstrap` on "
            f"{peer} again so that its record is current"
        )


# -- standby side ---------------------------------------------------------

def _peer_primary(cfg: Config, node: str) -> obs.PgObservation:
    peer = cfg.peer_of(node)
    seen = obs.observe_peer(cfg, peer)
    if seen.role is PgRole.UNREACHABLE:
        raise BootstrapBlocked(
            f"cannot reach PostgreSQL on {peer} as {cfg.pg(node).replication_user} ({seen.error}). "
            f"If {peer} is the primary and was not prepared yet, run `standby bootstrap --node {peer}` there first"
        )
    if seen.role is not PgRole.PRIMARY:
        raise BootstrapBlocked(f"{peer} is not a primary (it is {seen.role.value}); there is nothing to clone from")
    major, _ = obs.installed_major(cfg.pg(node).bin_dir)
    if seen.major != major:
        raise BootstrapBlocked(
            f"PostgreSQL major versions differ: {node} has {major}, {peer} runs {seen.major} ({seen.version}); "
            "install the same major version on both nodes"
        )
    return seen


def _peer_prepared(cfg: Config, node: str) -> None:
    peer = cfg.peer_of(node)
    with obs.connect_peer(cfg, peer) as conn:
        facts = obs.read_node_facts(conn).get(peer)
        slot = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (cfg.slot_name(node),)).fetchone()
    if facts is None or slot is None:
        raise BootstrapBlocked(f"{peer} is not prepared for replication yet: "
                               f"run `standby bootstrap --node {peer}` on {peer} first")
    _refuse_version_mismatch(cfg, node, facts)


def _standby_from_stopped(cfg: Config, node: str, role: PgRole, replace_data: bool, note: Report) -> None:
    pg = cfg.pg(node)
    refuse_unanswering(pg)
    if role is PgRole.STOPPED and (pg.data_dir / "standby.signal").exists() and not replace_data:
        # A clone that was not started (a half-done bootstrap): finish it.
        _peer_primary(cfg, node)
        _peer_prepared(cfg, node)
        act.configure_as_standby(cfg, node, cfg.peer_of(node))
        act.start(cfg, node)
        note(Step("start standby", True, "started the existing clone"))
        _running_standby(cfg, node, note)
        return
    if role is PgRole.STOPPED:
        if not replace_data:
            raise BootstrapBlocked(
                f"{pg.data_dir} holds a database that is not running. If {node} should be the primary, start "
                f"PostgreSQL and re-run. To replace it with a clone of {cfg.peer_of(node)}, re-run with "
                "--replace-data (the old directory is moved aside, not deleted)"
            )
    _peer_primary(cfg, node)
    _peer_prepared(cfg, node)
    if role is PgRole.STOPPED:
        aside = move_aside(pg.data_dir)
        note(Step("old data directory", True, f"moved aside to {aside}"))
    else:
        refuse_foreign(pg.data_dir)
    t0 = time.monotonic()
    act.clone(cfg, node, cfg.peer_of(node))
    note(Step("clone", True, f"pg_basebackup from {cfg.nodes[cfg.peer_of(node)].private.ip} in {time.monotonic() - t0:.1f}s"))
    act.configure_as_standby(cfg, node, cfg.peer_of(node))
    act.start(cfg, node)
    note(Step("start standby", True, f"PostgreSQL started on {node}"))
    _running_standby(cfg, node, note)


def _running_standby(cfg: Config, node: str, note: Report) -> None:
    peer = cfg.peer_of(node)
    status = act.wait_streaming(cfg, node)
    local = obs.observe_local(cfg, node)
    expected = str(cfg.nodes[peer].private.ip)
    if local.upstream != expected:
        raise BootstrapBlocked(f"{node} streams from {local.upstream}, not from {peer} ({expected}); fix primary_conninfo")
    note(Step("streaming", False, f"WAL receiver {status} from {peer} at {expected}"))
    with obs.connect_local(cfg, node) as conn:
        # All of these reload without a restart (a new primary_conninfo restarts
        # the WAL receiver), so a standby running before [reporting] or [tls]
        # was added gets them here.
        wanted = {**act.reporting_settings(cfg), **tls.server_settings(cfg, node),
                  "primary_conninfo": act.standby_conninfo(cfg, node, peer)}
        changed, _ = act.ensure_settings(conn, wanted, cfg.layout(node), cfg.pg(node).os_user)
        hba = act.ensure_hba(conn, cfg, node)  # after the settings: hostssl needs ssl on
    note(Step("standby settings", bool(changed), ", ".join(changed) or "already in place"))
    note(_hba_step(cfg, peer, hba))
    with obs.connect_peer(cfg, peer) as pconn:
        act.write_facts(pconn, local_facts(cfg, node))
        note(Step("node facts", False, f"{node}: standby {__version__} recorded on {peer}"))
        _durability(cfg, node, pconn, note)
