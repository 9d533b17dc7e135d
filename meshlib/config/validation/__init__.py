"""Istio's own validation of each resource, after its shape is checked.

``meshlib.config.model`` checks the shape of a resource: known fields, types, ranges and the
one-of rules of each message. This package adds the rules Istio's validating webhook applies
(istio/istio ``pkg/config/validation``) and the CEL rules of Istio's CRD schemas (istio/api):
hosts, names, header names and values, how fields combine. Each kind has one module with one
``check`` function returning every finding: an error rejects the file, a warning is reported as
Istio's ``istioctl validate`` reports its warnings, and the resource still loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshlib.config import model as m
from meshlib.config.validation import destination_rule, security, service_entry, virtual_service
from meshlib.config.validation.findings import Finding

__all__ = ["Finding", "check"]

Check = Callable[[Any, m.Metadata], list[Finding]]

_CHECKS: dict[str, Check] = {
    "VirtualService": virtual_service.check,
    "DestinationRule": destination_rule.check,
    "ServiceEntry": service_entry.check,
    "AuthorizationPolicy": security.check_authorization_policy,
    "PeerAuthentication": security.check_peer_authentication,
    "RequestAuthentication": security.check_request_authentication,
}


def check(kind: str, spec: m.Model, metadata: m.Metadata) -> list[Finding]:
    """Every finding of Istio's validation of one resource whose shape is valid."""
    checker = _CHECKS.get(kind)
    return checker(spec, metadata) if checker is not None else []
