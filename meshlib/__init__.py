"""meshlib: an in-process service mesh for Python, speaking Istio's resource language."""

from meshlib.client import configure
from meshlib.errors import (
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    MeshError,
    MeshRequestError,
    NoHealthyUpstream,
    NoRouteError,
    Problem,
)
from meshlib.mesh import Mesh
from meshlib.routing import RouteDecision, RouteRequest, RouteTable
from meshlib.server import handler
from meshlib.transport import MeshInfo, raise_for_mesh

__version__ = "0.1.0"

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "Mesh",
    "MeshError",
    "MeshInfo",
    "MeshRequestError",
    "NoHealthyUpstream",
    "NoRouteError",
    "Problem",
    "RouteDecision",
    "RouteRequest",
    "RouteTable",
    "__version__",
    "configure",
    "handler",
    "raise_for_mesh",
]
