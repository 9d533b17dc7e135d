"""WorkloadIdentity: the current certificate, rotated on use, without dropping connections."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from meshlib.errors import IdentityError
from meshlib.security import tls
from meshlib.security.ca import CertificateAuthority, WorkloadCertificate
from meshlib.security.identity import SpiffeId
from meshlib.security.workload import WorkloadIdentity
from meshlib.testing import FakeClock
from tests.security.tls_harness import attempt, connect, echo, serial_of, serving

REVIEWS = SpiffeId("cluster.local", "default", "bookinfo-reviews")
PRODUCTPAGE = SpiffeId("cluster.local", "default", "bookinfo-productpage")
LIFETIME = timedelta(minutes=10)
# The first certificate runs from now - 5 min (backdated) to now + 10 min: renewed at its
# middle, now + 2.5 min. After 3 minutes of fake time the next use rotates; the new certificate
# starts at now - 2 min of real time, so OpenSSL, which reads the real clock, accepts it.
PAST_THE_MIDDLE = 180.0


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("workload") / "ca"
    CertificateAuthority.init(directory, clock=FakeClock(wall=time.time() - 86400))
    return directory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=time.time())


def _identity(ca_dir: Path, clock: FakeClock, spiffe_id: SpiffeId = REVIEWS) -> WorkloadIdentity:
    return WorkloadIdentity.from_ca(ca_dir, spiffe_id, lifetime=LIFETIME, clock=clock)


def test_nothing_changes_before_the_rotation_instant(ca_dir: Path, clock: FakeClock) -> None:
    identity = _identity(ca_dir, clock)
    first = identity.certificate
    server, client = identity.server_context(), identity.client_context()
    middle = first.not_before.timestamp() + first.lifetime.total_seconds() / 2
    assert identity.renew_after == middle
    clock.advance(middle - clock.wall() - 1)
    assert identity.certificate is first
    assert identity.server_context() is server
    assert identity.client_context() is client
    assert identity.spiffe_id == REVIEWS


def test_the_first_use_after_the_instant_rotates(
    ca_dir: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    identity = _identity(ca_dir, clock)
    first = identity.certificate
    server = identity.server_context()
    clock.advance(PAST_THE_MIDDLE)
    with caplog.at_level(logging.INFO, logger="meshlib.security"):
        second = identity.certificate
    assert second.serial_number != first.serial_number
    assert second.spiffe_id == REVIEWS
    assert identity.server_context() is not server
    assert identity.renew_after > clock.wall()
    assert "rotated the certificate of spiffe://cluster.local/ns/default/sa/bookinfo-reviews" in (
        caplog.text
    )
    assert "PRIVATE" not in caplog.text
    assert "PRIVATE" not in repr(identity)


def test_rotation_keeps_open_connections_and_new_handshakes_get_the_new_certificate(
    ca_dir: Path, clock: FakeClock
) -> None:
    server_identity = _identity(ca_dir, clock)
    client_identity = _identity(ca_dir, clock, PRODUCTPAGE)
    with (
        serving(server_identity.server_context) as server,  # the current context per connection
        connect(server.port, client_identity.client_context()) as before,
    ):
        old_serial = serial_of(before)
        assert server.next().identity == PRODUCTPAGE
        assert old_serial == server_identity.certificate.serial_number

        clock.advance(PAST_THE_MIDDLE)
        with connect(server.port, client_identity.client_context()) as after:
            new_serial = serial_of(after)
            assert server.next().identity == PRODUCTPAGE
            assert echo(after, b"new") == b"new"
        assert echo(before, b"old") == b"old"  # the open connection still works
    assert new_serial != old_serial
    assert new_serial == server_identity.certificate.serial_number


def test_a_listener_context_made_once_presents_the_rotated_certificate(
    ca_dir: Path, clock: FakeClock
) -> None:
    server_identity = _identity(ca_dir, clock)
    client_identity = _identity(ca_dir, clock, PRODUCTPAGE)
    listener = server_identity.listener_context()
    with (
        serving(listener) as server,  # one context for every connection
        connect(server.port, client_identity.client_context()) as before,
    ):
        old_serial = serial_of(before)
        assert server.next().identity == PRODUCTPAGE
        clock.advance(PAST_THE_MIDDLE)
        with connect(server.port, client_identity.client_context()) as after:
            new_serial = serial_of(after)
            assert server.next().identity == PRODUCTPAGE
        assert echo(before) == b"ping"
        # The switched-to context still requires a client certificate.
        anonymous = tls.client_context(
            None, ca_bundle_pem=server_identity.certificate.ca_bundle_pem
        )
        assert attempt(server.port, anonymous) is not None
        assert "presented no client certificate" in str(server.next().error)
    assert new_serial != old_serial
    assert new_serial == server_identity.certificate.serial_number


def test_concurrent_users_rotate_once(ca_dir: Path, clock: FakeClock) -> None:
    authority = CertificateAuthority.load(ca_dir, clock=clock)
    calls: list[int] = []

    def source() -> WorkloadCertificate:
        calls.append(1)
        return authority.issue(REVIEWS, LIFETIME)

    identity = WorkloadIdentity(source, clock=clock)
    clock.advance(PAST_THE_MIDDLE)
    barrier = threading.Barrier(8)
    serials: list[int] = []

    def use() -> None:
        barrier.wait(5)
        identity.server_context()
        serials.append(identity.certificate.serial_number)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 2  # the first certificate and one rotation
    assert len(set(serials)) == 1


def test_a_failing_source_keeps_the_valid_certificate_and_retries_later(
    ca_dir: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    authority = CertificateAuthority.load(ca_dir, clock=clock)
    failing = {"now": False}

    def source() -> WorkloadCertificate:
        if failing["now"]:
            raise IdentityError("the CA is unreachable")
        return authority.issue(REVIEWS, LIFETIME)

    identity = WorkloadIdentity(source, clock=clock, retry_interval=60)
    first = identity.certificate
    failing["now"] = True
    clock.advance(PAST_THE_MIDDLE)
    with caplog.at_level(logging.WARNING, logger="meshlib.security"):
        assert identity.certificate is first
    assert "the CA is unreachable" in caplog.text
    assert identity.renew_after == pytest.approx(clock.wall() + 60)
    failing["now"] = False
    clock.advance(59)
    assert identity.certificate is first  # not asked again before the retry interval
    clock.advance(1)
    assert identity.certificate.serial_number != first.serial_number


def test_an_expired_certificate_with_no_renewal_is_an_error(ca_dir: Path, clock: FakeClock) -> None:
    authority = CertificateAuthority.load(ca_dir, clock=clock)
    issued = [authority.issue(REVIEWS, LIFETIME)]

    def source() -> WorkloadCertificate:
        if len(issued) > 1:
            raise IdentityError("the CA is unreachable")
        issued.append(issued[0])
        return issued[0]

    identity = WorkloadIdentity(source, clock=clock)
    clock.advance(LIFETIME.total_seconds() + 1)
    with pytest.raises(IdentityError, match=r"expired at .* no new one could be had"):
        identity.server_context()


def test_a_source_that_changes_identity_is_refused(ca_dir: Path, clock: FakeClock) -> None:
    authority = CertificateAuthority.load(ca_dir, clock=clock)
    ids = iter([REVIEWS, PRODUCTPAGE])
    identity = WorkloadIdentity(lambda: authority.issue(next(ids), LIFETIME), clock=clock)
    with pytest.raises(
        IdentityError, match=r"not for spiffe://cluster\.local/ns/default/sa/bookinfo-reviews"
    ):
        identity.rotate()
    assert identity.spiffe_id == REVIEWS


def test_files_renewed_by_another_process_are_picked_up(
    ca_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    authority = CertificateAuthority.load(ca_dir, clock=clock)
    out = tmp_path / "reviews"
    authority.issue(REVIEWS, LIFETIME).write(out)
    identity = WorkloadIdentity.from_files(
        out / "cert.pem", out / "key.pem", out / "ca.pem", clock=clock, retry_interval=30
    )
    first = identity.certificate
    clock.advance(PAST_THE_MIDDLE)
    assert identity.certificate is first  # the files have not changed yet: look again later
    assert identity.renew_after == pytest.approx(clock.wall() + 30)
    renewed = authority.issue(REVIEWS, LIFETIME)
    renewed.write(out)
    assert identity.certificate is first  # within the retry interval
    clock.advance(30)
    assert identity.certificate == renewed


def test_from_files_refuses_a_readable_key(ca_dir: Path, clock: FakeClock, tmp_path: Path) -> None:
    out = CertificateAuthority.load(ca_dir, clock=clock).issue(REVIEWS).write(tmp_path / "r")
    (out / "key.pem").chmod(0o640)
    with pytest.raises(IdentityError, match="mode 0640"):
        WorkloadIdentity.from_files(out / "cert.pem", out / "key.pem", out / "ca.pem")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_rotate_at_is_a_fraction(ca_dir: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        WorkloadIdentity.from_ca(ca_dir, REVIEWS, rotate_at=fraction)
