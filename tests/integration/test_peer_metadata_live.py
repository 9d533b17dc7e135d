"""Workload metadata exchange between two real meshlib services on 127.0.0.1.

``productpage`` calls ``ratings`` through ``mesh.client()`` and ``mesh.async_client()``;
``ratings`` is an ASGI app behind ``MeshMiddleware`` under uvicorn (plain text), or under
``meshlib.serve``'s server with STRICT mutual TLS. Both sides' Prometheus series are read from
their scrapes: the caller named by ``reporter="destination"``, the upstream by
``reporter="source"``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshlib import Mesh
from meshlib.security.ca import CertificateAuthority
from meshlib.server import MeshMiddleware
from meshlib.server.runner import make_server
from meshlib.telemetry import metrics
from meshlib.testing import FakeClock
from tests.server.live import serve_asgi

HOST = "127.0.0.1"
WAIT = 10.0
RATINGS_URL = "http://ratings:9080/ratings/0"


def ratings_yaml(extra: str = "", identity: str = "") -> str:
    return f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: ratings}}
spec:
  version: v1
  telemetry: {{metrics: {{}}}}
  {identity}
  {extra}
"""


def productpage_yaml(port: int, identity: str = "", rules: str = "") -> str:
    text = f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  version: v1
  labels: {{app: productpage}}
  telemetry: {{metrics: {{}}}}
  {identity}
  registry:
    static:
      ratings:
        - {{address: "{HOST}:{port}"}}
"""
    if rules:
        text += "---\n" + rules
    return text


async def echo_headers(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Answers with the request header names the app saw."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    names = sorted(k.decode("latin-1").lower() for k, _ in scope.get("headers") or ())
    body = json.dumps(names).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def series(mesh: Mesh, reporter: str) -> list[tuple[dict[str, str], float]]:
    """The ``istio_requests_total`` samples of ``mesh`` for one reporter."""
    _, body = metrics.scrape(mesh)
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "istio_requests_total" and sample.labels["reporter"] == reporter
    ]


def only(mesh: Mesh, reporter: str, calls: int = 2) -> tuple[dict[str, str], float]:
    """The one series of ``reporter``, once it has counted ``calls`` requests: a server records
    a request after it has sent the response, so the caller may read before it has (bounded)."""
    deadline = time.monotonic() + WAIT
    found = series(mesh, reporter)
    while not (found and found[0][1] >= calls) and time.monotonic() < deadline:
        time.sleep(0.01)
        found = series(mesh, reporter)
    assert len(found) == 1, found
    return found[0]


def call_both_ways(caller: Mesh) -> list[list[str]]:
    """One call with the sync client and one with the async client: what the app saw."""
    with caller.client() as client:
        response = client.get(RATINGS_URL)
    assert response.status_code == 200
    assert "x-envoy-peer-metadata" not in response.headers  # taken out, as Envoy does
    assert "x-envoy-peer-metadata-id" not in response.headers

    async def go() -> list[str]:
        async with caller.async_client() as client:
            answer = await client.get(RATINGS_URL)
        assert answer.status_code == 200
        assert "x-envoy-peer-metadata" not in answer.headers
        seen: list[str] = answer.json()
        return seen

    first: list[str] = response.json()
    return [first, asyncio.run(go())]


@contextmanager
def plain_ratings(extra: str = "") -> Iterator[tuple[Mesh, int]]:
    mesh = Mesh.from_yaml(ratings_yaml(extra))
    server = serve_asgi(MeshMiddleware(echo_headers, mesh=mesh))
    try:
        yield mesh, server.port
    finally:
        server.stop()
        mesh.close()


def test_each_side_names_the_other() -> None:
    with plain_ratings() as (ratings, port):
        productpage = Mesh.from_yaml(productpage_yaml(port))
        try:
            for seen in call_both_ways(productpage):
                assert "x-envoy-peer-metadata" not in seen  # removed before the app
                assert "x-envoy-peer-metadata-id" not in seen
            inbound, count = only(ratings, "destination")
            outbound, sent = only(productpage, "source")
        finally:
            productpage.close()
    assert count == 2
    assert inbound["source_workload"] == "productpage-v1"
    assert inbound["source_workload_namespace"] == "default"
    assert inbound["source_app"] == "productpage"
    assert inbound["source_version"] == "v1"
    assert inbound["source_canonical_service"] == "productpage"
    assert inbound["source_canonical_revision"] == "v1"
    assert inbound["source_principal"] == "unknown"  # no certificate: no principal
    assert inbound["destination_workload"] == "ratings-v1"
    assert inbound["connection_security_policy"] == "none"
    assert sent == 2
    # the endpoint carries no labels: the upstream's metadata names it
    assert outbound["destination_workload"] == "ratings-v1"
    assert outbound["destination_app"] == "ratings"
    assert outbound["destination_version"] == "v1"
    assert outbound["destination_canonical_revision"] == "v1"
    assert outbound["source_workload"] == "productpage-v1"
    assert outbound["connection_security_policy"] == "unknown"


def test_an_untrusted_caller_is_not_named() -> None:
    """``trustHeadersFrom: mesh`` and no certificate: the metadata is not taken."""
    with plain_ratings("inbound: {trustHeadersFrom: mesh}") as (ratings, port):
        productpage = Mesh.from_yaml(productpage_yaml(port))
        try:
            for seen in call_both_ways(productpage):
                assert "x-envoy-peer-metadata" not in seen
            inbound, count = only(ratings, "destination")
            outbound, _ = only(productpage, "source")
        finally:
            productpage.close()
    assert count == 2
    for label in ("source_workload", "source_app", "source_version", "source_principal"):
        assert inbound[label] == "unknown"
    # ratings sent nothing back to a caller it did not trust: its name is the service's
    assert outbound["destination_workload"] == "ratings"
    assert outbound["destination_app"] == "ratings"
    assert outbound["destination_version"] == "unknown"


# --------------------------------------------------------------------------- mutual TLS


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("peer-metadata") / "ca"
    CertificateAuthority.init(directory, clock=FakeClock(wall=time.time() - 86400))
    return directory


STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"""

ISTIO_MUTUAL = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
"""


def test_a_mutual_tls_caller_is_named_by_its_certificate(ca_dir: Path) -> None:
    identity = f"identity: {{ca: {ca_dir}, certificateLifetime: 1h}}"
    ratings = Mesh.from_yaml(ratings_yaml(identity=identity) + "---\n" + STRICT)
    sock = socket.create_server((HOST, 0))
    port = sock.getsockname()[1]
    server = make_server(
        MeshMiddleware(echo_headers, mesh=ratings),
        ratings,
        port=port,
        log_level="warning",
        lifespan="on",
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.005)
    productpage = Mesh.from_yaml(productpage_yaml(port, identity, ISTIO_MUTUAL))
    try:
        for seen in call_both_ways(productpage):
            assert "x-envoy-peer-metadata" not in seen
        inbound, count = only(ratings, "destination")
        outbound, _ = only(productpage, "source")
    finally:
        productpage.close()
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        ratings.close()
    assert count == 2
    assert inbound["source_principal"] == "spiffe://cluster.local/ns/default/sa/productpage"
    assert inbound["destination_principal"] == "spiffe://cluster.local/ns/default/sa/ratings"
    assert inbound["connection_security_policy"] == "mutual_tls"
    assert inbound["source_workload"] == "productpage-v1"
    assert inbound["source_app"] == "productpage"
    assert inbound["source_version"] == "v1"
    assert outbound["destination_workload"] == "ratings-v1"
    assert outbound["source_principal"] == "spiffe://cluster.local/ns/default/sa/productpage"
    assert outbound["destination_principal"] == "spiffe://cluster.local/ns/default/sa/ratings"
    assert outbound["connection_security_policy"] == "unknown"  # Istio's source reporter
