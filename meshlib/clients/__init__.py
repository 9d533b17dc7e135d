"""The mesh in each HTTP client, through that client's own extension point: one thin adapter
per client over the client-neutral core in ``meshlib.pipeline``.

Nothing is imported here: each adapter loads its client library only when it is used.
"""

from importlib import import_module
from typing import Any

#: the names ``meshlib/clients.py`` held, now in ``meshlib.clients.httpx.client``
_MOVED = frozenset({"MeshAsyncClient", "MeshClient", "URL_CACHE_SIZE"})


def __getattr__(name: str) -> Any:
    """The httpx clients' old home: deprecated, warns once per name."""
    if name not in _MOVED:
        raise AttributeError(f"module 'meshlib.clients' has no attribute {name!r}")
    import warnings  # noqa: PLC0415

    warnings.warn(
        f"meshlib.clients.{name} is deprecated: import it from meshlib.clients.httpx.client",
        DeprecationWarning,
        stacklevel=2,
    )
    value = getattr(import_module("meshlib.clients.httpx.client"), name)
    globals()[name] = value
    return value
