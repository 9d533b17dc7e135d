"""meshlib: an in-process service mesh for Python, speaking Istio's resource language.

``import meshlib`` loads nothing but this module (and ``meshlib.version``): each name below loads
its module on first use (``meshlib.Mesh``, ``from meshlib import Mesh``), and so does each
submodule read as an attribute (``meshlib.context.wrap(fn)``), so a program pays only for what it
uses — ``serve`` and ``serve_wsgi`` load uvicorn, ``Mesh`` the config machinery and httpx, the
errors no HTTP client library (each client adapter raises its own subclasses of them, see
``meshlib.errors``).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from meshlib.version import __version__

if TYPE_CHECKING:
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
    from meshlib.server.runner import serve, serve_wsgi

#: where each public name lives
_EXPORTS: dict[str, str] = {
    "configure": "meshlib.client",
    "MeshInfo": "meshlib.clients.httpx.transport",
    "raise_for_mesh": "meshlib.clients.httpx.transport",
    "CircuitOpenError": "meshlib.errors",
    "ConfigError": "meshlib.errors",
    "DeadlineExceeded": "meshlib.errors",
    "IdentityError": "meshlib.errors",
    "MeshError": "meshlib.errors",
    "MeshRequestError": "meshlib.errors",
    "NoHealthyUpstream": "meshlib.errors",
    "NoRouteError": "meshlib.errors",
    "PeerIdentityError": "meshlib.errors",
    "Problem": "meshlib.errors",
    "SpiffeIdError": "meshlib.errors",
    "UpstreamTLSError": "meshlib.errors",
    "Mesh": "meshlib.mesh",
    "RouteDecision": "meshlib.routing",
    "RouteRequest": "meshlib.routing",
    "RouteTable": "meshlib.routing",
    "handler": "meshlib.server",
    "serve": "meshlib.server.runner",
    "serve_wsgi": "meshlib.server.runner",
}

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


#: meshlib's own modules and packages, loaded on first use as attributes too
#: (``import meshlib; meshlib.context.wrap(fn)``) as ``import meshlib`` used to load them
_SUBMODULES = frozenset(
    {
        "aiohttp_transport",
        "balancing",
        "bookinfo",
        "cli",
        "client",
        "clients",
        "clock",
        "config",
        "context",
        "control",
        "dashboard",
        "deadline",
        "discovery",
        "errors",
        "headers",
        "httpcore_transport",
        "inner",
        "mesh",
        "mirror",
        "pipeline",
        "policies",
        "routing",
        "security",
        "server",
        "store",
        "telemetry",
        "testing",
        "transport",
        "version",
    }
)


def __getattr__(name: str) -> Any:
    """A public name, its module loaded on first use (and the name kept here after); or one of
    meshlib's submodules, imported (which binds it here)."""
    where = _EXPORTS.get(name)
    if where is None:
        if name in _SUBMODULES:
            return import_module(f"meshlib.{name}")
        raise AttributeError(f"module 'meshlib' has no attribute {name!r}")
    value = getattr(import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
