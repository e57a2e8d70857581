"""The mesh's local certificate authority: one CA, one certificate per workload.

``make up`` (and every test stack) calls :func:`ensure_certificates`, which creates what is
missing or no longer valid under the git-ignored certs dir and leaves the rest alone, so the
CA survives restarts. Keys are ECDSA P-256 and never leave the machine; identities are
SPIFFE-style URI SANs (``spiffe://mesh.local/order``). Every certificate also names
``localhost`` and ``127.0.0.1``, the addresses the mesh's workloads dial each other on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.tls import CA_FILE, TRUST_DOMAIN, cert_file, key_file, spiffe_id

CA_KEY_FILE = "ca-key.pem"
CA_LIFETIME = dt.timedelta(days=3650)
WORKLOAD_LIFETIME = dt.timedelta(days=365)
#: A certificate this close to expiry is issued again at the next `make up`.
RENEW_BEFORE = dt.timedelta(days=30)
#: Backdated so a clock a little behind another process's still accepts a fresh certificate.
CLOCK_SKEW = dt.timedelta(minutes=5)


def ensure_certificates(
    directory: Path, workloads: Iterable[str], *, now: dt.datetime | None = None
) -> list[str]:
    """Creates the CA and each workload's certificate when missing, expiring or not signed by
    the current CA; returns the names of what it (re)issued."""
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    issued: list[str] = []
    ca_cert, ca_key = _load_ca(directory, now)
    if ca_cert is None or ca_key is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _issue_ca(ca_key, now)
        _write(directory / CA_KEY_FILE, _key_pem(ca_key), private=True)
        _write(directory / CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM))
        issued.append("ca")
    for workload in workloads:
        if _valid_leaf(directory / cert_file(workload), ca_cert, workload, now):
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue_leaf(workload, key, ca_cert, ca_key, now)
        _write(directory / key_file(workload), _key_pem(key), private=True)
        _write(directory / cert_file(workload), cert.public_bytes(serialization.Encoding.PEM))
        issued.append(workload)
    return issued


def _load_ca(
    directory: Path, now: dt.datetime
) -> tuple[x509.Certificate | None, ec.EllipticCurvePrivateKey | None]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key(
            (directory / CA_KEY_FILE).read_bytes(), password=None
        )
    except (OSError, ValueError):
        return None, None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _expiring(cert, now):
        return None, None
    if cert.public_key() != key.public_key():  # a key from another CA: start over
        return None, None
    return cert, key


def _valid_leaf(path: Path, ca: x509.Certificate, workload: str, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    key_path = path.with_name(key_file(workload))
    return (
        key_path.is_file()
        and not _expiring(cert, now)
        and spiffe_id(workload) in sans.get_values_for_type(x509.UniformResourceIdentifier)
    )


def _expiring(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_after_utc - RENEW_BEFORE < now or cert.not_valid_before_utc > now


def _issue_ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{TRUST_DOMAIN} local CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_leaf(
    workload: str,
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> x509.Certificate:
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(workload)),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, workload)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + WORKLOAD_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Every workload both serves and calls (Envoy does both on every hop).
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Atomic, so a process starting meanwhile never reads half a key; keys are 0600."""
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temp, path)
