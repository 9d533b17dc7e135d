"""``GET /_mesh/config``: the digest of the config in force, its files and resources, and the
watcher's state — through the ASGI and the WSGI middleware; every other request passes on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from meshlib.config.digest import config_digest
from meshlib.config.load import load_config
from meshlib.server import MeshAdmin, MeshWSGIAdmin

WriteYaml = Callable[[str, str], Path]

CONFIG = """
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
"""


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"the app"})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"the app"]


@pytest.fixture
def config_file(write_yaml: WriteYaml) -> Path:
    return write_yaml("mesh.yaml", CONFIG)


@pytest.fixture(params=["asgi", "wsgi"])
def call(request: pytest.FixtureRequest) -> Callable[[Mesh, str, str], httpx.Response]:
    """``call(mesh, method, path)`` through one kind of admin middleware."""

    def sync_call(mesh: Mesh, method: str, path: str) -> httpx.Response:
        transport = httpx.WSGITransport(app=MeshWSGIAdmin(wsgi_app, mesh))
        with httpx.Client(transport=transport, base_url="http://svc") as http:
            return http.request(method, path)

    def async_call(mesh: Mesh, method: str, path: str) -> httpx.Response:

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=MeshAdmin(asgi_app, mesh))
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
                return await http.request(method, path)

        return asyncio.run(go())

    return async_call if request.param == "asgi" else sync_call


def test_the_config_in_force(
    call: Callable[[Mesh, str, str], httpx.Response], config_file: Path
) -> None:
    mesh = Mesh.from_file(config_file)
    response = call(mesh, "GET", "/_mesh/config")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["service"] == "reviews"
    assert body["version"] == "v2"
    assert body["digest"] == config_digest(load_config([config_file]))
    assert body["files"] == [config_file.name]  # no absolute path is shown
    assert [(r["kind"], r["name"], r["line"]) for r in body["resources"]] == [
        ("Service", "reviews", 1),
        ("VirtualService", "ratings", 7),
    ]
    assert body["watch"] is None


def test_the_watcher_state_once_watching(
    call: Callable[[Mesh, str, str], httpx.Response], config_file: Path
) -> None:
    mesh = Mesh.from_file(config_file)
    mesh.watch(interval=5.0)
    try:
        watch = call(mesh, "GET", "/_mesh/config").json()["watch"]
    finally:
        mesh.close()
    assert watch["running"] is True
    assert watch["interval"] == 5.0
    assert watch["reloads"] == 0
    assert watch["last_error"] is None


def test_other_requests_reach_the_app(
    call: Callable[[Mesh, str, str], httpx.Response], config_file: Path
) -> None:
    mesh = Mesh.from_file(config_file)
    assert call(mesh, "GET", "/reviews/0").text == "the app"
    assert call(mesh, "GET", "/_mesh/configs").text == "the app"
    refused = call(mesh, "POST", "/_mesh/config")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"


def test_the_digest_ignores_file_names_layout_and_order(write_yaml: WriteYaml) -> None:
    documents = CONFIG.split("---\n")
    one = write_yaml("one.yaml", CONFIG)
    reordered = write_yaml("two.yaml", "\n---\n".join(reversed(documents)))
    changed = write_yaml("three.yaml", CONFIG.replace("host: ratings}", "host: ratings2}"))
    digest = config_digest(load_config([one]))
    assert config_digest(load_config([reordered])) == digest
    assert config_digest(load_config([changed])) != digest
