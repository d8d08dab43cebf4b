"""Throwaway TLS certificates for the servers the tests start on loopback."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path


def make_self_signed(cert: Path, key: Path) -> None:
    """A one-day self-signed certificate for 127.0.0.1 and localhost, made with openssl.

    Raises FileNotFoundError without the openssl command; callers decide to skip or fail.
    """
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip


def make_dkim_key(directory: Path) -> tuple[bytes, bytes]:
    """An RSA key for DKIM tests: (private key PEM, the TXT record publishing it)."""
    private = directory / "dkim.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(private), "2048"],
        check=True,
        capture_output=True,
    )
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return private.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
