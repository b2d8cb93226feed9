"""The lab's Kamailio and SIPp (standby.lab.sip): what it checks, the command line and configuration it
gives Kamailio, the [spool] that reads what Kamailio writes, and how calls are counted from records."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from standby import config as standby_config
from standby.lab import configfile, sip
from standby.lab.errors import LabError, PrerequisiteMissing
from standby.lab.topology import LabSpec
from standby.spool.parse import LineFormat, Record, parse_line


def test_missing_kamailio_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sip.shutil, "which", lambda tool: None if tool == "kamailio" else "/usr/bin/" + tool)
    with pytest.raises(PrerequisiteMissing) as e:
        sip.check_prerequisites()
    assert "kamailio not found" in str(e.value) and "kamailio-postgres-modules sip-tester" in str(e.value)


def test_missing_sipp_names_sip_tester(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sip.shutil, "which", lambda tool: None if tool == "sipp" else "/usr/bin/" + tool)
    with pytest.raises(PrerequisiteMissing, match="package sip-tester"):
        sip.check_prerequisites()


def test_missing_postgres_module_names_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sip.shutil, "which", lambda tool: "/usr/bin/" + tool)
    monkeypatch.setattr(sip, "MODULES_DIR", tmp_path)
    with pytest.raises(PrerequisiteMissing, match="package kamailio-postgres-modules"):
        sip.check_prerequisites()


def _defines(argv: list[str]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "-A"]
    return dict(p.partition("=")[::2] for p in pairs)


def test_each_node_shares_dialogs_with_the_other_over_its_private_address() -> None:
    root = Path("/lab")
    a, b = (_defines(sip.kamailio_argv(root, n, sip.Setup())) for n in ("alpha", "beta"))
    assert a["DMQ_SELF"] == b["DMQ_PEER"] == '"sip:198.51.100.11:5090"'
    assert b["DMQ_SELF"] == a["DMQ_PEER"] == '"sip:198.51.100.12:5090"'
    assert a["SERVICE_IP"] == b["SERVICE_IP"] == "192.0.2.100"  # the same Record-Route on both
    assert a["NODE_ID"] != b["NODE_ID"] and "WITH_DMQ" in a and "WITH_DMQ" in b
    assert a["ACC_DB_URL"] == '"flatstore:/lab/alpha/spool"' and b["ACC_DB_URL"] == '"flatstore:/lab/beta/spool"'


def test_each_node_forwards_from_its_home_address_not_the_service_ip() -> None:
    # The callee's answer must reach the node holding the call's transaction, which after a switchover
    # no longer holds the service IP; and after a crash, the survivor that adopted the dead node's home address.
    a, b = (_defines(sip.kamailio_argv(Path("/lab"), n, sip.Setup())) for n in ("alpha", "beta"))
    spec = LabSpec("x", home_addresses=True)
    cfg = standby_config.parse(tomllib.loads(configfile.render(spec)))
    homes = {n: str(cfg.nodes[n].home_address.ip) for n in ("alpha", "beta")}  # type: ignore[union-attr]
    assert (a["NODE_PUBLIC_IP"], b["NODE_PUBLIC_IP"]) == (homes["alpha"], homes["beta"])
    assert (a["PEER_PUBLIC_IP"], b["PEER_PUBLIC_IP"]) == (homes["beta"], homes["alpha"])
    assert a["NODE_PUBLIC_IP"] not in (a["SERVICE_IP"], str(spec.node("alpha").public.ip))


def test_without_dmq_and_spool_kamailio_writes_to_postgresql() -> None:
    d = _defines(sip.kamailio_argv(Path("/lab"), "alpha", sip.Setup(sip.Accounting.DIRECT, dmq=False)))
    assert "WITH_DMQ" not in d
    assert d["ACC_DB_URL"] == '"postgres://softswitch@192.0.2.100:5432/softswitch"'  # no password on the line
    assert "tcp_user_timeout" in d["PG_CON_PARAM"]


@pytest.mark.skipif(not shutil.which("kamailio"), reason="needs Debian's kamailio (./dev setup)")
@pytest.mark.parametrize("setup", [sip.Setup(), sip.Setup(sip.Accounting.DIRECT, dmq=False)])
def test_kamailio_accepts_the_configuration(tmp_path: Path, setup: sip.Setup) -> None:
    (tmp_path / "alpha" / "procs" / "kamailio").mkdir(parents=True)
    argv = sip.kamailio_argv(tmp_path, "alpha", setup)
    res = subprocess.run([argv[0], "-c", *argv[1:]], capture_output=True, text=True, check=False, timeout=30)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "udp: 192.0.2.100 [192.0.2.100]:5060" in res.stdout + res.stderr
    assert "udp: 192.0.2.21 [192.0.2.21]:5060 name node" in res.stdout + res.stderr  # alpha's home address
    assert "udp: 192.0.2.22 [192.0.2.22]:5060 name peer" in res.stdout + res.stderr  # beta's, for when adopted
    assert ("198.51.100.11]:5090" in res.stdout + res.stderr) is setup.dmq


# A call's INVITE and BYE as db_flatstore writes them with this configuration (Kamailio 5.6).
INVITE_LINE = b"INVITE|4020c1|3996e1|1-4020@192.0.2.50|200|OK|1796178941||1"
BYE_LINE = b"BYE|4020c1|3996e1|1-4020@192.0.2.50|200|OK|1796178942|1796178941|2"


def test_the_spool_section_reads_what_kamailio_writes(tmp_path: Path) -> None:
    spec = LabSpec("sbsip", base=tmp_path)
    spec.root.mkdir()
    path = tmp_path / "standby.toml"
    path.write_text(configfile.render(spec) + sip.spool_section(spec))
    cfg = standby_config.load(path)
    assert cfg.spool is not None and cfg.spool.path_for("beta") == spec.root / "beta" / "spool"
    fmt = LineFormat.of(cfg.spool)
    invite, bye = parse_line(INVITE_LINE, fmt), parse_line(BYE_LINE, fmt)
    assert isinstance(invite, Record) and isinstance(bye, Record)
    assert invite.key != bye.key  # one record per method and call
    assert bye.fields["call_start"] == "1796178941" and bye.fields["node"] == "2"
    assert invite.fields["callid"] == bye.fields["callid"] == "1-4020@192.0.2.50"


def test_tally_counts_calls_not_rows() -> None:
    r = sip.AccRecord
    records = [
        r("INVITE", "c1", "", "1"), r("BYE", "c1", "100", "1"),
        r("INVITE", "c2", "", "1"), r("INVITE", "c2", "", "2"),  # accounted by both nodes: a duplicate
        r("BYE", "c2", "", "2"),  # ended on a node that did not know it: no start
        r("BYE", "c3", "0", "2"),  # a start of 0 is no start either
        r("INVITE", "other", "", "1"),
    ]
    assert sip.tally(records, {"c1", "c2", "c3"}) == sip.Accounted(invites=2, cdrs=1, ends_without_start=2,
                                                                   duplicates=1)


def test_caller_stats_come_from_sipps_last_row(tmp_path: Path) -> None:
    head = "StartTime;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);Retransmissions(C)"
    stats = tmp_path / "stats.csv"
    stats.write_text(f"{head}\nt;1;1;0;0;0\nt;2;29;0;1;4\n")
    assert sip.read_caller_stats(stats) == sip.CallerStats(successful=29, failed=1, retransmissions=4)
    stats.write_text(head + "\n")
    with pytest.raises(LabError, match="no row yet"):
        sip.read_caller_stats(stats)


def test_completed_calls_are_the_call_ids_the_caller_logged(tmp_path: Path) -> None:
    log_dir = tmp_path
    assert sip.read_completed(sip.completed_log(log_dir)) == set()  # no call completed yet
    sip.completed_log(log_dir).write_text("1-4020@192.0.2.50\n2-4020@192.0.2.50\n\n")
    assert sip.read_completed(sip.completed_log(log_dir)) == {"1-4020@192.0.2.50", "2-4020@192.0.2.50"}
    argv = sip.caller_argv(tmp_path / "stats.csv", 30, 10, 1500, log_dir)
    assert argv[argv.index("-log_file") + 1] == str(sip.completed_log(log_dir)) and "-trace_logs" in argv


def test_service_entry_runs_on_both_nodes_and_validates(tmp_path: Path) -> None:
    spec = LabSpec("sbsip", base=tmp_path)
    entry = sip.service_entry(spec, sip.Setup(dmq=False))
    assert entry["placement"] == "everywhere" and "--no-dmq" in entry["start"]
    svc = standby_config.Service.model_validate(entry)
    assert svc.name == "kamailio"


def test_the_callee_answers_at_once_or_rings_first_for_the_ring_time(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    at_once = sip.callee_argv(tmp_path)
    assert at_once[at_once.index("-sf") + 1] == str(sip.CALLEE_XML) and "-d" not in at_once
    ringing = sip.callee_argv(tmp_path, ring_ms=2000)
    assert ringing[ringing.index("-sf") + 1] == str(sip.CALLEE_RINGING_XML)
    assert ringing[ringing.index("-d") + 1] == "2000"
    # The ringing scenario: 180, then the pause SIPp's -d sets, then 200 with the same To tag.
    steps = [(e.tag, (e.text or "").strip().splitlines()[0] if e.tag == "send" else "")
             for e in ET.parse(sip.CALLEE_RINGING_XML).getroot()]
    assert steps[:4] == [("recv", ""), ("send", "SIP/2.0 180 Ringing"), ("pause", ""), ("send", "SIP/2.0 200 OK")]
