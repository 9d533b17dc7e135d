"""``MeshClient`` / ``MeshAsyncClient`` behave as httpx's own clients: side by side with a stock
client on the same scripted transport, the requests sent and the cookies kept are the same."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from meshlib.clients.httpx.client import URL_CACHE_SIZE, MeshAsyncClient, MeshClient

Sent = list[httpx.Request]


def recorder(sent: Sent, cookies: bool = False) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if cookies and request.url.path == "/login":
            return httpx.Response(200, headers=[("Set-Cookie", "session=abc; Path=/")])
        if cookies and request.url.path == "/logout":
            return httpx.Response(200, headers=[("set-cookie", "session=; Path=/; Max-Age=0")])
        return httpx.Response(200, json={"ok": True})

    return handle


def run_sync(make: type[httpx.Client], script: Callable[[httpx.Client], None], **kw: Any) -> Sent:
    sent: Sent = []
    with make(transport=httpx.MockTransport(recorder(sent, cookies=True)), **kw) as client:
        script(client)
    return sent


def run_async(
    make: type[httpx.AsyncClient], script: Callable[[httpx.AsyncClient], Any], **kw: Any
) -> Sent:
    sent: Sent = []

    async def main() -> None:
        transport = httpx.MockTransport(recorder(sent, cookies=True))
        async with make(transport=transport, **kw) as client:
            await script(client)

    asyncio.run(main())
    return sent


def shape(sent: Sent) -> list[tuple[str, str, list[tuple[bytes, bytes]]]]:
    return [(r.method, str(r.url), r.headers.raw) for r in sent]


def test_sync_requests_are_sent_as_httpx_sends_them() -> None:
    def script(client: httpx.Client) -> None:
        client.get("http://a.test/x?q=1", headers={"Accept": "text/plain", "X-One": "1"})
        client.get("http://a.test/x?q=1", headers=[("x-two", "a"), ("X-Two", "b")])
        client.post("/relative", content=b"body", headers={"user-agent": "mine"})
        client.get(httpx.URL("http://a.test/y"), params={"p": "2"})
        client.get("http://a.test/login")  # sets a cookie
        client.get("http://a.test/after", headers={"cookie-ish": "no"})
        client.get("http://a.test/logout")  # clears it
        client.get("http://a.test/end")

    options = {"base_url": "http://a.test/base", "headers": {"Accept": "*/*", "X-Two": "c"}}
    ours = run_sync(MeshClient, script, **options)
    theirs = run_sync(httpx.Client, script, **options)
    assert shape(ours) == shape(theirs)
    assert ours[5].headers["cookie"] == "session=abc"  # the jar kept the cookie
    assert "cookie" not in ours[7].headers  # and dropped it when told to


def test_async_requests_are_sent_as_httpx_sends_them() -> None:
    async def script(client: httpx.AsyncClient) -> None:
        await client.get("http://a.test/x", headers={"X-Two": "override"})
        await client.get("http://a.test/login")
        await client.get("http://a.test/x")

    options = {"headers": {"X-Two": "c", "x-two": "d"}, "cookies": {"pref": "1"}}
    ours = run_async(MeshAsyncClient, script, **options)
    theirs = run_async(httpx.AsyncClient, script, **options)
    assert shape(ours) == shape(theirs)
    assert ours[0].headers.get_list("x-two") == ["override"]
    assert ours[2].headers["cookie"] == "pref=1; session=abc"


def test_cookies_set_on_the_client_are_sent_and_replaced() -> None:
    sent: Sent = []
    with MeshClient(transport=httpx.MockTransport(recorder(sent))) as client:
        client.cookies = {"a": "1"}
        client.get("http://a.test/")
        client.cookies.set("b", "2")
        client.get("http://a.test/")
    assert [r.headers.get("cookie") for r in sent] == ["a=1", "a=1; b=2"]


def test_parsed_urls_are_reused_and_bounded() -> None:
    sent: Sent = []
    with MeshClient(transport=httpx.MockTransport(recorder(sent))) as client:
        client.get("http://a.test/same")
        client.get("http://a.test/same")
        assert sent[0].url == sent[1].url
        for n in range(URL_CACHE_SIZE + 5):
            client.get(f"http://a.test/{n}")
        assert len(client._urls) <= URL_CACHE_SIZE
        assert str(sent[-1].url) == f"http://a.test/{URL_CACHE_SIZE + 4}"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_mesh_hands_out_these_clients(kind: str) -> None:
    mesh = Mesh.from_yaml("apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: a}\n")
    if kind == "sync":
        client = mesh.client()
        assert isinstance(client, MeshClient)
        assert isinstance(client, httpx.Client)
        client.close()
    else:
        aclient = mesh.async_client()
        assert isinstance(aclient, MeshAsyncClient)
        assert isinstance(aclient, httpx.AsyncClient)
        asyncio.run(aclient.aclose())
