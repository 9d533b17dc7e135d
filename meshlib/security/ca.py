"""A local certificate authority for the mesh, and the workload certificates it issues.

``CertificateAuthority.init(directory)`` makes a self-signed root as Istio's own CA does
(subject ``O=<trust domain>``), stored as two files:

```
DIRECTORY/            created 0700 when meshlib creates it
  ca.pem              the root certificate: the CA bundle every workload trusts (0644)
  ca-key.pem          its private key, PKCS#8 PEM (0600 from creation; refused when group or
                      others can read it)
```

``CertificateAuthority.issue(spiffe_id)`` returns a ``WorkloadCertificate``: an EC P-256 key and
an X.509 certificate shaped like Istio's workload certificates (empty subject, the SPIFFE ID as
the only, critical, SAN; digitalSignature and keyEncipherment; serverAuth and clientAuth; 24 h by
default, ``not_before`` backdated by ``CLOCK_SKEW`` so a peer whose clock is a little behind
accepts it). Every date comes from the injected ``Clock``'s wall time.

Private keys never appear in a ``repr``, a ``str`` or a log line.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import IdentityError, PeerIdentityError
from meshlib.security.identity import DEFAULT_TRUST_DOMAIN, SpiffeId, check_trust_domain
from meshlib.security.verify import spiffe_id_of

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

DEFAULT_CA_LIFETIME = timedelta(days=365)
DEFAULT_WORKLOAD_LIFETIME = timedelta(hours=24)
"""Istio's default workload certificate lifetime."""
CLOCK_SKEW = timedelta(minutes=5)
"""How far back a certificate's ``not_before`` is dated, for peers whose clock is behind."""

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
PUBLIC_FILE_MODE = 0o644


# --------------------------------------------------------------------------- workload certificate


@dataclass(frozen=True, slots=True, repr=False)
class WorkloadCertificate:
    """One workload's certificate, its private key and the CA bundle it trusts, all PEM.

    ``certificate_pem`` holds the leaf first (and any intermediates after it). ``repr``/``str``
    show the identity, serial number and validity, never the key.
    """

    spiffe_id: SpiffeId
    certificate_pem: bytes
    private_key_pem: bytes
    ca_bundle_pem: bytes
    not_before: datetime
    not_after: datetime
    serial_number: int

    def __repr__(self) -> str:
        return (
            f"WorkloadCertificate(spiffe_id={self.spiffe_id.uri!r}, "
            f"serial_number={self.serial_number:#x}, not_before={self.not_before.isoformat()}, "
            f"not_after={self.not_after.isoformat()})"
        )

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    def expired(self, clock: Clock = SYSTEM_CLOCK) -> bool:
        """Whether the certificate's ``not_after`` has passed by ``clock``'s wall time."""
        return clock.wall() >= self.not_after.timestamp()

    @classmethod
    def from_pem(
        cls, certificate_pem: bytes, private_key_pem: bytes, ca_bundle_pem: bytes
    ) -> WorkloadCertificate:
        """Check and wrap PEM data: the key must match the leaf, the leaf must carry exactly one
        SPIFFE ID and be signed by a certificate of the bundle. Raises ``IdentityError``."""
        leaf = _load_certificate(certificate_pem, "the certificate")
        key = _load_private_key(private_key_pem, "the private key")
        bundle = _load_bundle(ca_bundle_pem, "the CA bundle")
        if key.public_key() != leaf.public_key():
            raise IdentityError("the private key does not belong to the certificate")
        try:
            spiffe_id = spiffe_id_of(leaf)
        except PeerIdentityError as exc:
            raise IdentityError(f"the certificate is not a workload certificate: {exc}") from exc
        if not any(_signed_by(leaf, ca) for ca in bundle):
            raise IdentityError(
                f"the certificate of {spiffe_id} (issuer {leaf.issuer.rfc4514_string()!r}) is not "
                "signed by a certificate of the CA bundle"
            )
        return cls(
            spiffe_id=spiffe_id,
            certificate_pem=certificate_pem,
            private_key_pem=private_key_pem,
            ca_bundle_pem=ca_bundle_pem,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            serial_number=leaf.serial_number,
        )

    @classmethod
    def from_files(
        cls,
        certificate_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        ca_file: str | os.PathLike[str],
    ) -> WorkloadCertificate:
        """Read ``cert.pem``, ``key.pem`` and ``ca.pem`` as ``meshctl ca issue`` writes them (or as
        another CA does). The key file must not be accessible to group or others."""
        check_private_file(key_file)
        return cls.from_pem(_read(certificate_file), _read(key_file, private=True), _read(ca_file))

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> WorkloadCertificate:
        """``from_files`` on ``DIRECTORY/cert.pem``, ``key.pem`` and ``ca.pem``."""
        folder = Path(directory)
        return cls.from_files(folder / CERT_FILE, folder / KEY_FILE, folder / CA_CERT_FILE)

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``cert.pem`` (0644), ``key.pem`` (0600 from creation) and ``ca.pem`` (0644) in
        ``directory`` (created 0700 if missing), each replaced atomically. Returns the folder."""
        folder = make_private_dir(directory)
        write_file(folder / KEY_FILE, self.private_key_pem, PRIVATE_FILE_MODE)
        write_file(folder / CERT_FILE, self.certificate_pem, PUBLIC_FILE_MODE)
        write_file(folder / CA_CERT_FILE, self.ca_bundle_pem, PUBLIC_FILE_MODE)
        return folder


# --------------------------------------------------------------------------- the CA


class CertificateAuthority:
    """The mesh's root CA: signs workload certificates. Load one with ``load`` or make one with
    ``init``; the private key stays in this object and is never shown."""

    __slots__ = ("_clock", "_key", "certificate", "certificate_pem", "directory", "trust_domain")

    def __init__(
        self,
        directory: Path,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.directory = directory
        self.certificate = certificate
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self.trust_domain = _trust_domain_of(certificate)
        self._key = key
        self._clock = clock

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority(directory={str(self.directory)!r}, "
            f"trust_domain={self.trust_domain!r}, not_after={self.not_after.isoformat()})"
        )

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def bundle_pem(self) -> bytes:
        """The CA bundle workloads trust: this root certificate, PEM."""
        return self.certificate_pem

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        lifetime: timedelta = DEFAULT_CA_LIFETIME,
        clock: Clock = SYSTEM_CLOCK,
        force: bool = False,
    ) -> CertificateAuthority:
        """Create a new root CA in ``directory``: ``ca.pem`` and ``ca-key.pem`` (0600).

        Refuses (``IdentityError``) when either file exists, unless ``force``."""
        try:
            check_trust_domain(trust_domain)
        except ValueError as exc:
            raise IdentityError(str(exc)) from exc
        if lifetime <= timedelta(0):
            raise IdentityError(f"a CA lifetime must be positive, not {lifetime}")
        folder = make_private_dir(directory)
        cert_path, key_path = folder / CA_CERT_FILE, folder / CA_KEY_FILE
        if not force:
            existing = [p.name for p in (cert_path, key_path) if os.path.lexists(p)]
            if existing:
                raise IdentityError(
                    f"{folder} already holds a CA ({', '.join(existing)}): refusing to overwrite "
                    "it (workloads trust it); replace it with force=True (meshctl ca init --force)"
                )
        key = ec.generate_private_key(ec.SECP256R1())
        now = _utc(clock)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_file(key_path, key_pem, PRIVATE_FILE_MODE, exclusive=not force)
        write_file(
            cert_path,
            certificate.public_bytes(serialization.Encoding.PEM),
            PUBLIC_FILE_MODE,
            exclusive=not force,
        )
        return cls(folder, certificate, key, clock=clock)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, clock: Clock = SYSTEM_CLOCK
    ) -> CertificateAuthority:
        """Load ``ca.pem`` and ``ca-key.pem`` from ``directory``. Refuses a key file that group or
        others can access, a key that does not match, and a certificate that is not a CA."""
        folder = Path(directory)
        cert_path, key_path = folder / CA_CERT_FILE, folder / CA_KEY_FILE
        check_private_file(key_path)
        certificate = _load_certificate(_read(cert_path), str(cert_path))
        key = _load_private_key(_read(key_path, private=True), str(key_path))
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{key_path}: not an EC private key")
        if key.public_key() != certificate.public_key():
            raise IdentityError(f"{key_path} is not the key of {cert_path}")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise IdentityError(f"{cert_path} is not a CA certificate (BasicConstraints CA:TRUE)")
        return cls(folder, certificate, key, clock=clock)

    def issue(
        self, spiffe_id: SpiffeId | str, lifetime: timedelta = DEFAULT_WORKLOAD_LIFETIME
    ) -> WorkloadCertificate:
        """Issue a certificate for ``spiffe_id`` valid for ``lifetime`` from now (by the clock),
        never past the CA's own expiry. The ID's trust domain must be the CA's."""
        if isinstance(spiffe_id, str):
            spiffe_id = SpiffeId.parse(spiffe_id)
        if spiffe_id.trust_domain != self.trust_domain:
            raise IdentityError(
                f"this CA signs for trust domain {self.trust_domain!r}, not for {spiffe_id}"
            )
        if lifetime <= timedelta(0):
            raise IdentityError(f"a certificate lifetime must be positive, not {lifetime}")
        now = _utc(self._clock)
        ca_not_before = self.certificate.not_valid_before_utc
        not_after = min(now + lifetime, self.not_after)
        if not_after <= now:
            raise IdentityError(
                f"the CA in {self.directory} expired at {self.not_after.isoformat()}"
            )
        if now < ca_not_before:
            raise IdentityError(
                f"the CA in {self.directory} is not valid before {ca_not_before.isoformat()}"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - CLOCK_SKEW, ca_not_before))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # The subject is empty, so the SAN extension must be critical (RFC 5280 4.2.1.6).
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id.uri)]),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return WorkloadCertificate(
            spiffe_id=spiffe_id,
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            ca_bundle_pem=self.bundle_pem,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            serial_number=certificate.serial_number,
        )


# --------------------------------------------------------------------------- files


def make_private_dir(directory: str | os.PathLike[str]) -> Path:
    """``directory``, created with mode 0700 (and its parents as ``mkdir -p`` would) if missing."""
    folder = Path(directory)
    try:
        folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    if not folder.is_dir():
        raise IdentityError(f"{folder} is not a directory")
    return folder


def write_file(
    path: Path, data: bytes, mode: int, *, exclusive: bool = False, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the moment the file exists.

    ``exclusive``: create ``path`` itself and fail if it exists. Otherwise a temporary file beside
    it, created with ``mode``, replaces it atomically (readers see the old file or the new one).
    ``durable``: fsync before returning (not worth it for a file that is removed at once).
    """
    target = path if exclusive else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError as exc:
        raise IdentityError(f"{target} exists: refusing to overwrite it") from exc
    except OSError as exc:
        raise IdentityError(f"cannot create {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exactly ``mode``, whatever the umask
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if not exclusive:
            os.replace(target, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise IdentityError(f"cannot write {path}: {exc.strerror or exc}") from exc


def check_private_file(path: str | os.PathLike[str]) -> None:
    """Refuse (``IdentityError``) a key file that is missing, not a regular file, or accessible
    to group or others (any of the mode bits 0077)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise IdentityError(f"{path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"{path} is accessible by group or others (mode {mode:04o}): a private key must be "
            f"readable by its owner only; run chmod 600 {path}"
        )


def _read(path: str | os.PathLike[str], *, private: bool = False) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        what = "key file" if private else "file"
        raise IdentityError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- PEM


def _load_certificate(data: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"{what} is not a PEM certificate: {exc}") from exc


def _load_bundle(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        bundle = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise IdentityError(f"{what} is not a list of PEM certificates: {exc}") from exc
    return bundle


def _load_private_key(data: bytes, what: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The message of a key parse error never carries the key material.
        raise IdentityError(f"{what} is not an unencrypted PEM private key") from None


def _signed_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _trust_domain_of(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    value = names[0].value if names else ""
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    try:
        return check_trust_domain(text)
    except ValueError as exc:
        raise IdentityError(
            f"the CA certificate's subject must be O=<trust domain>, as Istio's: {exc}"
        ) from exc


def _utc(clock: Clock) -> datetime:
    """The clock's wall time, whole seconds (X.509 dates have no fractions)."""
    return datetime.fromtimestamp(int(clock.wall()), tz=timezone.utc)


__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CERT_FILE",
    "CLOCK_SKEW",
    "DEFAULT_CA_LIFETIME",
    "DEFAULT_WORKLOAD_LIFETIME",
    "KEY_FILE",
    "CertificateAuthority",
    "WorkloadCertificate",
    "check_private_file",
    "make_private_dir",
    "write_file",
]
