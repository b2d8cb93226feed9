"""What an interrupted rejoin remembers for the next one (chaos seed 103): the rejoin result's own document."""

from __future__ import annotations

from pathlib import Path

from standby.act import rejoin as rj
from standby.documents import RejoinMethod


def test_what_a_rejoin_found_survives_until_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / rj.PENDING
    found = rj.RejoinResult(method=RejoinMethod.CLONE, fork_lsn="0/5000000", old_timeline=3,
                            salvage_report=Path("/s/report.json"), salvaged_rows=7, kept_aside=Path("/s/aside"))
    rj._remember(path, found)
    resumed = rj.RejoinResult()
    rj._resume(path, resumed)
    assert (resumed.method, resumed.fork_lsn, resumed.old_timeline, resumed.salvage_report, resumed.salvaged_rows,
            resumed.kept_aside) == (RejoinMethod.CLONE, "0/5000000", 3, Path("/s/report.json"), 7, Path("/s/aside"))


def test_an_unreadable_record_resumes_as_a_rewind_with_nothing_salvaged(tmp_path: Path) -> None:
    path = tmp_path / rj.PENDING
    for text in ("{broken", '{"method": "teleport"}', "[]"):
        path.write_text(text)
        resumed = rj.RejoinResult()
        rj._resume(path, resumed)
        assert resumed.method is RejoinMethod.REWIND and resumed.salvage_report is None
    path.unlink()
    resumed = rj.RejoinResult()
    rj._resume(path, resumed)
    assert resumed.method is RejoinMethod.REWIND
