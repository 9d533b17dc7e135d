"""Spans exported over OTLP/HTTP when the standard ``OTEL_*`` variables say so, to a real
OTLP/HTTP receiver the test starts on 127.0.0.1: it takes ``POST /v1/traces``, decodes each body
as OpenTelemetry's protobuf ``ExportTraceServiceRequest`` and answers as a collector does.

In one process (a mesh built from a config with ``tracing: {}``; the calls through a stock
``httpx.Client`` and a stock ``httpx.AsyncClient``), and from a real service process — a
Bookinfo service started with ``MESH_CONFIG`` and nothing but the environment to say where spans
go.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip(
    "opentelemetry.exporter.otlp.proto.http", reason="the otlp extra is not installed"
)

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshlib import Mesh
from meshlib.server import MeshMiddleware
from meshlib.testing import FakeClock, Reply, Upstreams
from tests.integration.prometheus import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span it was sent, decoded, with its
    resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()
        received = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)  # raises on anything but the protobuf message
                with received.lock:
                    received.requests.append(dict(self.headers))
                    for resource_spans in request.resource_spans:
                        resource = attributes(resource_spans.resource.attributes)
                        for scope_spans in resource_spans.scope_spans:
                            received.spans.extend((resource, s) for s in scope_spans.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[dict[str, Any], Span]]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            assert time.monotonic() < deadline, f"only {len(self.spans)} spans arrived"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


CONFIG = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
  telemetry: {tracing: {}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 2, retryOn: 5xx}
"""


@pytest.mark.parametrize("exporter", ["otlp", None])  # None: OTEL_TRACES_EXPORTER unset
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_spans_go_to_the_otlp_endpoint_of_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, exporter: str | None, kind: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=bookinfo")
    for name in ("OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL", "MESHLIB_TRACES_FILE"):
        monkeypatch.delenv(name, raising=False)
    if exporter is None:
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporter)
    upstreams = Upstreams(clock=FakeClock())
    upstreams.script("reviews", [Reply(503), Reply(200, json={"reviews": []})])
    mesh = Mesh.from_yaml(
        CONFIG, transport=upstreams.transport(), extra_endpoints=upstreams.registry()
    )

    async def page(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if kind == "sync":
            with mesh.client() as http:
                status = http.get("http://reviews:9080/reviews/0").status_code
        else:
            async with mesh.async_client() as http:
                status = (await http.get("http://reviews:9080/reviews/0")).status_code
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"page"})

    async def load() -> httpx.Response:
        transport = httpx.ASGITransport(app=MeshMiddleware(page, mesh))
        async with httpx.AsyncClient(transport=transport, base_url="http://productpage") as http:
            return await http.get("/productpage", headers={"traceparent": INCOMING})

    assert asyncio.run(load()).status_code == 200
    mesh.close()  # flushes the batch
    spans = receiver.wait_for(3)
    assert len(spans) == 3
    assert {h.get("x-tenant") for h in receiver.requests} == {"bookinfo"}
    assert {h.get("content-type") for h in receiver.requests} == {"application/x-protobuf"}
    resource = spans[0][0]
    assert resource["service.name"] == "productpage"
    assert resource["service.version"] == "v1"
    assert resource["service.namespace"] == "default"
    by_kind = {Span.SpanKind.Name(s.kind): [] for _, s in spans}
    for _, span in spans:
        by_kind[Span.SpanKind.Name(span.kind)].append(span)
    (server,) = by_kind["SPAN_KIND_SERVER"]
    failed, retried = sorted(by_kind["SPAN_KIND_CLIENT"], key=lambda s: s.start_time_unix_nano)
    trace_id = INCOMING.split("-")[1]
    assert {s.trace_id.hex() for _, s in spans} == {trace_id}
    assert server.parent_span_id.hex() == INCOMING.split("-")[2]
    assert failed.parent_span_id == retried.parent_span_id == server.span_id
    assert attributes(failed.attributes)["http.response.status_code"] == 503
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert attributes(retried.attributes)["http.request.resend_count"] == 1
    assert attributes(server.attributes)["url.path"] == "/productpage"
    (retry,) = server.events
    assert retry.name == "meshlib.retry"
    assert attributes(retry.attributes)["meshlib.retry.attempt"] == 1


def test_a_service_process_exports_to_the_collector_its_environment_names(
    receiver: Receiver, tmp_path: Path
) -> None:
    config = tmp_path / "ratings.yaml"
    config.write_text(
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: ratings}\n"
        "spec: {version: v1, telemetry: {tracing: {}}}\n",
        encoding="utf-8",
    )
    port = free_port()
    env = {
        **os.environ,
        "MESH_CONFIG": str(config),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.url}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's batch: every 100 ms
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.bookinfo.ratings", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/ratings/0", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        spans = receiver.wait_for(1)  # exported while the service runs, not only at exit
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    resource, span = spans[0]
    assert resource["service.name"] == "ratings"
    assert resource["deployment.environment"] == "test"
    assert Span.SpanKind.Name(span.kind) == "SPAN_KIND_SERVER"
    assert span.name == "GET /ratings/{product_id:int}"
    assert attributes(span.attributes)["http.response.status_code"] == 200
