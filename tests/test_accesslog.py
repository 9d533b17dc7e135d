"""Access log: one record per request on ``meshlib.access``, in json, Envoy's text, or a format
of Envoy operators; off when not configured or disabled.

Every client scenario runs through a stock ``httpx.Client`` and ``httpx.AsyncClient`` (the
``send`` fixture) on in-memory meshes with a fake clock, whose wall clock starts at
2026-01-01T00:00:00Z.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshlib import ConfigError, Mesh, MeshRequestError
from meshlib.telemetry import InboundFinished, accesslog
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

REVIEWS = "http://reviews:9080/reviews/0?page=2"


def service(access_log: str) -> str:
    return (
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: productpage}\n"
        f"spec:\n  version: v1\n  telemetry:\n    accessLog: {access_log}\n"
    )


RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: to-v2
    route: [{destination: {host: reviews, subset: v2}}]
"""

Send = Callable[..., httpx.Response]


@pytest.fixture
def upstreams() -> Upstreams:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v2")
    return upstreams


@pytest.fixture
def meshes() -> Iterator[Callable[[str, Upstreams], Mesh]]:
    made: list[Mesh] = []

    def build(text: str, upstreams: Upstreams) -> Mesh:
        mesh = in_memory_mesh(text, upstreams)
        made.append(mesh)
        return mesh

    yield build
    for mesh in made:
        mesh.close()


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """The records written to the access loggers so far."""
    caplog.set_level(logging.INFO)

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name.startswith(("meshlib.access", "app.access"))]

    return records


def test_json_lines_carry_envoys_fields(
    send: Send, upstreams: Upstreams, meshes: Any, access: Any
) -> None:
    upstreams.script("reviews", [Reply(200, body=b"z" * 42, delay=0.25)], subset="v2")
    mesh = meshes(service("{}") + "---\n" + RULES, upstreams)

    send(mesh, "POST", REVIEWS, content=b"abc", headers={"x-request-id": "req-1"})

    [record] = access()
    assert record.levelno == logging.INFO
    line = json.loads(record.getMessage())
    assert line == {
        "start_time": "2026-01-01T00:00:00.000Z",
        "direction": "outbound",
        "method": "POST",
        "path": "/reviews/0?page=2",
        "protocol": "http",
        "response_code": 200,
        "response_flags": "-",
        "duration": 250,
        "bytes_received": 3,
        "bytes_sent": 42,
        "authority": "reviews:9080",
        "upstream_host": "reviews-v2.upstream.test:80",
        "destination": "reviews.default.svc.cluster.local|v2",
        "route": "default/reviews:to-v2",
        "attempts": 1,
        "request_id": "req-1",
        "trace_id": None,
    }
    assert list(line) == list(accesslog.FIELDS)
    assert record.access == line  # type: ignore[attr-defined]


def test_text_lines_have_envoys_default_shape(
    send: Send, upstreams: Upstreams, meshes: Any, access: Any
) -> None:
    upstreams.script("reviews", [Reply(503)] * 3, subset="v2")
    mesh = meshes(service("{format: text}") + "---\n" + RULES, upstreams)

    send(mesh, "GET", REVIEWS)

    [record] = access()
    waited = int(sum(upstreams.clock.sleeps) * 1000)  # type: ignore[union-attr] # the backoffs
    assert waited > 0
    assert record.getMessage() == (
        f'[2026-01-01T00:00:00.000Z] "GET /reviews/0?page=2 http" 503 URX 0 0 {waited} "-" '
        '"reviews:9080" "reviews-v2.upstream.test:80" reviews.default.svc.cluster.local|v2 '
        "default/reviews:to-v2 outbound -"
    )


def test_a_custom_format_of_envoy_operators(
    send: Send, upstreams: Upstreams, meshes: Any, access: Any
) -> None:
    fmt = (
        "'%START_TIME(%Y/%m/%d %H:%M:%S.%3f)% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% "
        "%RESPONSE_FLAGS% %DURATION%ms %UPSTREAM_HOST%:7 %REQ(X-REQUEST-ID)% "
        "tries=%UPSTREAM_REQUEST_ATTEMPT_COUNT%'"
    )
    mesh = meshes(service(f"{{format: {fmt}, logger: app.access}}") + "---\n" + RULES, upstreams)

    send(mesh, "GET", REVIEWS, headers={"x-request-id": "abc"})

    [record] = access()
    assert record.name == "app.access"
    assert record.getMessage() == (
        "2026/01/01 00:00:00.000 GET /reviews/0?page=2 200 - 0ms reviews abc tries=1"
    )


def test_a_failed_call_is_logged_with_envoys_code_and_flags(
    send: Send, upstreams: Upstreams, meshes: Any, access: Any
) -> None:
    upstreams.script("reviews", [Reply(error=httpx.ConnectError)] * 3, subset="v2")
    mesh = meshes(service("{}") + "---\n" + RULES, upstreams)

    with pytest.raises(MeshRequestError):
        send(mesh, "GET", REVIEWS)

    [record] = access()
    line = json.loads(record.getMessage())
    assert (line["response_code"], line["response_flags"], line["attempts"]) == (503, "UF,URX", 3)


def test_the_trace_id_is_the_current_spans(
    send: Send, upstreams: Upstreams, meshes: Any, access: Any
) -> None:
    mesh = meshes(service("{}") + "---\n" + RULES, upstreams)
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("handler") as span:
        send(mesh, "GET", REVIEWS)

    [record] = access()
    expected = format(span.get_span_context().trace_id, "032x")
    assert json.loads(record.getMessage())["trace_id"] == expected


def test_inbound_requests_are_logged_too(upstreams: Upstreams, meshes: Any, access: Any) -> None:
    mesh = meshes(service("{format: text}"), upstreams)

    mesh.telemetry.emit(
        InboundFinished("GET", "/productpage", 200, 0.5, 0, 1234, "r-9", "ab" * 16, "gateway")
    )

    [record] = access()
    assert record.getMessage() == (
        '[2025-12-31T23:59:59.500Z] "GET /productpage http" 200 - 0 1234 500 "r-9" "-" "-" '
        f"productpage.default.svc.cluster.local - inbound {'ab' * 16}"
    )


def test_nothing_is_logged_when_off(
    send: Send, upstreams: Upstreams, meshes: Any, access: Any
) -> None:
    plain = service("{}").replace("  telemetry:\n    accessLog: {}\n", "")
    for text in (plain, service("{enabled: false}")):
        mesh = meshes(text, upstreams)
        assert not mesh.telemetry.active
        send(mesh, "GET", REVIEWS)
    assert access() == []


def test_a_logger_level_above_info_turns_it_off_at_run_time(
    send: Send, upstreams: Upstreams, meshes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="meshlib.access")
    mesh = meshes(service("{}"), upstreams)
    send(mesh, "GET", REVIEWS)
    assert [r for r in caplog.records if r.name == "meshlib.access"] == []


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("'%START_TIME% %BOGUS_FIELD%'", "unknown access log operator %BOGUS_FIELD%"),
        ("'%REQ(USER-AGENT)%'", "unknown access log operator %REQ(USER-AGENT)%"),
        ("jsn", "'jsn' is not an access log format"),
    ],
)
def test_an_unknown_operator_is_a_config_error_naming_it(
    upstreams: Upstreams, fmt: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        in_memory_mesh(service(f"{{format: {fmt}}}"), upstreams)
    text = str(caught.value)
    assert "spec.telemetry.accessLog.format" in text
    assert message in text


def test_operators_are_parsed_as_envoy_writes_them() -> None:
    pieces = accesslog.parse_format("a %req(x-request-id)% b %RESPONSE_CODE%:2%DURATION%")
    assert [p if isinstance(p, str) else (p.field, p.limit) for p in pieces] == [
        "a ",
        ("request_id", None),
        " b ",
        ("response_code", 2),
        ("duration", None),
    ]
