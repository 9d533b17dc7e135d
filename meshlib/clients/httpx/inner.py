"""Which inner transport an async mesh client sends through.

``"aiohttp"`` is ``meshlib.clients.httpx.aiohttp.AiohttpTransport`` (the ``meshlib[aiohttp]``
extra), ``"httpx"`` is ``httpx.AsyncHTTPTransport`` (as ``AsyncHTTPCoreTransport``, whose waits
end by the call's deadline: ``meshlib.deadline``). The choice, first found wins:
``Mesh(async_transport=...)`` (a name, or a transport object), then ``$MESHLIB_ASYNC_TRANSPORT``,
then aiohttp if it is installed, else httpx.
"""

from __future__ import annotations

import importlib.util
import os

import httpx

ASYNC_TRANSPORT_ENV = "MESHLIB_ASYNC_TRANSPORT"
ASYNC_TRANSPORTS = ("aiohttp", "httpx")


def aiohttp_available() -> bool:
    return importlib.util.find_spec("aiohttp") is not None


def async_transport_name(name: str | None = None) -> str:
    """The inner transport's name: ``name`` if given, else ``$MESHLIB_ASYNC_TRANSPORT``, else
    the default. Raises ``ValueError`` for an unknown name and ``ImportError`` for aiohttp when
    it is not installed."""
    source = "async_transport"
    if not name:
        name, source = os.environ.get(ASYNC_TRANSPORT_ENV, "").strip(), f"${ASYNC_TRANSPORT_ENV}"
    if not name:
        return "aiohttp" if aiohttp_available() else "httpx"
    chosen = name.strip().lower()
    if chosen not in ASYNC_TRANSPORTS:
        raise ValueError(
            f"{source}={name!r}: not an async transport; use one of {', '.join(ASYNC_TRANSPORTS)}"
        )
    if chosen == "aiohttp" and not aiohttp_available():
        raise ImportError(
            f"{source}={name!r} needs aiohttp: pip install 'meshlib[aiohttp]'", name="aiohttp"
        )
    return chosen


def new_async_transport(name: str | None = None) -> httpx.AsyncBaseTransport:
    """A new inner transport of the chosen kind (see ``async_transport_name``)."""
    if async_transport_name(name) == "aiohttp":
        from meshlib.clients.httpx.aiohttp import AiohttpTransport  # noqa: PLC0415 - optional extra

        return AiohttpTransport()
    from meshlib.clients.httpx.httpcore import AsyncHTTPCoreTransport  # noqa: PLC0415 - httpcore

    return AsyncHTTPCoreTransport()
