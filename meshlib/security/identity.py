"""SPIFFE IDs: the names of workload identities, as Istio writes them.

A workload's identity is ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``; Istio's
*principal* (what AuthorizationPolicy's ``principals`` lists) is the same without ``spiffe://``.

Parsing is strict: only that exact shape is an identity. The trust domain is a DNS name of
lowercase labels (Istio's ``ValidateTrustDomain``, without the trailing dot it tolerates), the
namespace a Kubernetes namespace name (a DNS-1123 label) and the service account a Kubernetes
object name (a DNS-1123 subdomain). Those rules leave no room for empty segments, ``.`` or ``..``,
percent-encoding, upper case, ports, user info, queries, fragments or non-ASCII look-alikes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshlib.errors import SpiffeIdError

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"
"""Istio's default trust domain."""

MAX_URI_LENGTH = 2048
"""The SPIFFE specification's bound on a SPIFFE ID, in bytes."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TRUST_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
_NAMESPACE = re.compile(_LABEL, re.ASCII)
_SERVICE_ACCOUNT = _TRUST_DOMAIN  # a DNS-1123 subdomain: dot-separated DNS-1123 labels
_MAX_TRUST_DOMAIN = 253
_MAX_NAMESPACE = 63
_MAX_SERVICE_ACCOUNT = 253
_LABEL_RULE = "a DNS-1123 label (lowercase letters, digits and '-', alphanumeric at both ends)"
_SUBDOMAIN_RULE = "a DNS-1123 subdomain (DNS-1123 labels joined by '.')"


def check_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` when it is a valid trust domain; raise ``SpiffeIdError`` if not."""
    if not isinstance(trust_domain, str):
        raise SpiffeIdError(f"a trust domain must be a string, not {type(trust_domain).__name__}")
    if not 0 < len(trust_domain) <= _MAX_TRUST_DOMAIN or not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise SpiffeIdError(
            f"invalid trust domain {_show(trust_domain)}: write a DNS name of lowercase letters, "
            "digits, '-' and '.', at most 253 characters (e.g. 'cluster.local')"
        )
    return trust_domain


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A workload identity: ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``.

    Construction validates every part, so a ``SpiffeId`` that exists is a valid one.
    """

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        for name, value, pattern, limit, what in (
            ("namespace", self.namespace, _NAMESPACE, _MAX_NAMESPACE, _LABEL_RULE),
            (
                "service account",
                self.service_account,
                _SERVICE_ACCOUNT,
                _MAX_SERVICE_ACCOUNT,
                _SUBDOMAIN_RULE,
            ),
        ):
            if not isinstance(value, str):
                raise SpiffeIdError(f"a {name} must be a string, not {type(value).__name__}")
            if not 0 < len(value) <= limit or not pattern.fullmatch(value):
                raise SpiffeIdError(
                    f"invalid {name} {_show(value)}: must be {what}, at most {limit} characters"
                )

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse exactly ``spiffe://<td>/ns/<namespace>/sa/<service-account>``.

        Raises ``SpiffeIdError`` (a ``ValueError``) for anything else, saying what is wrong.
        """
        if not isinstance(uri, str):
            raise SpiffeIdError(f"a SPIFFE ID must be a string, not {type(uri).__name__}")
        if len(uri) > MAX_URI_LENGTH:
            raise SpiffeIdError(
                f"SPIFFE ID too long: {len(uri)} characters, at most {MAX_URI_LENGTH}"
            )
        if not uri.startswith(SCHEME):
            raise SpiffeIdError(
                f"not a SPIFFE ID: {_show(uri)}: must start with {SCHEME!r} "
                "(spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
            )
        trust_domain, slash, path = uri[len(SCHEME) :].partition("/")
        parts = path.split("/")
        if not slash or len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise SpiffeIdError(
                f"not a workload SPIFFE ID: {_show(uri)}: the path must be exactly "
                "/ns/<namespace>/sa/<service-account>"
            )
        return cls(check_trust_domain(trust_domain), parts[1], parts[3])

    @classmethod
    def from_principal(cls, principal: str) -> SpiffeId:
        """Parse Istio's principal form, ``<td>/ns/<namespace>/sa/<service-account>``."""
        if not isinstance(principal, str):
            raise SpiffeIdError(f"a principal must be a string, not {type(principal).__name__}")
        if principal.startswith(SCHEME):
            raise SpiffeIdError(f"a principal is written without {SCHEME!r}: {_show(principal)}")
        return cls.parse(SCHEME + principal)

    @property
    def uri(self) -> str:
        """``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""
        return f"{SCHEME}{self.principal}"

    @property
    def principal(self) -> str:
        """Istio's principal: the URI without ``spiffe://``."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri


def _show(value: str, limit: int = 80) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters (hostile input can be long)."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + f"... ({len(value)} characters)"


__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "MAX_URI_LENGTH",
    "SCHEME",
    "SpiffeId",
    "check_trust_domain",
]
