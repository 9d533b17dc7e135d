"""meshlib: an in-process service mesh for Python, speaking Istio's resource language."""

from typing import TYPE_CHECKING, Any

from meshlib.client import configure
from meshlib.clients.httpx.transport import MeshInfo, raise_for_mesh
from meshlib.errors import (
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    IdentityError,
    MeshError,
    MeshRequestError,
    NoHealthyUpstream,
    NoRouteError,
    PeerIdentityError,
    Problem,
    SpiffeIdError,
    UpstreamTLSError,
)
from meshlib.mesh import Mesh
from meshlib.routing import RouteDecision, RouteRequest, RouteTable
from meshlib.server import handler
from meshlib.version import __version__

if TYPE_CHECKING:
    from meshlib.server.runner import serve, serve_wsgi


__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "IdentityError",
    "Mesh",
    "MeshError",
    "MeshInfo",
    "MeshRequestError",
    "NoHealthyUpstream",
    "NoRouteError",
    "PeerIdentityError",
    "Problem",
    "RouteDecision",
    "RouteRequest",
    "RouteTable",
    "SpiffeIdError",
    "UpstreamTLSError",
    "__version__",
    "configure",
    "handler",
    "raise_for_mesh",
    "serve",
    "serve_wsgi",
]


def __getattr__(name: str) -> Any:
    """``serve`` and ``serve_wsgi`` load uvicorn: only when asked for."""
    if name in ("serve", "serve_wsgi"):
        from meshlib.server import runner  # noqa: PLC0415

        return getattr(runner, name)
    raise AttributeError(f"module 'meshlib' has no attribute {name!r}")
