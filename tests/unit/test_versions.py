"""Issue 11: versions that meet. `standby check` refuses two PostgreSQL majors (pointing to the supported
path), warns about two minors, and compares the standby releases the agents run: one apart is an upgrade
under way, beyond one is refused naming both and the fix; an agent refusing its peer's protocol fails.

Through preflight.evaluate with what gather would have seen (its pure half).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from standby import config, preflight, protocol
from standby.documents import AGENT_VIEW, HeartbeatCounts, NodeFacts
from standby.model import PgRole, Verdict
from standby.observe import postgres as obs
from tests.unit.configs import EXAMPLE
from tests.unit.test_documents import view

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
CFG = config.load(EXAMPLE)


def facts(node: str, standby_version: str = "0.1.0", pg: str = "15.10") -> NodeFacts:
    return NodeFacts(node=node, standby_version=standby_version, pg_major=int(pg.split(".")[0]), pg_version=pg,
                     cpus=4, memory_bytes=8 << 30, hostname=node, updated_at=NOW)


def running(node: str, role: PgRole, num: int) -> obs.PgObservation:
    return obs.PgObservation(node, role, NOW, version=f"{num // 10000}.{num % 10000}", version_num=num,
                             wal_log_hints=True)


def seen(alpha_num: int | None = 150010, beta_num: int | None = 150010, **changes: Any) -> preflight.Seen:
    pg = {"alpha": running("alpha", PgRole.PRIMARY, alpha_num) if alpha_num else obs.PgObservation("alpha", PgRole.STOPPED, NOW),
          "beta": running("beta", PgRole.STANDBY, beta_num) if beta_num else obs.PgObservation("beta", PgRole.UNREACHABLE, NOW)}
    s = preflight.Seen("alpha", facts("alpha"), None, facts("beta"), pg, {"public": True, "private": True})
    return replace(s, **changes)


def item(s: preflight.Seen, name: str) -> tuple[Verdict, str] | None:
    got = [(i.verdict, i.reason) for i in preflight.evaluate(CFG, s) if i.name == name]
    assert len(got) <= 1, got
    return got[0] if got else None


# -- PostgreSQL ------------------------------------------------------------------------------------


def test_i11_two_postgresql_majors_fail_naming_both_and_the_upgrade_path() -> None:
    verdict, reason = item(seen(beta_num=160004), "postgresql major version")  # type: ignore[misc]
    assert verdict is Verdict.FAIL
    assert "alpha has PostgreSQL 15, beta has 16" in reason
    assert "README 'Upgrades', 'PostgreSQL major upgrade'" in reason


def test_i11_the_readme_has_the_paragraphs_the_checks_point_to() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    upgrades = readme[readme.index("### Upgrades"):]
    upgrades = upgrades[:upgrades.index("\n## ")]
    for title in ("PostgreSQL major upgrade", "PostgreSQL minor update"):
        assert f"**{title}**" in upgrades, title


def test_i11_a_stopped_peer_is_compared_by_what_it_had_at_its_bootstrap() -> None:
    s = seen(beta_num=None, peer_facts=facts("beta", pg="16.2"))
    verdict, reason = item(s, "postgresql major version")  # type: ignore[misc]
    assert verdict is Verdict.FAIL and "beta has 16" in reason


def test_i11_two_minors_of_one_major_warn_that_it_is_fine_only_during_a_minor_update() -> None:
    assert item(seen(), "postgresql minor version") is None
    assert item(seen(), "postgresql major version") == (Verdict.PASS, "both 15")
    verdict, reason = item(seen(beta_num=150008), "postgresql minor version")  # type: ignore[misc]
    assert verdict is Verdict.WARN
    assert "alpha has 15.10, beta has 15.8" in reason and "only while a minor update" in reason
    assert "the standby first, switchover, then the old primary, switchback" in reason
    assert "finish it on beta" in reason and "'PostgreSQL minor update'" in reason
    assert item(seen(beta_num=150008), "postgresql major version") == (Verdict.PASS, "both 15")


def test_i11_an_unknown_peer_postgresql_is_a_warning_not_a_pass() -> None:
    verdict, _ = item(seen(beta_num=None, peer_facts=None), "postgresql major version")  # type: ignore[misc]
    assert verdict is Verdict.WARN


def test_i11_a_data_directory_of_another_major_than_the_binaries_fails_naming_both_keys() -> None:
    # Halfway through a major upgrade: postgres.bin_dir already 16, postgres.data_dir still the 15 one.
    s = seen(alpha_num=None, data_major=15, local_facts=facts("alpha", pg="16.1"))
    verdict, reason = item(s, "data directory version")  # type: ignore[misc]
    assert verdict is Verdict.FAIL
    assert f"{CFG.pg('alpha').data_dir} holds a PostgreSQL 15 data directory" in reason
    assert "postgres.bin_dir" in reason and "is PostgreSQL 16" in reason and "'PostgreSQL major upgrade'" in reason
    assert item(seen(data_major=15), "data directory version") is None


# -- standby's own release -------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "skew"), [
    ("0.1.0", "0.1.0", 0), ("0.1.0", "0.1.7", 0), ("0.3.1", "0.4.0", 1), ("0.4.0", "0.3.9", 1),
    ("0.2.0", "0.4.0", 2), ("1.9.0", "2.0.0", 2), ("1.2.0", "1.2.0+src", 0), ("2.0rc1", "2.1", 1),
    ("0.1.0", "unknown", None), ("", "0.1.0", None),
])
def test_i11_release_skew_counts_releases_by_a_b(a: str, b: str, skew: int | None) -> None:
    assert protocol.release_skew(a, b) == skew


def with_releases(alpha: str, beta: str, beta_from_agent: bool = True, **changes: Any) -> preflight.Seen:
    agents = {"alpha": view(standby_version=alpha), "beta": view(node="beta", peer="alpha", standby_version=beta)}
    if not beta_from_agent:
        agents["beta"] = None  # type: ignore[assignment]
    return seen(agents=agents, **changes)


def test_i11_the_same_release_passes() -> None:
    assert item(with_releases("0.1.0", "0.1.3"), "standby version") == (Verdict.PASS, "both 0.1.0")


def test_i11_releases_one_apart_are_an_upgrade_under_way_a_warning() -> None:
    verdict, reason = item(with_releases("0.2.0", "0.1.0"), "standby version")  # type: ignore[misc]
    assert verdict is Verdict.WARN
    assert "alpha runs 0.2.0 (its agent), beta 0.1.0 (its agent)" in reason
    assert "one release apart" in reason and "install 0.2.0 on beta" in reason


def test_i11_releases_beyond_one_fail_naming_both_and_the_fix() -> None:
    for alpha, beta, fix in (("0.1.0", "0.3.0", "install 0.3.0 on alpha"), ("2.0.0", "1.9.0", "install 2.0.0 on beta")):
        verdict, reason = item(with_releases(alpha, beta), "standby version")  # type: ignore[misc]
        assert verdict is Verdict.FAIL, (alpha, beta)
        assert f"alpha runs {alpha} (its agent), beta {beta} (its agent)" in reason
        assert "more than one release apart" in reason and fix in reason and "README 'Upgrades'" in reason


def test_i11_the_running_agents_release_counts_not_the_one_recorded_at_bootstrap() -> None:
    # beta was bootstrapped with 0.1.0 and has since been upgraded to 0.2.0 as alpha: no skew.
    s = with_releases("0.2.0", "0.2.0", local_facts=facts("alpha", "0.2.0"), peer_facts=facts("beta", "0.1.0"))
    assert item(s, "standby version") == (Verdict.PASS, "both 0.2.0")
    # Its agent silent: its bootstrap's record is all there is, and said as such.
    verdict, reason = item(with_releases("0.3.0", "", beta_from_agent=False, peer_facts=facts("beta", "0.1.0")),
                           "standby version")  # type: ignore[misc]
    assert verdict is Verdict.FAIL and "beta 0.1.0 (at its bootstrap)" in reason


def test_i11_an_agent_that_refuses_its_peers_protocol_fails_the_check() -> None:
    refusing = view(standby_version="0.1.0", heartbeats=HeartbeatCounts(
        accepted=0, rejected={"protocol": 5}, sent={}, send_errors={}, protocol=1, peer_protocol=2))
    verdict, reason = item(seen(agents={"alpha": refusing, "beta": None}), "standby version")  # type: ignore[misc]
    assert verdict is Verdict.FAIL
    assert reason == str(protocol.Mismatch("beta's agent", 2, 1, "alpha's agent"))
    assert "upgrade standby on the older side (alpha's agent)" in reason


# -- what the previous release's agent answers ------------------------------------------------------


def test_i11_the_status_of_an_agent_from_before_maintenance_and_the_protocol_fields_is_read() -> None:
    """/status as an agent of protocol 1.0 from before the maintenance deadline writes it: no maintenance,
    no spool, no protocol counts. A client of 1.1 reads it (same major), as the switchover, `standby
    status`, `standby check` and the status page must."""
    doc = AGENT_VIEW.encode(view(maintenance=None, spool=None))
    for key in ("maintenance", "spool"):
        del doc[key]
    for key in ("protocol", "peer_protocol"):
        del doc["heartbeats"][key]
    got = AGENT_VIEW.decode(doc)
    assert got.maintenance is None and got.spool is None and got.heartbeats.protocol == 1
    assert got == view(maintenance=None, spool=None)
