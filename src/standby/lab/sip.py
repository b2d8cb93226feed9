"""A real softswitch on the lab: Kamailio on both nodes behind the service IP, SIPp as caller and callee.

Kamailio (``kamailio/kamailio.cfg``) runs on both nodes as a [[services]] entry placed everywhere,
bound to the service IP (the nodes allow a non-local bind), and proxies every call to a SIPp callee in
the client namespace; a SIPp caller there places calls at a set rate to the service IP. Accounting goes
either into the node's spool (db_flatstore files that `standby ship` puts into the primary) or straight
into PostgreSQL (db_postgres, the issue's set-up); dialogs are shared between the nodes over DMQ or not.

The service's commands, as the agent runs them (no shell; {node} filled in by the agent):
    python -m standby.lab.sip start --root ROOT --node NODE --accounting spool|direct [--no-dmq]
    python -m standby.lab.sip stop --root ROOT --node NODE
    python -m standby.lab.sip health --address IP
"""

from __future__ import annotations

import argparse
import csv
import enum
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from standby.lab import procs
from standby.lab.errors import LabError, PrerequisiteMissing
from standby.lab.topology import (
    APP_DB,
    APP_ROLE,
    CLIENT_ADDRESS,
    HOME_IPS,
    PG_PORT,
    SERVICE_IP,
    LabSpec,
)

FILES = Path(__file__).with_name("kamailio")
KAMAILIO_CFG = FILES / "kamailio.cfg"
CALLER_XML = FILES / "caller.xml"
CALLEE_XML = FILES / "callee.xml"
CALLEE_RINGING_XML = FILES / "callee-ringing.xml"
MODULES_DIR = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
# The modules the configuration loads that do not come with the kamailio package itself.
EXTRA_MODULES = {"db_postgres.so": "kamailio-postgres-modules"}
INSTALL_HINT = "apt-get install kamailio kamailio-postgres-modules sip-tester (or ./dev setup)"

SIP_PORT = 5060
CALLER_ERRORS = "caller-errors.log"  # SIPp's -error_file, in the client's log directory (standby.lab.sipp_errors)
CALLEE_ERRORS = "callee-errors.log"
CALLEE_PORT = 5070
CALLER_PORT = 5061
NODE_IDS = {"alpha": 1, "beta": 2}
PEERS = {"alpha": "beta", "beta": "alpha"}
PRIVATE_IPS = {"alpha": "198.51.100.11", "beta": "198.51.100.12"}
# Each node's home address on the network of the callers and the callee: the transactions it forwards use it,
# and the survivor of a crash adopts the dead node's (standby.homeaddr), so the answers to its calls still
# ringing arrive where a proxy relays them.
PUBLIC_IPS = {node: address.split("/")[0] for node, address in HOME_IPS.items()}

# The accounting record's fields, in the order the configuration writes them (its header says why).
ACC_COLUMNS = ("method", "from_tag", "to_tag", "callid", "sip_code", "sip_reason", "time", "call_start", "node")
ACC_KEY = ("method", "callid")
SPOOL_TABLE = "acc_spool"  # where `standby ship` puts the spool's records (key, record jsonb)
DIRECT_TABLE = "acc"  # where Kamailio's db_postgres writes, without the spool
PGPASS = "kamailio.pgpass"  # in the lab's secrets directory: the password never on a command line or in a log


class Accounting(enum.StrEnum):
    SPOOL = "spool"  # a local file per Kamailio process, shipped by `standby ship`
    DIRECT = "direct"  # INSERT into the primary through libpq, as Kamailio does by default


@dataclass(frozen=True)
class Setup:
    """How the lab's Kamailio accounts calls and whether the nodes share dialogs."""

    accounting: Accounting = Accounting.SPOOL
    dmq: bool = True


def check_prerequisites() -> None:
    """Refuse early, naming the packages, rather than fail on the first node."""
    for tool, package in (("kamailio", "kamailio"), ("sipp", "sip-tester")):
        if not shutil.which(tool):
            raise PrerequisiteMissing(f"{tool} not found (package {package}); install it with: {INSTALL_HINT}")
    for module, package in EXTRA_MODULES.items():
        if not (MODULES_DIR / module).exists():
            raise PrerequisiteMissing(f"Kamailio module {MODULES_DIR / module} not found (package {package}); "
                                      f"install it with: {INSTALL_HINT}")


# --------------------------------------------------------------------------- paths


def spool_dir(root: Path, node: str) -> Path:
    return root / node / "spool"


def _run_dir(root: Path, node: str) -> Path:
    return root / node / "procs" / "kamailio"


def _pidfile(root: Path, node: str) -> Path:
    return root / node / "procs" / "kamailio.pid"


def _node(node: str) -> str:
    if node not in NODE_IDS:
        raise LabError(f"unknown node {node!r}: expected one of {', '.join(NODE_IDS)}")
    return node


# --------------------------------------------------------------------------- the pure parts


def kamailio_argv(root: Path, node: str, setup: Setup) -> list[str]:
    """Kamailio's command line on ``node``: in the foreground (-DD), its log on stderr (-E)."""
    node = _node(node)
    me, peer = PRIVATE_IPS[node], PRIVATE_IPS[PEERS[node]]
    if setup.accounting is Accounting.SPOOL:
        db_url = f"flatstore:{spool_dir(root, node)}"
        con: list[str] = []
    else:
        # `standby dsn --format kamailio`'s form through the service IP, as the issue's set-up had it.
        db_url = f"postgres://{APP_ROLE}@{SERVICE_IP.split('/')[0]}:{PG_PORT}/{APP_DB}"
        con = ["-A", 'PG_CON_PARAM="connect_timeout=2;tcp_user_timeout=1000;keepalives=1;keepalives_idle=1;'
                     'keepalives_interval=1;keepalives_count=2"']
    argv = [
        "kamailio", "-DD", "-E", "-f", str(KAMAILIO_CFG), "-Y", str(_run_dir(root, node)),
        # Shared memory for 200 calls/s with a dead peer: each transaction takes ~8 kB, and those carrying
        # dialog updates to the dead peer retransmit for tm's fr_timer (30 s): 64 MB ran out in seconds.
        "-m", "512", "-M", "16",
        "-A", f"SERVICE_IP={SERVICE_IP.split('/')[0]}", "-A", f"NODE_ID={NODE_IDS[node]}", "-A", f"NODE_IP={me}",
        "-A", f"NODE_PUBLIC_IP={PUBLIC_IPS[node]}", "-A", f"PEER_PUBLIC_IP={PUBLIC_IPS[PEERS[node]]}",
        "-A", f'DMQ_SELF="sip:{me}:5090"', "-A", f'DMQ_PEER="sip:{peer}:5090"',
        "-A", f'NEXT_HOP="{CLIENT_ADDRESS.split("/")[0]}:{CALLEE_PORT}"',
        "-A", f'ACC_DB_URL="{db_url}"', "-A", f'CTL_SOCKET="unix:{_run_dir(root, node) / "ctl"}"', *con,
    ]  # fmt: skip
    # The call trace (one line per dialog update and per ACK and BYE) is what explains a lab run's missing
    # start afterwards; the lab's rates (up to 200 calls/s) make it a few MB per event.
    argv.extend(["-A", "WITH_CALL_TRACE"])
    return [*argv, "-A", "WITH_DMQ"] if setup.dmq else argv


def service_entry(spec: LabSpec, setup: Setup) -> dict[str, Any]:
    """Kamailio as a [[services]] entry of the lab's standby.toml, on both nodes at once."""
    cmd = [sys.executable, "-m", "standby.lab.sip"]
    where = ["--root", str(spec.root), "--node", "{node}"]
    start = [*cmd, "start", *where, "--accounting", setup.accounting.value, *([] if setup.dmq else ["--no-dmq"])]
    return {
        "name": "kamailio",
        "start": start,
        "stop": [*cmd, "stop", *where],
        "health": [*cmd, "health", "--address", "{node}"],
        "timeout_s": 20,
        # Warm on both nodes: a failover moves the address, and the survivor knows the calls (DMQ).
        "placement": "everywhere",
    }


def spool_section(spec: LabSpec) -> str:
    """The [spool] of standby.toml for Kamailio's flatstore files (the same on both nodes)."""
    columns = ", ".join(f'"{c}"' for c in ACC_COLUMNS)
    key = ", ".join(f'"{c}"' for c in ACC_KEY)
    return f"""
[spool]
path = "{spec.root}/{{node}}/spool"
pattern = "acc_*.log"
format = "csv"
delimiter = "|"
columns = [{columns}]
key = [{key}]
table = "{SPOOL_TABLE}"
database = "{APP_DB}"
user = "{APP_ROLE}"
password_file = "{spec.secret('app.password')}"
poll_interval_ms = 50
retry_max_ms = 500
"""


def options_request(address: str, port: int, local: tuple[str, int]) -> bytes:
    """A SIP OPTIONS to ``address``: the health probe (the configuration answers it with 200)."""
    tag, branch, call_id = (secrets.token_hex(6) for _ in range(3))
    return (
        f"OPTIONS sip:{address}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{branch}\r\n"
        f"From: <sip:health@{local[0]}>;tag={tag}\r\nTo: <sip:{address}:{port}>\r\n"
        f"Call-ID: {call_id}@{local[0]}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 2\r\nContent-Length: 0\r\n\r\n"
    ).encode()


# --------------------------------------------------------------------------- the service's commands


def health(address: str, timeout_s: float = 1.0) -> bool:
    """Whether Kamailio answers an OPTIONS at ``address`` (a node name or an address) with 200."""
    ip = PRIVATE_IPS.get(address, address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.connect((ip, SIP_PORT))
        s.send(options_request(ip, SIP_PORT, s.getsockname()))
        try:
            answer = s.recv(4096)
        except OSError:
            return False
    return answer.startswith(b"SIP/2.0 200 ")


def _netns(root: Path, node: str) -> str:
    # The lab's directory is named after it: the namespace its processes run in, without its lab.json.
    return LabSpec(root.name, base=root.parent).netns(node)


def start(root: Path, node: str, setup: Setup, timeout_s: float = 15.0) -> None:
    """Start Kamailio on ``node`` unless it runs, and wait until it answers."""
    node = _node(node)
    ns = _netns(root, node)
    if not procs.alive(ns, _pidfile(root, node)):
        spool_dir(root, node).mkdir(parents=True, exist_ok=True)
        _run_dir(root, node).mkdir(parents=True, exist_ok=True)
        # Detached, leading its own process group (its workers are in it): stop() signals the group.
        procs.spawn(ns, kamailio_argv(root, node, setup), root / node / "log" / "kamailio.log", _pidfile(root, node),
                    env=dict(os.environ, PGPASSFILE=str(root / "secrets" / PGPASS)))
    deadline = time.monotonic() + timeout_s
    while not health(node):
        if not procs.alive(ns, _pidfile(root, node)):
            raise LabError(f"kamailio on {node} exited while starting; see {root / node / 'log' / 'kamailio.log'}")
        if time.monotonic() > deadline:
            raise LabError(f"kamailio on {node} does not answer OPTIONS at {PRIVATE_IPS[node]}:{SIP_PORT}")
        time.sleep(0.2)


def stop(root: Path, node: str, timeout_s: float = 10.0) -> None:
    """SIGTERM to Kamailio's processes (its main one leads their group), SIGKILL if they linger; idempotent."""
    procs.stop(_netns(root, _node(node)), _pidfile(root, node), timeout_s)


# --------------------------------------------------------------------------- SIPp


def callee_argv(log_dir: Path, ring_ms: int = 0) -> list[str]:
    """The far end: answers every call the proxies send it, in the client namespace; at once, or with
    ``ring_ms`` a 180 Ringing first and the answer that long after (as a person picks up)."""
    scenario = ["-sf", str(CALLEE_RINGING_XML), "-d", str(ring_ms)] if ring_ms > 0 else ["-sf", str(CALLEE_XML)]
    return ["sipp", *scenario, "-i", CLIENT_ADDRESS.split("/")[0], "-p", str(CALLEE_PORT),
            "-nostdin", "-nd", "-trace_err", "-error_file", str(log_dir / CALLEE_ERRORS)]


def caller_argv(stats: Path, rate: float, calls: int, hold_ms: int, log_dir: Path) -> list[str]:
    """``calls`` calls at ``rate`` a second, each held ``hold_ms``, to the service IP; SIPp retransmits
    over UDP and gives a call up after 30 s without an answer it waits for."""
    return ["sipp", "-sf", str(CALLER_XML), "-i", CLIENT_ADDRESS.split("/")[0], "-p", str(CALLER_PORT),
            f"{SERVICE_IP.split('/')[0]}:{SIP_PORT}", "-r", f"{rate:g}", "-m", str(calls), "-d", str(hold_ms),
            "-l", str(max(100, int(rate * (hold_ms / 1000 + 5)))), "-recv_timeout", "30000",
            "-max_retrans", "10", "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "1",
            "-trace_err", "-error_file", str(log_dir / CALLER_ERRORS),
            "-trace_logs", "-log_file", str(completed_log(log_dir))]


def completed_log(log_dir: Path) -> Path:
    """Where the caller writes the Call-ID of each call it completed (caller.xml's last action)."""
    return log_dir / "caller-completed.log"


def read_completed(path: Path) -> set[str]:
    """The Call-IDs of the calls the caller completed: answered, held and hung up."""
    try:
        return {line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()}
    except FileNotFoundError:
        return set()
    except OSError as e:
        raise LabError(f"cannot read the caller's completed calls {path}: {e.strerror}") from None


@dataclass(frozen=True)
class CallerStats:
    successful: int
    failed: int
    retransmissions: int


def read_caller_stats(stats: Path) -> CallerStats:
    """SIPp's cumulative counters, from the last row of its -trace_stat file (';'-separated)."""
    try:
        rows = list(csv.reader(stats.read_text().splitlines(), delimiter=";"))
    except OSError as e:
        raise LabError(f"cannot read SIPp's statistics {stats}: {e.strerror}") from None
    if len(rows) < 2:
        raise LabError(f"SIPp's statistics {stats} hold no row yet")
    last = dict(zip(rows[0], rows[-1], strict=False))
    try:
        return CallerStats(int(last["SuccessfulCall(C)"]), int(last["FailedCall(C)"]), int(last["Retransmissions(C)"]))
    except (KeyError, ValueError) as e:
        raise LabError(f"SIPp's statistics {stats}: no counter {e}") from None


# --------------------------------------------------------------------------- what reached the database


@dataclass(frozen=True)
class AccRecord:
    method: str
    callid: str
    call_start: str
    node: str
    sip_code: str = ""


@dataclass(frozen=True)
class Accounted:
    """Per call, what the primary holds: its INVITE's record, and its end (BYE) with the call's start."""

    invites: int  # calls with at least one INVITE record
    cdrs: int  # calls with a BYE record that knows when the call started
    ends_without_start: int  # calls with a BYE record and no start: ended on a node that did not know them
    duplicates: int  # records beyond the first for the same (method, call)


def tally(records: Iterable[AccRecord], calls: set[str] | None = None) -> Accounted:
    """What ``records`` hold about ``calls`` (all calls when None)."""
    seen: dict[tuple[str, str], list[AccRecord]] = {}
    for r in records:
        if calls is None or r.callid in calls:
            seen.setdefault((r.method, r.callid), []).append(r)
    invites = {c for (m, c) in seen if m == "INVITE"}
    with_start = {c for (m, c), rs in seen.items() if m == "BYE" and any(_started(r.call_start) for r in rs)}
    ends = {c for (m, c) in seen if m == "BYE"}
    return Accounted(len(invites), len(with_start), len(ends - with_start), sum(len(rs) - 1 for rs in seen.values()))


def incomplete_calls(records: Iterable[AccRecord]) -> dict[str, list[AccRecord]]:
    """The calls ``records`` name that lack exactly one INVITE record and one BYE record with a start, with
    their records (a call with no record at all is not named: compare with the calls placed)."""
    calls: dict[str, list[AccRecord]] = {}
    for r in records:
        calls.setdefault(r.callid, []).append(r)
    out = {}
    for callid, rs in sorted(calls.items()):
        methods = [r.method for r in rs]
        if methods.count("INVITE") != 1 or methods.count("BYE") != 1 or not any(
                r.method == "BYE" and _started(r.call_start) for r in rs):
            out[callid] = rs
    return out


def incomplete(records: Iterable[AccRecord], limit: int = 10) -> list[str]:
    """Up to ``limit`` calls missing a record or a start, each with what there is ("METHOD code@node start")."""
    return [f"{callid}: " + ", ".join(f"{r.method} {r.sip_code}@{r.node} {r.call_start or '-'}" for r in rs)
            for callid, rs in incomplete_calls(records).items()][:limit]


def _started(call_start: str) -> bool:
    return call_start.strip() not in ("", "0")


def read_records(conn: Any, accounting: Accounting) -> list[AccRecord]:
    """Every accounting record in the primary's database (``conn``: psycopg, the application database)."""
    if accounting is Accounting.SPOOL:
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (SPOOL_TABLE,)).fetchone()[0]:
            return []
        rows = conn.execute(f"SELECT record->>'method', record->>'callid', coalesce(record->>'call_start', ''),"
                            f" record->>'node', record->>'sip_code' FROM {SPOOL_TABLE}").fetchall()
    else:
        rows = conn.execute(f"SELECT method, callid, coalesce(call_start, ''), node, sip_code FROM {DIRECT_TABLE}").fetchall()
    return [AccRecord(*(str(v) if v is not None else "" for v in row)) for row in rows]


DIRECT_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {DIRECT_TABLE} (
    id bigserial PRIMARY KEY,
    method text NOT NULL DEFAULT '',
    from_tag text NOT NULL DEFAULT '',
    to_tag text NOT NULL DEFAULT '',
    callid text NOT NULL DEFAULT '',
    sip_code text NOT NULL DEFAULT '',
    sip_reason text NOT NULL DEFAULT '',
    time timestamp NOT NULL,
    call_start text,
    node text
)"""


# --------------------------------------------------------------------------- the lab's side


def configure(lab: Any, setup: Setup) -> None:
    """After `Lab.up` with ``service_entry``, before the agents start: the spool (or the table Kamailio
    writes to) and the password file its libpq reads."""
    spec: LabSpec = lab.spec
    password = spec.secret("app.password").read_text().strip()
    fd = os.open(spec.secrets_dir / PGPASS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"*:*:{APP_DB}:{APP_ROLE}:{password}\n")
    for node in NODE_IDS:
        spool_dir(spec.root, node).mkdir(parents=True, exist_ok=True)
    if setup.accounting is Accounting.SPOOL:
        with open(spec.config_path, "a") as f:
            f.write(spool_section(spec))
    else:
        with lab.pg_connect("alpha", APP_DB, autocommit=True) as conn:
            conn.execute(DIRECT_SCHEMA)
            conn.execute(f"ALTER TABLE {DIRECT_TABLE} OWNER TO {APP_ROLE}")
    lab.config()  # the file as changed must still load


def start_callee(lab: Any, ring_ms: int = 0) -> None:
    lab.spawn("client", callee_argv(lab.spec.role_dir("client") / "log", ring_ms), "sipp-callee")


def start_shipper(lab: Any, node: str) -> None:
    """`standby ship` on ``node``: it waits for a primary by itself, so it may start before the agents."""
    exe = str(Path(sys.executable).with_name("standby"))
    lab.spawn(node, [exe, "ship", "-v", "--config", str(lab.config_path), "--node", node], "ship")


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m standby.lab.sip", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("start", "stop"):
        c = sub.add_parser(name)
        c.add_argument("--root", type=Path, required=True)
        c.add_argument("--node", required=True, choices=sorted(NODE_IDS))
        if name == "start":
            c.add_argument("--accounting", choices=[a.value for a in Accounting], default=Accounting.SPOOL.value)
            c.add_argument("--no-dmq", action="store_true")
    h = sub.add_parser("health")
    h.add_argument("--address", required=True)
    args = p.parse_args(argv)
    try:
        if args.command == "start":
            start(args.root, args.node, Setup(Accounting(args.accounting), not args.no_dmq))
        elif args.command == "stop":
            stop(args.root, args.node)
        else:
            return 0 if health(args.address) else 1
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
