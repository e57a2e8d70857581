"""The local CA: what it issues, what it keeps, and when it issues again."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from cryptography import x509

from meshctl.pki import RENEW_BEFORE, WORKLOAD_LIFETIME, ensure_certificates

WORKLOADS = ("envoy", "order")


def _cert(directory: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())


def test_issues_a_ca_and_one_certificate_per_workload_with_its_spiffe_id(tmp_path: Path) -> None:
    assert ensure_certificates(tmp_path, WORKLOADS) == ["ca", "envoy", "order"]

    ca = _cert(tmp_path, "ca")
    order = _cert(tmp_path, "order")
    order.verify_directly_issued_by(ca)
    sans = order.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://mesh.local/order"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_private_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, WORKLOADS)
    for key in ("ca-key.pem", "envoy-key.pem", "order-key.pem"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_a_second_run_keeps_everything(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, WORKLOADS)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    assert ensure_certificates(tmp_path, WORKLOADS) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_new_workload_gets_a_certificate_from_the_same_ca(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, WORKLOADS)
    ca = (tmp_path / "ca.pem").read_bytes()

    assert ensure_certificates(tmp_path, (*WORKLOADS, "payment")) == ["payment"]
    assert (tmp_path / "ca.pem").read_bytes() == ca


def test_a_certificate_close_to_expiry_is_issued_again(tmp_path: Path) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ensure_certificates(tmp_path, WORKLOADS, now=now)

    later = now + WORKLOAD_LIFETIME - RENEW_BEFORE + dt.timedelta(days=1)
    assert ensure_certificates(tmp_path, WORKLOADS, now=later) == ["envoy", "order"]
    assert _cert(tmp_path, "order").not_valid_after_utc > later + RENEW_BEFORE


def test_a_replaced_ca_reissues_every_workload(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, WORKLOADS)
    (tmp_path / "ca-key.pem").unlink()

    assert ensure_certificates(tmp_path, WORKLOADS) == ["ca", "envoy", "order"]
    _cert(tmp_path, "envoy").verify_directly_issued_by(_cert(tmp_path, "ca"))


def test_a_damaged_certificate_is_issued_again(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, WORKLOADS)
    (tmp_path / "order.pem").write_text("not a certificate")

    assert ensure_certificates(tmp_path, WORKLOADS) == ["order"]
