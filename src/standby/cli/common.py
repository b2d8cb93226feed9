"""Options and error handling shared by the command modules (the agents' API client is standby.apiclient)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from standby.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    NODE_ENV,
    Config,
    ConfigError,
    load,
    resolve_node,
)

P = ParamSpec("P")
R = TypeVar("R")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    default=DEFAULT_CONFIG_PATH,
    show_default=True,
    help=f"Cluster configuration file (env {CONFIG_ENV}).",
)
node_option = click.option("--node", envvar=NODE_ENV, help=f"This node's name (env {NODE_ENV}).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print stable JSON for scripts.")


class OperatorError(Exception):
    """A refusal or failure to report to the operator as-is (exit 1)."""


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected errors into one clear message and an exit code, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            click.secho(str(e), fg="red", err=True)
            sys.exit(2)
        except OperatorError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)

    return wrapper


def load_node(config_path: Path, node: str | None) -> tuple[Config, str]:
    cfg = load(config_path)
    return cfg, resolve_node(cfg, node)


def load_member(config_path: Path, node: str | None) -> tuple[Config, str]:
    """As load_node, for a command a follower runs too: a follower's name ([[followers]]) is accepted."""
    cfg = load(config_path)
    name = node or os.environ.get(NODE_ENV)
    if name and cfg.follower(name) is not None:
        return cfg, name
    return cfg, resolve_node(cfg, node)
