"""The local CA: its files and their modes, and the shape of what it issues."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlib.errors import IdentityError, SpiffeIdError
from meshlib.security import ca as ca_module
from meshlib.security.ca import CLOCK_SKEW, CertificateAuthority, WorkloadCertificate
from meshlib.security.identity import SpiffeId
from meshlib.testing import FakeClock

RATINGS = SpiffeId("cluster.local", "default", "bookinfo-ratings")
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=START)


@pytest.fixture
def authority(tmp_path: Path, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", clock=clock)


# --------------------------------------------------------------------------- the root


def test_init_writes_a_root_like_istios(authority: CertificateAuthority) -> None:
    root = x509.load_pem_x509_certificate((authority.directory / "ca.pem").read_bytes())
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "cluster.local"
    )
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert authority.trust_domain == "cluster.local"
    assert root.not_valid_before_utc == datetime.fromtimestamp(START, timezone.utc) - CLOCK_SKEW
    assert root.not_valid_after_utc == datetime.fromtimestamp(START, timezone.utc) + timedelta(
        days=365
    )


def test_the_key_file_is_0600_and_the_new_directory_0700(tmp_path: Path) -> None:
    previous = os.umask(0)  # the most permissive umask: modes come from meshlib alone
    try:
        authority = CertificateAuthority.init(tmp_path / "new" / "ca")
    finally:
        os.umask(previous)
    assert _mode(authority.directory) == 0o700
    assert _mode(authority.directory / "ca-key.pem") == 0o600
    assert _mode(authority.directory / "ca.pem") == 0o644


def test_the_key_file_is_created_0600_never_wider_even_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is created by os.open with mode 0600 and O_EXCL: no chmod after the fact."""
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode)

    monkeypatch.setattr(ca_module.os, "open", spy)
    authority = CertificateAuthority.init(tmp_path / "ca")
    authority.issue(RATINGS).write(tmp_path / "out")
    keys = [(p, f, m) for p, f, m in opened if p.endswith("key.pem") or "key.pem." in p]
    assert len(keys) == 2
    for _, flags, mode in keys:
        assert mode == 0o600
        assert flags & os.O_CREAT
        assert flags & os.O_EXCL


def test_init_refuses_to_overwrite_a_ca_without_force(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    before = (authority.directory / "ca-key.pem").read_bytes()
    with pytest.raises(IdentityError, match="already holds a CA"):
        CertificateAuthority.init(authority.directory, clock=clock)
    assert (authority.directory / "ca-key.pem").read_bytes() == before
    replaced = CertificateAuthority.init(authority.directory, clock=clock, force=True)
    assert (authority.directory / "ca-key.pem").read_bytes() != before
    assert _mode(authority.directory / "ca-key.pem") == 0o600
    assert replaced.certificate != authority.certificate


def test_init_refuses_when_only_one_file_exists(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("left over")
    with pytest.raises(IdentityError, match=r"\(ca\.pem\)"):
        CertificateAuthority.init(tmp_path)


def test_load_round_trips(authority: CertificateAuthority, clock: FakeClock) -> None:
    loaded = CertificateAuthority.load(authority.directory, clock=clock)
    assert loaded.certificate == authority.certificate
    assert loaded.trust_domain == "cluster.local"


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o666])
def test_load_refuses_a_key_others_can_read(authority: CertificateAuthority, mode: int) -> None:
    key = authority.directory / "ca-key.pem"
    key.chmod(mode)
    with pytest.raises(IdentityError) as caught:
        CertificateAuthority.load(authority.directory)
    assert f"mode {mode:04o}" in str(caught.value)
    assert "chmod 600" in str(caught.value)


def test_load_accepts_an_owner_only_key(authority: CertificateAuthority) -> None:
    (authority.directory / "ca-key.pem").chmod(0o400)
    assert CertificateAuthority.load(authority.directory).trust_domain == "cluster.local"


def test_load_refuses_missing_mismatched_and_garbage_files(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    with pytest.raises(IdentityError, match="cannot read"):
        CertificateAuthority.load(tmp_path / "nowhere")
    other = CertificateAuthority.init(tmp_path / "other")
    (other.directory / "ca-key.pem").write_bytes((authority.directory / "ca-key.pem").read_bytes())
    with pytest.raises(IdentityError, match="is not the key of"):
        CertificateAuthority.load(other.directory)
    (other.directory / "ca-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(IdentityError, match="not an unencrypted PEM private key") as caught:
        CertificateAuthority.load(other.directory)
    assert caught.value.__cause__ is None  # nothing of the key text travels in a cause
    (other.directory / "ca.pem").write_bytes(b"not a certificate")
    with pytest.raises(IdentityError, match="not a PEM certificate"):
        CertificateAuthority.load(other.directory)


def test_a_bad_trust_domain_or_lifetime_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="trust domain"):
        CertificateAuthority.init(tmp_path / "a", trust_domain="Cluster.Local")
    with pytest.raises(IdentityError, match="positive"):
        CertificateAuthority.init(tmp_path / "b", lifetime=timedelta(0))


def test_repr_shows_no_key(authority: CertificateAuthority) -> None:
    key_body = (authority.directory / "ca-key.pem").read_text().split("\n")[1]
    for text in (repr(authority), str(authority)):
        assert "cluster.local" in text
        assert "PRIVATE" not in text
        assert key_body not in text


# --------------------------------------------------------------------------- workload certificates


def test_issue_makes_istios_workload_certificate(
    authority: CertificateAuthority, clock: FakeClock
) -> None:
    issued = authority.issue(RATINGS)
    leaf = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert len(leaf.subject) == 0
    assert leaf.issuer == authority.certificate.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty
    assert list(san.value) == [x509.UniformResourceIdentifier(RATINGS.uri)]
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    now = datetime.fromtimestamp(clock.wall(), timezone.utc)
    assert issued.not_before == now - CLOCK_SKEW
    assert issued.not_after == now + timedelta(hours=24)
    assert issued.serial_number == leaf.serial_number
    assert issued.ca_bundle_pem == authority.bundle_pem
    assert issued.spiffe_id == RATINGS


def test_dates_follow_the_injected_clock(authority: CertificateAuthority, clock: FakeClock) -> None:
    first = authority.issue(RATINGS, timedelta(hours=1))
    assert not first.expired(clock)
    clock.advance(3600)
    assert first.expired(clock)
    second = authority.issue(RATINGS, timedelta(hours=1))
    assert second.not_before - first.not_before == timedelta(hours=1)
    assert second.serial_number != first.serial_number


def test_a_certificate_never_outlives_its_ca(tmp_path: Path, clock: FakeClock) -> None:
    short = CertificateAuthority.init(tmp_path / "ca", lifetime=timedelta(hours=2), clock=clock)
    assert short.issue(RATINGS, timedelta(hours=24)).not_after == short.not_after
    clock.advance(3 * 3600)
    with pytest.raises(IdentityError, match="expired"):
        short.issue(RATINGS)


def test_issue_refuses_another_trust_domain_and_bad_input(
    authority: CertificateAuthority,
) -> None:
    with pytest.raises(IdentityError, match=r"trust domain 'cluster\.local'"):
        authority.issue("spiffe://example.org/ns/default/sa/x")
    with pytest.raises(SpiffeIdError):
        authority.issue("spiffe://cluster.local/ns/default/sa/../x")
    with pytest.raises(IdentityError, match="positive"):
        authority.issue(RATINGS, timedelta(seconds=-1))


def test_write_and_read_back_a_workload_certificate(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    issued = authority.issue(RATINGS)
    folder = issued.write(tmp_path / "ratings")
    assert _mode(folder) == 0o700
    assert _mode(folder / "key.pem") == 0o600
    assert _mode(folder / "cert.pem") == 0o644
    assert WorkloadCertificate.from_directory(folder) == issued
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    (folder / "key.pem").chmod(0o644)
    with pytest.raises(IdentityError, match="accessible by group or others"):
        WorkloadCertificate.from_directory(folder)


def test_from_pem_refuses_mismatched_and_foreign_material(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    one, two = authority.issue(RATINGS), authority.issue(RATINGS)
    with pytest.raises(IdentityError, match="does not belong"):
        WorkloadCertificate.from_pem(one.certificate_pem, two.private_key_pem, one.ca_bundle_pem)
    stranger = CertificateAuthority.init(tmp_path / "stranger")
    with pytest.raises(IdentityError, match="not signed by a certificate of the CA bundle"):
        WorkloadCertificate.from_pem(one.certificate_pem, one.private_key_pem, stranger.bundle_pem)
    both = stranger.bundle_pem + authority.bundle_pem
    assert (
        WorkloadCertificate.from_pem(one.certificate_pem, one.private_key_pem, both).spiffe_id
        == RATINGS
    )
