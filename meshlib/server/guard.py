"""The inbound side's security: what Istio's sidecar checks before a request reaches the app.

``guard_of(mesh)`` compiles, once per config (a reload makes a new one), what applies to this
workload:

* the AuthorizationPolicies of the root namespace (mesh-wide), of the service's namespace, and
  those whose selector picks its labels → an ``Authorizer``;
* the RequestAuthentications that apply → a ``RequestAuthenticator`` (``jwksUri`` key sets
  fetched through clients of the mesh);
* the peer verifier (the mesh CA bundle of ``Mesh.identity``) and the trust boundary for
  context headers (``spec.inbound.trustHeadersFrom``).

It is None when none of this applies (no security resource for the workload, no identity, no
``spec.inbound``): the inbound side then does exactly what it did without security.

``InboundGuard.check(request)`` (``acheck`` awaits remote key sets) answers, per request, in
Envoy's order: the path is normalised (400/431 when refused), the client certificate gives the
peer principal, the end-user JWT is verified (401, or 403 when its audience is not allowed),
untrusted context headers are dropped, and authorization decides (403 ``RBAC: access denied``).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from meshlib.context import REQUEST_ID
from meshlib.errors import MeshError
from meshlib.telemetry.tracing import TRACE_HEADERS

if TYPE_CHECKING:
    from meshlib.config.load import MeshConfig
    from meshlib.mesh import Mesh
    from meshlib.security.authz import Authorizer, Decision
    from meshlib.security.jwt import AuthnOutcome, RequestAuthenticator
    from meshlib.security.paths import PathNormalization
    from meshlib.security.peer import PeerVerifier

log = logging.getLogger("meshlib.server")

DENIED_STATUS: Final = 403
#: Prefixes of the headers only the mesh may set, dropped from an untrusted caller.
MESH_PREFIXES: Final = ("x-envoy-", "x-mesh-")
#: The JWT failure Envoy answers with 403 rather than 401.
_AUDIENCE_REFUSED: Final = "Audiences in Jwt are not allowed"


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """What the server knows of one inbound request, as the shells read it.

    ``target``: the path as received (raw, percent-encoding kept), without the query;
    ``headers``: lower-case names, in order, repeats kept; ``peer``: the client's address;
    ``chain``: its certificate chain (PEM, leaf first) when the connection is TLS with a client
    certificate; ``local_address``/``port``: where it was received."""

    method: str
    target: str
    query: str
    headers: Sequence[tuple[str, str]]
    scheme: str = "http"
    peer: str | None = None
    chain: Sequence[str] = ()
    local_address: str | None = None
    port: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard decided. ``status`` 0: serve the request, with ``path`` (normalised) and
    the header changes (``remove`` names, then ``add``) applied to what the app sees; otherwise
    answer ``status`` with ``body`` and ``headers`` without calling the app."""

    status: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    details: str = ""
    path: str | None = None  # None: the path as received
    remove: frozenset[str] = frozenset()
    add: tuple[tuple[str, str], ...] = ()
    trusted: bool = True
    principal: str | None = None
    audit_policy: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 0


@dataclass(frozen=True, slots=True)
class _Screened:
    path: str | None
    principal: str | None
    trusted: bool
    remove: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Settings:
    trust_any: bool
    num_trusted_proxies: int
    normalization: PathNormalization
    propagate: frozenset[str]


class InboundGuard:
    """The compiled inbound security of one config (see the module's docstring)."""

    def __init__(
        self,
        mesh: Mesh,
        config: MeshConfig,
        authorizer: Authorizer | None,
        authenticator: RequestAuthenticator | None,
        settings: _Settings,
    ) -> None:
        self._mesh = weakref.ref(mesh)
        self.config = config
        self.authorizer = authorizer
        self.authenticator = authenticator
        self.settings = settings
        self.has_identity = config.service.identity is not None
        self._verifier: PeerVerifier | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ peer identity

    def principal_of(self, chain: Sequence[str]) -> str | None:
        """The verified peer principal of a client certificate chain, or None."""
        if not chain or not self.has_identity:
            return None
        mesh = self._mesh()
        if mesh is None:
            return None
        try:
            identity = mesh.identity
        except MeshError as exc:
            log.warning("no mesh identity to verify inbound peers with: %s", exc)
            return None
        if identity is None:
            return None
        bundle = identity.certificate.ca_bundle_pem
        verifier = self._verifier
        if verifier is None or verifier.bundle != bundle:
            from meshlib.security.peer import PeerVerifier  # noqa: PLC0415 - loads cryptography

            with self._lock:
                verifier = self._verifier = PeerVerifier(bundle, clock=mesh.clock)
        return verifier.principal(chain)

    # ------------------------------------------------------------------ the checks

    def _screen(self, request: InboundRequest) -> Verdict | _Screened:
        """Peer and path: a refusal, or what the next checks build on."""
        principal = self.principal_of(request.chain)
        trusted = self.settings.trust_any or principal is not None
        remove = frozenset() if trusted else frozenset(self.untrusted(request.headers))
        path: str | None = None
        if self.authorizer is not None or self.authenticator is not None:
            from meshlib.security.paths import InvalidPathError, normalize_path  # noqa: PLC0415

            try:
                path = normalize_path(request.target, self.settings.normalization)
            except InvalidPathError as exc:
                status = exc.status
                reason = "Bad Request" if status == 400 else "Request Header Fields Too Large"
                return Verdict(
                    status,
                    reason.encode(),
                    _TEXT,
                    "invalid_path",
                    remove=remove,
                    trusted=trusted,
                    principal=principal,
                )
        return _Screened(path, principal, trusted, remove)

    def check(self, request: InboundRequest) -> Verdict:
        """The verdict on a request (remote JWT key sets fetched with the sync client)."""
        screened = self._screen(request)
        if isinstance(screened, Verdict):
            return screened
        outcome = None
        if self.authenticator is not None:
            outcome = self.authenticator.authenticate(request.headers, request.query)
        return self._decide(request, screened, outcome)

    async def acheck(self, request: InboundRequest) -> Verdict:
        """``check``, with remote JWT key sets fetched with the async client."""
        screened = self._screen(request)
        if isinstance(screened, Verdict):
            return screened
        outcome = None
        if self.authenticator is not None:
            outcome = await self.authenticator.aauthenticate(request.headers, request.query)
        return self._decide(request, screened, outcome)

    def _decide(
        self, request: InboundRequest, screened: _Screened, outcome: AuthnOutcome | None
    ) -> Verdict:
        path, principal, trusted = screened.path, screened.principal, screened.trusted
        remove = set(screened.remove)
        add: tuple[tuple[str, str], ...] = ()
        if outcome is not None:
            if not outcome.ok:
                return _jwt_refused(request, outcome.message, screened)
            remove.update(outcome.headers.remove)
            add = outcome.headers.add
        audit = None
        if self.authorizer is not None:
            decision = self.authorizer.decide(
                self._attributes(request, path, principal, remove, add, outcome)
            )
            audit = decision.audit_policy
            if not decision.allowed:
                return _denied(decision, screened)
        if path == request.target:
            path = None
        return Verdict(
            path=path,
            remove=frozenset(remove),
            add=add,
            trusted=trusted,
            principal=principal,
            audit_policy=audit,
        )

    def untrusted(self, headers: Iterable[tuple[str, str]]) -> set[str]:
        """The names among ``headers`` an untrusted caller may not set: ``x-request-id``, the
        trace headers, ``propagateHeaders``, ``x-envoy-*`` and ``x-mesh-*``."""
        propagate = self.settings.propagate
        return {
            name
            for name, _ in headers
            if name == REQUEST_ID
            or name in TRACE_HEADERS
            or name in propagate
            or name.startswith(MESH_PREFIXES)
        }

    def _attributes(
        self,
        request: InboundRequest,
        path: str | None,
        principal: str | None,
        remove: set[str],
        add: tuple[tuple[str, str], ...],
        outcome: AuthnOutcome | None,
    ) -> Any:
        from meshlib.security.authz import RequestAttributes, original_client  # noqa: PLC0415

        headers: dict[str, str] = {}
        for name, value in request.headers:
            if name in remove:
                continue
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        for name, value in add:
            headers[name] = value
        peer = request.peer
        remote = None
        if peer is not None:
            remote = original_client(
                peer, headers.get("x-forwarded-for"), self.settings.num_trusted_proxies
            )
        return RequestAttributes(
            method=request.method,
            path=path if path is not None else request.target,
            host=headers.get("host", ""),
            port=request.port,
            headers=headers,
            peer_principal=principal,
            peer_address=peer,
            remote_address=remote,
            destination_address=request.local_address,
            jwt=outcome.authn if outcome is not None else None,
        )


_TEXT: Final = (("content-type", "text/plain"),)
DENIED_BODY: Final = b"RBAC: access denied"


def _denied(decision: Decision, screened: _Screened) -> Verdict:
    return Verdict(
        DENIED_STATUS,
        DENIED_BODY,
        _TEXT,
        decision.response_code_details,
        remove=screened.remove,
        trusted=screened.trusted,
        principal=screened.principal,
        audit_policy=decision.audit_policy,
    )


def _jwt_refused(request: InboundRequest, message: str, screened: _Screened) -> Verdict:
    """Envoy's jwt_authn local reply: 401 (403 for a refused audience), the message as the body,
    ``www-authenticate: Bearer realm="<scheme>://<host><path>", error="invalid_token"``."""
    host = next((v for k, v in request.headers if k == "host"), "")
    realm = f"{request.scheme}://{host}{request.target}".replace('"', "%22")
    status = 403 if message == _AUDIENCE_REFUSED else 401
    return Verdict(
        status,
        message.encode(),
        (*_TEXT, ("www-authenticate", f'Bearer realm="{realm}", error="invalid_token"')),
        "jwt_authn_access_denied{" + message.replace(" ", "_") + "}",
        remove=screened.remove,
        trusted=screened.trusted,
        principal=screened.principal,
    )


# --------------------------------------------------------------------------- per config

_GUARDS: weakref.WeakKeyDictionary[Mesh, tuple[MeshConfig, InboundGuard | None]]
_GUARDS = weakref.WeakKeyDictionary()
_GUARDS_LOCK = threading.Lock()


def guard_of(mesh: Mesh) -> InboundGuard | None:
    """The guard of ``mesh``'s config in force (made once per config); None when nothing of
    inbound security applies to the workload."""
    config = mesh.config
    known = _GUARDS.get(mesh)
    if known is not None and known[0] is config:
        return known[1]
    with _GUARDS_LOCK:
        known = _GUARDS.get(mesh)
        if known is None or known[0] is not config:
            known = (config, build_guard(mesh, config))
            _GUARDS[mesh] = known
    return known[1]


def build_guard(mesh: Mesh, config: MeshConfig) -> InboundGuard | None:
    """Compile the inbound security of ``config`` for ``mesh``'s workload."""
    service = config.service
    kinds = {r.kind for r in config.resources}
    inbound = service.inbound
    if (
        "AuthorizationPolicy" not in kinds
        and "RequestAuthentication" not in kinds
        and service.identity is None
        and inbound is None
    ):
        return None
    authorizer = _authorizer(config)
    authenticator = _authenticator(mesh, config)
    trust_everyone = inbound is None or inbound.trust_headers_from in (None, "any")
    if authorizer is None and authenticator is None and service.identity is None and trust_everyone:
        return None  # nothing to check, everyone trusted: as without security
    trust = inbound.trust_headers_from if inbound is not None else None
    settings = _Settings(
        trust_any=trust == "any" or (trust is None and service.identity is None),
        num_trusted_proxies=(inbound.num_trusted_proxies or 0) if inbound is not None else 0,
        normalization=(inbound.path_normalization if inbound is not None else None) or "BASE",
        propagate=frozenset(service.propagate_headers),
    )
    return InboundGuard(mesh, config, authorizer, authenticator, settings)


def _authorizer(config: MeshConfig) -> Authorizer | None:
    resources = config.of_kind("AuthorizationPolicy")
    if not resources:
        return None
    from meshlib.config.security import AuthorizationPolicy  # noqa: PLC0415
    from meshlib.security.authz import (  # noqa: PLC0415
        NamedPolicy,
        compile_authorization,
        policies_for,
    )

    service = config.service
    named = [
        NamedPolicy(r.name, r.namespace, r.spec)
        for r in resources
        if isinstance(r.spec, AuthorizationPolicy)
    ]
    applied = policies_for(
        named,
        namespace=service.namespace,
        labels=service.labels,
        root_namespace=service.root_namespace,
        services=[service.name],
    )
    if not applied:
        return None
    return compile_authorization(applied)


def _authenticator(mesh: Mesh, config: MeshConfig) -> RequestAuthenticator | None:
    resources = config.of_kind("RequestAuthentication")
    if not resources:
        return None
    from meshlib.config.security import (  # noqa: PLC0415
        AuthorizationPolicy,
        RequestAuthentication,
    )
    from meshlib.security.authz import NamedPolicy, policies_for  # noqa: PLC0415
    from meshlib.security.jwks import JwksFetcher  # noqa: PLC0415
    from meshlib.security.jwt import compile_request_authentication  # noqa: PLC0415

    service = config.service
    # RequestAuthentication applies to a workload by the rules of AuthorizationPolicy
    # (namespace, selector, targetRefs): ask policies_for with the same scope.
    specs: dict[str, RequestAuthentication] = {}
    scopes: list[NamedPolicy] = []
    for r in resources:
        if not isinstance(r.spec, RequestAuthentication):
            continue
        spec = r.spec
        specs[f"{r.namespace}/{r.name}"] = spec
        scope = AuthorizationPolicy.model_construct(
            selector=spec.selector, target_ref=spec.target_ref, target_refs=spec.target_refs
        )
        scopes.append(NamedPolicy(r.name, r.namespace, scope))
    applied = policies_for(
        scopes,
        namespace=service.namespace,
        labels=service.labels,
        root_namespace=service.root_namespace,
        services=[service.name],
    )
    rules = [rule for p in applied for rule in specs[p.key].jwt_rules or ()]
    if not rules:
        return None
    fetcher = None
    if any(rule.jwks_uri and not rule.jwks for rule in rules):
        # Through the mesh: routed, retried and reported like any outbound call.
        fetcher = JwksFetcher(mesh.client(), mesh.async_client(), clock=mesh.clock)
    return compile_request_authentication(rules, fetcher=fetcher, clock=mesh.clock)


# --------------------------------------------------------------------------- applying a verdict


def apply_to_asgi_scope(scope: dict[str, Any] | Any, verdict: Verdict) -> Any:
    """A copy of an ASGI scope with the verdict's path and header changes (``scope`` itself
    when there are none)."""
    if verdict.path is None and not verdict.remove and not verdict.add:
        return scope
    scope = dict(scope)
    if verdict.remove or verdict.add:
        remove = {n.encode("latin-1") for n in verdict.remove}
        headers = [(k, v) for k, v in scope.get("headers") or () if k.lower() not in remove]
        added = {n.encode("latin-1") for n, _ in verdict.add}
        headers = [(k, v) for k, v in headers if k.lower() not in added]
        # a claim's value as Envoy puts it there: its UTF-8 bytes
        headers += [(n.encode("latin-1"), v.encode("utf-8")) for n, v in verdict.add]
        scope["headers"] = headers
    if verdict.path is not None:
        scope["raw_path"] = verdict.path.encode("latin-1")
        scope["path"] = unquote(verdict.path)
    return scope


def environ_key(name: str) -> str:
    if name in ("content-length", "content-type"):
        return name.upper().replace("-", "_")
    return "HTTP_" + name.upper().replace("-", "_")


def apply_to_environ(environ: dict[str, Any], verdict: Verdict) -> None:
    """The verdict's path and header changes, made in a WSGI environ."""
    for name in verdict.remove:
        environ.pop(environ_key(name), None)
    for name, value in verdict.add:  # PEP 3333: the UTF-8 bytes, as Latin-1 text
        environ[environ_key(name)] = value.encode("utf-8").decode("latin-1")
    if verdict.path is not None:
        script = environ.get("SCRIPT_NAME", "") or ""
        path = unquote(verdict.path, encoding="latin-1")
        if script and path.startswith(script):
            path = path[len(script) :]
        environ["PATH_INFO"] = path
        for key in ("REQUEST_URI", "RAW_URI"):
            if isinstance(environ.get(key), str):
                query = environ.get("QUERY_STRING") or ""
                environ[key] = verdict.path + (f"?{query}" if query else "")


def headers_of_environ(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A WSGI environ's request headers, lower-case names."""
    found: list[tuple[str, str]] = []
    for key, value in environ.items():
        if not isinstance(value, str):
            continue
        if key.startswith("HTTP_"):
            found.append((key[5:].lower().replace("_", "-"), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            found.append((key.lower().replace("_", "-"), value))
    return found


def admin_token(config: MeshConfig) -> str | None:
    """The admin token: ``spec.admin.token``, else ``$MESHLIB_ADMIN_TOKEN``; None without."""
    admin = config.service.admin
    if admin is not None and admin.token:
        return admin.token
    return os.environ.get("MESHLIB_ADMIN_TOKEN") or None


__all__ = [
    "DENIED_BODY",
    "InboundGuard",
    "InboundRequest",
    "Verdict",
    "admin_token",
    "apply_to_asgi_scope",
    "apply_to_environ",
    "build_guard",
    "guard_of",
    "headers_of_environ",
]
