"""A development CA and one certificate per service, in cert-manager's file layout.

    written = write_dev_certs(Path("certs"), services=("ingest", "routing"), namespaces=("clawmesh",))
    # certs/ca/      tls.crt tls.key ca.crt   the CA (kept: a second run renews the leaves only)
    # certs/<svc>/   tls.crt tls.key ca.crt   one identity per service
    # certs/client/  tls.crt tls.key ca.crt   the CLI's identity (clawmesh health, tests)

Each service certificate is valid for serving and as a client (mTLS both ways) and names
``localhost``, ``127.0.0.1``, ``::1``, the service name and ``<svc>.<ns>``, ``<svc>.<ns>.svc``,
``<svc>.<ns>.svc.cluster.local`` per namespace. Keys are ECDSA P-256 (fast handshakes);
``tls.key`` files are written 0600. For production, have cert-manager issue the same
Secrets (a CA issuer or your PKI): the file names are what a mounted Secret has.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT, KEY, CA = "tls.crt", "tls.key", "ca.crt"
CA_DIR = "ca"
CLIENT = "client"
LOCAL_NAMES = ("localhost",)
LOCAL_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ClawMesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_ca(common_name: str = "ClawMesh dev CA", days: float = 3650,
           now: dt.datetime | None = None) -> Issued:
    """A self-signed CA that may sign leaf certificates only."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(ca: Issued, common_name: str, dns_names: Iterable[str] = (), ips: Iterable[str] = (),
          days: float = 90, not_before: dt.datetime | None = None, server: bool = True) -> Issued:
    """A leaf certificate signed by ``ca``: a client one, and a server one too when ``server``.

    ``not_before`` (default: now less 5 minutes of clock skew) with ``days`` sets the window;
    tests make expired certificates with a past ``not_before``.
    """
    start = not_before or (_now() - dt.timedelta(minutes=5))
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
    builder = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def service_names(service: str, namespaces: Sequence[str]) -> list[str]:
    """The DNS names a service is reached by: locally, by name, and in each namespace."""
    names = [*LOCAL_NAMES, service]
    for ns in namespaces:
        names += [f"{service}.{ns}", f"{service}.{ns}.svc", f"{service}.{ns}.svc.cluster.local"]
    return names


def write_identity(directory: Path, issued: Issued, ca_cert: x509.Certificate) -> list[Path]:
    """``tls.crt``, ``tls.key`` (0600) and ``ca.crt`` in ``directory``, each replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    files = [(directory / KEY, issued.key_pem(), 0o600), (directory / CERT, issued.cert_pem(), 0o644),
             (directory / CA, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)]
    for path, data, mode in files:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    return [path for path, _, _ in files]


def load_identity(directory: Path) -> Issued:
    key = serialization.load_pem_private_key((directory / KEY).read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / KEY}: not an ECDSA key")
    return Issued(key, x509.load_pem_x509_certificate((directory / CERT).read_bytes()))


def write_dev_certs(out: Path, services: Sequence[str], namespaces: Sequence[str] = ("clawmesh",),
                    days: float = 365, new_ca_: bool = False) -> list[Path]:
    """A CA (reused when ``out/ca`` has one, unless ``new_ca_``) and a certificate per service and
    for the CLI; returns the files written."""
    ca_dir = out / CA_DIR
    if not new_ca_ and (ca_dir / KEY).exists():
        ca = load_identity(ca_dir)
        written: list[Path] = []
    else:
        ca = new_ca()
        written = write_identity(ca_dir, ca, ca.cert)
    for service in services:
        leaf = issue(ca, service, service_names(service, namespaces), LOCAL_IPS, days)
        written += write_identity(out / service, leaf, ca.cert)
    client = issue(ca, CLIENT, (), (), days, server=False)
    written += write_identity(out / CLIENT, client, ca.cert)
    return written
