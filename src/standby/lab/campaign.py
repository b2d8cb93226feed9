"""A chaos campaign on a lab: the sample load runs while faults from a seeded schedule hit the pair.

One fault at a time: inject, hold, heal, then wait for the pair to converge
(one primary, one streaming standby ready to take over, the service IP on one
node whose services are healthy, every follower streaming from the primary, or its configured
upstream, on the primary's timeline), acting as the operator would meanwhile:
a crashed host is rebooted (its agent started), a fenced old primary is
rejoined, salvaged rows are applied. The time to converge after each heal is
recorded; a pair that does not converge within the limit ends the campaign.

Everything lands in the run directory:
- ``calls.jsonl``: every call attempt (the load generator's history);
- ``events.jsonl``: faults, heals, operator actions, convergence, with the same
  monotonic clock as the calls;
- ``probe.jsonl``: the dual-primary probe's samples (every 100 ms);
- ``history.jsonl``: the two histories merged in time order;
- ``replicas.json``: the final contents of both nodes and of each follower, table by table, and the
  acknowledged calls each follower lacks;
- ``agent-NODE.json``, ``agent-NODE.log``, ``postgresql-NODE.log``: each agent's decisions and actions,
  its log, each server's log.
The judgement is standby.lab.chaos_verdict's, over those files only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from standby import salvage as sv
from standby.act.postgres import log_path as pg_log_path
from standby.apiclient import AgentApi, ApiError
from standby.lab import Lab, netns
from standby.lab import faults as labfaults
from standby.lab import followers as labfollowers
from standby.lab.chaos import Fault, Kind, Target, faults, long_freeze_s
from standby.lab.checker import Outcome as CallOutcome
from standby.lab.checker import read_history
from standby.lab.errors import LabError
from standby.lab.pair import SERVICE_URL, STANDBY, holders, primaries, wait_first_ack
from standby.lab.probe import DualPrimaryProbe
from standby.lab.topology import DB_NODES, WAN_ROUTER
from standby.model import DbState

# Room for a checkpoint cycle of WAL, wal_keep_size, what a slot pins and what pg_rewind copies
# in, so that the disk fills up only when the campaign fills it.
WAL_DISK_MB = 2048
# Small enough for the WAL disk: a standby gone for long is cloned on return, not waited for.
WAL_SETTINGS = {"wal_keep_size_mb": 64, "max_slot_wal_keep_size_mb": 128}
TABLES = ("accounts", "vendors", "cdrs", "balance_deltas")


@dataclass(frozen=True)
class Options:
    seed: int
    duration_s: float
    kinds: tuple[Kind, ...]
    converge_limit_s: float = 60.0  # the stated time within which the pair must converge after a heal
    rate: int = 100  # calls per second
    degrade_after_s: float = 0.0  # replication.degrade_after_s of the pair (sync only; 0 = never)


@dataclass
class Outcome:
    faults: list[dict[str, Any]] = field(default_factory=list)
    converge_s: list[float] = field(default_factory=list)
    stopped_early: str | None = None


def _now_wall() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Campaign:
    def __init__(self, lab: Lab, opts: Options, out: Path, say: Callable[[str], None] = print) -> None:
        self.lab, self.opts, self.out, self.say = lab, opts, out, say
        out.mkdir(parents=True, exist_ok=True)
        self.calls, self.events = out / "calls.jsonl", out / "events.jsonl"
        self.events.write_text("")
        self.crashed: set[str] = set()
        self.stalled: list[int] = []  # busy-primary, postgres-freeze: processes stopped until the heal
        self.background: threading.Thread | None = None  # api-flood, heartbeat-replay: runs for the hold
        self.maintained: list[str] = []  # nodes whose maintenance the heal switches off
        self.outcome = Outcome()
        self.followers: tuple[str, ...] = lab.spec.followers
        # Agents read a steppable wall clock (libfaketime) only when clock jumps are drawn.
        self.own_clock = Kind.CLOCK_JUMP in opts.kinds

    # -- records ----------------------------------------------------------------

    def record(self, event: str, **fields: Any) -> None:
        doc = {"type": "event", "event": event, "t": time.monotonic(), "time": _now_wall(), **fields}
        with self.events.open("a") as f:
            f.write(json.dumps(doc, default=str) + "\n")

    # -- set-up -----------------------------------------------------------------

    def prepare(self) -> None:
        """Bootstrap the pair with WAL on small disks of its own (which a fault can fill or hang) and agents
        whose wall clock can be stepped."""
        lab = self.lab
        text = lab.config_path.read_text()
        extra = "".join(f"{k} = {v}\n" for k, v in WAL_SETTINGS.items())
        text = text.replace("[postgres]\n", "[postgres]\n" + extra, 1)
        if self.opts.degrade_after_s:
            text = text.replace("[replication]\n", f"[replication]\ndegrade_after_s = {self.opts.degrade_after_s}\n", 1)
        lab.config_path.write_text(text)
        lab.bootstrap()
        for node in DB_NODES:
            lab.wal_on_loop_ext4(node, WAL_DISK_MB)
        labfollowers.attach(lab)  # cloned from the primary, as an operator adds a follower
        for node in DB_NODES:
            lab.start_agent(node, own_clock=self.own_clock)
        for node in self.followers:  # a follower's agent reads the real clock: set_clock is the pair's
            lab.start_agent(node)
        start = time.monotonic()
        if self.converge() is None:
            raise RuntimeError(f"the pair did not become ready before the campaign: {self.describe()}")
        self.record("ready", after_s=round(time.monotonic() - start, 3))

    # -- the pair's state -------------------------------------------------------

    def roles(self) -> tuple[str, str]:
        """(primary, standby) now; alpha first when it cannot be told."""
        p = primaries(self.lab)
        primary = p[0] if len(p) == 1 else "alpha"
        return primary, next(n for n in DB_NODES if n != primary)

    def converged(self) -> bool:
        p = primaries(self.lab)
        if len(p) != 1:
            return False
        primary, standby = p[0], next(n for n in DB_NODES if n != p[0])
        a, b = self.lab.agent_status(primary), self.lab.agent_status(standby)
        if a is None or b is None or a.state.fenced or b.state.fenced:
            return False
        served = holders(self.lab)
        if len(served) != 1:
            return False
        server = self.lab.agent_status(served[0])
        if server is None or not server.services_healthy:
            return False
        return b.postgres.streaming and b.state.eligible and not self._followers_behind(primary, standby)

    def _source(self, follower: str, primary: str, standby: str) -> str:
        """Where ``follower`` should stream from: its configured upstream, the primary by default."""
        conf = self.lab.config().follower(follower)
        upstream = conf.upstream if conf is not None else "primary"
        return {"primary": primary, "standby": standby}.get(upstream, upstream)

    def _followers_behind(self, primary: str, standby: str) -> dict[str, str]:
        """The followers not streaming from their source on the primary's timeline, each with what it does."""
        if not self.followers:
            return {}
        try:
            tli = labfollowers.timeline(self.lab, primary)
        except (psycopg.Error, OSError):
            return dict.fromkeys(self.followers, f"{primary}'s timeline unreadable")
        out = {}
        for name in self.followers:
            source = self._source(name, primary, standby)
            if not labfollowers.streaming_from(self.lab, name, source, tli):
                out[name] = (f"{name}: not streaming from {source} on timeline {tli} "
                             f"(its receiver: {labfollowers.receiver(self.lab, name)})")
        return out

    def _behind_now(self) -> dict[str, str]:
        """``_followers_behind`` for the pair as it is (none when it has no single primary to follow)."""
        p = primaries(self.lab)
        return self._followers_behind(p[0], next(n for n in DB_NODES if n != p[0])) if len(p) == 1 else {}

    def describe(self) -> str:
        """The pair in one line, for a campaign that stops: what did not converge."""
        parts = [f"primaries {primaries(self.lab)}", f"service IP on {holders(self.lab)}"]
        for node in DB_NODES:
            st = self.lab.agent_status(node)
            if st is None:
                parts.append(f"{node}: agent not answering")
                continue
            parts.append(f"{node}: fenced={st.state.fenced} eligible={st.state.eligible} "
                         f"streaming={st.postgres.streaming} services_healthy={st.services_healthy}")
        return "; ".join([*parts, *self._behind_now().values()])

    def converge(self) -> float | None:
        """Wait for convergence, acting as the operator; seconds taken, or None past the limit."""
        start = time.monotonic()
        last_rejoin = -1e9
        while time.monotonic() - start < self.opts.converge_limit_s:
            if self.converged():
                return time.monotonic() - start
            for node in DB_NODES:
                st = self.lab.agent_status(node)
                hears_primary = st is not None and st.peer_view is not None and st.peer_view.db is DbState.PRIMARY
                # An old primary, fenced and hearing the new one: approve its rejoin, as the operator would.
                if st and st.state.fenced and hears_primary and time.monotonic() - last_rejoin > 5:
                    last_rejoin = time.monotonic()
                    self.operator(node, "rejoin", "--yes")
            time.sleep(0.25)
        return None

    def operator(self, node: str, *args: str) -> bool:
        res = self.lab.standby(node, *args, check=False)
        ok = res.returncode == 0
        tail = (res.stdout + res.stderr).strip().splitlines()[-3:]
        self.record("operator", node=node, command=" ".join(args), ok=ok, output=tail)
        self.say(f"    {node}: standby {' '.join(args)} -> {'ok' if ok else 'failed'}: {' | '.join(tail)}")
        found = [line for line in res.stdout.splitlines() if line.startswith("salvage: ") and " are in " in line]
        if ok and args[0] == "rejoin" and found:
            # Rows the old primary alone had: put them back from where the report is, as an operator would.
            report = found[0].split(" are in ", 1)[1].split(";", 1)[0].strip()
            if self.operator(node, "salvage", "apply", "--yes", report):
                self._record_salvage(node, Path(report))
        return ok

    def _record_salvage(self, node: str, path: Path) -> None:
        """Which calls the salvage brought back, and the CDR ids it gave those whose id was taken."""
        try:
            report = sv.load_report(path)
        except sv.SalvageError as e:
            self.record("salvage_unreadable", node=node, report=str(path), error=str(e))
            return
        calls, renumbered = salvage_summary(report)
        self.record("salvage_applied", node=node, report=str(path), calls=calls, renumbered=renumbered)

    # -- faults -----------------------------------------------------------------

    def inject(self, f: Fault, node: str) -> dict[str, Any]:
        lab = self.lab
        info: dict[str, Any] = {}
        match f.kind:
            case Kind.CRASH:
                lab.crash(node)
                self.crashed.add(node)
            case Kind.FREEZE:
                lab.freeze(node)
            case Kind.LINK_DOWN:
                lab.link(node, str(f.net), False)
            case Kind.ISOLATE:
                lab.link(node, "public", False)
                lab.link(node, "private", False)
            case Kind.LOSS:
                lab.loss(node, str(f.net), int(f.percent or 0))
            case Kind.KILL_AGENT:
                info["pid"] = lab.kill_agent(node)
            case Kind.KILL_POSTGRES:
                info["pid"] = lab.kill_postgres(node)
            case Kind.WAL_DISK_FULL:
                info["filled_bytes"] = lab.fill_wal_disk(node)
                self._force_new_segment(node)
            case Kind.CLOCK_JUMP:
                lab.set_clock(node, int(f.offset_s or 0))
            case Kind.SWITCHOVER:
                info["ok"] = self.operator(node, "switchover")
            case Kind.BUSY_PRIMARY:
                self.stalled = self._agent_backends(node)
                info["stopped_pids"] = labfaults.stop_pids(self.stalled, signal.SIGSTOP)
            case Kind.POSTGRES_FREEZE:
                self.stalled = lab.freeze_postgres(node)
                info["stopped_pids"] = self.stalled
            case Kind.WAL_DISK_HANG:
                info["frozen"] = lab.freeze_wal_disk(node)  # False after a clone: pg_wal is on the node's own disk
            case Kind.STANDBY_LONG_FREEZE:
                lab.freeze(node)
            case Kind.MAINTENANCE_LEFT_ON:
                nodes = list(DB_NODES) if f.target is Target.BOTH else [node]
                info["suspended"] = {n: self._maintenance(n, True) for n in nodes}
                self.maintained = nodes
            case Kind.API_FLOOD:
                from standby.lab.flood import api_flood

                self._in_background(api_flood, lab, node, int(f.connections or 100), f.hold_s)
            case Kind.HEARTBEAT_REPLAY:
                from standby.lab.flood import capture_heartbeats, replay_heartbeats

                sender = next(n for n in DB_NODES if n != node)
                # Older than anything the node hears next.
                packets = capture_heartbeats(lab, on=node, sender=sender, seconds=2.0)
                info.update(sender=sender, packets=len(packets))
                self._in_background(replay_heartbeats, lab, packets, node, sender)
            case Kind.FOLLOWER_CRASH:
                lab.crash(node)
                self.crashed.add(node)
            case Kind.FOLLOWER_FREEZE:
                lab.freeze(node)
            case Kind.FOLLOWER_ISOLATE:
                lab.link(node, "public", False)
                lab.link(node, "private", False)
            case Kind.WAN_DOWN:
                lab.wan_link(False)
            case Kind.WAN_LOSS:
                lab.wan_loss(int(f.percent or 0))
        return info

    def _agent_backends(self, node: str) -> list[int]:
        """The primary agent's own PostgreSQL sessions (see faults.AGENT_BACKENDS_SQL)."""
        user = self.lab.config().pg(node).superuser
        try:
            with self.lab.pg_connect(node, autocommit=True, connect_timeout=2) as c:
                return [int(r[0]) for r in c.execute(labfaults.AGENT_BACKENDS_SQL, (user,)).fetchall()]
        except (psycopg.Error, OSError):
            return []  # a primary that does not answer: nothing to stall

    def _maintenance(self, node: str, on: bool) -> bool:
        """POST /maintenance with the API token, from the node's own namespace, as an operator there would.
        Only {"suspend": ...} is sent: the call takes no deadline yet, so the heal switches it off."""
        api = AgentApi(self.lab.config())
        try:
            netns.call_in(self.lab.netns(node), api.maintenance, node, on, 5)
        except (ApiError, OSError, ValueError) as e:  # an agent that does not answer: recorded, the campaign goes on
            self.record("maintenance_failed", node=node, suspend=on, error=str(e))
            return False
        return True

    def _in_background(self, fn: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except (LabError, OSError, ValueError) as e:  # the fault's own failure is recorded, not fatal to the campaign
                self.record("fault_error", error=f"{type(e).__name__}: {e}")

        self.background = threading.Thread(target=run, daemon=True)
        self.background.start()

    def _force_new_segment(self, node: str) -> None:
        # A full disk bites when PostgreSQL needs a new WAL segment: ask for one.
        # A standby cannot switch, a crashing primary may not answer: either way the disk stays full.
        with contextlib.suppress(psycopg.Error, OSError), \
                self.lab.pg_connect(node, autocommit=True, connect_timeout=2) as c:
            c.execute("SELECT pg_switch_wal()")
            c.execute("CHECKPOINT")

    def heal(self, f: Fault, node: str) -> None:
        lab = self.lab
        if f.kind is Kind.WAL_DISK_FULL:
            lab.free_wal_disk(node)
        if f.kind is Kind.WAL_DISK_HANG:
            lab.thaw_wal_disk(node)
        if f.kind is Kind.CLOCK_JUMP:
            lab.set_clock(node, 0)
        if self.stalled:
            labfaults.stop_pids(self.stalled, signal.SIGCONT)
            self.stalled = []
        if self.background is not None:
            self.background.join(timeout=30)
            self.background = None
        for n in self.maintained:
            self._maintenance(n, False)
        self.maintained = []
        lab.heal()
        if node in self.crashed:  # the host reboots; a follower's agent starts its server again
            self.crashed.discard(node)
            lab.start_agent(node, own_clock=self.own_clock and node in DB_NODES)

    def run(self) -> Outcome:
        lab, opts = self.lab, self.opts
        password = lab.spec.secret("app.password").read_text().strip()
        # The followers too: one that took a write is a violation, whatever the pair does.
        addresses = {n: lab.node(n).public.address.split("/")[0] for n in (*DB_NODES, *self.followers)}
        probe = DualPrimaryProbe(lab.netns("client"), addresses, password).start()
        lab.spawn("client", [STANDBY, "lab", "load", "--url", SERVICE_URL, "--rate", str(opts.rate),
                             "--out", str(self.calls), "--seed", str(opts.seed)], "load")
        self.record("load_started", rate=opts.rate)
        try:
            wait_first_ack(lab, self.calls)
            time.sleep(2.0)
            self._faults()
        finally:
            lab.stop_spawned("client", "load")
            self.record("load_stopped")
            result = probe.stop()
            with (self.out / "probe.jsonl").open("w") as fh:
                for s in result.samples:
                    fh.write(json.dumps({"t": s.t, "writable": list(s.writable), "open": list(s.open)}) + "\n")
        self.finish()
        return self.outcome

    def _faults(self) -> None:
        deadline = time.monotonic() + self.opts.duration_s
        for f in self._drawn():
            if time.monotonic() >= deadline:
                break
            node = self._resolve(f)
            self.say(f"  {f.describe()} -> {node}")
            t = time.monotonic()
            info = self.inject(f, node)
            self.record("fault", **f.to_dict(), node=node, injected_at=t, **info)
            self.outcome.faults.append({**f.to_dict(), "node": node, **info})
            time.sleep(f.hold_s)
            self.heal(f, node)
            self.record("heal", number=f.number, kind=f.kind.value, node=node)
            took = self.converge()
            if took is None:
                self.outcome.stopped_early = (f"the pair did not converge within {self.opts.converge_limit_s:g} s "
                                              f"after fault #{f.number} ({f.kind.value} on {node})")
                self.record("not_converged", number=f.number, limit_s=self.opts.converge_limit_s, pair=self.describe(),
                            followers_behind=list(self._behind_now()))
                self.say(f"    NOT CONVERGED within {self.opts.converge_limit_s:g} s: {self.describe()}")
                return
            self.outcome.converge_s.append(took)
            self.record("converged", number=f.number, after_s=round(took, 3))
            self.say(f"    converged in {took:.2f} s; primary {self.roles()[0]}")
            time.sleep(f.quiet_s)

    def _resolve(self, f: Fault) -> str:
        """The node (or the WAN router) the fault hits now."""
        if f.target is Target.FOLLOWER:
            return str(f.follower)
        if f.target is Target.WAN:
            return WAN_ROUTER
        primary, standby = self.roles()
        return standby if f.target is Target.STANDBY else primary

    def _drawn(self) -> Iterator[Fault]:
        timeout_ms = self.lab.config().timings.failover_timeout_ms
        return faults(self.opts.seed, self.opts.kinds, long_freeze_s(timeout_ms, self.opts.degrade_after_s),
                      self.followers)

    # -- the end ----------------------------------------------------------------

    def finish(self) -> None:
        """After the load: converge once more, let the standby replay everything, read both nodes' tables."""
        took = self.converge()
        self.record("final", converged=took is not None, after_s=None if took is None else round(took, 3),
                    followers_behind=[] if took is not None else list(self._behind_now()))
        replicas: dict[str, Any] = {"converged": took is not None}
        if took is not None:
            primary, standby = self.roles()
            replicas.update(primary=primary, standby=standby, caught_up=self._caught_up(primary, standby),
                            tables={n: self._digests(n) for n in (primary, standby)})
            if self.followers:
                replicas["followers"] = {n: self._follower_replica(n, primary) for n in self.followers}
        (self.out / "replicas.json").write_text(json.dumps(replicas, indent=2) + "\n")
        merge_histories(self.calls, self.events, self.out / "history.jsonl")
        for node in DB_NODES:  # each agent's own decisions, to read what happened after the lab is gone
            res = self.lab.standby(node, "history", "--json", "--limit", "1000000", check=False)
            (self.out / f"agent-{node}.json").write_text(res.stdout if res.returncode == 0 else "[]\n")
            log = pg_log_path(self.lab.config(), node)  # where the agent starts it
            if log.exists():
                shutil.copyfile(log, self.out / f"postgresql-{node}.log")
            # What the agent logged (its stalls with the loop's stack among it): a violation's why.
            agent_log = self.lab.spec.role_dir(node) / "log" / "agent.log"
            if agent_log.exists():
                shutil.copyfile(agent_log, self.out / f"agent-{node}.log")
        for node in self.followers:  # the follower's agent and server log where the lab starts them
            for name in ("agent", "postgresql"):
                log = self.lab.spec.role_dir(node) / "log" / f"{name}.log"
                if log.exists():
                    shutil.copyfile(log, self.out / f"{name}-{node}.log")

    def _follower_replica(self, name: str, primary: str) -> dict[str, Any]:
        """A follower at the end: caught up with the primary, its tables, the acknowledged calls it lacks."""
        caught_up = self._caught_up(primary, name)
        acked = {a.call_id for a in read_history(self.calls) if a.outcome is CallOutcome.ACK} \
            if self.calls.exists() else set()
        missing = sorted(acked - labfollowers.call_ids(self.lab, name))
        return {"caught_up": caught_up, "tables": self._digests(name), "missing_acked": missing}

    def _caught_up(self, primary: str, standby: str, timeout_s: float = 30.0) -> bool:
        with self.lab.pg_connect(primary, autocommit=True) as c:
            target = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lab.pg_connect(standby, autocommit=True) as c:
                if c.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:  # type: ignore[index]
                    return True
            time.sleep(0.2)
        return False

    def _digests(self, node: str) -> dict[str, list[Any]]:
        """Per table: row count and an md5 over its rows in a fixed order."""
        out: dict[str, list[Any]] = {}
        with self.lab.pg_connect(node, dbname="softswitch", autocommit=True) as c:
            for table in TABLES:
                row = c.execute(f"SELECT count(*), md5(coalesce(string_agg(r, E'\\n' ORDER BY r), '')) "
                                f"FROM (SELECT t::text AS r FROM {table} t) s").fetchone()
                out[table] = [row[0], row[1]] if row else [0, ""]
        return out


def salvage_summary(report: sv.Report) -> tuple[list[str], dict[str, Any]]:
    """The call ids a salvage report holds, and call id -> new CDR id for those its applies renumbered."""
    calls = sorted({str(r.values["call_id"]) for t in report.tables if t.name == "cdrs" for r in t.rows})
    renumbered = {str(r.key["call_id"]): r.new for a in report.applies for r in a.renumbered
                  if r.table == "cdrs" and r.column == "id" and "call_id" in r.key}
    return calls, renumbered


def merge_histories(calls: Path, events: Path, out: Path) -> None:
    """One JSON-lines history: attempts (by send time) and events, in monotonic time order."""
    entries: list[tuple[float, str]] = []
    if calls.exists():
        for line in calls.read_text().splitlines():
            try:
                entries.append((float(json.loads(line)["t_send"]), line))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
    for line in events.read_text().splitlines():
        entries.append((float(json.loads(line)["t"]), line))
    entries.sort(key=lambda e: e[0])
    out.write_text("".join(line + "\n" for _, line in entries))
