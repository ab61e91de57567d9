"""A test certificate authority made with the openssl command line, for the TLS tests.

Why this module exists: the TLS tests and the contract matrix both serve HTTPS
with certificates a client verifies as it would a real one.  A test CA signs
the server certificates (subjectAltName 127.0.0.1 and localhost) and client
certificates; EC P-256 keys, fast to make.  Files go in a directory the caller
owns.  Loopback only.  Threading: a ``Pki`` is immutable; ``issue`` writes new
files named by the caller, so two threads must not issue the same name.
"""

from __future__ import annotations

import http.client
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Pki", "https_get", "make_pki"]


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pki:
    """The files of a test CA."""

    directory: Path
    ca_cert: Path
    ca_key: Path

    def issue(self, name: str, common_name: str, server: bool = True) -> tuple[Path, Path]:
        """A certificate and key signed by the CA: (cert, key)."""
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.directory / f"{name}.ext"
        usage = "serverAuth" if server else "clientAuth"
        san = "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else ""
        # What Python 3.13's strict verification (VERIFY_X509_STRICT) asks of a leaf.
        ext.write_text(
            f"{san}extendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\n"
            "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
            "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext,
        )  # fmt: skip
        return cert, key

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A client context that trusts the CA (and presents ``cert`` if given)."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return context


def make_pki(directory: Path) -> Pki:
    """A new test CA in ``directory``."""
    ca_cert, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", ca_key, "-out", ca_cert, "-days", "2", "-subj", "/CN=graceserve test CA",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",  # required by 3.13's strict checks
    )  # fmt: skip
    return Pki(directory, ca_cert, ca_key)


def https_get(
    address: tuple[str, int],
    path: str,
    context: ssl.SSLContext,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, str]:
    """One request on a new connection: status, body and the server certificate's CN."""
    conn = http.client.HTTPSConnection(*address, context=context, timeout=10)
    try:
        conn.connect()
        # Read before the response: a ``Connection: close`` answer drops ``conn.sock``.
        peer = conn.sock.getpeercert()
        rdns: Any = peer["subject"] if peer else ()
        subject = {key: value for rdn in rdns for key, value in rdn}
        conn.request("GET", path, headers=headers or {})
        with conn.getresponse() as response:
            return response.status, response.read(), str(subject.get("commonName", ""))
    finally:
        conn.close()
