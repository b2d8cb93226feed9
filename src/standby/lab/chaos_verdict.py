"""The chaos campaign's verdict: pure judgement over what the run recorded.

Inputs are the run directory's files (see standby.lab.campaign) and the call
checker's verdict against the final primary (standby.lab.checker, run as a
separate process). Violations:

- any violation of the call checker: an acknowledged call missing or present
  twice, a wrong balance effect, a refused call committed; an acknowledged call
  under another CDR id is no violation when the salvage that brought it back
  renumbered it to exactly that id (the stated conflict policy);
- a salvage apply that failed (its rows never reached the primary);
- any probe sample with two writable nodes, or with a follower writable (a follower
  never promotes itself), or the probe blind (no sample) for longer than ``PROBE_BLIND_S``;
- the pair not converged within the limit after a heal, or at the end;
- the standby or a follower not caught up, or its tables different from the primary's;
- an acknowledged call missing from a follower.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBE_BLIND_S = 1.0  # the probe samples every 100 ms; a longer hole means it could have missed a dual primary


@dataclass(frozen=True)
class ChaosVerdict:
    seed: int | None
    faults: Mapping[str, int]  # kind -> injected
    acked: int
    failed: int
    indeterminate_applied: int
    indeterminate_not_applied: int
    lost: int  # acknowledged calls missing from the final primary
    call_violations: Sequence[str]
    samples: int
    dual_samples: int
    dual_open_samples: int  # both primaries and open, but not both committing (information, not a violation)
    longest_probe_gap_s: float
    converge_s: Sequence[float]  # after each heal
    converge_limit_s: float
    final_converged: bool
    not_converged: str | None  # what did not converge, if anything
    replicas_identical: bool | None  # None: not compared (the pair never converged)
    replica_differences: Sequence[str] = field(default_factory=tuple)
    run_s: float = 0.0
    salvaged_acked: Sequence[str] = field(default_factory=tuple)  # acknowledged calls that came back by salvage
    salvage_renumbered: int = 0  # of those, how many under a new CDR id
    salvage_failures: Sequence[str] = field(default_factory=tuple)
    followers: Sequence[str] = field(default_factory=tuple)  # the lab's followers, in the campaign too
    final_behind: str = ""  # at the end: the followers that had not converged, if it was them
    follower_writable_samples: int = 0  # probe samples in which a follower took a write
    follower_missing_acked: Mapping[str, int] = field(default_factory=dict)  # follower -> acknowledged calls it lacks

    @property
    def violations(self) -> list[str]:
        out = list(self.call_violations)
        out += [f"salvage apply failed on {f}" for f in self.salvage_failures]
        if self.dual_samples:
            out.append(f"{self.dual_samples} probe samples with two writable nodes")
        if self.follower_writable_samples:
            out.append(f"{self.follower_writable_samples} probe samples with a follower writable")
        out += [f"{n} acknowledged calls missing from follower {f}"
                for f, n in sorted(self.follower_missing_acked.items()) if n]
        if self.longest_probe_gap_s > PROBE_BLIND_S:
            out.append(f"the dual-primary probe was blind for {self.longest_probe_gap_s:.2f} s")
        if self.not_converged:
            out.append(self.not_converged)
        if not self.final_converged:
            out.append(f"the pair did not converge within {self.converge_limit_s:g} s at the end{self.final_behind}")
        if self.replicas_identical is False:
            out.append("a replica differs from the primary: " + "; ".join(self.replica_differences))
        return out

    @property
    def ok(self) -> bool:
        return not self.violations

    def render(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())) or "none"
        worst = max(self.converge_s, default=0.0)
        lines = [
            f"chaos verdict: {'OK' if self.ok else 'VIOLATIONS'}   (seed {self.seed}, {self.run_s / 60:.1f} min)",
            f"  faults injected: {sum(self.faults.values())} ({kinds})",
            f"  calls: {self.acked} acknowledged, {self.lost} lost, {self.failed} failed, "
            f"{self.indeterminate_applied + self.indeterminate_not_applied} indeterminate "
            f"({self.indeterminate_applied} applied, {self.indeterminate_not_applied} not)",
            f"  dual-primary samples: {self.dual_samples} of {self.samples} "
            f"(longest gap between samples {self.longest_probe_gap_s:.3f} s); "
            f"both open but one not committing: {self.dual_open_samples}",
            f"  converged after every heal: {'yes' if not self.not_converged else 'NO'}; longest {worst:.2f} s "
            f"(limit {self.converge_limit_s:g} s); at the end: {'yes' if self.final_converged else 'NO'}",
            f"  {'standby and followers' if self.followers else 'standby'} identical to the primary: "
            + {True: "yes", False: "NO", None: "not compared"}[self.replicas_identical],
        ]
        if self.followers:
            lines.insert(1, f"  followers: {', '.join(self.followers)} "
                            f"(probe samples with one writable: {self.follower_writable_samples})")
        if self.salvaged_acked:
            shown = ", ".join(self.salvaged_acked[:5]) + (f" (+{len(self.salvaged_acked) - 5} more)"
                                                          if len(self.salvaged_acked) > 5 else "")
            lines.append(f"  acknowledged calls back by salvage: {len(self.salvaged_acked)} "
                         f"({self.salvage_renumbered} under a new CDR id): {shown}")
        lines += [f"  VIOLATION {v}" for v in self.violations]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": self.violations, "seed": self.seed, "faults": dict(self.faults),
                "acked": self.acked, "lost": self.lost, "failed": self.failed,
                "indeterminate_applied": self.indeterminate_applied,
                "indeterminate_not_applied": self.indeterminate_not_applied,
                "samples": self.samples, "dual_samples": self.dual_samples,
                "dual_open_samples": self.dual_open_samples,
                "longest_probe_gap_s": round(self.longest_probe_gap_s, 3),
                "converge_s": [round(c, 3) for c in self.converge_s], "converge_limit_s": self.converge_limit_s,
                "final_converged": self.final_converged, "replicas_identical": self.replicas_identical,
                "salvaged_acked": list(self.salvaged_acked), "salvage_renumbered": self.salvage_renumbered,
                "run_s": round(self.run_s, 1), "followers": list(self.followers),
                "follower_writable_samples": self.follower_writable_samples,
                "follower_missing_acked": dict(self.follower_missing_acked)}


def replica_differences(replicas: Mapping[str, Any]) -> list[str] | None:
    """What differs between the final primary and the standby or a follower; None when they were not compared."""
    if not replicas.get("converged"):
        return None
    out = [] if replicas.get("caught_up") else ["the standby had not replayed the primary's last WAL"]
    tables = replicas.get("tables", {})
    p = tables.get(replicas.get("primary"), {})
    copies = [("standby", tables.get(replicas.get("standby"), {}))]
    for name, follower in sorted(replicas.get("followers", {}).items()):
        if not follower.get("caught_up"):
            out.append(f"follower {name} had not replayed the primary's last WAL")
        copies.append((f"follower {name}", follower.get("tables", {})))
    for who, s in copies:
        for table in sorted(set(p) | set(s)):
            if p.get(table) != s.get(table):
                out.append(f"{table}: primary {p.get(table)} vs {who} {s.get(table)}")
    return out


_MOVED = "acknowledged calls present under another CDR id"  # the call checker's words for it


def _call_violations(calls: Mapping[str, Any], renumbered: Mapping[str, Any]) -> tuple[str, ...]:
    """The call checker's violations, less CDR id changes that a salvage made (and said so)."""
    found = tuple(calls.get("violations", ("the call checker gave no verdict",)))
    if "ack_id_mismatch" not in calls:
        return found
    unexplained = [m for m in calls["ack_id_mismatch"] if renumbered.get(str(m[0])) != m[2]]
    kept = tuple(v for v in found if _MOVED not in v)
    return (*kept, f"{len(unexplained)} {_MOVED}") if unexplained else kept


def judge(events: Sequence[Mapping[str, Any]], probe: Sequence[Mapping[str, Any]], replicas: Mapping[str, Any],
          calls: Mapping[str, Any], converge_limit_s: float, seed: int | None = None,
          acked_calls: Collection[str] = (), followers: Sequence[str] = ()) -> ChaosVerdict:
    """The verdict from the recorded events, probe samples, final replicas and the call checker's verdict.

    ``acked_calls``: the acknowledged call ids (from the history), to name those that salvage brought back.
    ``followers``: the lab's followers (probed and compared like the standby).
    """
    faults = Counter(str(e["kind"]) for e in events if e.get("event") == "fault")
    converge = [float(e["after_s"]) for e in events if e.get("event") == "converged"]
    stuck = [e for e in events if e.get("event") == "not_converged"]
    final = [e for e in events if e.get("event") == "final"]
    times = sorted(float(s["t"]) for s in probe)
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    diffs = replica_differences(replicas)
    ts = [float(e["t"]) for e in events]
    salvaged: set[str] = set()
    renumbered: dict[str, Any] = {}  # call id -> the CDR id the salvage gave it
    for e in events:
        if e.get("event") == "salvage_applied":
            salvaged.update(map(str, e.get("calls", ())))
            renumbered.update({str(k): v for k, v in (e.get("renumbered") or {}).items()})
    failures = [f"{e.get('node')}: {' | '.join(e.get('output') or ())}" for e in events
                if e.get("event") == "operator" and str(e.get("command", "")).startswith("salvage apply")
                and not e.get("ok")]
    back = sorted(salvaged & set(acked_calls))
    return ChaosVerdict(
        seed=seed,
        faults=dict(faults),
        acked=int(calls.get("acked", 0)),
        failed=int(calls.get("failed", 0)),
        indeterminate_applied=len(calls.get("indeterminate_applied", ())),
        indeterminate_not_applied=len(calls.get("indeterminate_not_applied", ())),
        lost=len(calls.get("missing_acked", ())),
        call_violations=_call_violations(calls, renumbered),
        samples=len(probe),
        dual_samples=sum(1 for s in probe if len(s.get("writable", ())) > 1),
        dual_open_samples=sum(1 for s in probe if len(s.get("open", ())) > 1 and len(s.get("writable", ())) < 2),
        longest_probe_gap_s=gap,
        converge_s=converge,
        converge_limit_s=converge_limit_s,
        final_converged=bool(final and final[-1].get("converged")),
        not_converged=(f"the pair did not converge within {converge_limit_s:g} s after fault #{stuck[0]['number']}"
                       + _behind(stuck[0]) if stuck else None),
        final_behind=_behind(final[-1]) if final else "",
        replicas_identical=None if diffs is None else not diffs,
        replica_differences=tuple(diffs or ()),
        run_s=(max(ts) - min(ts)) if ts else 0.0,
        salvaged_acked=tuple(back),
        salvage_renumbered=sum(1 for c in back if c in renumbered),
        salvage_failures=tuple(failures),
        followers=tuple(followers),
        follower_writable_samples=sum(1 for s in probe if set(s.get("writable", ())) & set(followers)),
        follower_missing_acked={str(n): len(f.get("missing_acked", ()))
                                for n, f in replicas.get("followers", {}).items()},
    )


def _behind(event: Mapping[str, Any]) -> str:
    """What a not-converged event says of the followers: which had not converged, if any."""
    names = event.get("followers_behind") or ()
    return f" (followers not streaming on the primary's timeline: {', '.join(names)})" if names else ""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
