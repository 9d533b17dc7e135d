"""Istio's security resources (``security.istio.io`` ``v1`` and ``v1beta1``), with Istio's field
names: AuthorizationPolicy, PeerAuthentication and RequestAuthentication.

The messages are istio/api's ``security/v1beta1/*.proto`` (``v1`` is the same schema) and the
shared ``type/v1beta1`` ones (``WorkloadSelector``, ``PolicyTargetReference``). As in
``meshlib.config.model``, each YAML key is Istio's camelCase name and the Python attribute its
snake_case twin, and a field not given stays ``None``: an AuthorizationPolicy without ``rules``
(allow nothing) is not one with ``rules: []``, nor ``from`` absent one with ``from: []``.

The models check the shape (known fields, types, enums, required fields); the rules of Istio's
webhook and of its CRD schema (value formats, lengths, how fields combine) are in
``meshlib.config.validation.security``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from meshlib.config.model import SPEC_MODELS, Duration, Model, WorkloadSelector

__all__ = [
    "SECURITY_MODELS",
    "AuthorizationAction",
    "AuthorizationPolicy",
    "ClaimToHeader",
    "Condition",
    "ExtensionProvider",
    "JWTHeader",
    "JWTPresence",
    "JWTRule",
    "MutualTLS",
    "MutualTLSMode",
    "Operation",
    "PeerAuthentication",
    "PolicyTargetReference",
    "RequestAuthentication",
    "Rule",
    "RuleFrom",
    "RuleTo",
    "Source",
    "WorkloadSelector",
]

# --------------------------------------------------------------------------- shared


class PolicyTargetReference(Model):
    """``type.v1beta1.PolicyTargetReference``: the resource a policy attaches to (a Service, a
    ServiceEntry, a Gateway API Gateway or GatewayClass), in the policy's own namespace.
    ``group`` empty means the core group."""

    group: str | None = None
    kind: str
    name: str
    namespace: str | None = None


# --------------------------------------------------------------------------- AuthorizationPolicy

AuthorizationAction = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]


class Source(Model):
    """``from.source``: who sends the request. Each field set must match (AND); the values of
    one field are alternatives (OR); ``not*`` fields exclude. Values are exact, ``prefix*``,
    ``*suffix`` or ``*`` (present), except ``ipBlocks`` (IPs and CIDRs) and ``serviceAccounts``
    (``sa`` or ``namespace/sa``, no wildcard)."""

    principals: list[str] | None = None
    not_principals: list[str] | None = None
    request_principals: list[str] | None = None
    not_request_principals: list[str] | None = None
    namespaces: list[str] | None = None
    not_namespaces: list[str] | None = None
    service_accounts: list[str] | None = None
    not_service_accounts: list[str] | None = None
    ip_blocks: list[str] | None = None
    not_ip_blocks: list[str] | None = None
    remote_ip_blocks: list[str] | None = None
    not_remote_ip_blocks: list[str] | None = None
    trust_domains: list[str] | None = None
    not_trust_domains: list[str] | None = None


class Operation(Model):
    """``to.operation``: what the request asks for. Ports are strings (``"8080"``); paths may
    use the templates ``{*}`` (one segment) and ``{**}`` (the rest)."""

    hosts: list[str] | None = None
    not_hosts: list[str] | None = None
    ports: list[str] | None = None
    not_ports: list[str] | None = None
    methods: list[str] | None = None
    not_methods: list[str] | None = None
    paths: list[str] | None = None
    not_paths: list[str] | None = None


class RuleFrom(Model):
    """One entry of ``from`` (Istio's ``Rule.From``)."""

    source: Source | None = None


class RuleTo(Model):
    """One entry of ``to`` (Istio's ``Rule.To``)."""

    operation: Operation | None = None


class Condition(Model):
    """One ``when`` condition: an attribute ``key`` (``request.headers[x-token]``,
    ``source.ip``, ``request.auth.claims[iss]``, …) and the values it must (not) have."""

    key: str
    values: list[str] | None = None
    not_values: list[str] | None = None


class Rule(Model):
    """A rule matches when any ``from`` entry, any ``to`` entry and every ``when`` condition
    match; a part not given matches anything (``rules: [{}]`` matches every request)."""

    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] | None = None


class ExtensionProvider(Model):
    """``provider``: the external authorizer of a CUSTOM policy, by its mesh-config name."""

    name: str | None = None


class AuthorizationPolicy(Model):
    """Access control on workloads. At most one of ``selector``, ``targetRef``,
    ``targetRefs``; none means every workload of the namespace (of the mesh in the root
    namespace). ``action`` not given is ALLOW; an ALLOW policy without ``rules`` allows
    nothing."""

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] | None = None
    rules: list[Rule] | None = None
    action: AuthorizationAction | None = None
    provider: ExtensionProvider | None = None


# --------------------------------------------------------------------------- PeerAuthentication

MutualTLSMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTLS(Model):
    """``mtls``: what a workload accepts. ``UNSET`` (or not given) inherits from the parent
    policy (namespace, then mesh; PERMISSIVE when none)."""

    mode: MutualTLSMode | None = None


def _port_key(value: Any) -> Any:
    """A ``portLevelMtls`` key: a port number, which YAML gives as a string (``"8080"``) as
    Kubernetes does (a JSON object's keys are strings). Istio reads it as a uint32; its range
    is checked with Istio's message in ``meshlib.config.validation``."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
        if number <= 0xFFFFFFFF:
            return number
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"port {value!r} is not a port number (write e.g. '8080')")


PortKey = Annotated[int, BeforeValidator(_port_key)]


class PeerAuthentication(Model):
    """The mutual TLS mode a workload accepts, per workload (``selector``), per namespace, or
    for the mesh (root namespace); ``portLevelMtls`` overrides it per port (workload policies
    only)."""

    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: dict[PortKey, MutualTLS] | None = None


# --------------------------------------------------------------------------- RequestAuthentication


class JWTHeader(Model):
    """A header a JWT is read from: ``name``, and the ``prefix`` before the token
    (``"Bearer "``)."""

    name: str
    prefix: str | None = None


class ClaimToHeader(Model):
    """``outputClaimToHeaders`` entry: copy a verified token's ``claim`` into ``header``."""

    header: str
    claim: str


JWTPresence = Literal["OPTIONAL", "REQUIRED"]


class JWTRule(Model):
    """How to verify one issuer's JWTs. Keys come from ``jwksUri`` or inline ``jwks`` (at most
    one; neither: discovered from the issuer's OpenID configuration). Tokens are read from
    ``fromHeaders``, ``fromParams`` and ``fromCookies`` (none given: the ``Authorization:
    Bearer`` header and the ``access_token`` query parameter)."""

    issuer: str | None = None
    audiences: list[str] | None = None
    jwks_uri: str | None = None
    jwks: str | None = None
    from_headers: list[JWTHeader] | None = None
    from_params: list[str] | None = None
    from_cookies: list[str] | None = None
    output_payload_to_header: str | None = None
    forward_original_token: bool | None = None
    output_claim_to_headers: list[ClaimToHeader] | None = None
    timeout: Duration | None = None
    space_delimited_claims: list[str] | None = None
    presence: JWTPresence | None = None

    @model_validator(mode="before")
    @classmethod
    def _jwks_uri_spellings(cls, data: Any) -> Any:
        """The CRD takes the proto's own name ``jwks_uri`` as well as ``jwksUri``: one only."""
        if isinstance(data, dict) and "jwksUri" in data and "jwks_uri" in data:
            raise ValueError("only one of jwks or jwksUri can be set (jwksUri and jwks_uri given)")
        return data


class RequestAuthentication(Model):
    """Which end-user JWTs a workload accepts. A request with an invalid token is rejected; one
    without a token is not (it has no request principal: an AuthorizationPolicy decides)."""

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] | None = None
    jwt_rules: list[JWTRule] | None = None


#: The ``security.istio.io`` kinds and their spec models.
SECURITY_MODELS: dict[str, type[Model]] = {
    "AuthorizationPolicy": AuthorizationPolicy,
    "PeerAuthentication": PeerAuthentication,
    "RequestAuthentication": RequestAuthentication,
}
SPEC_MODELS.update(SECURITY_MODELS)  # the loader reads every kind's model there
