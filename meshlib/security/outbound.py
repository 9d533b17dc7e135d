"""Outbound TLS: what a client sends, as a DestinationRule's ``tls`` says, and auto mTLS.

The app calls ``http://reviews:9080``; the mesh originates TLS, as Envoy does beside a pod:

* ``decide`` (pure) turns a destination's merged ``tls`` settings, an endpoint and this
  workload's config into an ``Origination`` — the TLS one connection needs — or None for plain
  text. Without a DestinationRule ``tls`` setting, auto mTLS (Istio's ``enableAutoMtls``) picks
  ISTIO_MUTUAL for an endpoint labelled ``security.istio.io/tlsMode: istio`` when this workload
  has an identity and the destination's PeerAuthentication (when this config holds one) is not
  DISABLE.
* ``Outbound`` is that decision for one destination, remembered per endpoint.
* ``VerifyingBackend`` / ``AsyncVerifyingBackend`` wrap a network backend (httpcore's public
  ``network_backend`` extension point): the sync one ``meshlib.clients.httpx.tls.TLSBackend``
  (TLS over memory BIOs, reading what the socket holds in one ``recv``), the async one
  httpcore's anyio backend. Their stream's ``start_tls`` runs the handshake with the
  origination's context, then checks the peer — its SPIFFE ID against the accepted identities
  for ISTIO_MUTUAL, its DNS/URI SANs against ``subjectAltNames`` otherwise — and on a refusal
  closes the connection and raises ``UpstreamTLSError`` (flag ``UF``): the check is done before
  httpcore writes a byte of the request.
* ``SecureTransports`` keeps one httpcore connection pool per origination (a destination and
  its TLS settings), so a connection is verified once and reused.

This module loads ``cryptography`` (through ``meshlib.security.verify``): the mesh imports it
only for a destination that may need TLS.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import httpcore
import httpx

from meshlib.clients.httpx.errors import UpstreamTLSError
from meshlib.config import model as m
from meshlib.errors import PeerIdentityError
from meshlib.pipeline.info import PEER_IDENTITY
from meshlib.security.verify import AcceptedPeers, explain_handshake_failure, peer_identity

if TYPE_CHECKING:
    from meshlib.config.load import MeshConfig
    from meshlib.discovery import Endpoint
    from meshlib.routing import Target
    from meshlib.security.workload import WorkloadIdentity

__all__ = [
    "PEER_IDENTITY",
    "TLS_MODE_LABEL",
    "AsyncVerifyingBackend",
    "Origination",
    "Outbound",
    "SecureTransports",
    "VerifyingBackend",
    "decide",
    "istio_sni",
]

TLS_MODE_LABEL = "security.istio.io/tlsMode"
"""The endpoint label auto mTLS reads (value ``istio``: the endpoint takes mutual TLS)."""


Mode = Literal["SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]


@dataclass(frozen=True, slots=True)
class Origination:
    """The TLS one upstream connection is made with. Equal originations share one pool."""

    mode: Mode
    sni: str | None
    #: ISTIO_MUTUAL: the SPIFFE IDs accepted (subjectAltNames, else any in the trust domain)
    accepted: AcceptedPeers | None = None
    #: SIMPLE / MUTUAL: the DNS or URI SANs accepted (empty: the host name is checked)
    subject_alt_names: frozenset[str] = frozenset()
    ca_certificates: str | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    ca_crl: str | None = None
    insecure_skip_verify: bool = False
    auto: bool = False  # chosen by auto mTLS, not by a DestinationRule
    source: str = ""  # where the setting comes from, for messages
    #: the hash of the fields above, computed once: each call finds its pool by it
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = tuple(getattr(self, f.name) for f in fields(self) if f.compare)
        object.__setattr__(self, "_hash", hash(values))

    def __hash__(self) -> int:
        return self._hash

    @property
    def mutual(self) -> bool:
        return self.mode != "SIMPLE"


def istio_sni(host: str, port: int, subset: str | None) -> str:
    """The SNI Istio's client sends for ISTIO_MUTUAL: ``outbound_.<port>_.<subset>_.<host>``."""
    return f"outbound_.{port}_.{subset or ''}_.{host}"


def decide(
    settings: m.ClientTLSSettings | None,
    *,
    target: Target,
    port: int,
    endpoint: Endpoint | None,
    config: MeshConfig,
    has_identity: bool,
) -> Origination | None:
    """The TLS a call to ``endpoint`` of ``target`` (on ``port``) is made with; None: plain text.

    ``settings``: the destination's merged ``tls`` (rule, subset, port level). A setting, even
    ``DISABLE``, overrides auto mTLS; without one, auto mTLS decides (see the module doc)."""
    source = f"DestinationRule {target.destination_rule}" if target.destination_rule else ""
    if settings is None:
        if not has_identity or endpoint is None:
            return None
        if endpoint.labels.get(TLS_MODE_LABEL) != "istio":
            return None
        if _peer_authentication_disables(config, target.host, endpoint):
            return None
        return Origination(
            "ISTIO_MUTUAL",
            istio_sni(target.host, port, target.subset),
            accepted=_accepted(config, (), endpoint),
            auto=True,
            source="auto mTLS",
        )
    mode = settings.mode or "DISABLE"  # Istio's default mode
    if mode == "DISABLE":
        return None
    names = frozenset(settings.subject_alt_names or ())
    if mode == "ISTIO_MUTUAL":
        return Origination(
            "ISTIO_MUTUAL",
            settings.sni or istio_sni(target.host, port, target.subset),
            accepted=_accepted(config, names, endpoint),
            source=source,
        )
    return Origination(
        mode,
        settings.sni or target.host,  # Istio's auto SNI: the destination's host
        subject_alt_names=names,
        ca_certificates=settings.ca_certificates,
        client_certificate=settings.client_certificate if mode == "MUTUAL" else None,
        private_key=settings.private_key if mode == "MUTUAL" else None,
        ca_crl=settings.ca_crl,
        insecure_skip_verify=bool(settings.insecure_skip_verify),
        source=source,
    )


def _accepted(
    config: MeshConfig, names: frozenset[str] | tuple[()], endpoint: Endpoint | None
) -> AcceptedPeers:
    """Whom ISTIO_MUTUAL accepts: ``subjectAltNames`` when given, else the endpoint's own
    identity when the registry knows it (a ServiceEntry endpoint's ``serviceAccount``), else any
    identity of this workload's trust domain signed by the mesh CA."""
    if not names and endpoint is not None and endpoint.identity is not None:
        names = frozenset({endpoint.identity})
    return AcceptedPeers.of([config.service.trust_domain], names)


def _peer_authentication_disables(config: MeshConfig, host: str, endpoint: Endpoint) -> bool:
    """Whether the destination's PeerAuthentication, as this config holds it, is DISABLE for
    the endpoint's port (its namespace from the host's FQDN, its labels the endpoint's)."""
    policies = config.of_kind("PeerAuthentication")
    if not policies:
        return False
    from meshlib.security.peer_authn import resolve_peer_authentication  # noqa: PLC0415

    parts = host.split(".")
    namespace = parts[1] if len(parts) > 2 and parts[2] == "svc" else config.service.namespace
    result = resolve_peer_authentication(
        policies,
        namespace=namespace,
        labels=endpoint.labels,
        root_namespace=config.service.root_namespace,
    )
    return result.mode_for_port(endpoint.port) == "DISABLE"


class Outbound:
    """The TLS of one destination (a cluster): its settings, decided per endpoint and port."""

    __slots__ = ("_cache", "config", "identity", "settings", "target")

    def __init__(
        self,
        target: Target,
        settings: m.ClientTLSSettings | None,
        config: MeshConfig,
        identity: Any,
    ) -> None:
        self.target = target
        self.settings = settings
        self.config = config
        #: ``() -> WorkloadIdentity | None`` (``Mesh.identity``, read when a connection is made)
        self.identity = identity
        self._cache: dict[tuple[Endpoint | None, int], Origination | None] = {}

    def origination(self, endpoint: Endpoint | None, port: int) -> Origination | None:
        key = (endpoint, port)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = decide(
            self.settings,
            target=self.target,
            port=port,
            endpoint=endpoint,
            config=self.config,
            has_identity=self.config.service.identity is not None,
        )
        if len(self._cache) >= 1024:
            self._cache.clear()
        self._cache[key] = found
        return found


# --------------------------------------------------------------------------- contexts and checks


class _Handshake:
    """How connections of one origination shake hands and what they accept."""

    def __init__(self, origination: Origination, identity: Any) -> None:
        self.origination = origination
        self._identity = identity
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def context(self) -> ssl.SSLContext:
        origination = self.origination
        if origination.mode == "ISTIO_MUTUAL":
            identity: WorkloadIdentity | None = self._identity()
            if identity is None:
                raise UpstreamTLSError(
                    f"{origination.source or 'tls'}: mode ISTIO_MUTUAL needs this workload's "
                    "identity, and the Service document gives it none (spec.identity)"
                )
            return identity.client_context()  # the current one: rotation reaches new handshakes
        context = self._context
        if context is None:
            with self._lock:
                context = self._context
                if context is None:
                    context = self._context = _files_context(origination)
        return context

    def check(self, ssl_object: Any) -> str | None:
        """The peer's verified identity (its SPIFFE ID for ISTIO_MUTUAL); raises
        ``PeerIdentityError`` when it is not accepted."""
        origination = self.origination
        if ssl_object is None:
            raise PeerIdentityError("no TLS connection to check", expected="TLS")
        if origination.accepted is not None:
            return peer_identity(ssl_object, origination.accepted).uri
        if origination.insecure_skip_verify or not origination.subject_alt_names:
            return None  # nothing more to check (the host name was, during the handshake)
        names = _san_values(ssl_object.getpeercert())
        for name in names:
            if name in origination.subject_alt_names:
                return name
        wanted = ", ".join(sorted(origination.subject_alt_names))
        presented = ", ".join(names) or "no DNS or URI SAN"
        raise PeerIdentityError(
            f"server certificate refused: expected a SAN among {wanted}, presented {presented}",
            expected=wanted,
            presented=presented,
        )


def _san_values(certificate: Mapping[str, Any] | None) -> list[str]:
    if not certificate:
        return []
    return [
        str(value)
        for kind, value in certificate.get("subjectAltName", ())
        if kind in ("DNS", "URI")
    ]


def _files_context(origination: Origination) -> ssl.SSLContext:
    """SIMPLE / MUTUAL: trust ``caCertificates`` (the system store without it), present the
    client certificate (MUTUAL), check the host name unless ``subjectAltNames`` name the peer."""
    where = origination.source or "tls"
    try:
        context = ssl.create_default_context(cafile=origination.ca_certificates)
        if origination.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif origination.subject_alt_names:
            context.check_hostname = False  # the SANs are checked after the handshake
        if origination.ca_crl:
            context.load_verify_locations(cafile=origination.ca_crl)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        if origination.mode == "MUTUAL":
            if not origination.client_certificate or not origination.private_key:
                raise UpstreamTLSError(
                    f"{where}: mode MUTUAL needs clientCertificate and privateKey files "
                    "(credentialName names a Kubernetes secret, which meshlib cannot read)"
                )
            context.load_cert_chain(origination.client_certificate, origination.private_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise UpstreamTLSError(f"{where}: the TLS files cannot be used: {exc}") from exc
    return context


def _refused(exc: Exception, handshake: _Handshake) -> UpstreamTLSError:
    origination = handshake.origination
    what = f"{origination.mode} ({origination.source})" if origination.source else origination.mode
    error = UpstreamTLSError(f"TLS origination {what} failed: {exc}")
    error.__cause__ = exc
    return error


def _handshake_error(exc: Exception) -> Exception | None:
    """The TLS error behind httpcore's ConnectError, as a ``PeerIdentityError`` when it is one
    of certificates (None: not a TLS error, e.g. a refused connection)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return explain_handshake_failure(cause)
    return None


# --------------------------------------------------------------------------- network backends


class _VerifiedStream(httpcore.NetworkStream):
    """A TLS stream whose peer was checked; ``get_extra_info(PEER_IDENTITY)`` says who it is."""

    def __init__(self, stream: httpcore.NetworkStream, peer: str | None) -> None:
        self._stream = stream
        self._peer = peer
        # each call's reads and writes go straight to the TLS stream, without a frame here
        self.read = stream.read  # type: ignore[method-assign]
        self.write = stream.write  # type: ignore[method-assign]

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:  # pragma: no cover - TLS in TLS (a proxy) is not used here
        return self._stream.start_tls(ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == PEER_IDENTITY:
            return self._peer
        return self._stream.get_extra_info(info)


class _VerifyingStream(httpcore.NetworkStream):
    """A TCP stream whose ``start_tls`` is the origination's, checked before it returns."""

    def __init__(self, stream: httpcore.NetworkStream, handshake: _Handshake) -> None:
        self._stream = stream
        self._handshake = handshake

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        handshake = self._handshake
        try:
            context = handshake.context()
        except BaseException:
            self._stream.close()
            raise
        try:
            secure = self._stream.start_tls(context, handshake.origination.sni, timeout)
        except httpcore.ConnectError as exc:
            reason = _handshake_error(exc)
            if reason is None:
                raise
            self._stream.close()
            raise _refused(reason, handshake) from exc
        try:
            peer = handshake.check(secure.get_extra_info("ssl_object"))
        except PeerIdentityError as exc:
            secure.close()
            raise _refused(exc, handshake) from exc
        return _VerifiedStream(secure, peer)


class VerifyingBackend(httpcore.NetworkBackend):
    """httpcore's sync backend whose TLS is one origination's, its peer checked."""

    def __init__(self, handshake: _Handshake, inner: httpcore.NetworkBackend | None = None):
        self._handshake = handshake
        self._inner = inner if inner is not None else httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _VerifyingStream(stream, self._handshake)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - mesh endpoints are TCP
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return _VerifyingStream(stream, self._handshake)

    def sleep(self, seconds: float) -> None:  # pragma: no cover - pool retries are off
        self._inner.sleep(seconds)


class _AsyncVerifiedStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream, peer: str | None) -> None:
        self._stream = stream
        self._peer = peer
        # as _VerifiedStream: reads and writes go straight to the TLS stream
        self.read = stream.read  # type: ignore[method-assign]
        self.write = stream.write  # type: ignore[method-assign]

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - TLS in TLS is not used here
        return await self._stream.start_tls(ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == PEER_IDENTITY:
            return self._peer
        return self._stream.get_extra_info(info)


class _AsyncVerifyingStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream, handshake: _Handshake) -> None:
        self._stream = stream
        self._handshake = handshake

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        handshake = self._handshake
        try:
            context = handshake.context()
        except BaseException:
            await self._stream.aclose()
            raise
        try:
            secure = await self._stream.start_tls(context, handshake.origination.sni, timeout)
        except httpcore.ConnectError as exc:
            reason = _handshake_error(exc)
            if reason is None:
                raise
            await self._stream.aclose()
            raise _refused(reason, handshake) from exc
        try:
            peer = handshake.check(secure.get_extra_info("ssl_object"))
        except PeerIdentityError as exc:
            await secure.aclose()
            raise _refused(exc, handshake) from exc
        return _AsyncVerifiedStream(secure, peer)


class AsyncVerifyingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's async (anyio) backend whose TLS is one origination's, its peer checked."""

    def __init__(
        self, handshake: _Handshake, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._handshake = handshake
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncVerifyingStream(stream, self._handshake)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - mesh endpoints are TCP
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _AsyncVerifyingStream(stream, self._handshake)

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - pool retries are off
        await self._inner.sleep(seconds)


# --------------------------------------------------------------------------- pools


def _pool_context() -> ssl.SSLContext:
    """The context handed to httpcore's pool, which sets its ALPN on it; the backend shakes
    hands with the origination's own context instead."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


def _sync_transport(handshake: _Handshake) -> httpx.BaseTransport:
    from meshlib.clients.httpx.httpcore import PoolTransport  # noqa: PLC0415 - no cycle at import
    from meshlib.clients.httpx.tls import TLSBackend  # noqa: PLC0415

    pool = httpcore.ConnectionPool(
        ssl_context=_pool_context(),
        max_connections=_LIMITS.max_connections,
        max_keepalive_connections=_LIMITS.max_keepalive_connections,
        keepalive_expiry=_LIMITS.keepalive_expiry,
        network_backend=VerifyingBackend(handshake, TLSBackend()),
    )
    return PoolTransport(pool)


def _async_transport(handshake: _Handshake) -> httpx.AsyncBaseTransport:
    from meshlib.clients.httpx.httpcore import (  # noqa: PLC0415
        AsyncDeadlineBackend,
        AsyncPoolTransport,
    )

    pool = httpcore.AsyncConnectionPool(
        ssl_context=_pool_context(),
        max_connections=_LIMITS.max_connections,
        max_keepalive_connections=_LIMITS.max_keepalive_connections,
        keepalive_expiry=_LIMITS.keepalive_expiry,
        network_backend=AsyncVerifyingBackend(handshake, AsyncDeadlineBackend()),
    )
    return AsyncPoolTransport(pool)


class SecureTransports:
    """One connection pool per (destination, TLS settings) for one mesh client."""

    def __init__(self, identity: Any) -> None:
        self._identity = identity
        self._sync: dict[tuple[str, Origination], httpx.BaseTransport] = {}
        self._async: dict[tuple[str, Origination], httpx.AsyncBaseTransport] = {}
        self._lock = threading.Lock()

    def sync(self, destination: str, origination: Origination) -> httpx.BaseTransport:
        key = (destination, origination)
        found = self._sync.get(key)
        if found is None:
            with self._lock:
                found = self._sync.get(key)
                if found is None:
                    handshake = _Handshake(origination, self._identity)
                    found = self._sync[key] = _sync_transport(handshake)
        return found

    def async_(self, destination: str, origination: Origination) -> httpx.AsyncBaseTransport:
        key = (destination, origination)
        found = self._async.get(key)
        if found is None:
            handshake = _Handshake(origination, self._identity)
            found = self._async[key] = _async_transport(handshake)
        return found

    def close(self) -> None:
        with self._lock:
            pools, self._sync = list(self._sync.values()), {}
        for transport in pools:
            transport.close()

    async def aclose(self) -> None:
        pools, self._async = list(self._async.values()), {}
        for transport in pools:
            await transport.aclose()
