"""The road back: `standby switchover`, `standby switchback`, `standby rejoin`."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import click

from standby.act import handback
from standby.act.switchover import SwitchoverError, roles, switchover
from standby.apiclient import AgentApi, ApiError
from standby.cli.common import OperatorError, config_option, handle_errors, load_node, node_option
from standby.config import NODE_ENV, Config, RejoinPolicy, load
from standby.documents import RejoinMethod


def _parse_at(text: str | None) -> datetime | None:
    """An ISO date-time, or HH:MM (the next such time, local)."""
    if text is None:
        return None
    now = datetime.now().astimezone()
    try:
        if len(text) <= 5 and ":" in text:
            h, m = (int(x) for x in text.split(":"))
            at = now.replace(hour=h, minute=m, second=0, microsecond=0)
            return at if at > now else at + timedelta(days=1)
        at = datetime.fromisoformat(text)
        return at if at.tzinfo else at.astimezone()
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected HH:MM or an ISO date-time like 2026-12-01T03:00") from None


def _wait_until(at: datetime | None) -> None:
    if at is None:
        return
    click.echo(f"scheduled: waiting until {at.isoformat(timespec='minutes')} (Ctrl-C cancels, nothing changed yet)")
    while (left := (at - datetime.now().astimezone()).total_seconds()) > 0:
        time.sleep(min(left, 30))


def _run(cfg: Config, to: str | None, timeout: float) -> None:
    try:
        out = switchover(cfg, to=to, catch_up_timeout_s=timeout, say=lambda m: click.echo(f"  {m}"))
    except (SwitchoverError, ApiError) as e:
        raise OperatorError(str(e)) from None
    total = sum(d for _, d in out.steps)
    click.secho(f"switchover done: {out.new_primary} is primary, {out.old_primary} is its standby "
                f"({total:.2f}s in all)", fg="green")


at_option = click.option("--at", "at_text", metavar="TIME", help="Run at this time (HH:MM or ISO date-time) instead of now.")
timeout_option = click.option("--timeout", default=10.0, show_default=True,
                              help="Seconds the standby may take to receive the last WAL before aborting.")


@click.command("switchover")
@config_option
@node_option
@click.option("--to", "to", help="The node to promote (default: the current standby).")
@at_option
@timeout_option
@handle_errors
def switchover_command(config_path: Path, node: str | None, to: str | None, at_text: str | None,
                       timeout: float) -> None:
    """Swap the roles for maintenance, with zero loss: the standby is promoted only once it has every
    WAL byte of the cleanly stopped primary; otherwise the old primary resumes and nothing is lost."""
    cfg, _ = load_node(config_path, node)
    at = _parse_at(at_text)
    try:
        roles(cfg)  # refuse now, not at 3 a.m., if the pair cannot switch over
    except SwitchoverError as e:
        raise OperatorError(str(e)) from None
    _wait_until(at)
    _run(cfg, to, timeout)


@click.command("switchback")
@config_option
@node_option
@at_option
@timeout_option
@handle_errors
def switchback_command(config_path: Path, node: str | None, at_text: str | None, timeout: float) -> None:
    """After a failover and a rejoin: switch over back to the preferred primary. With a promoted warm
    follower's name (on its host): hand the service back to the pair's preferred primary, rebuilt as its
    standby (`standby rejoin --node alpha --from FOLLOWER`), with the same zero-loss rule."""
    name = node or os.environ.get(NODE_ENV)
    if name and (cfg := load(config_path)).follower(name) is not None:
        at = _parse_at(at_text)
        decision = handback.look(cfg, name, cfg.preferred_primary)
        if not decision.go:  # refuse now, not at the time given, if it cannot be done
            raise OperatorError(handback.refusal(cfg, name, cfg.preferred_primary, decision))
        _wait_until(at)
        try:
            out = handback.hand_back(cfg, name, cfg.preferred_primary, timeout, say=lambda m: click.echo(f"  {m}"))
        except handback.HandBackError as e:
            raise OperatorError(str(e)) from None
        click.secho(f"switchback done: {out.target} is primary (term {out.term}), {name} follows it "
                    f"({sum(d for _, d in out.steps):.2f}s in all). Next: start the follower agent on {name}, "
                    f"then the agent on {cfg.peer_of(out.target)} and `standby rejoin --node "
                    f"{cfg.peer_of(out.target)}` there", fg="green")
        return
    cfg, _ = load_node(config_path, node)
    at = _parse_at(at_text)
    try:
        primary, _standby, _ = roles(cfg)
    except SwitchoverError as e:
        raise OperatorError(str(e)) from None
    if primary == cfg.preferred_primary:
        click.echo(f"{primary} is already the preferred primary: nothing to do")
        return
    _wait_until(at)
    _run(cfg, cfg.preferred_primary, timeout)


@click.command("rejoin")
@config_option
@node_option
@click.option("--from", "source", metavar="FOLLOWER",
              help="After a DR promotion: rebuild this pair node as a standby of that promoted warm follower "
                   "(the first step back; `standby switchback --node FOLLOWER` is the second).")
@click.option("--yes", is_flag=True, help="Approve without asking (needed when rejoin = \"manual\" and no terminal).")
@handle_errors
def rejoin_command(config_path: Path, node: str | None, source: str | None, yes: bool) -> None:
    """Make this old primary a standby of the new one: salvage what only it had, rewind (or clone
    if rewind is impossible), stream."""
    cfg, me = load_node(config_path, node)
    # One word for both roads: its peer after a failover, the promoted DR node after a site loss.
    upstream = source or cfg.peer_of(me)
    if source is not None and cfg.follower(source) is None:
        raise OperatorError(f"--from {source}: not a follower in {config_path} ([[followers]]); after a failover "
                            f"in the pair, run `standby rejoin` without --from")
    if (cfg.rejoin is RejoinPolicy.MANUAL or source is not None) and not yes:
        click.echo(f"{me} will be rewound to follow {upstream}; rows only it committed after the fork are "
                   "first saved in a salvage report (`standby salvage show`).")
        if not click.confirm("rejoin now?", default=False):
            raise OperatorError("not approved; nothing changed")
    try:
        api = AgentApi(cfg)
        result = api.rebuild(me, source) if source is not None else api.rejoin(me)
    except ApiError as e:
        raise OperatorError(f"rejoin refused: {e}") from None
    for name, secs in result.steps:
        click.echo(f"  {name:<70} {secs:7.2f} s")
    if result.method is RejoinMethod.NONE_NEEDED:
        click.secho(f"nothing to rejoin: {me} already streams from {upstream}", fg="green")
    else:
        click.secho(f"{me} rejoined by {result.method.value}; it streams from {upstream}", fg="green")
    if source is not None:
        click.echo(f"next: `standby switchback --node {source}` on {source}, with its follower agent stopped")
    if result.salvage_report:
        click.echo(f"salvage: {result.salvaged_rows} rows only {me} had are in {result.salvage_report}; "
                   f"review with `standby salvage show`, then `standby salvage apply` (here or on the primary)")
    if result.kept_aside:
        click.echo(f"the old data directory is kept at {result.kept_aside} until its salvage is dealt with")
