"""`standby lab chaos`: a seeded fault campaign under load on a fresh lab, judged at the end."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import click

from standby.cli.common import OperatorError, handle_errors
from standby.config import Timings
from standby.lab import DEFAULT_NAME, NAME_ENV, Lab, LabError, LabSpec, chaos, check_prerequisites
from standby.lab.campaign import Campaign, Options
from standby.lab.chaos_verdict import judge, read_jsonl
from standby.lab.checker import Outcome, read_history
from standby.lab.pair import STANDBY
from standby.lab.topology import FOLLOWER_NODES


@click.command("chaos")
@click.option("--name", envvar=NAME_ENV, default=DEFAULT_NAME + "-chaos", show_default=True,
              help=f"Name of the lab to build for the campaign (env {NAME_ENV}); it must not exist yet.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds of faults; the last fault's heal and convergence come on top.")
@click.option("--seed", type=int, default=1, show_default=True, help="The same seed draws the same faults.")
@click.option("--kinds", help=f"Comma-separated fault kinds (default all): {', '.join(k.value for k in chaos.Kind)}.")
@click.option("--durability", type=click.Choice(["sync", "async"]), default="sync", show_default=True)
@click.option("--degrade-after", "degrade_after_s", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Sync only: seconds the primary waits for a lost standby before going on alone "
                   "(replication.degrade_after_s; 0 = never). A standby-long-freeze outlasts it.")
@click.option("--follower", "followers", multiple=True, type=click.Choice(list(FOLLOWER_NODES)),
              help="Add this follower to the lab and the campaign (repeatable): gamma, warm, behind the WAN "
                   "router; delta, reporting, on the pair's subnets. Adds the follower and WAN fault kinds.")
@click.option("--rate", type=click.IntRange(min=1), default=100, show_default=True, help="Calls per second.")
@click.option("--converge-limit", "converge_limit_s", type=click.FloatRange(min=5), default=60, show_default=True,
              help="Seconds within which the pair must converge after each heal.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (default: ./chaos-SEED-TIME).")
@click.option("--keep", is_flag=True, help="Leave the lab up at the end (remove it with `standby lab down`).")
@click.option("--dry-run", "dry_run", type=int, metavar="N", help="Only print the first N faults of the schedule.")
@handle_errors
def command(name: str, duration_s: float, seed: int, kinds: str | None, durability: str, degrade_after_s: float,
            followers: tuple[str, ...], rate: int, converge_limit_s: float, out_dir: Path | None, keep: bool,
            dry_run: int | None) -> None:
    """Inject random faults (seeded) while the sample softswitch carries calls, then judge the run.

    Faults: host crash, freeze, one link down, both links down, packet loss,
    agent killed, PostgreSQL killed, WAL disk full, wall-clock jump, switchover,
    the primary agent's queries stalled, the standby frozen for long,
    maintenance left on, the API flooded, old heartbeats replayed, a server frozen
    whole, the WAL disk hung; with --follower
    also a follower's host crashed, frozen or cut off, and (with gamma) the WAN link
    down or lossy. A fenced old primary is rejoined (and its salvage applied) along the
    way. The verdict checks every acknowledged call on the final primary and on each
    follower, the dual-primary probe (a follower taking a write is a violation),
    convergence after each heal (followers streaming on the primary's timeline included)
    and the standby and followers against the primary. Exit 1 on any violation.
    """
    try:
        selected = chaos.parse_kinds(kinds)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--kinds") from None
    unusable = [k.value for k in selected if not chaos.drawable(k, followers)]
    if kinds and unusable:
        raise click.BadParameter(f"nothing in this lab for {', '.join(unusable)} to hit: add --follower "
                                 "(the wan-* kinds need gamma, in the other site)", param_hint="--kinds")
    if degrade_after_s and durability != "sync":
        raise click.BadParameter("only sync replication waits for its standby; drop it or use --durability sync",
                                 param_hint="--degrade-after")
    # Config's own rule (replication.degrade_after_s), checked before a lab is built for nothing.
    failover_ms = Timings().failover_timeout_ms
    if degrade_after_s and degrade_after_s * 1000 < 2 * failover_ms:
        raise click.BadParameter(f"{degrade_after_s:g} is too short: at least {2 * failover_ms / 1000:g} s "
                                 "(twice the failover timeout)", param_hint="--degrade-after")
    if dry_run is not None:
        long_freeze = chaos.long_freeze_s(failover_ms, degrade_after_s)
        for f in itertools.islice(chaos.faults(seed, selected, long_freeze, followers), dry_run):
            click.echo(f.describe())
        return
    out = out_dir or Path(f"chaos-{seed}-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        check_prerequisites()
        lab = Lab.up(LabSpec(name=name, durability=durability, followers=followers))
    except LabError as e:
        raise OperatorError(str(e)) from None
    opts = Options(seed=seed, duration_s=duration_s, kinds=selected, converge_limit_s=converge_limit_s, rate=rate,
                   degrade_after_s=degrade_after_s)
    try:
        degrade = f" (degrade after {degrade_after_s:g} s)" if degrade_after_s else ""
        with_followers = f", followers {', '.join(followers)}" if followers else ""
        click.echo(f"chaos: lab {name}, seed {seed}, {duration_s:g} s of faults, {durability}{degrade}"
                   f"{with_followers}, run in {out}")
        campaign = Campaign(lab, opts, out, say=click.echo)
        campaign.prepare()
        campaign.run()
        verdict = judge(read_jsonl(out / "events.jsonl"), read_jsonl(out / "probe.jsonl"),
                        json.loads((out / "replicas.json").read_text()), _calls(lab, campaign, out),
                        converge_limit_s, seed, acked_calls=_acked(out / "calls.jsonl"), followers=followers)
    finally:
        if not keep:
            Lab.destroy(name)
    (out / "verdict.json").write_text(json.dumps(verdict.to_dict(), indent=2) + "\n")
    click.echo(verdict.render())
    sys.exit(0 if verdict.ok else 1)


def _acked(calls: Path) -> set[str]:
    """Call ids the service acknowledged, from the load generator's history."""
    return {a.call_id for a in read_history(calls) if a.outcome is Outcome.ACK} if calls.exists() else set()


def _calls(lab: Lab, campaign: Campaign, out: Path) -> dict[str, object]:
    """The call checker's verdict (a separate process) against the final primary."""
    primary = campaign.roles()[0]
    res = lab.run(primary, [STANDBY, "lab", "verify", "--json", "--history", str(out / "history.jsonl"),
                            "--dsn-file", str(lab.spec.secret("app.dsn"))], check=False)
    try:
        verdict = json.loads(res.stdout)
    except ValueError:
        verdict = None
    if not isinstance(verdict, dict):
        return {"violations": [f"the call checker failed: {(res.stderr or res.stdout).strip()[-300:]}"]}
    return verdict
