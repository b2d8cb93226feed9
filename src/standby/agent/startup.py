"""The agent's start-up refusals: what must hold before it runs, said while a person is watching.

A secret that cannot be read at a failover, or a peer that rejects every heartbeat, fails silently
when it matters; so the agent refuses to run instead, with a message that names what to fix.

It owns: the refusal (RefusedToStart), reading the secrets and checking the TLS files at start-up,
and refusing to go on beside a peer that runs a different configuration.
It may not: start, stop or change anything (a refusal comes before any action), nor keep a secret
other than the heartbeat key it hands to the link.
"""

from __future__ import annotations

from standby import tls
from standby.agent.heartbeat import Receiver
from standby.config import Config, read_secret


class RefusedToStart(Exception):
    """The agent will not run; the message says why and what to fix."""


def heartbeat_key(cfg: Config, node: str) -> bytes:
    """The heartbeat key. The other secrets are read when first needed (a failover, a POST): a bad one
    must stop the start-up instead, while a person is watching."""
    if cfg.heartbeat_key_file is None:
        raise RefusedToStart("heartbeat_key_file: required to run the agent (a shared secret, mode 600, same on both nodes)")
    key = read_secret(cfg.heartbeat_key_file, "heartbeat_key_file").encode()
    read_secret(cfg.pg(node).replication_password_file, "postgres.replication_password_file")
    if cfg.api.token_file is not None:
        read_secret(cfg.api.token_file, "api.token_file")
    tls.check(cfg, node)
    return key


def same_configuration(receiver: Receiver, peer: str, digest: str) -> None:
    """Refuses to go on while every heartbeat heard from the peer so far was turned away for another
    configuration digest."""
    if receiver.mismatched_digest and receiver.accepted == 0:
        raise RefusedToStart(
            f"the peer {peer} runs a different configuration (digest {receiver.mismatched_digest[:12]}, "
            f"ours {digest[:12]}): make the file identical on both nodes, then start the agent")
