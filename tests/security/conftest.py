"""Fixtures for the security tests: a dev CA with certificates, API keys, secure channels."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from clawmesh.services.registry import NAMES
from clawmesh.shared.security import hash_key
from clawmesh.shared.security.certs import CA, CERT, KEY, write_dev_certs

KEY_A = "cmk_tenant-a-current-0123456789abcdefghijklmnopqrstu"
KEY_A_OLD = "cmk_tenant-a-previous-0123456789abcdefghijklmnopqrst"
KEY_B = "cmk_tenant-b-current-0123456789abcdefghijklmnopqrstu"


def api_keys(old_not_after: str | None = None) -> dict:
    """Tenant ``acme`` mid-rotation (two keys), tenant ``globex`` with one."""
    old = {"hash": hash_key(KEY_A_OLD), "label": "previous"}
    if old_not_after:
        old["not_after"] = old_not_after
    return {"acme": [{"hash": hash_key(KEY_A), "label": "current"}, old],
            "globex": [{"hash": hash_key(KEY_B)}]}


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory) -> Path:
    """`clawmesh certs` output: ca/, one directory per service, client/."""
    out = tmp_path_factory.mktemp("certs")
    write_dev_certs(out, NAMES, ("clawmesh",))
    return out


def creds(directory: Path, with_certificate: bool = True) -> grpc.ChannelCredentials:
    ca = (directory / CA).read_bytes()
    if not with_certificate:
        return grpc.ssl_channel_credentials(ca)
    return grpc.ssl_channel_credentials(ca, (directory / KEY).read_bytes(), (directory / CERT).read_bytes())


def served_serial(address: str, ca_file: Path, client_dir: Path | None = None) -> int:
    """The serial number of the certificate a TLS server presents to a new connection."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2"])
    if client_dir is not None:
        context.load_cert_chain(client_dir / CERT, client_dir / KEY)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
