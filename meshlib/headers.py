"""Deprecated alias: ``meshlib.headers`` moved to ``meshlib.clients.httpx.headers``
(``carriable`` and ``number`` to ``meshlib.pipeline.headers``).

It re-exports the names it held and warns once, when imported; it goes away in a future
release. ``import meshlib`` does not load it.
"""

import warnings
from typing import Any

from meshlib.clients.httpx import headers as _new
from meshlib.clients.httpx.headers import (
    Entry,
    entries,
    with_entries,
)
from meshlib.pipeline import headers as _pipeline_headers
from meshlib.pipeline.headers import (
    carriable,
    number,
)

__all__ = [
    "Entry",
    "carriable",
    "entries",
    "number",
    "with_entries",
]

_NEW = (
    _new,
    _pipeline_headers,
)

warnings.warn(
    "meshlib.headers is deprecated: import from meshlib.clients.httpx.headers "
    "(carriable, number: meshlib.pipeline.headers) instead",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the module it moved to."""
    for module in _NEW:
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module 'meshlib.headers' has no attribute {name!r}")
