"""Header names and values in a config that no HTTP client could send: a name that is not an
HTTP token (``consistentHash.httpHeaderName``, ``propagateHeaders``, the header operations of a
route) is a ``ConfigError`` at load, with its file and line, not an exception at every call; a
value that is not ASCII goes out as its UTF-8 bytes, as Envoy sends it (a real upstream process,
``httpx.Client`` and ``httpx.AsyncClient``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from meshlib import ConfigError, Mesh
from meshlib.config.load import load_texts
from tests.integration.upstream import Upstream

HOST = "reviews.mesh.invalid"
SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  propagateHeaders: {propagate}
  registry:
    static:
      {host}: [{{address: "{address}"}}]
"""


def service(address: str = "127.0.0.1:9", propagate: str = "[end-user]") -> str:
    return SERVICE.format(propagate=propagate, host=HOST, address=address)


def destination_rule(hash_key: str) -> str:
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: {HOST}
  trafficPolicy:
    loadBalancer:
      consistentHash: {{httpHeaderName: "{hash_key}"}}
"""


def route_with(headers: str) -> str:
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [{HOST}]
  http:
  - headers: {headers}
    route: [{{destination: {{host: {HOST}}}}}]
"""


@pytest.mark.parametrize(
    ("text", "line", "path"),
    [
        (service() + destination_rule("caf\u00e9"), 17, "consistentHash.httpHeaderName"),
        (service() + destination_rule("\u20ac"), 17, "consistentHash.httpHeaderName"),
        (service() + destination_rule("end user"), 17, "consistentHash.httpHeaderName"),
        (service(propagate='[end-user, "caf\u00e9"]'), 5, "spec.propagateHeaders[1]"),
        (service(propagate='["x a"]'), 5, "spec.propagateHeaders[0]"),
        (service() + route_with('{request: {set: {"caf\u00e9": v}}}'), 16, "request.set"),
        (service() + route_with('{request: {add: {"\u20ac": v}}}'), 16, "request.add"),
        (service() + route_with('{request: {remove: ["caf\u00e9"]}}'), 16, "request.remove"),
        (service() + route_with('{response: {set: {"caf\u00e9": v}}}'), 16, "response.set"),
    ],
    ids=[
        "hash-latin",
        "hash-euro",
        "hash-space",
        "propagate-latin",
        "propagate-space",
        "request-set",
        "request-add",
        "request-remove",
        "response-set",
    ],
)
def test_a_header_name_no_client_can_send_is_refused_at_load(
    text: str, line: int, path: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_texts([("mesh.yaml", text)])
    problem = caught.value.problems[0]
    assert (problem.file, problem.line) == ("mesh.yaml", line), str(caught.value)
    assert path in problem.path
    assert "is not a valid header name" in problem.message


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("v1") as started:
        yield started


def test_a_header_value_that_is_not_ascii_goes_out_as_utf8(upstream: Upstream) -> None:
    text = service(upstream.address) + route_with(
        '{request: {set: {x-user: "J\u00f6rg"}, add: {x-team: "\u20ac"}},'
        ' response: {set: {x-served-by: "caf\u00e9"}}}'
    )
    mesh = Mesh.from_yaml(text)
    url = f"http://{HOST}:9080/reviews/0"

    def sync() -> tuple[dict[str, str], bytes]:
        with mesh.client(timeout=10.0) as http:
            response = http.get(url, headers={"x-team": "a"})
        return response.json()["headers"], response.headers.raw[-1][1]

    async def async_() -> tuple[dict[str, str], bytes]:
        async with mesh.async_client(timeout=10.0) as http:
            response = await http.get(url, headers={"x-team": "a"})
        return response.json()["headers"], response.headers.raw[-1][1]

    try:
        for received, served_by in (sync(), asyncio.run(async_())):
            # the upstream reads header bytes as Latin-1, as HTTP servers do
            assert received["x-user"].encode("latin-1").decode() == "J\u00f6rg"
            assert received["x-team"].encode("latin-1").decode() == "a,\u20ac"
            assert served_by == "caf\u00e9".encode()
    finally:
        mesh.close()
