"""Which mutual TLS mode a workload accepts, per port: Istio's PeerAuthentication resolution.

This is what istiod does in ``ComposePeerAuthentication`` (``pilot/pkg/security/authn``) with
the policies ``getConfigsForWorkload`` (``pilot/pkg/model/authentication.go``) finds for a
workload:

1. The policies that apply: those in the workload's namespace and in the root namespace whose
   ``selector.matchLabels`` is a subset of the workload's labels (no selector, or an empty one,
   is a subset of anything).
2. Three levels: *mesh-wide* (root namespace, no selector), *namespace-wide* (the workload's
   namespace, no selector) and *workload* (a selector with labels, not in the root namespace:
   one there is ignored, as Istio ignores it). At each level one policy counts: the oldest in
   Istio (``creationTimestamp``); meshlib has no creation time and takes the *first loaded* (the
   order of the config files and of the documents in them).
3. Starting from PERMISSIVE, the mesh, then the namespace, then the workload policy sets the
   mode, each only when its ``mtls.mode`` is given and not ``UNSET`` (``UNSET`` inherits).
4. ``portLevelMtls`` of the workload policy only (a mesh- or namespace-wide one is refused by
   validation, and ignored here as Istio ignores it) gives a port its own mode; ``UNSET`` there
   inherits the workload's mode.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from meshlib.config.load import MeshConfig
from meshlib.config.security import MutualTLS, PeerAuthentication

__all__ = [
    "Mode",
    "PeerAuthenticationPolicy",
    "PeerAuthenticationResult",
    "peer_authentication_of",
    "resolve_peer_authentication",
]

Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
"""An effective mode: ``UNSET`` never is one (it inherits)."""

DEFAULT_MODE: Mode = "PERMISSIVE"


class PeerAuthenticationPolicy(Protocol):
    """A loaded PeerAuthentication: ``meshlib.config.load.Resource`` is one."""

    @property
    def name(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def spec(self) -> object: ...


@dataclass(frozen=True, slots=True)
class PeerAuthenticationResult:
    """The effective mode of a workload, with its per-port overrides and the policies chosen
    (``namespace/name`` per level, None when the level has none), for logs and explanations."""

    mode: Mode = DEFAULT_MODE
    per_port: Mapping[int, Mode] = field(default_factory=dict)
    mesh_policy: str | None = None
    namespace_policy: str | None = None
    workload_policy: str | None = None

    def mode_for_port(self, port: int) -> Mode:
        """The mode of ``port``: its ``portLevelMtls`` setting, else the workload's mode."""
        return self.per_port.get(port, self.mode)


def resolve_peer_authentication(
    policies: Iterable[PeerAuthenticationPolicy],
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
) -> PeerAuthenticationResult:
    """The effective PeerAuthentication of the workload in ``namespace`` with ``labels``
    (``policies`` in load order; resources of other kinds are skipped)."""
    mesh: PeerAuthenticationPolicy | None = None
    space: PeerAuthenticationPolicy | None = None
    workload: PeerAuthenticationPolicy | None = None
    for policy in policies:
        spec = policy.spec
        if not isinstance(spec, PeerAuthentication):
            continue
        if policy.namespace not in (namespace, root_namespace):
            continue
        selector = (spec.selector.match_labels if spec.selector is not None else None) or {}
        if any(labels.get(key) != value for key, value in selector.items()):
            continue
        if not selector:
            if policy.namespace == root_namespace:
                mesh = mesh or policy
            else:
                space = space or policy
        elif policy.namespace != root_namespace:
            workload = workload or policy

    mode: Mode = DEFAULT_MODE
    for chosen in (mesh, space, workload):
        if chosen is not None:
            mode = _mode_of(_spec(chosen).mtls) or mode
    per_port: dict[int, Mode] = {}
    if workload is not None:
        for port, setting in (_spec(workload).port_level_mtls or {}).items():
            per_port[port] = _mode_of(setting) or mode
    return PeerAuthenticationResult(
        mode=mode,
        per_port=per_port,
        mesh_policy=_name(mesh),
        namespace_policy=_name(space),
        workload_policy=_name(workload),
    )


def _spec(policy: PeerAuthenticationPolicy) -> PeerAuthentication:
    spec = policy.spec
    assert isinstance(spec, PeerAuthentication)
    return spec


def _mode_of(mtls: MutualTLS | None) -> Mode | None:
    """The mode a setting gives, or None when it inherits (absent, no mode, ``UNSET``)."""
    if mtls is None or mtls.mode is None or mtls.mode == "UNSET":
        return None
    return mtls.mode


def _name(policy: PeerAuthenticationPolicy | None) -> str | None:
    return None if policy is None else f"{policy.namespace}/{policy.name}"


def peer_authentication_of(config: MeshConfig) -> PeerAuthenticationResult:
    """The effective PeerAuthentication of the service a config describes (its namespace,
    labels and root namespace; the config's PeerAuthentications in load order)."""
    service = config.service
    return resolve_peer_authentication(
        config.of_kind("PeerAuthentication"),
        namespace=service.namespace,
        labels=service.labels,
        root_namespace=service.root_namespace,
    )
