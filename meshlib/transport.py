"""Deprecated alias: ``meshlib.transport`` moved to ``meshlib.clients.httpx.transport``.

It re-exports the names it held and warns once, when imported; it goes away in a future
release. ``import meshlib`` does not load it.
"""

import warnings
from typing import Any

from meshlib.clients.httpx import transport as _new
from meshlib.clients.httpx.transport import (
    FLAGS_HEADER,
    MESH_SUFFIX,
    PEER_IDENTITY,
    TIMEOUT_OVERRIDE_HEADER,
    AsyncMeshTransport,
    MeshInfo,
    MeshTransport,
    header_map,
    raise_for_mesh,
    view_of,
    with_endpoint,
)

__all__ = [
    "FLAGS_HEADER",
    "MESH_SUFFIX",
    "PEER_IDENTITY",
    "TIMEOUT_OVERRIDE_HEADER",
    "AsyncMeshTransport",
    "MeshInfo",
    "MeshTransport",
    "header_map",
    "raise_for_mesh",
    "view_of",
    "with_endpoint",
]

_NEW = (_new,)

warnings.warn(
    "meshlib.transport is deprecated: import from meshlib.clients.httpx.transport instead",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the module it moved to."""
    for module in _NEW:
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module 'meshlib.transport' has no attribute {name!r}")
