"""The client stacks ``bench.compare`` sets side by side, each ready to make one call.

A stack is one way of making the same request: bare httpx, bare aiohttp, httpx inside an
OpenTelemetry span, the hand-wired stack a team writes without a mesh (tenacity + pybreaker +
a span with ``inject``), meshlib with Bookinfo's rules (tracing off and on, on httpx's or
aiohttp's inner transport) and bare httpx through HAProxy. ``build_sync`` and ``build_async``
return a ``Built``: ``call()`` makes one request, reads the whole body and returns the status
(0 for an exception); ``close()`` releases the client.

Every import beyond the standard library happens inside the builder that needs it: the peak-RSS
child process of a stack loads only what that stack loads.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

#: Bookinfo's reviews service, as the meshlib stacks address it; the mesh routes it upstream.
MESH_BASE = "http://reviews:9080"
PATH = "/reviews/0"
#: alice: the VirtualService's header match (jason) is tried, the weighted route (v1/v3) taken.
HEADERS = {"end-user": "alice", "accept": "application/json"}
KEEPALIVE_S = 300.0  # idle connections outlive the other stacks' blocks
MAX_CONNECTIONS = 100  # httpx's and aiohttp's default


@dataclass(frozen=True)
class Stack:
    key: str
    label: str
    sync: bool
    note: str = ""


STACKS: dict[str, Stack] = {
    s.key: s
    for s in (
        Stack("httpx", "httpx", True, "bare httpx.Client: the baseline"),
        Stack("httpx-aa", "httpx (A/A)", True, "a second bare httpx.Client: the noise floor"),
        Stack("otel", "httpx + OTel span", True, "a CLIENT span and inject() around each call"),
        Stack("hand", "hand-wired", True, "tenacity + pybreaker + OTel span and inject()"),
        Stack("meshlib", "meshlib", True, "Bookinfo rules, tracing off"),
        Stack(
            "meshlib-stock",
            "meshlib on stock httpx",
            True,
            "the same mesh in a stock httpx.Client on httpx.HTTPTransport: the mesh's own cost",
        ),
        Stack("meshlib-traced", "meshlib traced", True, "Bookinfo rules, tracing on"),
        Stack("haproxy", "httpx via HAProxy", True, "bare httpx.Client through one HAProxy hop"),
        Stack("requests", "requests", True, "bare requests.Session: the requests baseline"),
        Stack(
            "meshlib-requests",
            "meshlib requests adapter",
            True,
            "mesh.requests_session(): Bookinfo rules, tracing off",
        ),
        Stack("a-httpx", "httpx", False, "bare httpx.AsyncClient: the baseline"),
        Stack("a-httpx-aa", "httpx (A/A)", False, "a second bare httpx.AsyncClient"),
        Stack("aiohttp", "aiohttp", False, "bare aiohttp.ClientSession: the async ceiling"),
        Stack(
            "a-httpx-aiohttp",
            "httpx on aiohttp",
            False,
            "httpx.AsyncClient on meshlib's "
            "AiohttpTransport, no mesh: what the httpx client layer costs",
        ),
        Stack("a-hand", "hand-wired", False, "tenacity + pybreaker + OTel span and inject()"),
        Stack("a-meshlib", "meshlib", False, "Bookinfo rules, tracing off, httpx inner"),
        Stack("a-meshlib-traced", "meshlib traced", False, "tracing on, httpx inner"),
        Stack("a-meshlib-aiohttp", "meshlib on aiohttp", False, "tracing off, aiohttp inner"),
        Stack("a-meshlib-aiohttp-traced", "meshlib traced on aiohttp", False, "aiohttp inner"),
        Stack(
            "a-meshlib-aiomw",
            "meshlib aiohttp middleware",
            False,
            "aiohttp.ClientSession with mesh.aiohttp_middleware(), Bookinfo rules, tracing off",
        ),
        Stack(
            "a-meshlib-aiomw-traced",
            "meshlib aiohttp middleware traced",
            False,
            "the same, tracing on",
        ),
        Stack("a-haproxy", "httpx via HAProxy", False, "bare httpx.AsyncClient, one HAProxy hop"),
    )
}


class UnavailableError(Exception):
    """A stack that cannot run here; the message says why."""


@dataclass(frozen=True)
class Request:
    """One workload's request: method, query and body."""

    method: str = "GET"
    query: str = ""
    body: bytes | None = None


@dataclass
class Endpoints:
    """Where the stacks send: the upstream directly, through HAProxy, and the mesh's view."""

    upstream: str  # host:port
    haproxy: str | None = None  # host:port, or None without HAProxy
    haproxy_reason: str = ""
    _provider: Any = field(default=None, repr=False)

    def base(self, stack: str) -> str:
        if stack.endswith("haproxy"):
            if self.haproxy is None:
                raise UnavailableError(self.haproxy_reason or "no HAProxy")
            return f"http://{self.haproxy}"
        return f"http://{self.upstream}"


@dataclass
class Built:
    call: Callable[[], Any]  # () -> int, or () -> Awaitable[int]
    close: Callable[[], Any]  # () -> None, or () -> Awaitable[None]
    detail: str = ""


# --------------------------------------------------------------------------- tracing


def install_tracing() -> Any:
    """The global OpenTelemetry SDK provider (installed once): a ``BatchSpanProcessor`` with an
    exporter that drops the spans, so the figures are the tracer's cost and not an export's."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DropExporter(SpanExporter):  # bench.tracing's, without importing meshlib with it
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        current.shutdown()


# --------------------------------------------------------------------------- meshlib


def mesh_yaml(upstream: str, traced: bool) -> str:
    """``bench.data_plane``'s config (Bookinfo's DestinationRules, header match, weighted route,
    default retry policy, breaker, outlier detection), tracing on or off."""
    from bench.data_plane import mesh_config

    text = mesh_config(upstream)
    off = "telemetry: {tracing: {enabled: false}}"
    if off not in text:
        raise RuntimeError(
            "bench.data_plane.mesh_config no longer switches tracing off as expected"
        )
    return text.replace(off, "telemetry: {tracing: {enabled: true}}") if traced else text


def _check_aiohttp_mesh(mesh: Any, response: Any, traced: bool) -> None:
    """The middleware's first call went through the mesh (a MeshInfo on the response)."""
    from meshlib.clients.aiohttp import mesh_info

    info = mesh_info(response)
    if response.status != 200 or info is None or info.endpoint is None:
        raise UnavailableError(f"the mesh middleware did not route the call: {response.status}")


def _check_mesh(mesh: Any, response: Any, traced: bool) -> None:
    from bench.data_plane import check_mesh

    check_mesh(mesh, response)
    if (mesh.telemetry.tracer is not None) != traced:
        raise RuntimeError(f"the mesh's tracing is not {'on' if traced else 'off'}")


def aiohttp_inner(concurrency: int) -> tuple[Any, str]:
    """meshlib's aiohttp inner transport for ``concurrency`` concurrent calls, and how it was
    made; ``UnavailableError`` when this meshlib has none."""
    try:
        import aiohttp  # noqa: F401 - only whether it is there

        from meshlib.clients.httpx import aiohttp as aiohttp_transport
    except ImportError as error:
        raise UnavailableError(
            f"meshlib.clients.httpx.aiohttp is not importable ({error})"
        ) from None
    transport_class = getattr(aiohttp_transport, "AiohttpTransport", None)
    if transport_class is None:
        raise UnavailableError("meshlib.clients.httpx.aiohttp has no AiohttpTransport")
    wanted: dict[str, Any] = {
        "limit": MAX_CONNECTIONS,
        "limits": _httpx_limits(concurrency),
        "keepalive_timeout": KEEPALIVE_S,
        "keepalive_expiry": KEEPALIVE_S,
    }
    try:
        parameters = inspect.signature(transport_class).parameters
    except (TypeError, ValueError):
        parameters = {}
    options = {name: value for name, value in wanted.items() if name in parameters}
    if "limits" in options and "limit" in options:
        del options["limit"]
    shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return transport_class(**options), f"AiohttpTransport({shown})"


def pools() -> str:
    """The connection pools every stack is given, in words for the report."""
    return (
        f"httpx clients and meshlib's inner transports `{_httpx_limits(1)!r}`; aiohttp "
        f"`TCPConnector(limit={MAX_CONNECTIONS}, keepalive_timeout={KEEPALIVE_S:g})`"
    )


def _httpx_limits(concurrency: int) -> Any:
    """httpx's default pool (100 connections, 20 kept idle), idle ones kept 300 s. More idle
    connections make httpx's async pool slower, not faster: with 256 kept (for 256 tasks) a
    burst of 256 calls took 20 s here, with 20 kept about 1 s."""
    import httpx

    del concurrency  # one pool size for every workload, as a team's client has
    return httpx.Limits(
        max_connections=MAX_CONNECTIONS, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_S
    )


# --------------------------------------------------------------------------- sync


class _UpstreamError(Exception):
    """A 5xx, raised so that tenacity retries it and pybreaker counts it."""

    def __init__(self, response: Any) -> None:
        super().__init__(response.status_code)
        self.response = response


def build_sync(stack: str, where: Endpoints, request: Request, concurrency: int) -> Built:
    import httpx

    method, body = request.method, request.body
    limits = _httpx_limits(concurrency)
    if stack in ("httpx", "httpx-aa", "haproxy"):
        client = httpx.Client(limits=limits)
        url = where.base(stack) + PATH + request.query

        def call() -> int:
            return client.request(method, url, headers=HEADERS, content=body).status_code

        return Built(call, client.close)

    if stack == "otel":
        from opentelemetry import trace
        from opentelemetry.propagate import inject

        install_tracing()
        tracer = trace.get_tracer("bench")
        client = httpx.Client(limits=limits)
        url = where.base(stack) + PATH + request.query
        client_kind = trace.SpanKind.CLIENT

        def call() -> int:
            with tracer.start_as_current_span(method, kind=client_kind) as span:
                headers = dict(HEADERS)
                inject(headers)
                response = client.request(method, url, headers=headers, content=body)
                span.set_attribute("http.response.status_code", response.status_code)
                return response.status_code

        return Built(call, client.close)

    if stack == "hand":
        import pybreaker
        import tenacity
        from opentelemetry import trace
        from opentelemetry.propagate import inject

        install_tracing()
        tracer = trace.get_tracer("bench.hand-wired")
        client = httpx.Client(limits=limits)
        url = where.base(stack) + PATH + request.query
        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
        client_kind = trace.SpanKind.CLIENT

        @tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            retry=tenacity.retry_if_exception_type((httpx.ConnectError, _UpstreamError)),
            wait=tenacity.wait_random_exponential(multiplier=0.025, max=0.25),
            reraise=True,
        )
        @breaker
        def send() -> httpx.Response:
            with tracer.start_as_current_span(method, kind=client_kind) as span:
                headers = dict(HEADERS)
                inject(headers)
                response = client.request(method, url, headers=headers, content=body)
                span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 500:
                    raise _UpstreamError(response)
                return response

        def call() -> int:
            return send().status_code

        return Built(call, client.close)

    if stack in ("meshlib", "meshlib-traced", "meshlib-stock"):
        from meshlib import Mesh
        from meshlib.clients.httpx.httpcore import HTTPCoreTransport
        from meshlib.clients.httpx.transport import MeshTransport

        traced = stack == "meshlib-traced"
        if traced:
            install_tracing()
        if stack == "meshlib-stock":  # httpx's own client and transport around the mesh
            mesh = Mesh.from_yaml(mesh_yaml(where.upstream, traced), seed=1)
            inner = httpx.HTTPTransport(limits=limits)
            client = httpx.Client(transport=MeshTransport(mesh, inner))
        else:  # what mesh.client() gives, with the bench's pool size
            inner_sync = HTTPCoreTransport(limits=limits)
            mesh = Mesh.from_yaml(mesh_yaml(where.upstream, traced), seed=1, transport=inner_sync)
            client = mesh.client()
        url = MESH_BASE + PATH + request.query
        _check_mesh(mesh, client.get(MESH_BASE + PATH, headers=HEADERS), traced)

        def call() -> int:
            return client.request(method, url, headers=HEADERS, content=body).status_code

        return Built(call, client.close)

    if stack in ("requests", "meshlib-requests"):
        import requests

        if stack == "requests":
            session = requests.Session()
            session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))
            url = where.base(stack) + PATH + request.query
        else:
            from meshlib import Mesh

            mesh = Mesh.from_yaml(mesh_yaml(where.upstream, False), seed=1)
            session = mesh.requests_session()
            url = MESH_BASE + PATH + request.query
            first = session.get(MESH_BASE + PATH, headers=HEADERS)
            if first.status_code != 200 or getattr(first, "mesh", None) is None:
                raise UnavailableError(f"the requests adapter answered {first.status_code}")

        def call() -> int:
            return session.request(method, url, headers=HEADERS, data=body).status_code

        return Built(call, session.close)

    raise KeyError(stack)


# --------------------------------------------------------------------------- async


async def build_async(stack: str, where: Endpoints, request: Request, concurrency: int) -> Built:
    """Built inside the running event loop (aiohttp's session must be)."""
    import httpx

    method, body = request.method, request.body
    limits = _httpx_limits(concurrency)
    if stack in ("a-httpx", "a-httpx-aa", "a-haproxy"):
        client = httpx.AsyncClient(limits=limits)
        url = where.base(stack) + PATH + request.query

        async def call() -> int:
            return (await client.request(method, url, headers=HEADERS, content=body)).status_code

        return Built(call, client.aclose)

    if stack == "aiohttp":
        try:
            import aiohttp
        except ImportError:
            raise UnavailableError("aiohttp is not installed (the bench extra)") from None

        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S)
        session = aiohttp.ClientSession(connector=connector)
        url = where.base(stack) + PATH + request.query

        async def call() -> int:
            async with session.request(method, url, headers=HEADERS, data=body) as response:
                await response.read()
                return response.status

        return Built(call, session.close)

    if stack == "a-httpx-aiohttp":
        inner, detail = aiohttp_inner(concurrency)
        client = httpx.AsyncClient(transport=inner)
        url = where.base(stack) + PATH + request.query

        async def call() -> int:
            return (await client.request(method, url, headers=HEADERS, content=body)).status_code

        return Built(call, client.aclose, detail)

    if stack == "a-hand":
        import pybreaker
        import tenacity
        from opentelemetry import trace
        from opentelemetry.propagate import inject

        install_tracing()
        tracer = trace.get_tracer("bench.hand-wired")
        client = httpx.AsyncClient(limits=limits)
        url = where.base(stack) + PATH + request.query
        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
        client_kind = trace.SpanKind.CLIENT

        @tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            retry=tenacity.retry_if_exception_type((httpx.ConnectError, _UpstreamError)),
            wait=tenacity.wait_random_exponential(multiplier=0.025, max=0.25),
            reraise=True,
        )
        async def send() -> httpx.Response:
            with breaker.calling(), tracer.start_as_current_span(method, kind=client_kind) as span:
                headers = dict(HEADERS)
                inject(headers)
                response = await client.request(method, url, headers=headers, content=body)
                span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 500:
                    raise _UpstreamError(response)
                return response

        async def call() -> int:
            return (await send()).status_code

        return Built(call, client.aclose)

    if stack.startswith("a-meshlib-aiomw"):
        try:
            import aiohttp
        except ImportError:
            raise UnavailableError("aiohttp is not installed (the bench extra)") from None
        from meshlib import Mesh

        traced = stack.endswith("-traced")
        if traced:
            install_tracing()
        mesh = Mesh.from_yaml(mesh_yaml(where.upstream, traced), seed=1)
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S)
        session = mesh.aiohttp_session(connector=connector)
        url = MESH_BASE + PATH + request.query
        async with session.get(MESH_BASE + PATH, headers=HEADERS) as first:
            await first.read()
            _check_aiohttp_mesh(mesh, first, traced)

        async def call() -> int:
            async with session.request(method, url, headers=HEADERS, data=body) as response:
                await response.read()
                return response.status

        return Built(call, session.close)

    if stack.startswith("a-meshlib"):
        from meshlib import Mesh
        from meshlib.clients.httpx.client import MeshAsyncClient
        from meshlib.clients.httpx.transport import AsyncMeshTransport

        traced = stack.endswith("-traced")
        detail = ""
        if "aiohttp" in stack:
            inner, detail = aiohttp_inner(concurrency)
        else:
            inner = httpx.AsyncHTTPTransport(limits=limits)
        if traced:
            install_tracing()
        mesh = Mesh.from_yaml(mesh_yaml(where.upstream, traced), seed=1)
        client = MeshAsyncClient(transport=AsyncMeshTransport(mesh, inner))  # async_client()'s
        url = MESH_BASE + PATH + request.query
        _check_mesh(mesh, await client.get(MESH_BASE + PATH, headers=HEADERS), traced)

        async def call() -> int:
            return (await client.request(method, url, headers=HEADERS, content=body)).status_code

        return Built(call, client.aclose, detail)

    raise KeyError(stack)


def guarded_sync(call: Callable[[], int]) -> Callable[[], int]:
    def guarded() -> int:
        try:
            return call()
        except Exception:
            return 0

    return guarded


def guarded_async(call: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    async def guarded() -> int:
        try:
            return await call()
        except Exception:
            return 0

    return guarded
