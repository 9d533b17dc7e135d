"""``AiohttpTransport`` against real servers on 127.0.0.1: the upstream process of the
integration tests, and small scripted servers (raw HTTP/1.1 bytes) for what it does not do —
repeated headers, a body in pieces, a gzip body, a connection dropped mid-response."""

from __future__ import annotations

import asyncio
import gc
import gzip
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pytest
from integration.upstream import Upstream

from meshlib import Mesh
from meshlib.clients.httpx.aiohttp import AiohttpTransport, httpx_error
from meshlib.clients.httpx.inner import (
    ASYNC_TRANSPORT_ENV,
    async_transport_name,
    new_async_transport,
)
from meshlib.clients.httpx.transport import AsyncMeshTransport

pytestmark = pytest.mark.integration

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def send_path() -> str:
    """A path segment of this module's own (the upstream counts hits per path)."""
    return "session"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("v1") as started:
        yield started


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[str]:
    """A server in this test's loop: ``handler(request head, reader, writer)`` for every
    request; yields its base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await handler(head, reader, writer)
                if writer.is_closing():
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def free_port() -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- responses


async def test_status_reason_version_headers_and_body(upstream: Upstream) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.get(upstream.url("/unit/status?status=503"))
    assert response.status_code == 503
    assert response.reason_phrase == "Service Unavailable"
    assert response.http_version == "HTTP/1.1"
    assert response.headers["content-type"] == "application/json"
    assert response.json()["path"] == "/unit/status"
    assert response.is_closed


async def test_request_headers_go_out_as_httpx_sends_them(upstream: Upstream) -> None:
    url = upstream.url("/unit/headers")
    headers = {"X-Mixed-Case": "one", "end-user": "jason"}
    async with httpx.AsyncClient() as client:
        reference = (await client.get(url, headers=headers)).json()["headers"]
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        sent = (await client.get(url, headers=headers)).json()["headers"]
        assert sent == reference
        # Headers httpx leaves out stay out: aiohttp adds none of its own.
        request = client.build_request("GET", url)
        for name in ("accept", "accept-encoding", "user-agent", "host"):
            del request.headers[name]
        bare = (await client.send(request)).json()["headers"]
    assert set(bare) == {"host", "connection"}
    assert bare["host"] == upstream.address  # from the URL when httpx's request has none


async def test_credentials_in_the_url_are_sent_once_as_httpx_made_them(
    upstream: Upstream,
) -> None:
    url = upstream.url("/unit/auth").replace("http://", "http://ann:secret@")
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.get(url)
    assert response.json()["headers"]["authorization"] == "Basic YW5uOnNlY3JldA=="
    assert response.request.url.userinfo == b"ann:secret"


async def test_repeated_headers_and_no_cookie_jar() -> None:
    seen: list[bytes] = []

    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(head)
        writer.write(
            b"HTTP/1.1 200 OK\r\nset-cookie: a=1; Path=/\r\nset-cookie: b=2; Path=/\r\n"
            b"x-multi: one\r\nx-multi: two\r\ncontent-length: 2\r\n\r\nok"
        )

    transport = AiohttpTransport()
    async with scripted(handler) as base:
        for _ in range(2):
            response = await transport.handle_async_request(httpx.Request("GET", base + "/c"))
            await response.aread()
            assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
            assert response.headers.get_list("x-multi") == ["one", "two"]
        await transport.aclose()
    assert len(seen) == 2
    assert b"cookie:" not in seen[1].lower()  # aiohttp kept no cookie: httpx's client does that


async def test_body_streams_in_pieces_as_they_arrive() -> None:
    go_on = asyncio.Event()

    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await go_on.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")

    async with (
        scripted(handler) as base,
        httpx.AsyncClient(transport=AiohttpTransport()) as client,
        client.stream("GET", base + "/s") as response,
    ):
        pieces = response.aiter_raw()
        assert await anext(pieces) == b"first"  # before the server has sent the rest
        go_on.set()
        assert [piece async for piece in pieces] == [b"second"]


async def test_gzip_body_is_decoded_once_by_httpx() -> None:
    text = b'{"hello": "world"}' * 50
    packed = gzip.compress(text)

    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n"
            + f"content-length: {len(packed)}\r\n\r\n".encode()
            + packed
        )

    async with scripted(handler) as base, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.get(base + "/z")
    assert response.content == text
    assert response.num_bytes_downloaded == len(packed)


async def test_redirects_are_not_followed_by_aiohttp() -> None:
    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET /from "):
            writer.write(b"HTTP/1.1 302 Found\r\nlocation: /to\r\ncontent-length: 0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\narrived")

    async with scripted(handler) as base, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.get(base + "/from")
        assert response.status_code == 302
        followed = await client.get(base + "/from", follow_redirects=True)
        assert followed.text == "arrived"
        assert [r.status_code for r in followed.history] == [302]


async def test_head_response_has_no_body() -> None:
    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = 0 if head.startswith(b"HEAD ") else 4
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n" + b"body"[:length])

    async with scripted(handler) as base, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.head(base + "/h")
        assert response.headers["content-length"] == "4"
        assert response.content == b""
        assert (await client.get(base + "/h")).content == b"body"  # the connection is in step


# --------------------------------------------------------------------------- request bodies


async def test_post_bytes_body(upstream: Upstream) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.post(upstream.url("/unit/post?echo"), content=b"hello there")
    reply = response.json()
    assert reply["body"] == "hello there"
    assert reply["headers"]["content-length"] == "11"
    assert "content-type" not in reply["headers"]  # none set by httpx, none added by aiohttp


async def test_post_streamed_body_is_sent_chunked(upstream: Upstream) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            await asyncio.sleep(0)
            yield part

    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.post(upstream.url("/unit/stream?echo"), content=parts())
    reply = response.json()
    assert reply["body"] == "one two three"
    assert reply["headers"]["transfer-encoding"] == "chunked"


async def test_json_body_keeps_httpx_content_type(upstream: Upstream) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.put(upstream.url("/unit/json?echo"), json={"a": 1})
    reply = response.json()
    assert reply["method"] == "PUT"
    assert reply["headers"]["content-type"] == "application/json"
    assert reply["body"] == '{"a":1}'


# --------------------------------------------------------------------------- errors


async def test_slow_answer_is_a_read_timeout(upstream: Upstream) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.get(upstream.url("/unit/slow?delay=2"))
    assert caught.value.request.url.path == "/unit/slow"


async def test_a_body_that_stalls_is_a_read_timeout() -> None:
    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await asyncio.sleep(2)

    timeout = httpx.Timeout(5.0, read=0.2)
    async with (
        scripted(handler) as base,
        httpx.AsyncClient(transport=AiohttpTransport(), timeout=timeout) as client,
        client.stream("GET", base + "/stall") as response,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()


async def test_waiting_for_a_connection_is_a_connect_timeout(upstream: Upstream) -> None:
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=transport) as client:
        held = asyncio.ensure_future(client.get(upstream.url("/unit/held?hold=pool-test")))
        await asyncio.sleep(0.2)  # the only connection is taken
        try:
            timeout = httpx.Timeout(5.0, connect=0.1, pool=0.1)
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(upstream.url("/unit/second"), timeout=timeout)
        finally:
            await asyncio.to_thread(upstream.release, "pool-test")
            assert (await held).status_code == 200


async def test_refused_port_is_a_connect_error() -> None:
    request = httpx.Request("GET", f"http://127.0.0.1:{free_port()}/")
    transport = AiohttpTransport()
    with pytest.raises(httpx.ConnectError) as caught:
        await transport.handle_async_request(request)
    assert caught.value.request is request
    await transport.aclose()


async def test_server_closing_before_answering_is_a_remote_protocol_error() -> None:
    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with scripted(handler) as base, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(base + "/gone")


async def test_server_closing_mid_body_is_a_remote_protocol_error() -> None:
    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part of it")
        await writer.drain()
        writer.close()

    async with scripted(handler) as base, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(base + "/cut")


async def test_a_garbled_answer_is_a_remote_protocol_error() -> None:
    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")

    async with scripted(handler) as base, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(base + "/garbled")


def test_errors_map_to_the_httpx_exceptions_meshlib_classifies() -> None:
    request = httpx.Request("GET", "http://example.test/")
    key = aiohttp.client_reqrep.ConnectionKey("h", 80, False, True, None, None, None)
    cases: list[tuple[BaseException, type[httpx.TransportError]]] = [
        (aiohttp.ConnectionTimeoutError("t"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("t"), httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError("t"), httpx.ReadTimeout),
        (TimeoutError(), httpx.ReadTimeout),
        (aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "no")), httpx.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("short"), httpx.RemoteProtocolError),
        (aiohttp.ClientConnectionResetError("closing"), httpx.WriteError),
        (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
        (ConnectionResetError(104, "reset"), httpx.ReadError),
        (aiohttp.NonHttpUrlClientError("ftp://x"), httpx.UnsupportedProtocol),
        (aiohttp.ClientError("other"), httpx.TransportError),
    ]
    for error, expected in cases:
        mapped = httpx_error(error, request)
        assert type(mapped) is expected, (error, mapped)
        assert mapped.request is request


# --------------------------------------------------------------------------- timeouts


def test_timeouts_map_to_aiohttp_and_are_cached() -> None:
    transport = AiohttpTransport()
    request = httpx.Request("GET", "http://upstream.test/")
    values = {"connect": 1.0, "read": 2.0, "write": 3.0, "pool": 4.0}
    made = transport._timeout(values, request)
    assert (made.total, made.connect, made.sock_connect, made.sock_read) == (None, 5.0, 1.0, 2.0)
    assert transport._timeout(dict(values), request) is made
    unbounded = transport._timeout(
        {"connect": None, "read": None, "write": None, "pool": None}, request
    )
    assert (unbounded.total, unbounded.connect, unbounded.sock_read) == (None, None, None)
    assert transport._timeout(None, request) is transport._timeout({}, request)


@pytest.mark.parametrize(
    ("spent", "expected"),
    [("read", httpx.ReadTimeout), ("connect", httpx.ConnectTimeout), ("pool", httpx.PoolTimeout)],
)
async def test_a_timeout_of_zero_has_run_out_and_nothing_is_sent(
    upstream: Upstream, spent: str, expected: type[Exception]
) -> None:
    """aiohttp reads a timeout of 0 as "none": httpx's 0 (or less) is time already spent, so
    the request fails at once with httpx's timeout for it, and never reaches the upstream."""
    transport = AiohttpTransport()
    path = f"/unit/zero-timeout/{spent}"
    timeouts = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0, spent: 0.0}
    request = httpx.Request("GET", upstream.url(path), extensions={"timeout": timeouts})
    try:
        with pytest.raises(expected):
            await transport.handle_async_request(request)
    finally:
        await transport.aclose()
    assert upstream.hits(path) == 0


# --------------------------------------------------------------------------- loops


def test_each_event_loop_gets_a_session_of_its_own(upstream: Upstream) -> None:
    transport = AiohttpTransport()
    sessions: list[aiohttp.ClientSession] = []

    async def call() -> None:
        response = await transport.handle_async_request(
            httpx.Request("GET", upstream.url("/unit/loops"))
        )
        await response.aread()
        assert response.status_code == 200
        assert transport._session is not None
        sessions.append(transport._session)

    async def call_and_close() -> None:
        await call()
        await transport.aclose()

    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(call())
        asyncio.run(call_and_close())  # another loop, while the first one is idle
        assert sessions[0] is not sessions[1]
        assert sessions[0].closed
        assert sessions[1].closed
        first.run_until_complete(asyncio.sleep(0))  # its connections finish closing there
    finally:
        first.close()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_closed_loop_session_is_dropped_for_a_new_one(upstream: Upstream) -> None:
    transport = AiohttpTransport()
    sessions: list[aiohttp.ClientSession] = []

    async def call() -> None:
        response = await transport.handle_async_request(
            httpx.Request("GET", upstream.url("/unit/closed-loop"))
        )
        await response.aread()
        assert transport._session is not None
        sessions.append(transport._session)

    asyncio.run(call())
    asyncio.run(call())  # the first loop is closed: its sockets go with their transports
    assert sessions[0] is not sessions[1]
    assert sessions[0].closed  # and it does not complain of being left open
    asyncio.run(transport.aclose())
    sessions.clear()
    gc.collect()


def test_aclose_from_another_loop_closes_the_session_all_the_same(upstream: Upstream) -> None:
    transport = AiohttpTransport()

    async def call() -> None:
        response = await transport.handle_async_request(
            httpx.Request("GET", upstream.url("/unit/aclose-elsewhere"))
        )
        await response.aread()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(call())
        session = transport._session
        assert session is not None
        asyncio.run(transport.aclose())  # the session's loop is alive, but not running
        assert session.closed
        loop.run_until_complete(asyncio.sleep(0))  # the closing sockets finish there
    finally:
        loop.close()


def test_a_loop_running_in_another_thread_gets_its_session_closed_there(
    upstream: Upstream,
) -> None:
    transport = AiohttpTransport()
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:

        async def call(then_close: bool = False) -> aiohttp.ClientSession:
            response = await transport.handle_async_request(
                httpx.Request("GET", upstream.url("/unit/threads"))
            )
            await response.aread()
            session = transport._session
            assert session is not None
            if then_close:
                await transport.aclose()
            return session

        first = asyncio.run_coroutine_threadsafe(call(), other).result(10)
        second = asyncio.run(call(then_close=True))
        assert first is not second
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), other).result(10)
        assert first.closed
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        other.close()


async def test_aclose_closes_the_session_and_a_later_call_opens_another(
    upstream: Upstream,
) -> None:
    transport = AiohttpTransport()
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(upstream.url("/unit/close"))
        session = transport._session
    assert session is not None
    assert session.closed
    assert transport._session is None
    response = await transport.handle_async_request(httpx.Request("GET", upstream.url("/x")))
    await response.aread()
    assert transport._session is not None
    assert transport._session is not session
    await transport.aclose()


async def test_closing_an_unread_response_frees_its_connection(upstream: Upstream) -> None:
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=transport, timeout=2.0) as client:
        for _ in range(3):  # one connection: each must be handed back for the next call
            async with client.stream("GET", upstream.url("/unit/unread?size=200000")) as response:
                assert response.status_code == 200


# --------------------------------------------------------------------------- the mesh's choice


def config() -> str:
    return "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: unit}\n"


def test_the_mesh_picks_aiohttp_by_default_and_either_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ASYNC_TRANSPORT_ENV, raising=False)
    assert isinstance(Mesh.from_yaml(config()).async_inner(), AiohttpTransport)
    chosen = Mesh.from_yaml(config(), async_transport="httpx").async_inner()
    assert isinstance(chosen, httpx.AsyncHTTPTransport)
    chosen = Mesh.from_yaml(config(), async_transport="aiohttp").async_inner()
    assert isinstance(chosen, AiohttpTransport)
    given = httpx.MockTransport(lambda request: httpx.Response(204))
    assert Mesh.from_yaml(config(), async_transport=given).async_inner() is given
    assert Mesh.from_yaml(config(), transport=given).async_inner() is given
    with pytest.raises(ValueError, match="async_transport='curl'"):
        Mesh.from_yaml(config(), async_transport="curl")


def test_the_environment_chooses_when_the_code_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ASYNC_TRANSPORT_ENV, "httpx")
    mesh = Mesh.from_yaml(config())
    assert isinstance(mesh.async_inner(), httpx.AsyncHTTPTransport)
    assert isinstance(mesh.async_client()._transport, AsyncMeshTransport)
    assert isinstance(
        Mesh.from_yaml(config(), async_transport="aiohttp").async_inner(), AiohttpTransport
    )
    monkeypatch.setenv(ASYNC_TRANSPORT_ENV, " AIOHTTP ")
    assert isinstance(new_async_transport(), AiohttpTransport)
    monkeypatch.setenv(ASYNC_TRANSPORT_ENV, "requests")
    with pytest.raises(ValueError, match=r"\$MESHLIB_ASYNC_TRANSPORT='requests'"):
        mesh.async_inner()


def test_without_aiohttp_the_default_is_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ASYNC_TRANSPORT_ENV, raising=False)
    monkeypatch.setattr("meshlib.clients.httpx.inner.aiohttp_available", lambda: False)
    assert async_transport_name() == "httpx"
    assert isinstance(Mesh.from_yaml(config()).async_inner(), httpx.AsyncHTTPTransport)
    with pytest.raises(ImportError, match=r"meshlib\[aiohttp\]"):
        Mesh.from_yaml(config(), async_transport="aiohttp")


async def test_a_mesh_client_on_aiohttp_routes_retries_and_reports(
    upstream: Upstream, send_path: str
) -> None:
    text = (
        config()
        + f"spec:\n  registry:\n    static:\n      reviews: [{{address: {upstream.address}}}]\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        + "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n"
        + "  - route: [{destination: {host: reviews}}]\n"
        + "    retries: {attempts: 2, retryOn: 5xx}\n"
    )
    mesh = Mesh.from_yaml(text, async_transport="aiohttp")
    async with mesh.async_client() as client:
        response = await client.get(f"http://reviews/unit/mesh/{send_path}?fail=1")
    assert response.status_code == 200
    assert response.extensions["mesh"].attempts == 2
    assert upstream.hits(f"/unit/mesh/{send_path}") == 2
