"""gRPC credentials from an identity directory (``tls.crt``, ``tls.key``, ``ca.crt``).

    server_creds = reloading_server_credentials(Path("certs/routing"), require_client_auth=True)
    channel_creds = channel_credentials(Path("certs/ingest"), with_certificate=True)

Server certificates are re-read when their files change, without a restart: gRPC asks
the fetcher before each new connection's handshake, the fetcher compares the files'
inode, size and mtime with what it served last (a stat per connection), and a changed,
consistent set (the key matches the certificate) is served to the connections made from
then on; open connections keep theirs. A half-written set (cert-manager swaps the files
one by one only without its atomic symlink) is ignored until it is consistent.
Outbound channels read their client certificate when they are made.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clawmesh.shared.security.certs import CA, CERT, KEY
from clawmesh.shared.security.keys import SecurityError

log = logging.getLogger(__name__)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def read_ca(directory: Path) -> bytes:
    try:
        return (directory / CA).read_bytes()
    except OSError as exc:
        raise SecurityError(f"{directory / CA}: cannot read the CA certificate: {exc.strerror}") from None


def read_identity(directory: Path) -> tuple[bytes, bytes, bytes]:
    """(key, certificate chain, CA) PEM bytes; SecurityError when missing or not a matching pair."""
    try:
        key, cert = (directory / KEY).read_bytes(), (directory / CERT).read_bytes()
    except OSError as exc:
        raise SecurityError(f"{directory}: cannot read {exc.filename}: {exc.strerror}") from None
    ca = read_ca(directory)
    try:
        leaf = x509.load_pem_x509_certificate(cert)
        private = serialization.load_pem_private_key(key, None)
    except ValueError as exc:
        raise SecurityError(f"{directory}: {exc}") from None
    if _spki(leaf.public_key()) != _spki(private.public_key()):
        raise SecurityError(f"{directory}: {KEY} is not the key of {CERT}")
    return key, cert, ca


def serial_of(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def _signature(directory: Path) -> tuple:
    out = []
    for name in (KEY, CERT, CA):
        try:
            st = os.stat(directory / name)
        except OSError:
            return ("missing",)
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class _Fetcher:
    """gRPC's certificate-configuration fetcher: a new configuration when the files changed."""

    def __init__(self, directory: Path, served: tuple) -> None:
        self.directory = directory
        self.served = served  # the signature of the files in use
        self.rejected: tuple | None = None  # the last signature found unusable (logged once)

    def __call__(self):
        try:  # runs in a gRPC core thread: never raise
            sig = _signature(self.directory)
            if sig == self.served or sig == self.rejected:
                return None
            try:
                key, cert, ca = read_identity(self.directory)
            except SecurityError as exc:
                self.rejected = sig
                log.warning("certificate files not reloaded; serving the previous ones",
                            extra={"error": str(exc)})
                return None
            self.served = sig
            log.info("certificate reloaded", extra={"directory": str(self.directory),
                                                    "serial": f"{serial_of(cert):x}"})
            return grpc.ssl_server_certificate_configuration([(key, cert)], ca)
        except Exception:  # noqa: BLE001
            log.exception("certificate reload failed")
            return None


def reloading_server_credentials(directory: Path, require_client_auth: bool) -> grpc.ServerCredentials:
    """TLS server credentials from ``directory``, re-read when its files change.

    With ``require_client_auth`` only clients presenting a certificate of ``ca.crt`` connect.
    """
    sig = _signature(directory)
    key, cert, ca = read_identity(directory)
    initial = grpc.ssl_server_certificate_configuration([(key, cert)], ca)
    return grpc.dynamic_ssl_server_credentials(initial, _Fetcher(directory, sig), require_client_auth)


def channel_credentials(directory: Path, with_certificate: bool) -> grpc.ChannelCredentials:
    """TLS channel credentials trusting ``ca.crt``, presenting ``tls.crt`` when ``with_certificate``."""
    if not with_certificate:
        return grpc.ssl_channel_credentials(root_certificates=read_ca(directory))
    key, cert, ca = read_identity(directory)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
