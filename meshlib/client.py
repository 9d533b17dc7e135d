"""``from meshlib import client``: outbound calls through the process's default mesh.

```python
from meshlib import client

response = client.get("http://reviews:9080/reviews/0")       # routed, retried, traced

with client.Client(timeout=3.0) as http:                      # an httpx.Client
    http.get("http://ratings/ratings/0")

async with client.AsyncClient() as http:                      # an httpx.AsyncClient
    await http.get("http://details/details/0")
```

The default mesh is built on first use from ``$MESH_CONFIG``, else ``./mesh.yaml``; with neither,
it is an empty mesh that passes every call through to the host named (with Istio's default
retries on connect failures and 503s). ``meshlib.configure(...)`` replaces
it (a path, several paths, or a ``Mesh``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import httpx

from meshlib.mesh import Mesh

if TYPE_CHECKING:
    import aiohttp
    import requests

    from meshlib.clients.aiohttp import MeshMiddleware

log = logging.getLogger("meshlib")

DEFAULT_CONFIG = "mesh.yaml"
CONFIG_ENV = "MESH_CONFIG"

_lock = threading.Lock()
_mesh: Mesh | None = None
_shared: httpx.Client | None = None


def default_mesh() -> Mesh:
    """The process's default mesh, built on first use."""
    global _mesh  # noqa: PLW0603 - the one explicit, replaceable default instance
    mesh = _mesh
    if mesh is not None:
        return mesh
    with _lock:
        if _mesh is None:
            _mesh = _load_default()
        return _mesh


def _load_default() -> Mesh:
    path = os.environ.get(CONFIG_ENV)
    if path:
        return Mesh.from_files([p for p in path.split(os.pathsep) if p])
    if os.path.exists(DEFAULT_CONFIG):
        return Mesh.from_file(DEFAULT_CONFIG)
    log.info("no %s and no $%s: meshlib passes calls through", DEFAULT_CONFIG, CONFIG_ENV)
    return Mesh.from_yaml("", name="<empty>")


def configure(config: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Mesh) -> Mesh:
    """Replace the default mesh: a config path, several paths, or a ready ``Mesh``."""
    global _mesh, _shared
    if isinstance(config, Mesh):
        mesh = config
    elif isinstance(config, (str, os.PathLike)):
        mesh = Mesh.from_file(config)
    else:
        mesh = Mesh.from_files(list(config))
    with _lock:
        old, _mesh, _shared = _shared, mesh, None
    if old is not None:
        old.close()
    return mesh


def Client(**kwargs: Any) -> httpx.Client:  # noqa: N802 - reads as the class it returns
    """An ``httpx.Client`` whose transport is the default mesh (see ``Mesh.client``)."""
    return default_mesh().client(**kwargs)


def AsyncClient(**kwargs: Any) -> httpx.AsyncClient:  # noqa: N802 - reads as the class it returns
    """An ``httpx.AsyncClient`` whose transport is the default mesh (``Mesh.async_client``)."""
    return default_mesh().async_client(**kwargs)


def requests_session() -> requests.Session:
    """A ``requests.Session`` through the default mesh (``Mesh.requests_session``)."""
    return default_mesh().requests_session()


def aiohttp_middleware() -> MeshMiddleware:
    """The default mesh as an aiohttp client middleware (``Mesh.aiohttp_middleware``)."""
    return default_mesh().aiohttp_middleware()


def aiohttp_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` through the default mesh (``Mesh.aiohttp_session``)."""
    return default_mesh().aiohttp_session(**kwargs)


def _client() -> httpx.Client:
    global _shared  # noqa: PLW0603 - one pooled client behind the module-level functions
    shared = _shared
    if shared is not None:
        return shared
    mesh = default_mesh()
    with _lock:
        if _shared is None:
            _shared = mesh.client()
        return _shared


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send one request through the default mesh (a shared, pooled client)."""
    return _client().request(method, url, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return request("GET", url, **kwargs)


def head(url: str, **kwargs: Any) -> httpx.Response:
    return request("HEAD", url, **kwargs)


def options(url: str, **kwargs: Any) -> httpx.Response:
    return request("OPTIONS", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> httpx.Response:
    return request("PUT", url, **kwargs)


def patch(url: str, **kwargs: Any) -> httpx.Response:
    return request("PATCH", url, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    return request("DELETE", url, **kwargs)


def stream(method: str, url: str, **kwargs: Any) -> AbstractContextManager[httpx.Response]:
    """Stream a response: ``with client.stream("GET", url) as response: ...``."""
    return _client().stream(method, url, **kwargs)


__all__ = [
    "AsyncClient",
    "Client",
    "aiohttp_middleware",
    "aiohttp_session",
    "configure",
    "default_mesh",
    "delete",
    "get",
    "head",
    "options",
    "patch",
    "post",
    "put",
    "request",
    "requests_session",
    "stream",
]
