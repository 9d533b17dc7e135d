"""One workload's identity over time: its current certificate, rotated before it expires.

``WorkloadIdentity`` holds the current ``WorkloadCertificate`` and the SSL contexts built from it.
Where the certificates come from is a *source*, a function returning a fresh one:

- ``WorkloadIdentity.from_ca(ca_dir, spiffe_id)``: issued by a local CA (``meshctl ca init``),
  a new key and certificate at every rotation;
- ``WorkloadIdentity.from_files(cert, key, ca)``: files another process renews (``meshctl ca
  issue`` from cron, a Kubernetes secret, an agent); re-read when rotation is due.

Rotation: when ``rotate_at`` of the certificate's lifetime has passed (default 0.5, Istio's
``SECRET_GRACE_PERIOD_RATIO``: a 24 h certificate is renewed after 12 h, leaving 12 h to recover
from a CA that is down), the next use asks the source for a new certificate, builds new contexts
and swaps them in with one reference assignment. Connections already open keep the context they
were made with and keep working; new handshakes get the new certificate. No traffic is dropped.

The check happens on use (``server_context()``, ``client_context()``, ``certificate``): one
comparison of the clock's wall time with a precomputed instant, so there is no background
thread. A server that holds one context for a long-lived listener (``asyncio.start_server``, a
wrapped listening socket) uses ``listener_context()``: its handshakes switch to the current
context as they start, so they too see rotation.

If the source fails (CA unreadable, files not renewed yet), the current certificate stays in use
while it is valid and the source is asked again after ``retry_interval`` seconds; once it has
expired, use raises ``IdentityError``.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import IdentityError
from meshlib.security import tls
from meshlib.security.ca import (
    DEFAULT_WORKLOAD_LIFETIME,
    CertificateAuthority,
    WorkloadCertificate,
)
from meshlib.security.identity import SpiffeId

log = logging.getLogger("meshlib.security")

DEFAULT_ROTATE_AT = 0.5
"""Fraction of a certificate's lifetime after which it is renewed (Istio's grace period ratio)."""
DEFAULT_RETRY_INTERVAL = 30.0
"""Seconds between attempts when the source could not give a new certificate."""

CertificateSource = Callable[[], WorkloadCertificate]


@dataclass(frozen=True, slots=True)
class _Current:
    """What is in force: one certificate and the contexts built from it."""

    certificate: WorkloadCertificate
    renew_after: float  # wall-clock seconds: the next use after this asks the source
    strict_server: ssl.SSLContext
    permissive_server: ssl.SSLContext
    client: ssl.SSLContext


class WorkloadIdentity:
    """The current certificate of one workload and its SSL contexts, rotated on use."""

    __slots__ = ("_alpn", "_clock", "_current", "_lock", "_retry", "_rotate_at", "_source")

    def __init__(
        self,
        source: CertificateSource,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rotate_at: float = DEFAULT_ROTATE_AT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        alpn: Sequence[str] = (),
    ) -> None:
        if not 0.0 < rotate_at < 1.0:
            raise ValueError(f"rotate_at must be a fraction between 0 and 1, not {rotate_at}")
        if retry_interval <= 0:
            raise ValueError(f"retry_interval must be positive, not {retry_interval}")
        self._source = source
        self._clock = clock
        self._rotate_at = rotate_at
        self._retry = retry_interval
        self._alpn = tuple(alpn)
        self._lock = threading.Lock()
        certificate = source()
        self._current = self._build(certificate, self._renew_after(certificate))

    @classmethod
    def from_ca(
        cls,
        ca: CertificateAuthority | str | os.PathLike[str],
        spiffe_id: SpiffeId | str,
        *,
        lifetime: timedelta = DEFAULT_WORKLOAD_LIFETIME,
        clock: Clock = SYSTEM_CLOCK,
        rotate_at: float = DEFAULT_ROTATE_AT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        alpn: Sequence[str] = (),
    ) -> WorkloadIdentity:
        """Certificates for ``spiffe_id`` issued by the CA (an object, or its directory, loaded
        once with ``clock``), each valid for ``lifetime``."""
        authority = (
            ca
            if isinstance(ca, CertificateAuthority)
            else CertificateAuthority.load(ca, clock=clock)
        )
        wanted = SpiffeId.parse(spiffe_id) if isinstance(spiffe_id, str) else spiffe_id
        return cls(
            lambda: authority.issue(wanted, lifetime),
            clock=clock,
            rotate_at=rotate_at,
            retry_interval=retry_interval,
            alpn=alpn,
        )

    @classmethod
    def from_files(
        cls,
        certificate_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        ca_file: str | os.PathLike[str],
        *,
        clock: Clock = SYSTEM_CLOCK,
        rotate_at: float = DEFAULT_ROTATE_AT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        alpn: Sequence[str] = (),
    ) -> WorkloadIdentity:
        """The certificate in files renewed by another process, re-read when rotation is due
        (and every ``retry_interval`` seconds after that until they change)."""
        paths = (Path(certificate_file), Path(key_file), Path(ca_file))
        return cls(
            lambda: WorkloadCertificate.from_files(*paths),
            clock=clock,
            rotate_at=rotate_at,
            retry_interval=retry_interval,
            alpn=alpn,
        )

    def __repr__(self) -> str:
        current = self._current
        return (
            f"WorkloadIdentity({current.certificate.spiffe_id.uri!r}, "
            f"serial_number={current.certificate.serial_number:#x}, "
            f"not_after={current.certificate.not_after.isoformat()})"
        )

    # ----------------------------------------------------------------------- what callers use

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._current.certificate.spiffe_id

    @property
    def certificate(self) -> WorkloadCertificate:
        """The certificate in force (rotated first if due)."""
        return self._in_force().certificate

    @property
    def renew_after(self) -> float:
        """Wall-clock seconds after which the next use renews the certificate."""
        return self._current.renew_after

    def server_context(self, *, require_client_certificate: bool = True) -> ssl.SSLContext:
        """The current server context: STRICT (a client certificate required) or, with
        ``require_client_certificate=False``, one for PERMISSIVE use."""
        current = self._in_force()
        return current.strict_server if require_client_certificate else current.permissive_server

    def client_context(self) -> ssl.SSLContext:
        """The current client context: presents this workload's certificate."""
        return self._in_force().client

    def listener_context(self, *, require_client_certificate: bool = True) -> ssl.SSLContext:
        """One server context for a long-lived listener: every handshake it starts switches to
        the current ``server_context`` (through ``sni_callback``, which OpenSSL calls for each
        ClientHello, with or without SNI), so rotation reaches listeners made once."""
        front = tls.server_context(
            self.certificate, require_client_certificate=require_client_certificate, alpn=self._alpn
        )

        def switch(
            connection: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
        ) -> None:
            connection.context = self.server_context(
                require_client_certificate=require_client_certificate
            )

        front.sni_callback = switch
        return front

    def rotate(self) -> WorkloadCertificate:
        """Ask the source for a new certificate now and put it in force. Raises
        ``IdentityError`` when the source fails (the current certificate stays)."""
        with self._lock:
            current = self._current
            certificate = self._fetch(current)
            self._current = self._build(certificate, self._renew_after(certificate))
        self._log_rotation(current.certificate, certificate)
        return certificate

    # ----------------------------------------------------------------------- rotation

    def _in_force(self) -> _Current:
        current = self._current
        if self._clock.wall() < current.renew_after:
            return current
        return self._renew()

    def _renew(self) -> _Current:
        with self._lock:
            current = self._current
            now = self._clock.wall()
            if now < current.renew_after:  # another thread renewed it meanwhile
                return current
            old = current.certificate
            try:
                certificate = self._fetch(current)
            except IdentityError as exc:
                if now >= old.not_after.timestamp():
                    raise IdentityError(
                        f"the certificate of {old.spiffe_id} expired at "
                        f"{old.not_after.isoformat()} and no new one could be had: {exc}"
                    ) from exc
                log.warning(
                    "cannot renew the certificate of %s (valid until %s): %s; retrying in %gs",
                    old.spiffe_id,
                    old.not_after.isoformat(),
                    exc,
                    self._retry,
                )
                self._current = replace(current, renew_after=now + self._retry)
                return self._current
            if certificate.serial_number == old.serial_number:
                # The files were not renewed yet: keep going and look again later.
                self._current = replace(current, renew_after=now + self._retry)
                return self._current
            self._current = self._build(certificate, self._renew_after(certificate))
        self._log_rotation(old, certificate)
        return self._current

    def _fetch(self, current: _Current) -> WorkloadCertificate:
        certificate = self._source()
        if certificate.spiffe_id != current.certificate.spiffe_id:
            raise IdentityError(
                f"the new certificate is for {certificate.spiffe_id}, not for "
                f"{current.certificate.spiffe_id}: refused"
            )
        return certificate

    def _renew_after(self, certificate: WorkloadCertificate) -> float:
        start = certificate.not_before.timestamp()
        end = certificate.not_after.timestamp()
        return start + (end - start) * self._rotate_at

    def _build(self, certificate: WorkloadCertificate, renew_after: float) -> _Current:
        return _Current(
            certificate=certificate,
            renew_after=renew_after,
            strict_server=tls.server_context(certificate, alpn=self._alpn),
            permissive_server=tls.server_context(
                certificate, require_client_certificate=False, alpn=self._alpn
            ),
            client=tls.client_context(certificate, alpn=self._alpn),
        )

    @staticmethod
    def _log_rotation(old: WorkloadCertificate, new: WorkloadCertificate) -> None:
        log.info(
            "rotated the certificate of %s: serial %#x -> %#x, valid until %s",
            new.spiffe_id,
            old.serial_number,
            new.serial_number,
            new.not_after.isoformat(),
        )


__all__ = [
    "DEFAULT_RETRY_INTERVAL",
    "DEFAULT_ROTATE_AT",
    "CertificateSource",
    "WorkloadIdentity",
]
