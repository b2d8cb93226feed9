"""Rejoin: an old primary comes back as a standby of the new one, keeping what it alone had.

Who rejoins whom is a ``Rejoining``: a pair node rejoins its peer; a follower whose server replayed WAL
past the new primary's fork rejoins that primary (standby.follow, rule 4); after a DR promotion a pair node
is rebuilt as a standby of the promoted follower (standby.rebuild). All in the same steps.

Order matters, and each step only runs when the previous one succeeded:
1. refuse unless this node's server is stopped and the peer is a reachable primary;
2. CHECKPOINT on the new primary (until its control file shows the new
   timeline, pg_rewind may wrongly find nothing to do);
3. find the fork point (pg_rewind --dry-run);
4. salvage: rows this node committed after the fork that the new primary
   lacks, read from a copy of the data directory, into a report;
5. pg_rewind; if impossible (WAL gone, no hint bits logged), move the old
   directory aside (kept until the salvage has been dealt with) and clone;
6. start as a standby of the peer and check that it streams.

A rejoin stopped between 5 and 6 (the agent killed, a write refused) leaves a data directory that
can only become consistent by streaming from the peer. The next rejoin resumes at 6 with the
salvage report the first one wrote (kept in the state directory until the node streams): it never
recovers that directory alone nor looks for a fork again (chaos seed 103).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from standby.act import postgres as act
from standby.act import rejoin_rewind as rewind
from standby.config import Config
from standby.documents import REJOINED, Rejoined, RejoinMethod
from standby.laps import Laps
from standby.model import PgRole
from standby.observe import postgres as obs
from standby.salvage import format_lsn

Report = Callable[[str], None]
# (cfg, the rejoined node, fork LSN, old timeline, the new primary) -> (report path, rows salvaged)
Salvage = Callable[[Config, str, str, int, str], tuple[Path | None, int]]


class RejoinRefused(Exception):
    """Rejoining now would be unsafe or cannot work; nothing was changed."""


def _nothing_to_confirm() -> None:
    return None


@dataclass(frozen=True)
class Rejoining:
    """Whose server is rejoined, and to which primary: it is rewound (or cloned) from ``source``, then streams
    from it. ``confirm`` runs once ``source`` answers as a primary, before anything is changed: it raises
    RejoinRefused when that primary is not the one to follow any more (a follower: the primary of the newest
    term it heard)."""

    node: str
    source: str
    confirm: Callable[[], None] = _nothing_to_confirm

    @classmethod
    def peer(cls, cfg: Config, node: str) -> Rejoining:
        """A pair node rejoins its peer."""
        return cls(node, cfg.peer_of(node))

    @classmethod
    def follower(cls, cfg: Config, node: str, primary: str, confirm: Callable[[], None]) -> Rejoining:
        """A follower rejoins a pair node, its primary: never a pair node's own server, never from a follower."""
        if node in cfg.nodes or cfg.follower(node) is None:
            raise RejoinRefused(f"{node} is not a follower: a pair node rejoins its peer (`standby rejoin`)")
        if primary not in cfg.nodes:
            raise RejoinRefused(f"{primary} is not a node of the hot pair: a follower rejoins the pair's primary")
        return cls(node, primary, confirm)

    @classmethod
    def from_follower(cls, cfg: Config, node: str, follower: str, confirm: Callable[[], None]) -> Rejoining:
        """A pair node is rebuilt as a standby of a warm follower an operator promoted after a site loss
        (standby.rebuild): ``confirm`` asks standby.rebuild.may_rebuild once the follower answers as a primary."""
        if node not in cfg.nodes:
            raise RejoinRefused(f"{node} is not a node of the hot pair: only a pair node is rebuilt from a follower")
        if cfg.follower(follower) is None:
            raise RejoinRefused(f"{follower} is not a follower in this configuration ([[followers]])")
        return cls(node, follower, confirm)


@dataclass
class RejoinResult:
    method: RejoinMethod = RejoinMethod.NONE_NEEDED
    fork_lsn: str | None = None
    old_timeline: int | None = None
    salvage_report: Path | None = None
    salvaged_rows: int = 0
    kept_aside: Path | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)
    dry_run: str = ""  # pg_rewind --dry-run's output: the last common checkpoint the rewind starts from


def _source_conninfo(cfg: Config, r: Rejoining) -> str:
    return obs.peer_dsn(cfg, r.source, dbname=cfg.pg(r.node).database, connect_timeout=5)


def streams_from(cfg: Config, local: obs.PgObservation, source: str) -> bool:
    """A standby whose WAL receiver streams from ``source``: its WAL is a prefix of the source's history
    (PostgreSQL refuses to stream a timeline that forked off before the standby's position)."""
    return (local.role is PgRole.STANDBY and local.receiver_status == "streaming"
            and local.upstream == str(cfg.link(source).ip))


def preflight(cfg: Config, r: Rejoining) -> obs.PgObservation:
    """The checks that make rejoin safe; raises RejoinRefused with the reason."""
    node, peer = r.node, r.source
    local = obs.observe_local(cfg, node)
    if local.role is PgRole.PRIMARY:
        if node not in cfg.nodes:
            raise RejoinRefused(f"PostgreSQL on {node} is running as a writable primary (promoted by an operator): "
                                "it is no follower any more, and is never rejoined automatically")
        raise RejoinRefused(
            f"PostgreSQL on {node} is running as a writable primary; a node that still accepts writes cannot "
            f"be rejoined. If {peer} is the real primary, fence this one first: `standby fence --node {node}`")
    if local.role is PgRole.STANDBY:
        raise RejoinRefused(f"{node} is a standby that does not stream from {peer} (its WAL receiver: "
                            f"{local.receiver_status or 'none'}, from {local.upstream or 'nowhere'}); stop its server "
                            "first (`standby rejoin` on a pair node does that for a standby that cannot stream)")
    if act.running_pid(cfg.pg(node).data_dir) is not None:
        raise RejoinRefused(f"a server still uses {cfg.pg(node).data_dir}; stop it first")
    if local.role is PgRole.EMPTY:
        raise RejoinRefused(f"{node} has no data directory; use `standby bootstrap --node {node}` to clone it")
    remote = obs.observe_peer(cfg, peer)
    if remote.role is PgRole.UNREACHABLE:
        raise RejoinRefused(f"the new primary {peer} is unreachable ({remote.error}); rejoin needs it")
    if remote.role is not PgRole.PRIMARY:
        raise RejoinRefused(f"{peer} is not a primary (it is {remote.role.value}); there is nothing to follow")
    r.confirm()
    return remote


_DIVERGED = re.compile(r"servers diverged at WAL location ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")


def fork_point(cfg: Config, r: Rejoining) -> tuple[str | None, int | None, rewind.RewindRun]:
    """(fork LSN, old timeline, the dry run) from pg_rewind's dry run; (None, None, ...) if no rewind is needed."""
    pg = cfg.pg(r.node)
    with act.passfile(cfg, r.node, r.source) as pf:
        res = rewind.run(pg.os_user, [str(pg.bin_dir / "pg_rewind"), "--dry-run", "--progress", "-D", str(pg.data_dir),
                                      "--source-server", _source_conninfo(cfg, r)],
                         env={"PGPASSFILE": str(pf)}, timeout=300, stop_after=rewind.PLANNED)
    out = res.output
    m = _DIVERGED.search(out)
    if m:
        return m.group(1), int(m.group(2)), res
    if "no rewind required" in out:
        return None, None, res
    last = out.strip().splitlines()[-1] if out.strip() else res.returncode
    raise RejoinRefused(f"cannot find the fork point with pg_rewind --dry-run: {last}")


def wal_gone_from_source(cfg: Config, r: Rejoining, dry_run: str) -> str | None:
    """The WAL segment a rewind would start replaying from, if the new primary no longer has it; else None
    (also when it cannot be told: pg_rewind then runs, as before)."""
    common = rewind.common_checkpoint(dry_run)
    if common is None:
        return None
    lsn, tli = common
    pg = cfg.pg(r.node)
    res = act.run_as(pg.os_user, [str(pg.bin_dir / "pg_waldump"), "-p", str(pg.data_dir / "pg_wal"), "-t", str(tli),
                                  "-s", format_lsn(lsn), "-n", "1"], env={"LC_ALL": "C"}, timeout=60)
    redo = rewind.checkpoint_redo(res.stdout)
    if redo is None:
        return None
    with obs.connect_peer(cfg, r.source) as conn:
        files = [str(r[0]) for r in conn.execute("SELECT name FROM pg_ls_waldir()").fetchall()]
        size_row = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()
    return rewind.missing_start(files, tli, redo, int(size_row[0]) if size_row else 16 << 20)


def rejoin(cfg: Config, r: Rejoining, *, state_dir: Path, report: Report = lambda s: None,
           salvage: Salvage | None = None) -> RejoinResult:
    """Make ``r.node`` a streaming standby of ``r.source``.
    ``salvage(cfg, node, fork_lsn, old_tli, source)`` runs before anything is changed and returns
    (report path, rows salvaged)."""
    node, peer = r.node, r.source
    result = RejoinResult()
    step = _Steps(result, report)
    if streams_from(cfg, obs.observe_local(cfg, node), peer):
        # Nothing to do, and so said: a step of the road back run twice, or a standby that could follow
        # the new timeline by itself, must not read as a failure at 3 a.m.
        step(f"{node} already streams from {peer}: nothing to rewind or clone")
        return result
    preflight(cfg, r)
    with obs.connect_peer(cfg, peer) as conn:
        conn.execute("CHECKPOINT")
        act.ensure_slot(conn, cfg.slot_name(node))
    step(f"checkpoint on {peer}, replication slot {cfg.slot_name(node)} ready")

    pending = state_dir / PENDING
    if act.awaits_wal_from_source(cfg, node):
        _resume(pending, result)
        step(f"the data directory was already rewound or cloned from {peer} by a rejoin that stopped "
             "before starting it: resuming there")
    else:
        _fork_and_salvage(cfg, r, result, step, salvage)
        if result.fork_lsn is not None:
            _rewind_or_clone(cfg, r, result, pending, step, looked_for_salvage=salvage is not None)
    _start_streaming(cfg, r, step)
    pending.unlink(missing_ok=True)
    return result


class _Steps:
    """Each step's name and how long it took, into the result and the report."""

    def __init__(self, result: RejoinResult, report: Report) -> None:
        self.laps, self.report = Laps(result.steps), report

    def __call__(self, name: str) -> None:
        self.report(f"{name} ({self.laps.lap(name):.2f}s)")


def _fork_and_salvage(cfg: Config, r: Rejoining, result: RejoinResult, step: Report,
                      salvage: Salvage | None) -> None:
    """Steps 3 and 4: where this node's history left the new primary's, and the rows it alone committed since."""
    if act.ensure_clean_shutdown(cfg, r.node):
        step("crash recovery of the old data directory (it had not stopped cleanly)")
    fork, old_tli, dry_run = fork_point(cfg, r)
    result.fork_lsn, result.old_timeline, result.dry_run = fork, old_tli, dry_run.output
    step(f"fork point: {fork} on timeline {old_tli} (dry run: {rewind.describe(dry_run.lines, dry_run.took_s)})"
         if fork else "no divergence: this node is only behind")
    if fork is not None and old_tli is not None and salvage is not None:
        result.salvage_report, result.salvaged_rows = salvage(cfg, r.node, fork, old_tli, r.source)
        step(f"salvage: {result.salvaged_rows} rows kept in {result.salvage_report}" if result.salvage_report
             else "salvage: nothing committed here after the fork")


def _rewind_or_clone(cfg: Config, r: Rejoining, result: RejoinResult, pending: Path, step: Report, *,
                     looked_for_salvage: bool) -> None:
    """Step 5: pg_rewind, or a clone with the old directory moved aside. What was done is remembered in
    ``pending`` before anything can start the server (a rejoin stopped here resumes at step 6)."""
    node, peer, pg = r.node, r.source, cfg.pg(r.node)
    if gone := wal_gone_from_source(cfg, r, result.dry_run):
        # Rewinding would leave a directory that can never catch up, and the next rejoin would resume it.
        step(f"pg_rewind skipped: {peer} no longer has WAL segment {gone}, where a rewound directory would "
             "start replaying (the last common checkpoint's redo); falling back to a fresh clone")
    else:
        with act.passfile(cfg, node, peer) as pf:
            res = rewind.run(pg.os_user, [str(pg.bin_dir / "pg_rewind"), "--progress", "-D", str(pg.data_dir),
                                          "--source-server", _source_conninfo(cfg, r)],
                             env={"PGPASSFILE": str(pf)}, timeout=3600)
        if res.returncode == 0:
            result.method = RejoinMethod.REWIND
            _remember(pending, result)
            step(f"pg_rewind done: {rewind.describe(res.lines, res.took_s)}")
            return
        why = ([text for _, text in res.lines][-1:] or ["unknown"])[0]
        step(f"pg_rewind impossible ({why}); falling back to a fresh clone")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = pg.data_dir.with_name(f"{pg.data_dir.name}.before-rejoin-{stamp}")
    pg.data_dir.rename(aside)
    try:
        act.clone(cfg, node, peer)
    except BaseException:
        _put_back(pg.data_dir, aside, stamp)
        raise
    result.kept_aside = aside
    result.method = RejoinMethod.CLONE
    _remember(pending, result)
    if looked_for_salvage and result.salvage_report is None:
        # Salvage looked and this node had nothing the new primary lacks: nothing to keep.
        discard_aside(aside)
        result.kept_aside = None
        step(f"cloned from {peer}; the old directory held nothing to salvage and was removed")
    else:
        step(f"cloned from {peer}; the old directory is kept at {aside} until its salvage is dealt with")


def _put_back(data_dir: Path, aside: Path, stamp: str) -> None:
    """A clone that failed leaves the node as the rejoin found it, so the next rejoin starts over (its
    salvage too); with the old directory aside and none in place, every later rejoin refused and the
    pair never had a standby again (chaos seed 105). Whatever the failed clone left is kept, not deleted."""
    if data_dir.is_dir() and not any(data_dir.iterdir()):
        data_dir.rmdir()
    elif data_dir.exists() or data_dir.is_symlink():
        data_dir.rename(data_dir.with_name(f"{data_dir.name}.failed-clone-{stamp}"))
    aside.rename(data_dir)


def _start_streaming(cfg: Config, r: Rejoining, step: Report) -> None:
    act.configure_as_standby(cfg, r.node, r.source)
    act.start(cfg, r.node)
    act.wait_streaming(cfg, r.node, timeout_s=60)
    step(f"streaming from {r.source}")


# What a rejoin that changed the data directory found, until the node streams (in the state directory).
PENDING = "rejoin-pending.json"


def _remember(path: Path, result: RejoinResult) -> None:
    """Keep what this rejoin found, in the rejoin result's own document, until the node streams."""
    doc = Rejoined(method=result.method, fork_lsn=result.fork_lsn, old_timeline=result.old_timeline,
                   salvage_report=str(result.salvage_report) if result.salvage_report else None,
                   salvaged_rows=result.salvaged_rows,
                   kept_aside=str(result.kept_aside) if result.kept_aside else None, steps=[])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(REJOINED.encode(doc)))
    tmp.replace(path)


def _resume(path: Path, result: RejoinResult) -> None:
    """Fill ``result`` from what the interrupted rejoin remembered (a rewind, if it left no readable record)."""
    try:
        doc = REJOINED.decode(json.loads(path.read_text()))
    except (OSError, ValueError):  # DocumentError is a ValueError
        result.method = RejoinMethod.REWIND
        return
    result.method, result.fork_lsn, result.old_timeline = doc.method, doc.fork_lsn, doc.old_timeline
    result.salvage_report = Path(doc.salvage_report) if doc.salvage_report else None
    result.salvaged_rows = doc.salvaged_rows
    result.kept_aside = Path(doc.kept_aside) if doc.kept_aside else None


def discard_aside(path: Path) -> None:
    """Remove a directory kept aside by a clone fallback (after its salvage was applied)."""
    shutil.rmtree(path)
