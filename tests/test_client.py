"""``meshlib.client``: module-level calls and stock clients on the process's default mesh.

No test touches the network: the default mesh is either built from a config whose routes answer
locally (``directResponse``), or replaced with an in-memory mesh through ``configure``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh, client
from meshlib.clients.httpx.transport import MeshInfo
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

WriteYaml = Callable[[str, str], Path]

DIRECT = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  version: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
  - directResponse: {{status: 200, body: {{string: "{body}"}}}}
"""


@pytest.fixture(autouse=True)
def default_mesh_reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without a default mesh and gives the previous one back afterwards."""
    monkeypatch.setattr(client, "_mesh", None)
    monkeypatch.setattr(client, "_shared", None)
    yield
    shared = client._shared
    if shared is not None:
        shared.close()


@pytest.fixture
def upstreams() -> Upstreams:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews")
    return upstreams


def in_memory(upstreams: Upstreams, text: str = "") -> Mesh:
    return in_memory_mesh(text, upstreams, seed=1)


def info(response: httpx.Response) -> MeshInfo:
    mesh_info = response.extensions["mesh"]
    assert isinstance(mesh_info, MeshInfo)
    return mesh_info


# --------------------------------------------------------------------------- the default mesh


def test_the_default_mesh_is_built_from_mesh_config(
    monkeypatch: pytest.MonkeyPatch, write_yaml: WriteYaml
) -> None:
    path = write_yaml("conf/mesh.yaml", DIRECT.format(host="reviews", body="from MESH_CONFIG"))
    monkeypatch.setenv("MESH_CONFIG", str(path))

    response = client.get("http://reviews:9080/reviews/0")
    assert response.status_code == 200
    assert response.text == "from MESH_CONFIG"
    assert info(response).decision.virtual_service == "default/reviews"
    mesh = client.default_mesh()
    assert mesh is client.default_mesh()  # built once
    assert mesh.config.files == (str(path),)
    with client.stream("GET", "http://reviews/x") as streamed:
        assert streamed.read() == b"from MESH_CONFIG"


def test_mesh_config_may_name_several_files(
    monkeypatch: pytest.MonkeyPatch, write_yaml: WriteYaml
) -> None:
    first = write_yaml("a.yaml", DIRECT.format(host="reviews", body="reviews"))
    second = write_yaml(
        "b.yaml", DIRECT.format(host="ratings", body="ratings").split("---\n", 1)[1]
    )
    monkeypatch.setenv("MESH_CONFIG", f"{first}{os.pathsep}{second}")

    assert client.get("http://reviews/").text == "reviews"
    assert client.get("http://ratings/").text == "ratings"


def test_mesh_yaml_in_the_working_directory_is_the_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_yaml: WriteYaml
) -> None:
    write_yaml("mesh.yaml", DIRECT.format(host="reviews", body="from ./mesh.yaml"))
    monkeypatch.delenv("MESH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    assert client.get("http://reviews/").text == "from ./mesh.yaml"


def test_without_any_config_the_default_mesh_is_empty_and_passes_calls_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MESH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    mesh = client.default_mesh()
    assert mesh.config.resources == ()
    decision = mesh.explain("GET", "http://anything.example:8080/x")
    assert decision.passthrough
    assert decision.matched


def test_an_empty_mesh_passes_calls_through_unchanged(upstreams: Upstreams) -> None:
    client.configure(in_memory(upstreams))

    response = client.get("http://anything.example:8080/x?y=1", headers={"x-a": "1"})
    assert response.status_code == 200
    assert info(response).decision.passthrough
    (seen,) = upstreams.calls()
    assert seen.endpoint == "anything.example:8080"
    assert str(seen.request.url) == "http://anything.example:8080/x?y=1"
    assert seen.headers["x-a"] == "1"


# --------------------------------------------------------------------------- configure


def test_configure_replaces_the_default_mesh(upstreams: Upstreams) -> None:
    first = in_memory(upstreams)
    assert client.configure(first) is first
    assert client.default_mesh() is first
    assert client.get("http://reviews/r").status_code == 200
    assert len(upstreams.calls("reviews")) == 1
    shared = client._shared

    others = Upstreams(clock=FakeClock())
    others.script("reviews", [Reply(201)])
    second = in_memory(others)
    client.configure(second)
    assert client.default_mesh() is second
    assert shared is not None
    assert shared.is_closed  # the old mesh's pooled client is closed
    assert client.get("http://reviews/r").status_code == 201
    assert len(upstreams.calls("reviews")) == 1
    assert len(others.calls("reviews")) == 1


def test_configure_takes_a_path_or_several(write_yaml: WriteYaml) -> None:
    one = write_yaml("one.yaml", DIRECT.format(host="reviews", body="one"))
    mesh = client.configure(one)
    assert client.default_mesh() is mesh
    assert client.get("http://reviews/").text == "one"

    two = write_yaml("two.yaml", DIRECT.format(host="reviews", body="two"))
    client.configure([str(two)])
    assert client.get("http://reviews/").text == "two"


@pytest.mark.parametrize("method", ["get", "head", "options", "post", "put", "patch", "delete"])
def test_module_functions_send_their_method_through_the_mesh(
    upstreams: Upstreams, method: str
) -> None:
    client.configure(in_memory(upstreams))

    response = getattr(client, method)("http://reviews:9080/reviews/0")
    assert response.status_code == 200
    assert info(response).endpoint == "reviews.upstream.test:80"
    (seen,) = upstreams.calls("reviews")
    assert seen.request.method == method.upper()


def test_module_functions_go_through_the_whole_pipeline(upstreams: Upstreams) -> None:
    upstreams.script("reviews", [Reply(503), Reply(200)])
    client.configure(in_memory(upstreams))

    response = client.request("GET", "http://reviews/r")
    assert response.status_code == 200
    assert info(response).attempts == 2  # the mesh default retry policy
    response = client.post("http://reviews/r", content=b"x")
    assert response.status_code == 200


# --------------------------------------------------------------------------- stock clients


def test_client_is_an_httpx_client_on_the_default_mesh(upstreams: Upstreams) -> None:
    mesh = client.configure(in_memory(upstreams))

    with client.Client(timeout=3.0, headers={"x-team": "blue"}) as http:
        assert isinstance(http, httpx.Client)
        assert http.timeout == httpx.Timeout(3.0)
        response = http.get("http://reviews:9080/reviews/0")
    assert response.status_code == 200
    assert info(response).endpoint == "reviews.upstream.test:80"
    assert upstreams.calls("reviews")[0].headers["x-team"] == "blue"
    assert client.default_mesh() is mesh


async def test_async_client_is_an_httpx_async_client_on_the_default_mesh(
    upstreams: Upstreams,
) -> None:
    client.configure(in_memory(upstreams))

    async with client.AsyncClient(headers={"x-team": "blue"}) as http:
        assert isinstance(http, httpx.AsyncClient)
        response = await http.get("http://reviews:9080/reviews/0")
    assert response.status_code == 200
    assert info(response).endpoint == "reviews.upstream.test:80"
    assert upstreams.calls("reviews")[0].headers["x-team"] == "blue"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_clients_follow_the_mesh_configured_when_they_are_made(
    upstreams: Upstreams, kind: str
) -> None:
    client.configure(in_memory(upstreams, DIRECT.format(host="reviews", body="direct")))
    if kind == "sync":
        with client.Client() as http:
            response = http.get("http://reviews/")
    else:
        async with client.AsyncClient() as ahttp:
            response = await ahttp.get("http://reviews/")
    assert response.text == "direct"
    assert upstreams.calls() == []
