"""Deprecated alias: ``meshlib.aiohttp_transport`` moved to ``meshlib.clients.httpx.aiohttp``.

It re-exports the names it held and warns once, when imported; it goes away in a future
release. ``import meshlib`` does not load it.
"""

import warnings
from typing import Any

from meshlib.clients.httpx import aiohttp as _new
from meshlib.clients.httpx.aiohttp import (
    AiohttpResponseStream,
    AiohttpTransport,
)

__all__ = [
    "AiohttpResponseStream",
    "AiohttpTransport",
]

_NEW = (_new,)

warnings.warn(
    "meshlib.aiohttp_transport is deprecated: import from meshlib.clients.httpx.aiohttp instead",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the module it moved to."""
    for module in _NEW:
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module 'meshlib.aiohttp_transport' has no attribute {name!r}")
