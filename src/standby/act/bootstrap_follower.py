"""Bootstrap of a follower ([[followers]]): a clone of the pair's primary, started in recovery, left to its agent.

`standby bootstrap --node gamma` on the follower, once the pair runs (its primary's bootstrap made the
follower's slot and pg_hba.conf lines). Like the pair's standby side: every step checks before it changes,
re-running on a streaming follower changes nothing, a data directory holding data is moved aside only with
``replace_data``, never deleted.

The clone always comes from the pair's primary, the one server sure to hold the follower's slot; a follower
cascading from the hot standby (``upstream = "standby"``) is re-pointed by its agent on its first round.
A follower that accepts writes was promoted after a site loss: it is handed back (`standby switchback`),
never cloned over.
"""

from __future__ import annotations

import time

from standby import tls
from standby.act import postgres as act
from standby.act.bootsteps import BootstrapBlocked, Report, Step, move_aside, refuse_foreign, refuse_unanswering
from standby.config import Config
from standby.model import PgRole
from standby.observe import postgres as obs


def bootstrap_follower(cfg: Config, node: str, replace_data: bool, note: Report) -> None:
    pg = cfg.pg(node)
    local = obs.observe_local(cfg, node)
    if local.role is PgRole.PRIMARY:
        raise BootstrapBlocked(f"{node} accepts writes: a follower promoted after a site loss is not bootstrapped "
                               f"again; hand the service back with `standby switchback --node {node}`")
    if local.role is PgRole.STANDBY:
        _running(cfg, node, note)
        return
    refuse_unanswering(pg)
    source = _pair_primary(cfg, node)
    if local.role is PgRole.STOPPED and (pg.data_dir / "standby.signal").exists() and not replace_data:
        act.configure_as_standby(cfg, node, source)  # a clone that was not started (a half-done bootstrap)
        act.start(cfg, node)
        note(Step("start follower", True, "started the existing clone"))
        _running(cfg, node, note)
        return
    if local.role is PgRole.STOPPED:
        if not replace_data:
            raise BootstrapBlocked(f"{pg.data_dir} holds a database that is not running. To replace it with a clone "
                                   f"of {source}, re-run with --replace-data (the old directory is moved aside, not "
                                   "deleted)")
        note(Step("old data directory", True, f"moved aside to {move_aside(pg.data_dir)}"))
    else:
        refuse_foreign(pg.data_dir)
    t0 = time.monotonic()
    act.clone(cfg, node, source)
    note(Step("clone", True, f"pg_basebackup from {source} ({cfg.link(source).ip}) in {time.monotonic() - t0:.1f}s"))
    act.configure_as_standby(cfg, node, source)
    act.start(cfg, node)
    note(Step("start follower", True, f"PostgreSQL started on {node}, in recovery"))
    _running(cfg, node, note)


def _pair_primary(cfg: Config, node: str) -> str:
    """The pair node whose server accepts writes, of the same major version and holding this follower's slot."""
    seen = {n: obs.observe_peer(cfg, n) for n in cfg.nodes}
    primaries = [n for n, o in seen.items() if o.role is PgRole.PRIMARY]
    if len(primaries) != 1:
        said = "; ".join(f"{n}: {o.role.value}" + (f" ({o.error})" if o.error else "") for n, o in seen.items())
        raise BootstrapBlocked(f"a follower is cloned from the pair's one primary, and {len(primaries)} of the pair's "
                               f"servers accept writes ({said}); bootstrap the pair first (`standby bootstrap` on "
                               "each of its nodes, the primary first)")
    source = primaries[0]
    major, _ = obs.installed_major(cfg.pg(node).bin_dir)
    if seen[source].major != major:
        raise BootstrapBlocked(f"PostgreSQL major versions differ: {node} has {major}, {source} runs "
                               f"{seen[source].major} ({seen[source].version}); a follower runs the pair's major version")
    with obs.connect_peer(cfg, source) as conn:
        slot = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (cfg.slot_name(node),)).fetchone()
    if slot is None:
        raise BootstrapBlocked(f"{source} has no replication slot {cfg.slot_name(node)} for {node}: run `standby "
                               f"bootstrap --node {source}` on {source} with {node} in [[followers]] (it makes the "
                               "followers' slots and pg_hba.conf lines), then again here")
    return source


def _running(cfg: Config, node: str, note: Report) -> None:
    status = act.wait_streaming(cfg, node)
    local = obs.observe_local(cfg, node)
    note(Step("streaming", False, f"WAL receiver {status} from {local.upstream}"))
    with obs.connect_local(cfg, node) as conn:
        # A clone brings the primary's certificate paths; the reporting settings serve a reporting follower's reads.
        wanted = {**act.reporting_settings(cfg), **tls.server_settings(cfg, node)}
        changed, _ = act.ensure_settings(conn, wanted, cfg.layout(node), cfg.pg(node).os_user)
        hba = act.ensure_hba(conn, cfg, node)  # other followers may cascade from it, the pair be rebuilt from it
    note(Step("follower settings", bool(changed), ", ".join(changed) or "already in place"))
    note(Step("pg_hba.conf", hba, "managed block written" if hba else "managed block in place"))
