"""Tracing: when it is on, the spans meshlib makes (SERVER per inbound request, CLIENT per
outbound attempt) with their attributes, trace formats in and out, sampling, and the provider
built from the ``OTEL_*`` environment. Outbound scenarios run through ``httpx.Client`` and
``httpx.AsyncClient``, on a fake clock.

No test installs a global tracer provider for good: ``installed`` puts one in for one test.
"""

from __future__ import annotations

import asyncio
import json
import sys
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshlib import Mesh, handler
from meshlib.config import model as m
from meshlib.config.load import ServiceInfo
from meshlib.errors import ConfigError
from meshlib.server.inbound import trace_id_of
from meshlib.telemetry import Telemetry
from meshlib.telemetry.tracing import (
    TRACES_FILE_ENV,
    MeshTracer,
    extract,
    memory_tracer,
    propagation_from_environment,
    provider_from_environment,
    tracer_from_settings,
)
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

SERVICE = ServiceInfo(name="productpage", version="v1")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

ROUTES = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-route}
spec:
  hosts: [reviews]
  http:
  - name: slow
    match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 2s, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: to-v2
    route: [{destination: {host: reviews, subset: v2}}]
    retries: {attempts: 3, retryOn: "5xx,connect-failure"}
"""


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A global SDK provider, as an app installs one — for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def get(mesh: Mesh, kind: str, url: str, **kwargs: Any) -> httpx.Response:
    if kind == "sync":
        with mesh.client() as http:
            return http.get(url, **kwargs)

    async def go() -> httpx.Response:
        async with mesh.async_client() as http:
            return await http.get(url, **kwargs)

    return asyncio.run(go())


def traced_mesh(
    upstreams: Upstreams, text: str = ROUTES, **options: Any
) -> tuple[Mesh, InMemorySpanExporter]:
    mesh = in_memory_mesh(text, upstreams)
    tracer, spans = memory_tracer(clock=mesh.clock, **options)
    mesh.telemetry.set_tracer(tracer)
    return mesh, spans


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# --------------------------------------------------------------------------- on or off


def settings(**fields: Any) -> m.TracingSettings:
    return m.TracingSettings(**fields)


def test_off_without_a_section_and_without_an_installed_provider() -> None:
    assert tracer_from_settings(None, SERVICE, FakeClock()) is None


def test_a_section_turns_it_on_unless_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    for section in (settings(), settings(sampling=10), settings(enabled=True)):
        assert isinstance(tracer_from_settings(section, SERVICE, FakeClock()), MeshTracer)
    assert tracer_from_settings(settings(enabled=False), SERVICE, FakeClock()) is None


def test_an_installed_provider_turns_it_on_unless_disabled(
    installed: InMemorySpanExporter,
) -> None:
    assert isinstance(tracer_from_settings(None, SERVICE, FakeClock()), MeshTracer)
    assert tracer_from_settings(settings(enabled=False), SERVICE, FakeClock()) is None


def test_enabled_without_a_provider_builds_one_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    tracer = tracer_from_settings(settings(enabled=True), SERVICE, FakeClock())
    assert tracer is not None
    server = tracer.start_server("GET", "/", {}, None)
    tracer.end_server(server, 200, 0.25)
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "SpanKind.SERVER"
    assert printed["resource"]["attributes"]["service.name"] == "productpage"
    assert printed["resource"]["attributes"]["service.version"] == "v1"


def test_a_mesh_whose_config_enables_tracing_has_a_tracer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    mesh = Mesh.from_yaml(
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: p}\n"
        "spec: {telemetry: {tracing: {enabled: true, sampling: 5, propagation: [b3]}}}\n"
    )
    tracer = mesh.telemetry.tracer
    assert isinstance(tracer, MeshTracer)
    assert (tracer.sampling, tracer.propagation) == (5, ("b3",))
    assert mesh.telemetry.active
    assert not Mesh.from_yaml("").telemetry.active  # off: the pipeline builds no event


def test_otel_service_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    provider = provider_from_environment(SERVICE)
    assert provider.resource.attributes["service.name"] == "from-env"
    assert provider.resource.attributes["service.namespace"] == "default"


def test_unknown_or_missing_exporters_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="unknown span exporter 'zipkin'"):
        provider_from_environment(SERVICE)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="pip install opentelemetry-exporter-otlp-proto-grpc"):
        provider_from_environment(SERVICE)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "smoke")
    with pytest.raises(ConfigError, match="unknown OTLP protocol"):
        provider_from_environment(SERVICE)


def test_without_an_exporter_spans_are_made_and_not_exported(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv(TRACES_FILE_ENV, raising=False)
    without_otlp(monkeypatch)
    provider = provider_from_environment(SERVICE)
    assert "no span exporter is set up" in caplog.text
    assert provider.get_tracer("t").start_span("s").get_span_context().is_valid


def test_otlp_asked_for_without_its_package_names_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_otlp(monkeypatch)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    with pytest.raises(
        ConfigError, match=r"needs the package opentelemetry-exporter-otlp-proto-http: pip install"
    ):
        provider_from_environment(SERVICE)


def without_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ``opentelemetry-exporter-otlp-proto-http`` were not installed."""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)


def test_otel_propagators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3multi, tracecontext, xray")
    assert propagation_from_environment() == ("b3multi", "tracecontext")
    monkeypatch.setenv("OTEL_PROPAGATORS", "none")
    assert propagation_from_environment() == ()
    monkeypatch.delenv("OTEL_PROPAGATORS")
    assert propagation_from_environment() is None
    with pytest.raises(ValueError, match="unknown propagation"):
        MeshTracer(TracerProvider(), propagation=["jaeger"])


# --------------------------------------------------------------------------- CLIENT spans


def test_one_client_span_per_attempt(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.script("reviews", [Reply(503, delay=0.5), Reply(200, delay=0.25)], subset="v2")
    mesh, spans = traced_mesh(upstreams)
    assert get(mesh, kind, "http://reviews:9080/r?x=1").status_code == 200
    first, second = sorted(spans.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert first.kind is second.kind is SpanKind.CLIENT
    assert first.name == "GET"
    assert first.parent is None  # no inbound request: each attempt starts a trace
    a, b = attrs(first), attrs(second)
    assert a == {
        "http.request.method": "GET",
        "url.full": "http://reviews:9080/r?x=1",
        "server.address": "reviews",
        "server.port": 9080,
        "network.peer.address": "reviews-v2.upstream.test",
        "network.peer.port": 80,
        "meshlib.virtual_service": "default/reviews-route",
        "meshlib.route.name": "to-v2",
        "meshlib.route.index": 1,
        "meshlib.destination": "reviews.default.svc.cluster.local",
        "meshlib.destination.subset": "v2",
        "http.response.status_code": 503,
        "error.type": "503",
    }
    assert first.status.status_code is StatusCode.ERROR
    assert b["http.request.resend_count"] == 1
    assert b["http.response.status_code"] == 200
    assert "error.type" not in b
    assert second.status.status_code is StatusCode.UNSET
    assert (first.end_time or 0) - (first.start_time or 0) == 500_000_000  # the mesh clock's
    assert (second.end_time or 0) - (second.start_time or 0) == 250_000_000
    sent = [c.headers["traceparent"] for c in upstreams.calls("reviews")]
    assert [t.split("-")[2] for t in sent] == [
        f"{s.context.span_id:016x}" for s in (first, second) if s.context
    ]


def test_a_failed_connection_is_the_error_type(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.script("reviews", [Reply(error=httpx.ConnectError)], subset="v2")
    mesh, spans = traced_mesh(upstreams)
    get(mesh, kind, "http://reviews/r")
    failed, ok = sorted(spans.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert attrs(failed)["error.type"] == "connect-failure"
    assert "http.response.status_code" not in attrs(failed)
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(ok)["http.response.status_code"] == 200


def test_an_injected_delay_is_on_the_span(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v2")
    mesh, spans = traced_mesh(upstreams)
    get(mesh, kind, "http://reviews/slow")
    (span,) = spans.get_finished_spans()
    assert attrs(span)["meshlib.fault"] == "delay"
    assert attrs(span)["meshlib.response_flags"] == "DI"
    assert attrs(span)["meshlib.route.name"] == "slow"


def test_credentials_are_not_in_url_full(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v2")
    mesh, spans = traced_mesh(upstreams)
    get(mesh, kind, "http://user:secret@reviews/r")
    (span,) = spans.get_finished_spans()
    assert attrs(span)["url.full"] == "http://reviews/r"


def test_the_current_span_is_the_parent_of_an_attempt(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v2")
    mesh, spans = traced_mesh(upstreams)
    app_tracer = trace.get_tracer("app")  # the API's stand-in: a span context, nothing recorded
    own = trace.NonRecordingSpan(
        trace.SpanContext(int(TRACE_ID, 16), int(PARENT, 16), False, trace.TraceFlags(1))
    )
    with trace.use_span(own), app_tracer.start_as_current_span("inner"):
        get(mesh, kind, "http://reviews/r")
    (span,) = spans.get_finished_spans()
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT


def test_an_app_set_traceparent_is_the_parent_without_a_current_span(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v2")
    mesh, spans = traced_mesh(upstreams)
    get(mesh, kind, "http://reviews/r", headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    (span,) = spans.get_finished_spans()
    assert span.context is not None
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    (call,) = upstreams.calls("reviews")
    assert call.headers.get_list("traceparent") == [f"00-{TRACE_ID}-{span.context.span_id:016x}-01"]


# --------------------------------------------------------------------------- inbound formats


@pytest.mark.parametrize(
    ("headers", "trace_id", "parent", "sampled"),
    [
        ({"traceparent": f"00-{TRACE_ID}-{PARENT}-01"}, TRACE_ID, PARENT, True),
        ({"traceparent": f"00-{TRACE_ID}-{PARENT}-00"}, TRACE_ID, PARENT, False),
        ({"b3": f"{TRACE_ID}-{PARENT}-1"}, TRACE_ID, PARENT, True),
        ({"b3": f"{TRACE_ID[16:]}-{PARENT}-0"}, "0" * 16 + TRACE_ID[16:], PARENT, False),
        (
            {"x-b3-traceid": TRACE_ID, "x-b3-spanid": PARENT, "x-b3-sampled": "1"},
            TRACE_ID,
            PARENT,
            True,
        ),
        (  # both: W3C wins
            {"traceparent": f"00-{TRACE_ID}-{PARENT}-01", "b3": f"{'a' * 32}-{'b' * 16}-1"},
            TRACE_ID,
            PARENT,
            True,
        ),
    ],
)
def test_every_inbound_format_is_read(
    headers: dict[str, str], trace_id: str, parent: str, sampled: bool
) -> None:
    found = trace.get_current_span(extract(headers)).get_span_context()
    assert (f"{found.trace_id:032x}", f"{found.span_id:016x}") == (trace_id, parent)
    assert found.trace_flags.sampled is sampled
    assert trace_id_of(headers) == trace_id
    tracer, spans = memory_tracer()
    server = tracer.start_server("GET", "/p", headers, None)
    tracer.end_server(server, 200, 0.0)
    assert server.span.get_span_context().trace_id == int(trace_id, 16)
    assert bool(spans.get_finished_spans()) is sampled


def test_garbage_trace_headers_start_a_new_trace() -> None:
    headers = {"traceparent": "00-zz-yy-01", "b3": "nonsense"}
    assert not trace.get_current_span(extract(headers)).get_span_context().is_valid
    assert trace_id_of(headers) is None
    tracer, spans = memory_tracer()
    server = tracer.start_server("GET", "/p", headers, None)
    tracer.end_server(server, 200, 0.0)
    (span,) = spans.get_finished_spans()
    assert span.parent is None


def test_baggage_goes_on_through_the_trace(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v2")
    mesh, _ = traced_mesh(upstreams, propagation=["tracecontext", "baggage"])

    @handler(mesh=mesh)
    def served(headers: dict[str, str]) -> None:
        get(mesh, kind, "http://reviews/r")

    served({"baggage": "tenant=acme,plan=gold", "traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    (call,) = upstreams.calls("reviews")
    assert set(call.headers["baggage"].split(",")) == {"tenant=acme", "plan=gold"}


# --------------------------------------------------------------------------- sampling


def test_sampling_zero_records_nothing_yet_propagates_an_unsampled_trace(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v2")
    mesh, spans = traced_mesh(upstreams, sampling=0)

    @handler(mesh=mesh)
    def served(headers: dict[str, str]) -> None:
        get(mesh, kind, "http://reviews/r")

    served({})
    assert spans.get_finished_spans() == ()
    (call,) = upstreams.calls("reviews")
    _version, trace_id, _span_id, flags = call.headers["traceparent"].split("-")
    assert flags == "00"
    assert int(trace_id, 16) != 0


def test_an_inbound_sampling_decision_is_kept(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v2")
    mesh, spans = traced_mesh(upstreams, sampling=0)

    @handler(mesh=mesh)
    def served(headers: dict[str, str]) -> None:
        get(mesh, kind, "http://reviews/r")

    served({"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    assert {s.kind for s in spans.get_finished_spans()} == {SpanKind.SERVER, SpanKind.CLIENT}


def test_the_sampling_draw_follows_the_request_id() -> None:
    tracer = MeshTracer(TracerProvider(), sampling=25)
    ids = [f"req-{n}" for n in range(2000)]
    chosen = [i for i in ids if tracer.sample(i)]
    assert chosen == [i for i in ids if zlib.crc32(i.encode()) % 10_000 < 2500]
    assert 400 < len(chosen) < 600  # about a quarter
    other = MeshTracer(TracerProvider(), sampling=25)  # another service decides alike
    assert [i for i in ids if other.sample(i)] == chosen
    assert MeshTracer(TracerProvider(), sampling=100).sample(None)
    assert not MeshTracer(TracerProvider(), sampling=0).sample("x")
    assert MeshTracer(TracerProvider()).sample("x")  # unset: the provider's sampler decides


# --------------------------------------------------------------------------- SERVER spans


def test_server_span_status_and_error() -> None:
    tracer, spans = memory_tracer(clock=FakeClock())
    ok = tracer.start_server("POST", "/items/7", {}, "r", "https")
    tracer.end_server(ok, 404, 0.125, route="/items/{id}")
    bad = tracer.start_server("GET", "/boom", {}, "r")
    tracer.end_server(bad, 500, 0.0, error=RuntimeError("boom"))
    first, second = spans.get_finished_spans()
    assert first.name == "POST /items/{id}"
    assert attrs(first) == {
        "http.request.method": "POST",
        "url.path": "/items/7",
        "url.scheme": "https",
        "http.route": "/items/{id}",
        "http.response.status_code": 404,
    }
    assert first.status.status_code is StatusCode.UNSET  # a 4xx is the client's error
    assert (first.end_time or 0) - (first.start_time or 0) == 125_000_000
    assert second.status.status_code is StatusCode.ERROR
    assert attrs(second)["error.type"] == "RuntimeError"
    assert [e.name for e in second.events] == ["exception"]


def test_a_mesh_given_a_telemetry_hub_with_a_memory_tracer() -> None:
    tracer, spans = memory_tracer()
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews")
    mesh = Mesh.from_yaml(
        "",
        telemetry=Telemetry(tracer=tracer),
        transport=upstreams.transport(),
        extra_endpoints=upstreams.registry(),
    )
    with mesh.client() as http:
        http.get("http://reviews/r")
    assert len(spans.get_finished_spans()) == 1


def test_the_tracing_benchmark_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "bench.tracing", "--calls", "5", "--rounds", "1", "--json"]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout)
    assert set(result["us_per_call"]) == {
        "bare",
        "bare + otel",
        "mesh",
        "mesh traced",
        "mesh traced, 0 %",
        "served",
        "served traced",
    }
    assert all(isinstance(value, float) for value in result["ratios"].values())


# --------------------------------------------------------------------------- file, events

FILE_CONFIG = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  version: v2
  telemetry:
    tracing: {file: spans/reviews.jsonl}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    retries: {attempts: 2, retryOn: 5xx}
"""


def read_lines(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_file_exporter_writes_one_span_a_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv(TRACES_FILE_ENV, raising=False)
    (tmp_path / "spans").mkdir()
    config = tmp_path / "mesh.yaml"
    config.write_text(FILE_CONFIG, encoding="utf-8")
    upstreams = Upstreams(clock=FakeClock())
    upstreams.script("ratings", [Reply(503), Reply(200)])
    mesh = Mesh.from_file(
        config, transport=upstreams.transport(), extra_endpoints=upstreams.registry()
    )
    tracer = mesh.telemetry.tracer
    assert isinstance(tracer, MeshTracer)
    server = tracer.start_server("GET", "/reviews/0", {}, "r-1")
    token = otel_context.attach(server.context)
    try:
        get(mesh, kind, "http://ratings/ratings/0")
    finally:
        otel_context.detach(token)
    tracer.end_server(server, 200, 0.01)
    kept = tracer.recent_spans()
    mesh.close()  # flushes the batch to the file
    lines = read_lines(tmp_path / "spans" / "reviews.jsonl")  # relative to the config file
    assert [(s["kind"], s["service"], s["version"]) for s in lines] == [
        ("CLIENT", "reviews", "v2"),
        ("CLIENT", "reviews", "v2"),
        ("SERVER", "reviews", "v2"),
    ]
    assert lines == kept  # the same records as GET /_mesh/traces
    assert [e["name"] for e in lines[2]["events"]] == ["meshlib.retry"]


def test_the_file_exporter_from_the_environment(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "all.jsonl"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "file")
    monkeypatch.delenv(TRACES_FILE_ENV, raising=False)
    with pytest.raises(ConfigError, match="the file exporter needs a file"):
        provider_from_environment(SERVICE)
    monkeypatch.setenv(TRACES_FILE_ENV, str(path))
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")  # the file alone turns the exporter on
    for name in ("productpage", "details"):  # two services append to one file
        provider = provider_from_environment(ServiceInfo(name=name, version="v1"))
        provider.get_tracer("t").start_span(f"{name} span").end()
        provider.shutdown()
    lines = read_lines(path)
    assert [(s["name"], s["service"]) for s in lines] == [
        ("productpage span", "productpage"),
        ("details span", "details"),
    ]
    assert lines[0]["kind"] == "INTERNAL"
    assert lines[0]["parent_span_id"] is None
    monkeypatch.setenv(TRACES_FILE_ENV, str(tmp_path / "no-such-dir" / "x.jsonl"))
    with pytest.raises(ConfigError, match="cannot open the traces file"):
        provider_from_environment(SERVICE)


def test_span_events_for_faults_retries_and_refused_retries(kind: str) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.script("reviews", [Reply(503)] * 4, subset="v2")
    mesh, spans = traced_mesh(upstreams)
    tracer = mesh.telemetry.tracer
    assert isinstance(tracer, MeshTracer)
    server = tracer.start_server("GET", "/", {}, None)
    token = otel_context.attach(server.context)
    try:
        get(mesh, kind, "http://reviews/slow")  # an injected 2 s delay
        get(mesh, kind, "http://reviews/r")  # 503 four times: three retries, then given up
    finally:
        otel_context.detach(token)
    tracer.end_server(server, 200, 10.0)
    (span,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    names = [e.name for e in span.events]
    assert names == ["meshlib.fault", "meshlib.retry", "meshlib.retry", "meshlib.retry"]
    fault = dict(span.events[0].attributes or {})
    assert fault == {
        "http.request.method": "GET",
        "url.full": "http://reviews/slow",
        "meshlib.destination": "reviews.default.svc.cluster.local",
        "meshlib.destination.subset": "v2",
        "meshlib.fault": "delay",
        "meshlib.fault.delay": 2.0,
    }
    retries = [dict(e.attributes or {}) for e in span.events[1:]]
    assert [r["meshlib.retry.attempt"] for r in retries] == [1, 2, 3]
    assert all(r["meshlib.retry.delay"] >= 0 for r in retries)
    # event times are the mesh clock's: the delay's event comes before the fake 2 s pass
    assert span.events[0].timestamp < span.events[1].timestamp
