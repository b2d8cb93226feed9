"""The lab's certificates: a CA of its own and one certificate per node, made with the openssl CLI.

Lab only: short-lived (30 days), unencrypted keys. A node's certificate names
the node and both its addresses, since peers dial the private one and clients
of the API either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from standby.lab.errors import LabError

DAYS = 30
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
# P-256: key generation is instant, where RSA would cost seconds of the lab's CPU.
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc"]

_CA_EXT = """basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
_NODE_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = {san}
"""


def cert_path(d: Path, node: str) -> Path:
    return d / f"{node}.crt"


def key_path(d: Path, node: str) -> Path:
    return d / f"{node}.key"


def _openssl(args: Sequence[str], subject: str, extensions: str, work: Path) -> None:
    cnf = work / "req.cnf"
    cnf.write_text(f"[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {subject}\n[ext]\n{extensions}")
    res = subprocess.run(["openssl", "req", "-x509", *_EC, "-days", str(DAYS), "-config", str(cnf),
                          "-extensions", "ext", *args], capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise LabError(f"openssl could not make the certificate for {subject!r}: {res.stderr.strip()}")


def make_ca(d: Path, name: str) -> Path:
    """A new CA in ``d`` (ca.crt, ca.key with mode 0600); returns the certificate's path."""
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="standby-tls-") as work:
        _openssl(["-keyout", str(d / CA_KEY), "-out", str(d / CA_CERT)], f"standby lab {name} CA", _CA_EXT, Path(work))
    os.chmod(d / CA_KEY, 0o600)
    os.chmod(d / CA_CERT, 0o644)
    return d / CA_CERT


def make_node_cert(d: Path, node: str, ips: Sequence[str], owner: str) -> tuple[Path, Path]:
    """``node``'s certificate signed by the CA in ``d``, for its name and ``ips``; the key goes to ``owner``, mode 0600."""
    san = ", ".join([f"DNS:{node}", *(f"IP:{ip}" for ip in ips)])
    cert, key = cert_path(d, node), key_path(d, node)
    with tempfile.TemporaryDirectory(prefix="standby-tls-") as work:
        _openssl(["-CA", str(d / CA_CERT), "-CAkey", str(d / CA_KEY), "-keyout", str(key), "-out", str(cert)],
                 node, _NODE_EXT.format(san=san), Path(work))
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    shutil.chown(key, owner, owner)
    return cert, key
