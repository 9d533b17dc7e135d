"""``ssl.SSLContext`` objects for mutual TLS between workloads.

Both sides trust the mesh CA bundle and nothing else (no system roots), require TLS 1.2 or later
and verify with OpenSSL's strict X.509 rules. No host name is checked: a workload is who its
SPIFFE ID says, and ``meshlib.security.verify.peer_identity`` checks that right after the
handshake.

- ``server_context``: presents the workload's certificate and asks for the client's:
  ``CERT_REQUIRED`` (mTLS STRICT: a client without a certificate fails the handshake) or
  ``CERT_OPTIONAL`` (PERMISSIVE use: a client certificate, when sent, must still verify).
- ``client_context``: verifies the server's chain against the mesh CA and presents the
  workload's own certificate.

How the key reaches OpenSSL: Python's ``ssl`` module loads a certificate and key from files only
(``load_cert_chain``; there is no in-memory variant, while the CA bundle does load from memory
with ``cadata``). ``load_identity`` writes the certificate and the key, encrypted with a random
one-time password kept in memory, to one file (0600) in a fresh private directory (0700), loads
it and removes the directory before returning. Even a file left behind by a killed process
holds only an encrypted key whose password died with it. It costs a few milliseconds per
context, paid when a context is built (at rotation), not per connection.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from meshlib.errors import IdentityError
from meshlib.security.ca import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, WorkloadCertificate, write_file

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
ALPN_PROTOCOLS = ("h2", "http/1.1")
"""What a mesh HTTP listener offers, in order of preference; pass it as ``alpn``."""


def server_context(
    certificate: WorkloadCertificate,
    *,
    require_client_certificate: bool = True,
    alpn: Sequence[str] = (),
    ca_bundle_pem: bytes | None = None,
) -> ssl.SSLContext:
    """A server-side context presenting ``certificate`` and verifying clients against the mesh CA
    (``certificate.ca_bundle_pem`` unless ``ca_bundle_pem`` is given).

    ``require_client_certificate``: ``CERT_REQUIRED`` (STRICT) when true, else ``CERT_OPTIONAL``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, ca_bundle_pem if ca_bundle_pem is not None else certificate.ca_bundle_pem)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    context.options |= ssl.OP_NO_RENEGOTIATION
    if alpn:
        context.set_alpn_protocols(list(alpn))
    load_identity(context, certificate)
    return context


def client_context(
    certificate: WorkloadCertificate | None,
    *,
    alpn: Sequence[str] = (),
    ca_bundle_pem: bytes | None = None,
) -> ssl.SSLContext:
    """A client-side context verifying the server's chain against the mesh CA only, checking no
    host name (verify the SPIFFE ID with ``peer_identity`` after the handshake), and presenting
    ``certificate`` (None: no client certificate; then ``ca_bundle_pem`` is required)."""
    bundle = ca_bundle_pem
    if bundle is None:
        if certificate is None:
            raise ValueError("client_context needs a certificate or a CA bundle")
        bundle = certificate.ca_bundle_pem
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # identity is the SPIFFE ID, checked after the handshake
    context.verify_mode = ssl.CERT_REQUIRED
    _harden(context, bundle)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if certificate is not None:
        load_identity(context, certificate)
    return context


def load_identity(context: ssl.SSLContext, certificate: WorkloadCertificate) -> None:
    """Load ``certificate`` and its key into ``context`` (see the module's note on files)."""
    password = secrets.token_bytes(32)
    try:
        key = serialization.load_pem_private_key(certificate.private_key_pem, password=None)
    except (ValueError, TypeError):
        raise IdentityError(
            f"the private key of {certificate.spiffe_id} is not a PEM private key"
        ) from None
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    folder = Path(tempfile.mkdtemp(prefix="meshlib-identity-"))  # created 0700
    try:
        os.chmod(folder, PRIVATE_DIR_MODE)
        path = folder / "identity.pem"
        write_file(
            path,
            encrypted + certificate.certificate_pem,
            PRIVATE_FILE_MODE,
            exclusive=True,
            durable=False,
        )
        try:
            context.load_cert_chain(path, password=password)
        except ssl.SSLError as exc:
            raise IdentityError(
                f"OpenSSL refused the certificate of {certificate.spiffe_id}: {exc}"
            ) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _harden(context: ssl.SSLContext, ca_bundle_pem: bytes) -> None:
    context.minimum_version = MINIMUM_VERSION
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.load_verify_locations(cadata=ca_bundle_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise IdentityError(f"the mesh CA bundle is not usable PEM: {exc}") from exc


__all__ = [
    "ALPN_PROTOCOLS",
    "MINIMUM_VERSION",
    "client_context",
    "load_identity",
    "server_context",
]
