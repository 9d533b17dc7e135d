"""Memory over a long run: resident size after a million mixed requests through one mesh, against
its size after the first ten thousand.

    python -m bench.memory [--quick] [--calls N] [--tracemalloc] [--json]

The Makefile's ``bench`` target runs it; the figures also go to ``bench/results/memory.json``.

One ``httpx.Client`` through one mesh, the inner transport in memory (``httpx.MockTransport``),
on a clock that moves only when the mesh sleeps or the benchmark says so (retry backoff and
breaker reset timeouts cost no real time). Telemetry is on: metrics (``MetricsRecorder``,
scraped at every checkpoint) and tracing (an OpenTelemetry SDK ``TracerProvider`` with a
``BatchSpanProcessor`` and an exporter that drops the spans; every trace sampled).

The calls repeat one schedule of 25 (shuffled once):

* 15 successes (``reviews``, 200);
* 2 retried calls (``reviews /flaky``: the upstream answers 503, 503, 200 in turn, so each call
  makes three attempts under the mesh's default retry policy);
* 2 fault aborts (``ratings``: ``fault.abort`` 503 at 100 %);
* 6 steps of one breaker cycle (``details``, ``failureThreshold: 2``, ``resetTimeout: 1s``):
  two 500s open the breaker, two calls are refused (``CircuitOpenError``), the clock moves past
  the reset timeout, a trial call succeeds and closes it, one more success.

RSS (``VmRSS``, after ``gc.collect()`` and a flush of the span processor) is taken at 1 %, 10 %,
50 % and 100 % of ``--calls`` (10,000, 100,000, 500,000 and 1,000,000 by default). Target: RSS at
the end ≤ RSS at 1 % + 1 MiB. On a miss (or with ``--tracemalloc``) a second, shorter run on a
new mesh compares ``tracemalloc`` snapshots and prints where the memory that stayed was
allocated.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import platform
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.report import publish, rss_kib, verdict
from meshlib import Mesh
from meshlib.config.load import load_texts
from meshlib.errors import CircuitOpenError
from meshlib.telemetry import Telemetry
from meshlib.telemetry.metrics import MetricsRecorder
from meshlib.telemetry.tracing import MeshTracer

LIMIT_KIB = 1024
CHECKPOINTS = (0.01, 0.1, 0.5, 1.0)
RESET_TIMEOUT = 1.0
FRAMES = 6
"""Frames ``tracemalloc`` keeps per allocation (each one slows the traced run further)."""

CONFIG = f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  propagateHeaders: [end-user]
  registry:
    static:
      reviews: [{{address: "10.0.0.1:9080", labels: {{version: v1}}}}]
      ratings: [{{address: "10.0.0.2:9080"}}]
      details: [{{address: "10.0.0.3:9080"}}]
  circuitBreakers:
    enabled: false
    destinations:
      details: {{enabled: true, failureThreshold: 2, resetTimeout: {RESET_TIMEOUT}s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:
  - fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: ratings}}}}]
"""


class Clock:
    """Time that moves only when the mesh sleeps or the benchmark advances it (records
    nothing, unlike ``meshlib.testing.FakeClock``, whose ``sleeps`` list keeps every wait)."""

    def __init__(self) -> None:
        self._now = 1000.0

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return 1_767_225_600.0 + self._now

    def advance(self, seconds: float) -> None:
        self._now += max(seconds, 0.0)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)


class DropExporter(SpanExporter):
    """Takes the spans and does nothing with them but count them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class Upstream:
    """The in-memory upstream: ``/flaky`` answers 503, 503, 200 in turn; ``details`` answers
    500 while ``failing``; everything else 200."""

    def __init__(self) -> None:
        self.flaky = itertools.cycle((503, 503, 200))
        self.failing = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/flaky":
            return httpx.Response(next(self.flaky), content=b"flaky")
        if request.url.host == "10.0.0.3" and self.failing:
            return httpx.Response(500, content=b"down")
        return httpx.Response(200, content=b'{"ok": true}')


class Workload:
    """One mesh, its client and telemetry, and the schedule of calls."""

    def __init__(self, seed: int = 1) -> None:
        self.clock = Clock()
        self.upstream = Upstream()
        self.provider = TracerProvider()
        self.exporter = DropExporter()
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        config = load_texts([("memory.yaml", CONFIG)])
        self.recorder = MetricsRecorder(config.service)
        tracer = MeshTracer(self.provider, service="productpage", clock=self.clock, sampling=100)
        self.mesh = Mesh(
            config,
            seed=seed,
            clock=self.clock,
            transport=httpx.MockTransport(self.upstream.handle),
            telemetry=Telemetry([self.recorder], tracer),
        )
        self.client = self.mesh.client()
        self.wrong: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        steps = itertools.cycle(self._breaker_cycle())
        ops: list[tuple[str, Callable[[], bool]]] = (
            [("ok", self.ok)] * 15 + [("retried", self.retried)] * 2 + [("abort", self.abort)] * 2
        )

        def breaker() -> bool:
            return next(steps)()

        ops += [("breaker", breaker)] * 6
        random.Random(seed).shuffle(ops)
        self.schedule = ops

    # ------------------------------------------------------------------ the calls

    def ok(self) -> bool:
        response = self.client.get("http://reviews:9080/reviews/1", headers={"end-user": "u"})
        return response.status_code == 200 and response.extensions["mesh"].attempts == 1

    def retried(self) -> bool:
        response = self.client.get("http://reviews:9080/flaky")
        return response.status_code == 200 and response.extensions["mesh"].attempts == 3

    def abort(self) -> bool:
        response = self.client.get("http://ratings:9080/ratings/1")
        return response.status_code == 503 and "FI" in response.headers["x-mesh-response-flags"]

    def _breaker_cycle(self) -> list[Callable[[], bool]]:
        url = "http://details:9080/details/1"
        upstream, client, clock = self.upstream, self.client, self.clock

        def failure() -> bool:
            upstream.failing = True
            return client.get(url).status_code == 500

        def refused() -> bool:
            try:
                client.get(url)
            except CircuitOpenError:
                return True
            return False

        def trial() -> bool:
            clock.advance(RESET_TIMEOUT * 1.5)
            upstream.failing = False
            return client.get(url).status_code == 200

        def success() -> bool:
            return client.get(url).status_code == 200

        return [failure, failure, refused, refused, trial, success]

    def run(self, calls: int) -> None:
        schedule = self.schedule
        size = len(schedule)
        counts, wrong = self.counts, self.wrong
        for i in range(calls):
            name, op = schedule[i % size]
            counts[name] = counts.get(name, 0) + 1
            if not op():
                wrong[name] = wrong.get(name, 0) + 1

    def settle(self) -> int:
        """What a checkpoint does before reading the RSS: spans exported, metrics scraped,
        garbage collected. Returns the requests the metrics have counted so far."""
        self.provider.force_flush()
        _, body = self.recorder.scrape()
        gc.collect()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in body.decode().splitlines()
            if line.startswith("istio_requests_total{")
        )

    def close(self) -> None:
        self.client.close()
        self.mesh.close()
        self.provider.shutdown()


# --------------------------------------------------------------------------- tracemalloc


def diagnose(calls: int, top: int = 15) -> list[dict[str, Any]]:
    """Where memory that stays was allocated: ``tracemalloc`` snapshots after ``calls // 10``
    and after ``calls`` calls on a new workload, compared by line (largest growth first)."""
    workload = Workload(seed=2)
    tracemalloc.start(FRAMES)
    try:
        workload.run(calls // 10)
        workload.settle()
        before = tracemalloc.take_snapshot()
        workload.run(calls - calls // 10)
        workload.settle()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        workload.close()
    ignore = (tracemalloc.Filter(False, tracemalloc.__file__),)
    by_line = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
    grown = [stat for stat in by_line if stat.size_diff > 0][:top]
    return [
        {
            "size_diff_kib": stat.size_diff / 1024,
            "count_diff": stat.count_diff,
            "where": [
                f"{_short(frame.filename)}:{frame.lineno}" for frame in reversed(stat.traceback)
            ],
        }
        for stat in grown
    ]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    points = result["checkpoints"]
    header = " | ".join(f"{p['calls']:,}" for p in points)
    values = " | ".join(f"{p['rss_kib']:,}" for p in points)
    lines = [
        f"Memory, {result['environment']}",
        "",
        f"| calls | {header} | end − first | target | verdict |",
        "|---|" + "---:|" * len(points) + "---:|---|---|",
        f"| RSS (KiB) | {values} | {result['growth_kib']:+,} KiB "
        f"({result['growth_bytes_per_call']:.3f} B/call) | ≤ +{LIMIT_KIB:,} KiB "
        f"| {verdict(result['met'])} |",
        "",
        f"{result['calls']:,} calls in {result['seconds_calls']:.0f} s "
        f"({result['us_per_call']:.0f} µs per call): {result['mix']}; "
        f"{result['spans_exported']:,} spans exported, {result['requests_in_metrics']:,} "
        "requests in istio_requests_total. "
        + (
            f"Calls that ended otherwise than expected: {result['wrong']}."
            if result["wrong"]
            else "Every call ended as expected."
        ),
    ]
    grown = result.get("tracemalloc")
    if grown is not None:
        lines += [
            "",
            f"tracemalloc, {result['tracemalloc_calls']:,} calls on a new mesh: memory that "
            "stayed between 10 % and 100 % of them, by allocation site (largest first):",
            "",
            "| KiB | blocks | allocated at (innermost first) |",
            "|---:|---:|---|",
        ]
        lines += [
            f"| {g['size_diff_kib']:+.1f} | {g['count_diff']:+,} | {' ← '.join(g['where'])} |"
            for g in grown
        ] or ["| – | – | nothing grew |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 calls")
    parser.add_argument("--calls", type=int, default=None, help="default 1,000,000")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="diagnose with tracemalloc even on a pass"
    )
    parser.add_argument("--diagnose-calls", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    calls = args.calls or (100_000 if args.quick else 1_000_000)

    started = time.perf_counter()
    workload = Workload()
    checkpoints = []
    done = 0
    calls_seconds = 0.0
    for share in CHECKPOINTS:
        target = max(1, round(calls * share))
        begun = time.perf_counter()
        workload.run(target - done)
        calls_seconds += time.perf_counter() - begun
        done = target
        counted = workload.settle()
        checkpoints.append({"calls": done, "rss_kib": rss_kib()})
    counts, wrong = dict(workload.counts), dict(workload.wrong)
    spans = workload.exporter.spans
    workload.close()
    first, last = checkpoints[0]["rss_kib"], checkpoints[-1]["rss_kib"]
    result: dict[str, Any] = {
        "environment": (
            f"Python {platform.python_version()}, httpx {httpx.__version__}, "
            f"{os.cpu_count()} CPUs, in-memory inner transport, metrics and tracing on"
        ),
        "calls": calls,
        "checkpoints": checkpoints,
        "growth_kib": last - first,
        "growth_bytes_per_call": (last - first) * 1024 / max(1, calls - checkpoints[0]["calls"]),
        "limit_kib": LIMIT_KIB,
        "met": last - first <= LIMIT_KIB,
        "mix": ", ".join(f"{name} {n:,}" for name, n in counts.items()),
        "wrong": wrong,
        "spans_exported": spans,
        "requests_in_metrics": counted,
        "seconds_calls": calls_seconds,
        "us_per_call": calls_seconds / calls * 1e6,
    }
    if args.tracemalloc or not result["met"]:
        diagnose_calls = args.diagnose_calls or max(10_000, calls // 50)
        result["tracemalloc_calls"] = diagnose_calls
        result["tracemalloc"] = diagnose(diagnose_calls)
    result["seconds"] = round(time.perf_counter() - started, 1)
    publish("memory", result, args.json, markdown)


if __name__ == "__main__":
    main()
