"""Issue 11, bad input: a unit name systemd does not know and a plain data directory of another account
are clear `standby check` failures naming the configuration key and the fix (a missing cluster, a
cluster of the wrong owner and a release skew beyond one have theirs in test_cluster_layout.py and
test_versions.py). `standby check` only reads.
"""

from __future__ import annotations

import os
import pwd
import secrets
from pathlib import Path

import pytest

from standby import config, preflight, unitcheck
from standby.model import Verdict
from tests.unit.configs import example_with_secrets
from tests.unit.test_preflight_probe import _seen_world
from tests.unit.test_versions import CFG, item, seen


def test_i11_named_units_are_the_systemctl_arguments_of_the_services_and_the_clusters_unit(tmp_path: Path) -> None:
    assert unitcheck.named(CFG, "alpha", booted=True) == {"kamailio": "services[0].start (kamailio)"}
    raw, _ = example_with_secrets(tmp_path)
    raw["services"][0]["start"] = ["/usr/bin/systemctl", "--no-block", "restart", "kam-{node}", "rtpengine.service"]
    raw["services"][0]["health"] = ["pgrep", "kamailio"]
    raw["postgres"] = {**raw["postgres"], "cluster": "15/main"}
    for key in ("data_dir", "socket_dir"):
        raw["postgres"].pop(key, None)
    cfg = config.parse(raw)
    assert unitcheck.named(cfg, "beta", booted=True) == {
        "kam-beta": "services[0].start (kamailio)", "rtpengine.service": "services[0].start (kamailio)",
        "kamailio": "services[0].stop (kamailio)", "postgresql@15-main.service": "postgres.cluster"}
    # Without systemd the agent starts a cluster with pg_ctlcluster: its unit is not needed.
    assert "postgresql@15-main.service" not in unitcheck.named(cfg, "beta", booted=False)


def test_i11_a_unit_systemd_does_not_know_fails_naming_the_key_and_the_fix() -> None:
    units = unitcheck.named(CFG, "alpha", booted=True)
    verdict, reason = item(seen(units=units, unit_states={"kamailio": "not-found"}), "unit kamailio")  # type: ignore[misc]
    assert verdict is Verdict.FAIL
    assert reason.startswith("services[0].start (kamailio) names kamailio, which systemd does not know")
    assert "install the package that provides it, or correct the name in the configuration" in reason
    verdict, reason = item(seen(units=units, unit_states={"kamailio": "masked"}), "unit kamailio")  # type: ignore[misc]
    assert verdict is Verdict.FAIL and "`systemctl unmask kamailio`" in reason
    assert item(seen(units=units, unit_states={"kamailio": "loaded"}), "unit kamailio") == (
        Verdict.PASS, "systemd knows it (services[0].start (kamailio))")
    verdict, _ = item(seen(units=units, unit_states={"kamailio": None}), "unit kamailio")  # type: ignore[misc]
    assert verdict is Verdict.WARN


def test_i11_systemd_is_asked_for_real_an_unknown_unit_is_not_found_or_systemd_is_not_there() -> None:
    unit = f"standby-test-{secrets.token_hex(4)}.service"
    states = unitcheck.load_states([unit])
    assert states == {unit: "not-found" if unitcheck.systemd_booted() else None}


def _tree(d: Path) -> list[tuple[str, int, int, int, int, int]]:
    """What a change would show (reading moves only the access times)."""
    return [(p.name, (st := p.stat()).st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
            for p in (d, *sorted(d.iterdir()))]


def test_i11_a_plain_data_directory_of_another_account_fails_naming_the_fix_and_nothing_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "pgdata"
    data.mkdir(mode=0o700)
    (data / "PG_VERSION").write_text("15\n")
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"]["data_dir"] = str(data)
    raw["postgres"]["os_user"] = "nobody"  # the directory is this test's account's, never nobody's
    cfg = config.parse(raw)
    _seen_world(monkeypatch, echo=True)
    before = _tree(data)
    gathered = preflight.gather(cfg, "alpha")
    assert gathered.data_major == 15  # its PG_VERSION, read for the version check
    items = {i.name: i for i in preflight.evaluate(cfg, gathered)}
    got = items["data directory ownership"]
    owner = pwd.getpwuid(os.getuid()).pw_name
    assert got.verdict is Verdict.FAIL and got.node == "alpha"
    assert got.reason == (f"postgres.data_dir: {data} belongs to {owner}, not postgres.os_user (nobody): run "
                          f"`chown -R nobody: {data}`, or set postgres.os_user = \"{owner}\"")
    assert _tree(data) == before
    raw["postgres"]["os_user"] = owner
    cfg = config.parse(raw)
    assert "data directory ownership" not in {i.name for i in preflight.evaluate(cfg, preflight.gather(cfg, "alpha"))}
