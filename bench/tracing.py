"""Tracing overhead: what a traced call costs, against the same call untraced and against
OpenTelemetry used by hand around bare httpx — all in one run, timed the same way.

    python -m bench.tracing [--calls N] [--rounds N] [--json]

Every client sends to an in-memory upstream (``httpx.MockTransport``): no network, so the figures
are the CPU each way of calling costs, which a network round trip would hide. Traced rows use an
SDK ``TracerProvider`` with a ``BatchSpanProcessor`` and an exporter that drops the spans — the
export itself is the exporter's cost, not the tracer's.

Rows:

* ``bare``: a stock ``httpx.Client``.
* ``bare + otel``: the same, inside a CLIENT span with ``traceparent`` injected — what any
  instrumentation of httpx does.
* ``mesh``: a meshlib client with tracing off (a header route, the default retry policy).
* ``mesh traced``: tracing on, every trace sampled: one CLIENT span per attempt.
* ``mesh traced, 0 %``: tracing on, ``sampling: 0``: ids and headers, nothing recorded.
* ``served`` / ``served traced``: a ``@handler`` function making that mesh call — the inbound
  side's context (and SERVER span) included.

Each row is measured in interleaved blocks whose order rotates every round, so drift hits all
alike; a row's figure is the median of its blocks (microseconds per call). Ratios: the traced
mesh call to the untraced one, and meshlib's added tracing cost to OpenTelemetry's by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshlib import Mesh, handler
from meshlib.telemetry import Telemetry
from meshlib.telemetry.tracing import MeshTracer

URL = "http://reviews:9080/reviews/0"
CONFIG = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  propagateHeaders: [end-user]
  registry: {static: {reviews: [{address: "10.0.0.1:9080", labels: {version: v1}}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews}}]
"""
INBOUND = {"x-request-id": "bench", "end-user": "alice"}


class DropExporter(SpanExporter):
    """Takes the spans and does nothing with them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def upstream() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))


def provider() -> TracerProvider:
    made = TracerProvider()
    made.add_span_processor(BatchSpanProcessor(DropExporter(), max_queue_size=65536))
    return made


def mesh(tracer: MeshTracer | None) -> Mesh:
    return Mesh.from_yaml(CONFIG, telemetry=Telemetry(tracer=tracer), transport=upstream())


def ways(sdk: TracerProvider) -> dict[str, Callable[[], Any]]:
    """Each way of making one call, ready to run."""
    bare = httpx.Client(transport=upstream())
    otel = sdk.get_tracer("bench")
    propagator = TraceContextTextMapPropagator()

    def bare_otel() -> None:
        with otel.start_as_current_span("GET", kind=trace.SpanKind.CLIENT) as span:
            headers: dict[str, str] = {}
            propagator.inject(headers)
            response = bare.get(URL, headers=headers)
            span.set_attribute("http.response.status_code", response.status_code)

    plain = mesh(None).client()
    traced = mesh(MeshTracer(sdk)).client()
    unsampled = mesh(MeshTracer(sdk, sampling=0)).client()
    traced_mesh = traced._transport.mesh  # type: ignore[attr-defined]
    plain_mesh = plain._transport.mesh  # type: ignore[attr-defined]

    @handler(mesh=plain_mesh)
    def served(headers: dict[str, str]) -> None:
        plain.get(URL)

    @handler(mesh=traced_mesh)
    def served_traced(headers: dict[str, str]) -> None:
        traced.get(URL)

    return {
        "bare": lambda: bare.get(URL),
        "bare + otel": bare_otel,
        "mesh": lambda: plain.get(URL),
        "mesh traced": lambda: traced.get(URL),
        "mesh traced, 0 %": lambda: unsampled.get(URL),
        "served": lambda: served(INBOUND),
        "served traced": lambda: served_traced(INBOUND),
    }


def block(call: Callable[[], Any], calls: int) -> float:
    """Microseconds per call over one block of ``calls`` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def run(calls: int, rounds: int) -> dict[str, Any]:
    sdk = provider()
    table = ways(sdk)
    names = list(table)
    for name in names:  # warm up
        block(table[name], max(calls // 10, 10))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(block(table[name], calls))
    sdk.shutdown()
    us = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "python": platform.python_version(),
        "calls_per_block": calls,
        "rounds": rounds,
        "us_per_call": us,
        "ratios": {
            "mesh traced / mesh": us["mesh traced"] / us["mesh"],
            "mesh traced 0% / mesh": us["mesh traced, 0 %"] / us["mesh"],
            "served traced / served": us["served traced"] / us["served"],
            "bare + otel / bare": us["bare + otel"] / us["bare"],
            "meshlib tracing cost / otel by hand": (us["mesh traced"] - us["mesh"])
            / (us["bare + otel"] - us["bare"]),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.calls, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"tracing overhead, in-memory upstream, {args.rounds} rounds x {args.calls} calls")
    for name, value in result["us_per_call"].items():
        print(f"  {name:<20} {value:8.1f} us/call")
    for name, value in result["ratios"].items():
        print(f"  {name:<37} {value:6.2f}")


if __name__ == "__main__":
    main()
