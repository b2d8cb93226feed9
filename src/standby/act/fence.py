"""Fencing this node: one routine for the agent's FENCE action and for `standby fence`.

The order matters and is the same everywhere:

1. the service (and reporting) addresses go first: clients stop reaching this node at once; but a running
   primary that is to be stopped first gets the stop signal and tells its clients (standby.act.sessions:
   once the address is gone, a client waiting for an answer would wait for ever), and "fenced" is written
   before that signal;
2. the services stop;
3. if PostgreSQL must stop, the state file says "fenced" (fsync'd) *before* the stop begins, so a
   crash half-way through the stop still leaves the node fenced;
4. the stop escalates: fast, then immediate, then SIGKILL of the postmaster and its children.

One exception to 3, in the agent: a *running primary* being fenced gets the fast-shutdown signal
before "fenced" is written (`postgres.request_fast_stop`), because until its server hears a stop it
takes writes, and in ``async`` nothing holds them back (a 0.3 s fsync on a busy disk was a 0.3 s
window with two writers: chaos seed 77). This is safe because an agent that dies between the signal
and the write leaves a node that cannot come back as primary by itself: the next agent reads the
time since the last decision (the liveness record, written only after the state) as a stall and
fences first, and even without that it restarts a server that is down only if this same run saw it
serve, or the peer is heard as a standby or fenced in no newer term (`decide._crashed_primary_rules`).
`tests/unit/test_findings_freeze.py` breaks each of the two in turn.

Whether PostgreSQL must stop is a pure function (`plan`) of what the state file and the running
server say, with a named reason for every outcome.
"""

from __future__ import annotations

import subprocess
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from standby.act import addresses, services, sessions
from standby.act import postgres as pgact
from standby.agent.store import Store
from standby.config import Config
from standby.decide import PERSISTED, State, fence_needed
from standby.model import DbState, PgRole
from standby.observe import postgres as pgobs

STEP_TIMEOUT_S = 5


class StopStep(StrEnum):
    """How far the escalation had to go before PostgreSQL was down."""

    FAST = "fast"
    IMMEDIATE = "immediate"
    KILL = "kill"


class Why(StrEnum):
    """The reason for a fence plan (recorded in the history and printed)."""

    CLEAN_STOP = "the agent stopped cleanly"
    PEER_COULD_PROMOTE = "agent gone; the peer could have been promoted meanwhile"
    PEER_COULD_NOT_PROMOTE = "agent gone; the peer could not have been promoted, PostgreSQL kept"
    ALREADY_FENCED_RUNNING = "fenced, yet PostgreSQL runs (a stop was cut short): finishing it"
    ALREADY_FENCED = "already fenced and PostgreSQL is down"
    # A rejoin starts the standby before it clears "fenced": a standby accepts no writes, keep it.
    ALREADY_FENCED_STANDBY = "fenced, PostgreSQL runs as a standby (a rejoin in progress): kept"
    STATE_UNREADABLE_PRIMARY = "the agent's state file is unreadable and PostgreSQL runs as primary: stopping it"
    STATE_UNREADABLE_NOT_PRIMARY = "the agent's state file is unreadable; PostgreSQL does not run as primary"
    OPERATOR = "fenced by hand"
    OPERATOR_NOT_PRIMARY = "fenced by hand; PostgreSQL does not run as primary, kept"


@dataclass(frozen=True)
class Plan:
    drop_addresses: bool  # addresses and services
    stop_postgres: bool
    mark_fenced: bool  # write fenced=True to the state file before stopping
    why: Why


def plan(if_unclean: bool, clean_exit: bool, state: State | None, db: DbState) -> Plan:
    """What to do once the agent is gone (``if_unclean``) or a person fences (not ``if_unclean``).

    ``state`` is None when the state file cannot be read: then nothing it would have said can be
    relied on, so the safe side is taken (a running primary is stopped) and no state is written
    over the unreadable file (the term it held is unknown; a guessed one could go backwards).
    """
    if if_unclean and clean_exit:
        return Plan(False, False, False, Why.CLEAN_STOP)
    if state is None:
        primary = db is DbState.PRIMARY
        return Plan(True, primary, False,
                    Why.STATE_UNREADABLE_PRIMARY if primary else Why.STATE_UNREADABLE_NOT_PRIMARY)
    if state.fenced:
        if db is DbState.PRIMARY:
            return Plan(True, True, False, Why.ALREADY_FENCED_RUNNING)
        return Plan(True, False, False, Why.ALREADY_FENCED_STANDBY if db is DbState.STANDBY else Why.ALREADY_FENCED)
    if not if_unclean:
        primary = db is DbState.PRIMARY or state.was_primary
        return Plan(True, primary, primary, Why.OPERATOR if primary else Why.OPERATOR_NOT_PRIMARY)
    if fence_needed(state, db):
        return Plan(True, True, True, Why.PEER_COULD_PROMOTE)
    return Plan(True, False, False, Why.PEER_COULD_NOT_PROMOTE)


def stop_postgres(cfg: Config, node: str, step_timeout_s: float = STEP_TIMEOUT_S, at_once: bool = False) -> StopStep:
    """Stop the local server, escalating: fast, immediate, then SIGKILL (``at_once``: SIGKILL only, for a
    server that serves nobody, model.KILL_AT_ONCE). Returns the step that did it.

    After a long freeze a server has been seen to ignore even an immediate shutdown for about a
    minute; a fence cannot wait that long, hence the last step. A postmaster stopped by a signal (chaos
    postgres-freeze, a debugger) would act on a shutdown only once running again, taking writes first: it
    gets the last step at once.
    """
    pid = pgact.running_pid(cfg.pg(node).data_dir)
    if at_once or (pid is not None and pgact.stopped_by_signal(pid)):
        pgact.kill_server(cfg, node)
        return StopStep.KILL
    for step in (StopStep.FAST, StopStep.IMMEDIATE):
        try:
            pgact.stop(cfg, node, pgact.StopMode(step.value), timeout_s=int(step_timeout_s))
            return step
        except (pgact.PostgresActionError, subprocess.TimeoutExpired, TimeoutError, OSError):
            continue
    pgact.kill_server(cfg, node)
    return StopStep.KILL


# The persisted fields' types, from State itself: a field added there is checked here too.
_TYPES: dict[str, Any] = {k: v for k, v in typing.get_type_hints(State).items() if k in PERSISTED}


def _typed(value: Any, hint: Any) -> bool:
    # bool is an int in Python: a term of true is as damaged as a fenced of 1 (hence `type() is`).
    return any(type(value) is t for t in (typing.get_args(hint) or (hint,)))


def read_state(store: Store) -> State | None:
    """The persisted state, or None if the file is damaged (unparsable, wrong shape or types)."""
    try:
        kept = store.load_state()
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict):
        return None
    for key, value in kept.items():
        if key not in _TYPES or not _typed(value, _TYPES[key]):
            return None
    if store.state_path.exists() and not kept:
        return None  # a file that held none of the keys is not a state
    return State(**kept)


@dataclass
class Outcome:
    plan: Plan
    postgres_was: DbState
    stopped_by: StopStep | None = None
    notes: list[str] | None = None


def fence_node(cfg: Config, node: str, store: Store, if_unclean: bool,
               say: Callable[[str], Any] = lambda _m: None) -> Outcome:
    """The whole fence of ``node`` after its agent is gone, or by hand (see the module's docstring)."""
    live = store.read_liveness()
    # No readable record of a clean stop (never written, damaged, another boot's) counts as unclean.
    clean_exit = live is not None and live.clean
    state = read_state(store)
    if if_unclean and clean_exit:
        p = plan(if_unclean, clean_exit, state, DbState.DOWN)
        say(p.why.value)
        return Outcome(p, DbState.DOWN)
    if state is None:
        say(f"{store.state_path} cannot be read: taking the safe side")
    signalled = _end_sessions_first(cfg, node, store, plan(if_unclean, clean_exit, state, DbState.PRIMARY), state, say)
    # Addresses before anything that takes time (observing PostgreSQL can hang on a stuck server).
    drop_addresses(cfg, node, say)
    if signalled:
        db = DbState.PRIMARY  # what its files said before the signal; asked now, it answers "shutting down"
    else:
        seen = pgobs.observe_local(cfg, node)
        db = {PgRole.PRIMARY: DbState.PRIMARY, PgRole.STANDBY: DbState.STANDBY}.get(seen.role, DbState.DOWN)
    p = plan(if_unclean, clean_exit, state, db)
    outcome = Outcome(p, db)
    say(p.why.value)
    if p.stop_postgres:
        if p.mark_fenced and state is not None and not signalled:  # once signalled, written before the signal
            _mark_fenced(store, state, say)
        _record(store, "fencing", reason=p.why.name.lower(), postgres_was=db.value)
        outcome.stopped_by = stop_postgres(cfg, node)
        _record(store, "fenced", reason=p.why.name.lower(), postgres_was=db.value, stopped_by=outcome.stopped_by.value)
        say(f"PostgreSQL stopped ({outcome.stopped_by.value})"
            + ("; this node is fenced until it is rejoined" if state is not None else ""))
    else:
        _record(store, "fence_checked", reason=p.why.name.lower(), postgres_was=db.value)
    # A damaged state stays as found: the agent must not start from it, and a person must look.
    if state is not None:
        store.write_liveness(live.boot if live else 0, clean=True)
    return outcome


def running_primary(data_dir: Path) -> bool:
    """A postmaster runs on ``data_dir`` and it is not a standby's (no standby.signal), read from files only."""
    return pgact.running_pid(data_dir) is not None and not (data_dir / "standby.signal").exists()


def _mark_fenced(store: Store, state: State, say: Callable[[str], Any]) -> None:
    try:
        store.save_state(replace(state, fenced=True, was_primary=False, resumable=False))
    except OSError as e:
        say(f"could not record the fence in {store.state_path} ({e}); stopping PostgreSQL all the same")


def _end_sessions_first(cfg: Config, node: str, store: Store, if_primary: Plan, state: State | None,
                        say: Callable[[str], Any]) -> bool:
    """Before the addresses go, end the sessions of a running primary that is to be stopped (why:
    standby.act.sessions). ``if_primary``: the plan were the server a primary. Whether it is one is read
    from its files (a postmaster runs, no standby.signal), never asked: a stuck server must not hold the
    addresses here. "Fenced" is written before the stop signal, as everywhere (step 3 above). True if the
    server was signalled (then the plan is ``if_primary``'s, and the stop that follows escalates as always)."""
    if not if_primary.stop_postgres or not running_primary(cfg.pg(node).data_dir):
        return False
    if if_primary.mark_fenced and state is not None:
        _mark_fenced(store, state, say)
    if pgact.request_fast_stop(cfg, node) is None:
        return False  # gone meanwhile: asked as before, after the addresses
    left = sessions.told(cfg, node)
    say("PostgreSQL asked to stop; its clients through the service IPs told" if not left else
        f"PostgreSQL asked to stop; {left} client session(s) through the service IPs still open after "
        f"{sessions.WAIT_S} s: removing the addresses all the same")
    return True


def drop_addresses(cfg: Config, node: str, say: Callable[[str], Any]) -> None:
    for sip in cfg.service_ips:
        if addresses.remove(sip):
            say(f"removed service IP {sip.address}")
    # Nothing keeps the reporting IP's lag in check without an agent.
    floating = cfg.reporting.floating() if cfg.reporting else None
    if floating is not None and addresses.remove(floating):
        say(f"removed reporting IP {floating.address}")
    for r in services.stop_all(cfg.services, node):
        say(f"stopped {r.service}: {r.detail}")


def _record(store: Store, event: str, **detail: Any) -> None:
    try:
        store.record(event, **detail)
    except OSError:
        pass  # a full disk must not keep PostgreSQL from stopping
