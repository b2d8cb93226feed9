#!/usr/bin/env python3
"""The same host-crash failover under standby, keepalived and Patroni, side by side.

Each round builds a fresh lab per tool (the same namespaces, addresses, PostgreSQL 15, sample
softswitch on both nodes, writer and dual-primary probe as bench/failover.py), lets only the HA
manager differ, puts 100 calls/s on the service IP, crashes alpha's host (cables dead, every process
killed) and waits until beta is the only primary and holds the service IP. Then every acknowledged
call is checked against beta's database.

- standby:    both agents, as bench/failover.py runs them (sync).
- keepalived: `standby bootstrap` for the streaming sync pair and nothing of standby after it; VRRP
              between the nodes' public addresses carries the service IP, a notify script promotes
              the local server with pg_promote() on MASTER and empties synchronous_standby_names.
- patroni:    Patroni (its own venv under /var/cache/standby-bench/) owns both servers, one etcd
              member in the lab's switch namespace (a crashed host cannot take it down), Patroni's
              documented minimum timings, synchronous_mode; vip-manager moves the service IP after
              the leader key.

Rounds go round-robin over the tools, so the machine's load falls on all of them alike.

    .venv/bin/python bench/peers/run.py --rounds 3 [--tools standby keepalived patroni]

Needs root; installs etcd-server, keepalived and vip-manager with apt-get when they are missing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchlib, failover
sys.path.insert(0, str(Path(__file__).resolve().parent))  # figures

import figures
from figures import PatroniNode, PatroniTimings, Tool, VrrpNode

import benchlib
from benchlib import RUN_FAILURES, LabNames, fresh_lab, other_labs, sigterm_as_interrupt
from failover import load_figures
from standby import __version__
from standby.lab import Lab, LabSpec, netns, pgnode, softswitch
from standby.lab.configfile import REPLICATION_USER
from standby.lab.errors import LabError
from standby.lab.pair import holders, primaries, start_pair, under_load, verify
from standby.lab.topology import (
    APP_DB,
    APP_ROLE,
    GATEWAY,
    PG_BIN,
    PG_PORT,
    PRIVATE_NET,
    PUBLIC_IF,
    PUBLIC_NET,
    SERVICE_IP,
)

NAME_PREFIX = "sbpeer"
CACHE = Path("/var/cache/standby-bench")
PATRONI_VENV = CACHE / "patroni-venv"
PATRONI_SPEC = "patroni[etcd,psycopg3]"
SCOPE = "pgbench"
ETCD = f"{GATEWAY}:2379"
# Binaries the peers need, and the Debian package of each.
PACKAGES = {"etcd": "etcd-server", "keepalived": "keepalived", "vip-manager": "vip-manager"}

Log = Callable[[str], None]


@dataclass(frozen=True)
class Params:
    rounds: int
    tools: tuple[str, ...]
    rate: int
    after_s: float
    settle_timeout_s: float
    advert_int: float
    vip_interval_ms: int


# --------------------------------------------------------------------------- what the peers need


def ensure_packages(log: Log) -> None:
    missing = sorted({pkg for exe, pkg in PACKAGES.items() if shutil.which(exe) is None})
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, stdin=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


# The distribution's interpreter: Patroni runs as the server's OS user, which must be able to execute
# the venv's python (one made from an interpreter under /root could not, and Patroni's launcher of
# the server then failed without a word).
SYSTEM_PYTHON = "/usr/bin/python3"


def _runs_as_postgres(python: Path) -> bool:
    res = subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", str(python),
                          "-c", "pass"], capture_output=True, check=False, cwd="/")
    return res.returncode == 0


def ensure_patroni(log: Log) -> None:
    """Patroni from the package index, in a venv of its own (never the project's)."""
    python = PATRONI_VENV / "bin" / "python3"
    if (PATRONI_VENV / "bin" / "patroni").exists() and _runs_as_postgres(python):
        return
    log(f"installing {PATRONI_SPEC} into {PATRONI_VENV}")
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(PATRONI_VENV, ignore_errors=True)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(PATRONI_VENV)], check=True)
    subprocess.run([str(PATRONI_VENV / "bin" / "pip"), "install", "-q", PATRONI_SPEC], check=True)


def _first_line(argv: Sequence[str]) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return (res.stdout or res.stderr).strip().splitlines()[0] if (res.stdout or res.stderr).strip() else "?"


def versions(tools: Sequence[str]) -> dict[str, str]:
    out = {Tool.STANDBY.value: f"standby {__version__}"}
    if Tool.KEEPALIVED in tools:
        out[Tool.KEEPALIVED.value] = _first_line(["keepalived", "--version"])
    if Tool.PATRONI in tools:
        pkgs = subprocess.run([str(PATRONI_VENV / "bin" / "pip"), "list", "--format", "json"], capture_output=True,
                              text=True, check=True).stdout
        have = {p["name"].lower(): p["version"] for p in json.loads(pkgs)}
        # "etcd Version: 3.4.23", "version: 1.0.2": the number is the last word.
        etcd = _first_line(["etcd", "--version"]).split()[-1]
        vip = _first_line(["vip-manager", "--version"]).split()[-1]
        out[Tool.PATRONI.value] = (f"patroni {have.get('patroni', '?')} (psycopg {have.get('psycopg', '?')}), "
                                   f"etcd {etcd}, vip-manager {vip}")
    return out


# --------------------------------------------------------------------------- a pair under each tool


def _chown_postgres(path: Path) -> None:
    pw = pwd.getpwnam("postgres")
    os.chown(path, pw.pw_uid, pw.pw_gid)


def start_softswitch(lab: Lab) -> None:
    """The sample softswitch on both nodes, as the agents run it ([[services]] placement everywhere)."""
    argv = next(s.start for s in lab.config().services if s.name == "softswitch")
    for node in ("alpha", "beta"):
        lab.run(node, [a.replace("{node}", node) for a in argv])


def _service_up_on_alpha(lab: Lab) -> None:
    lab.wait_for("the service IP on alpha only", lambda: holders(lab) == ["alpha"], timeout_s=30)


def up_keepalived(lab: Lab, p: Params, log: Log) -> None:
    lab.bootstrap()
    start_softswitch(lab)
    nodes = {n.name: n for n in lab.spec.nodes()}
    for name, peer, prio in (("alpha", "beta", 150), ("beta", "alpha", 100)):
        d = lab.spec.role_dir(name) / "keepalived"
        d.mkdir(exist_ok=True)
        psql = [str(PG_BIN / "psql"), "-X", "-Atq", "-h", str(nodes[name].socket_dir), "-p", str(PG_PORT),
                "-U", "postgres", "-d", "postgres"]
        notify = d / "notify.sh"
        notify.write_text(figures.promote_script(psql, str(d / "states.log")))
        notify.chmod(0o700)
        conf = d / "keepalived.conf"
        conf.write_text(figures.keepalived_conf(
            VrrpNode(name, nodes[name].public.ip, nodes[peer].public.ip, prio, name == "alpha"),
            PUBLIC_IF, SERVICE_IP, str(notify), p.advert_int))
        lab.spawn(name, ["keepalived", "--dont-fork", "--log-console", "--vrrp", "-f", str(conf),
                         "-p", str(d / "keepalived.pid"), "-r", str(d / "vrrp.pid")], "keepalived")
        want = "MASTER" if name == "alpha" else "BACKUP"
        log_file = d / "states.log"
        lab.wait_for(f"keepalived on {name} {want}",
                     lambda f=log_file, w=want: f.exists() and f.read_text().split()[-1:] == [w], timeout_s=30)
    _service_up_on_alpha(lab)


def _patroni_node(lab: Lab, name: str) -> PatroniNode:
    n = lab.node(name)
    work = lab.spec.role_dir(name) / "patroni"
    return PatroniNode(name, n.public.ip, n.private.ip, str(n.pgdata), str(n.socket_dir), str(work))


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _patroni_role(lab: Lab, name: str) -> str | None:
    """Patroni's own word for its member (REST API /patroni), asked from inside the node."""
    doc = netns.call_in(lab.netns(name), _get_json, f"http://{lab.node(name).public.ip}:8008/patroni")
    return str(doc.get("role")) if isinstance(doc, dict) else None


def _sync_standby(lab: Lab) -> bool:
    with lab.pg_connect("alpha", autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()
    return bool(row and row[0])


# Who may connect, as the lab's own servers allow it: local trust, the softswitch from both networks,
# replication over the private one.
PATRONI_HBA = ("local all all trust", f"host replication {REPLICATION_USER} {PRIVATE_NET} scram-sha-256",
               *(f"host {APP_DB} {APP_ROLE} {net} scram-sha-256" for net in (PUBLIC_NET, PRIVATE_NET)))


def _empty(path: Path) -> None:
    for child in path.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _app_on_alpha(lab: Lab) -> None:
    """The softswitch's role, database and schema on the cluster Patroni made, as Lab.up makes them."""
    alpha = lab.node("alpha")
    pgnode.create_app(alpha, lab.spec.secret("app.password").read_text().strip())
    softswitch.init_schema(f"host={alpha.socket_dir} port={PG_PORT} dbname={APP_DB} user={APP_ROLE}")


def up_patroni(lab: Lab, p: Params, log: Log) -> None:
    # Patroni bootstraps alpha itself (Lab.up's own cluster is set aside), the softswitch's database is
    # made on it as Lab.up makes it, and Patroni clones beta over the private network.
    password = lab.spec.secret("replication.password").read_text().strip()
    lab.pg_stop("alpha")
    _empty(lab.node("alpha").pgdata)
    etcd_dir = lab.spec.role_dir("sw") / "etcd"
    lab.spawn("sw", ["etcd", "--name", "e1", "--data-dir", str(etcd_dir), "--enable-v2=true",
                     "--listen-client-urls", f"http://{ETCD}", "--advertise-client-urls", f"http://{ETCD}",
                     "--listen-peer-urls", "http://127.0.0.1:2380",
                     "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                     "--initial-cluster", "e1=http://127.0.0.1:2380"], "etcd")
    lab.wait_for("etcd", lambda: netns.call_in(lab.netns("sw"), _get_json, f"http://{ETCD}/health") is not None,
                 timeout_s=30)
    timings = PatroniTimings()
    if timings.problems():
        raise benchlib.BenchError("; ".join(timings.problems()))
    for name in ("alpha", "beta"):
        node = _patroni_node(lab, name)
        work = Path(node.work_dir)
        work.mkdir(exist_ok=True)
        _chown_postgres(work)
        conf = work / "patroni.yml"
        conf.write_text(figures.patroni_conf(SCOPE, node, ETCD, str(PG_BIN), PG_PORT, (REPLICATION_USER, password),
                                             timings, PATRONI_HBA))
        conf.chmod(0o600)
        _chown_postgres(conf)
        lab.spawn(name, ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
                         str(PATRONI_VENV / "bin" / "patroni"), str(conf)], "patroni", env={"HOME": node.work_dir})
        # Patroni before 4.0 said "master".
        want = ("primary", "master") if name == "alpha" else ("replica",)
        lab.wait_for(f"Patroni on {name} a {want[0]}", lambda n=name, w=want: _patroni_role(lab, n) in w,
                     timeout_s=120, every_s=0.5)
        if name == "alpha":
            _app_on_alpha(lab)
    lab.wait_for("beta the synchronous standby", lambda: _sync_standby(lab), timeout_s=60, every_s=0.5)
    for name in ("alpha", "beta"):
        d = Path(_patroni_node(lab, name).work_dir)
        conf = d / "vip-manager.yml"
        conf.write_text(figures.vip_manager_conf(SCOPE, name, SERVICE_IP, PUBLIC_IF, ETCD, p.vip_interval_ms))
        lab.spawn(name, ["vip-manager", "--config", str(conf)], "vip-manager")
    start_softswitch(lab)
    _service_up_on_alpha(lab)


def bring_up(tool: str, lab: Lab, p: Params, log: Log) -> None:
    if tool == Tool.STANDBY:
        start_pair(lab)
    elif tool == Tool.KEEPALIVED:
        up_keepalived(lab, p, log)
    elif tool == Tool.PATRONI:
        up_patroni(lab, p, log)
    else:
        raise ValueError(tool)


# Stopped before the lab goes: Patroni runs as the server's OS user, which the teardown's first pass spares.
SPAWNED = (("alpha", "patroni"), ("beta", "patroni"), ("alpha", "vip-manager"), ("beta", "vip-manager"),
           ("alpha", "keepalived"), ("beta", "keepalived"), ("sw", "etcd"))


LOUD = ("FATAL", "PANIC", "ERROR", "WARNING", "Traceback")


def log_tails(lab: Lab, lines: int = 40) -> dict[str, list[str]]:
    """Kept with a round that failed (the lab goes with it): each peer process's first loud lines
    (where PostgreSQL's own complaints land under Patroni) and its last lines."""
    out = {}
    for node, name in SPAWNED:
        path = lab.spec.role_dir(node) / "log" / f"{name}.log"
        if path.exists():
            text = path.read_text(errors="replace").splitlines()
            loud = [ln for ln in text if any(w in ln for w in LOUD)][:lines]
            out[f"{node}/{name}"] = [*loud, "...", *text[-lines:]]
    return out


def stop_peers(lab: Lab) -> None:
    for node, name in SPAWNED:
        try:
            lab.stop_spawned(node, name)
        except (LabError, OSError):
            pass


# --------------------------------------------------------------------------- one round


def one_round(lab: Lab, p: Params, tmp: Path) -> dict[str, Any]:
    rec: dict[str, Any] = {"loadavg_at_start": list(os.getloadavg()), "error": None}

    def settled() -> bool:
        return primaries(lab) == ["beta"] and holders(lab) == ["beta"]

    with under_load(lab, tmp, p.rate) as run:
        t_fault_wall = time.time()
        run.t_fault = time.monotonic()
        lab.crash("alpha")
        try:
            lab.wait_for("beta primary and holding the service IP", settled, timeout_s=p.settle_timeout_s, every_s=0.05)
            rec["settled_s"] = time.monotonic() - run.t_fault
        except LabError as e:
            rec["error"], rec["settled_s"] = str(e), None
        time.sleep(p.after_s)
    t_fault = run.t_fault
    rec["t_fault_utc"] = datetime.fromtimestamp(t_fault_wall, UTC).isoformat(timespec="milliseconds")
    rec.update(load_figures(run, t_fault))
    try:
        v = verify(lab, run, on="beta")
        rec["lost"] = len(v["missing_acked"])
        rec["missing_acked"] = list(v["missing_acked"])
        rec["verdict"] = {k: v[k] for k in ("ok", "calls", "acked", "failed", "indeterminate")}
    except (ValueError, LabError, OSError, RuntimeError) as e:
        rec["error"] = rec["error"] or f"verify failed: {e}"
    probe = run.probe
    after = [s for s in (probe.samples if probe else []) if s.t >= t_fault]
    edges = [t_fault, *(s.t for s in after)]
    rec["probe"] = {"samples_after_fault": len(after),
                    "longest_blind_after_fault_s": max((b - a for a, b in itertools.pairwise(edges)), default=None)}
    rec["dual_samples"] = len(probe.dual) if probe else 0
    return rec


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Params:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=3, help="host crashes per tool (default 3)")
    ap.add_argument("--tools", nargs="+", choices=[t.value for t in Tool], default=[t.value for t in Tool])
    ap.add_argument("--rate", type=int, default=100, help="calls/s through the service IP (default 100)")
    ap.add_argument("--after", type=float, default=3.0, help="seconds of load after the pair settled (default 3)")
    ap.add_argument("--settle-timeout", type=float, default=90.0,
                    help="give up on a round not settled after this many seconds (default 90)")
    ap.add_argument("--advert-int", type=float, default=1.0, help="keepalived's advert_int in seconds (default 1)")
    ap.add_argument("--vip-interval-ms", type=int, default=100,
                    help="vip-manager's polling interval (default 100 ms; its own default is 1000)")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.rate < 1 or a.after < 0 or a.settle_timeout <= 0 or a.advert_int <= 0 or a.vip_interval_ms < 1:
        ap.error("need rounds >= 1, rate >= 1, after >= 0, settle-timeout > 0, advert-int > 0, vip-interval-ms >= 1")
    return Params(a.rounds, tuple(dict.fromkeys(a.tools)), a.rate, a.after, a.settle_timeout, a.advert_int,
                  a.vip_interval_ms)


def settings(p: Params) -> dict[str, Any]:
    t = PatroniTimings()
    return {
        "durability": "sync",
        "keepalived": {"advert_int_s": p.advert_int, "priorities": {"alpha": 150, "beta": 100}, "unicast": True,
                       "notify": "pg_promote() on MASTER, then synchronous_standby_names = ''"},
        "patroni": {**asdict(t), "synchronous_mode": True, "dcs": "etcd v2 API, one member in the switch namespace",
                    "vip_manager_interval_ms": p.vip_interval_ms},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    t0 = time.monotonic()
    doc, stamp, log = benchlib.begin("peers", p, runs=[], summary={})
    doc["machine"]["other_labs_at_start"] = other_labs()
    doc["settings"] = settings(p)
    code = 0
    names = LabNames(NAME_PREFIX)
    with sigterm_as_interrupt():
        try:
            if {Tool.KEEPALIVED.value, Tool.PATRONI.value} & set(p.tools):
                ensure_packages(log)
            if Tool.PATRONI in p.tools:
                ensure_patroni(log)
            doc["versions"] = versions(p.tools)
            for i, tool in itertools.product(range(p.rounds), p.tools):
                name = names.next()
                log(f"round {i + 1}/{p.rounds}: {tool} on {name}")
                rec: dict[str, Any] = {"tool": tool, "round": i, "lab": name}
                try:
                    with fresh_lab(LabSpec(name, durability="sync")) as lab, \
                            tempfile.TemporaryDirectory(prefix="standby-peers-") as tmp:
                        try:
                            t_up = time.monotonic()
                            bring_up(tool, lab, p, log)
                            rec["ready_s"] = round(time.monotonic() - t_up, 1)
                            rec.update(one_round(lab, p, Path(tmp)))
                        except RUN_FAILURES:
                            rec["log_tails"] = log_tails(lab)
                            raise
                        finally:
                            stop_peers(lab)
                except RUN_FAILURES as e:  # one broken round must not end the series
                    rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                doc["runs"].append(rec)
                doc["summary"] = figures.summarise(doc["runs"], p.tools)
                benchlib.write_results("peers", doc, stamp)
                log(f"  first ack {rec.get('first_ack_s')}, settled {rec.get('settled_s')}, lost {rec.get('lost')}, "
                    f"dual {rec.get('dual_samples')}" + (f"; ERROR {rec['error']}" if rec.get("error") else ""))
        except KeyboardInterrupt:
            log("interrupted; results so far are written")
            code = 130
    doc["complete"] = code == 0
    benchlib.end("peers", doc, stamp, t0, lambda d: figures.render(d["summary"], d.get("versions", {})))
    return code


if __name__ == "__main__":
    sys.exit(main())
