"""`clawmesh certs`: a dev CA and per-service certificates in cert-manager's layout."""

from __future__ import annotations

import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from clawmesh.launcher.cli import main
from clawmesh.services.registry import NAMES
from clawmesh.shared.security.certs import CA, CA_DIR, CERT, CLIENT, KEY, load_identity
from clawmesh.shared.security.tls import read_identity


def sans(directory) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate((directory / CERT).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return set(names.get_values_for_type(x509.DNSName)), ips


def test_certs_command_writes_every_identity(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--namespace", "prod"]) == 0
    assert f"in {tmp_path}" in capsys.readouterr().out
    ca = load_identity(tmp_path / CA_DIR).cert
    for identity in (*NAMES, CLIENT):
        directory = tmp_path / identity
        read_identity(directory)  # key matches certificate
        assert stat.S_IMODE((directory / KEY).stat().st_mode) == 0o600
        assert (directory / CA).read_bytes() == (tmp_path / CA_DIR / CA).read_bytes()
        cert = load_identity(directory).cert
        cert.verify_directly_issued_by(ca)
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == (identity != CLIENT)
    dns, ips = sans(tmp_path / "memory")
    assert {"localhost", "memory", "memory.prod", "memory.prod.svc", "memory.prod.svc.cluster.local"} <= dns
    assert ips == {"127.0.0.1", "::1"}


def test_a_second_run_renews_the_leaves_with_the_same_ca(tmp_path):
    assert main(["certs", "--out", str(tmp_path)]) == 0
    ca, leaf = (load_identity(tmp_path / d).cert for d in (CA_DIR, "routing"))
    assert main(["certs", "--out", str(tmp_path)]) == 0
    assert load_identity(tmp_path / CA_DIR).cert == ca
    renewed = load_identity(tmp_path / "routing").cert
    assert renewed.serial_number != leaf.serial_number
    renewed.verify_directly_issued_by(ca)
    assert {"routing.clawmesh.svc", "routing.clawmesh-dev.svc"} <= sans(tmp_path / "routing")[0]
    assert main(["certs", "--out", str(tmp_path), "--new-ca"]) == 0
    assert load_identity(tmp_path / CA_DIR).cert != ca
