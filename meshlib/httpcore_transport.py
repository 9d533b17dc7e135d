"""Deprecated alias: ``meshlib.httpcore_transport`` moved to ``meshlib.clients.httpx.httpcore``.

It re-exports the names it held and warns once, when imported; it goes away in a future
release. ``import meshlib`` does not load it.
"""

import warnings
from typing import Any

from meshlib.clients.httpx import httpcore as _new
from meshlib.clients.httpx.httpcore import (
    AsyncDeadlineBackend,
    AsyncHTTPCoreTransport,
    AsyncPoolTransport,
    DeadlineBackend,
    HTTPCoreTransport,
    PoolTransport,
)

__all__ = [
    "AsyncDeadlineBackend",
    "AsyncHTTPCoreTransport",
    "AsyncPoolTransport",
    "DeadlineBackend",
    "HTTPCoreTransport",
    "PoolTransport",
]

_NEW = (_new,)

warnings.warn(
    "meshlib.httpcore_transport is deprecated: import from meshlib.clients.httpx.httpcore instead",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the module it moved to."""
    for module in _NEW:
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module 'meshlib.httpcore_transport' has no attribute {name!r}")
