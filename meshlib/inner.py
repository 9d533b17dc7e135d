"""Deprecated alias: ``meshlib.inner`` moved to ``meshlib.clients.httpx.inner``.

It re-exports the names it held and warns once, when imported; it goes away in a future
release. ``import meshlib`` does not load it.
"""

import warnings
from typing import Any

from meshlib.clients.httpx import inner as _new
from meshlib.clients.httpx.inner import (
    ASYNC_TRANSPORT_ENV,
    ASYNC_TRANSPORTS,
    aiohttp_available,
    async_transport_name,
    new_async_transport,
)

__all__ = [
    "ASYNC_TRANSPORTS",
    "ASYNC_TRANSPORT_ENV",
    "aiohttp_available",
    "async_transport_name",
    "new_async_transport",
]

_NEW = (_new,)

warnings.warn(
    "meshlib.inner is deprecated: import from meshlib.clients.httpx.inner instead",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the module it moved to."""
    for module in _NEW:
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module 'meshlib.inner' has no attribute {name!r}")
