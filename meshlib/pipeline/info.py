"""What the mesh tells a caller about a call (``MeshInfo``), the headers it speaks through, and
the small shared values every attempt passes around."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from meshlib.discovery import Endpoint
from meshlib.routing import CLUSTER_DOMAIN, RouteDecision, route_label

__all__ = [
    "FLAGS_HEADER",
    "FREE_LEASE",
    "MESH_SUFFIX",
    "NO_TICKET",
    "PEER_IDENTITY",
    "REASON_PHRASES",
    "TIMEOUT_OVERRIDE_HEADER",
    "FreeLease",
    "MeshInfo",
    "plain_info",
]

#: The response header that says what the mesh did (Envoy's response flags): the mesh's alone.
FLAGS_HEADER = "x-mesh-response-flags"
#: A caller's per-call route timeout in milliseconds (Envoy's header; removed before sending).
TIMEOUT_OVERRIDE_HEADER = "x-envoy-upstream-rq-timeout-ms"
#: The reason phrase of each status the standard library knows, for the status line of a reply of
#: the mesh's own ("" for another status).
REASON_PHRASES: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
#: The suffix of the mesh's own service names (``reviews.default.svc.cluster.local``).
MESH_SUFFIX = "." + CLUSTER_DOMAIN
#: ``get_extra_info`` key of a connection verified by ``meshlib.security.outbound``: the peer's
#: verified identity (its SPIFFE ID under ISTIO_MUTUAL), or None.
PEER_IDENTITY = "meshlib.peer_identity"


@dataclass(frozen=True, slots=True)
class MeshInfo:
    """What the mesh did with a request (httpx: ``response.extensions["mesh"]``; requests:
    ``response.mesh``)."""

    decision: RouteDecision
    endpoint: str | None
    attempts: int
    flags: str
    local_reply: bool = False  # the mesh answered without a response from upstream
    #: the TLS the answering attempt was sent with (``SIMPLE``, ``MUTUAL``, ``ISTIO_MUTUAL``);
    #: None: plain text (or the app's own ``https://``)
    tls: str | None = None
    #: the upstream's verified identity: its SPIFFE ID under ISTIO_MUTUAL (a matched SAN under
    #: SIMPLE/MUTUAL with ``subjectAltNames``), else None
    peer_identity: str | None = None

    @property
    def mtls(self) -> bool:
        """Whether the answering attempt was sent with mutual TLS."""
        return self.tls in ("MUTUAL", "ISTIO_MUTUAL")

    @property
    def route(self) -> str:
        return route_label(self.decision)


#: The MeshInfo of plain calls (one attempt, no flags), by decision and endpoint: immutable,
#: so every such call through the same route to the same endpoint shares one.
_PLAIN_INFOS: dict[tuple[int, int], tuple[RouteDecision, Endpoint, MeshInfo]] = {}


def plain_info(decision: RouteDecision, endpoint: Endpoint) -> MeshInfo:
    key = (id(decision), id(endpoint))
    found = _PLAIN_INFOS.get(key)
    if found is not None and found[0] is decision and found[1] is endpoint:
        return found[2]
    info = MeshInfo(decision, endpoint.address, 1, "", False)
    if len(_PLAIN_INFOS) >= 4096:
        _PLAIN_INFOS.clear()
    _PLAIN_INFOS[key] = (decision, endpoint, info)
    return info


class FreeLease:
    """The pool slot of a destination without pool limits: nothing to hold or give back."""

    __slots__ = ()

    def release(self) -> None:
        pass


FREE_LEASE = FreeLease()


class _NoTicket:
    """The breaker ticket of a destination without a breaker: settles nothing."""

    __slots__ = ()

    def record(self, status: int | None, error_kind: str | None) -> bool:
        return False

    def abandon(self) -> None:
        pass


NO_TICKET = _NoTicket()
