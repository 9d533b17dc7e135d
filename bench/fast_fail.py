"""Fast failure: what a call refused by an open breaker, and a call aborted by an injected fault,
cost — against one loopback call to a real upstream.

    python -m bench.fast_fail [--quick] [--calls N] [--block N] [--profile-calls N] [--json]

The Makefile's ``bench`` target runs it; the figures also go to ``bench/results/fast_fail.json``.

One upstream server (``tests/integration/upstream.py``) runs in a process of its own on
127.0.0.1. The loopback call is a bare ``httpx.Client`` keeping its connection alive (and, for
reference, a bare ``httpx.AsyncClient``). The mesh sends ``reviews`` and ``ratings`` to that
server: ``reviews`` has a breaker (``spec.circuitBreakers``, one failure opens it for an hour),
opened before the measurement by one 503; ``ratings`` has a route with ``fault.abort`` at 100 %
(HTTP 503). Tracing is off.

Rows, sync and async, each a series of single calls (concurrency 1) timed one by one, measured in
interleaved blocks whose order rotates every round:

* ``loopback``: the bare client's call to the upstream — the yardstick.
* ``breaker open``: ``client.get`` through the mesh, refused with ``CircuitOpenError`` (``UO``).
* ``fault abort``: ``client.get`` through the mesh, answered 503 ``FI`` by the mesh itself.
* the same two through the mesh's transport alone (``handle_request`` /
  ``handle_async_request`` on a prebuilt request): the mesh's own share, without httpx's client.
* floors, for reference: a bare client whose transport raises at once, and one whose transport
  answers a 503 from memory — what any failure through ``httpx.Client`` costs, mesh or not;
  and the same with the client class the mesh hands out (``Mesh.client()`` may return a
  subclass of httpx's with cheaper bookkeeping: ``meshlib.clients.httpx.client``). A client row
  less its floor is what the mesh adds.

* aiohttp (when installed): the same two through ``mesh.aiohttp_session()`` and through the
  mesh's middleware alone (called with a prebuilt ``aiohttp.ClientRequest`` and a handler that
  must not be reached), beside a bare ``aiohttp.ClientSession`` loopback call and floors: a
  session whose middleware raises at once, and one whose middleware answers a 503 from memory.
  Targets: through the session ≤ 1/10 of the sync loopback call's p50, the middleware's own
  part ≤ 1/50.

Target: every fast failure's median ≤ 1/50 of the sync loopback call's p50 (the client rows are
the target; the transport rows say how much of it is the mesh's). A row that misses is profiled
(``cProfile``, ``--profile-calls`` calls) and its top costs are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import platform
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.report import percentile, publish, verdict
from meshlib import Mesh
from meshlib.clients.httpx.transport import AsyncMeshTransport, MeshTransport
from meshlib.errors import CircuitOpenError
from tests.integration.upstream import Upstream

TARGET_RATIO = 1 / 50
#: A fast failure through ``aiohttp.ClientSession`` (the mesh's middleware in it): ≤ 1/10.
AIOHTTP_CLIENT_RATIO = 1 / 10
BREAKER_URL = "http://reviews:9080/reviews/0"
ABORT_URL = "http://ratings:9080/ratings/0"
FLOOR_RAISE = "bare client, its transport raises (floor)"
FLOOR_REPLY = "bare client, in-memory 503 (floor)"
MESH_FLOOR_RAISE = "mesh's client class, its transport raises (floor)"
MESH_FLOOR_REPLY = "mesh's client class, in-memory 503 (floor)"


def mesh_config(address: str) -> str:
    return f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  registry:
    static:
      reviews: [{{address: "{address}"}}]
      ratings: [{{address: "{address}"}}]
  circuitBreakers: {{failureThreshold: 1, resetTimeout: 3600s}}
  telemetry: {{tracing: {{enabled: false}}}}
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


# --------------------------------------------------------------------------- the calls


def _abort_reply(request: httpx.Request) -> httpx.Response:
    """An in-memory 503 as a transport hands it over: a stream the client reads."""
    body = b"fault filter abort"
    return httpx.Response(
        503, headers=[("content-length", str(len(body)))], stream=httpx.ByteStream(body)
    )


class _Refusing(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """A transport that fails every request at once, as an open breaker does."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)


class Outcomes:
    """Calls that did not end as their row says they must."""

    def __init__(self) -> None:
        self.wrong: dict[str, int] = {}

    def note(self, row: str) -> None:
        self.wrong[row] = self.wrong.get(row, 0) + 1


def open_breaker(mesh: Mesh, client: httpx.Client) -> None:
    """One 503 from upstream opens the ``reviews`` breaker (failureThreshold 1)."""
    with contextlib.suppress(CircuitOpenError):  # the default retry meets the opened breaker
        client.get(BREAKER_URL + "?status=503")
    states = {name: b.state for name, b in mesh.breakers().items()}
    if "open" not in states.values():
        raise RuntimeError(f"the breaker did not open: {states}")


def sync_rows(mesh: Mesh, bare_url: str, outcomes: Outcomes) -> dict[str, Callable[[], Any]]:
    bare = httpx.Client()
    meshed = mesh.client()
    open_breaker(mesh, meshed)
    transport = MeshTransport(mesh, httpx.HTTPTransport())
    refused = httpx.Request("GET", BREAKER_URL)
    aborted = httpx.Request("GET", ABORT_URL)
    floor_reply = httpx.Client(transport=httpx.MockTransport(_abort_reply))
    floor_raise = httpx.Client(transport=_Refusing())
    kind = type(meshed)  # the client class the mesh hands out
    mesh_reply = kind(transport=httpx.MockTransport(_abort_reply))
    mesh_raise = kind(transport=_Refusing())

    def reply_floor() -> None:
        floor_reply.get(ABORT_URL)

    def raise_floor() -> None:
        with contextlib.suppress(httpx.ConnectError):
            floor_raise.get(BREAKER_URL)

    def mesh_reply_floor() -> None:
        mesh_reply.get(ABORT_URL)

    def mesh_raise_floor() -> None:
        with contextlib.suppress(httpx.ConnectError):
            mesh_raise.get(BREAKER_URL)

    def loopback() -> None:
        if bare.get(bare_url).status_code != 200:
            outcomes.note("sync loopback")

    def breaker() -> None:
        try:
            meshed.get(BREAKER_URL)
        except CircuitOpenError:
            return
        outcomes.note("sync breaker open")

    def abort() -> None:
        response = meshed.get(ABORT_URL)
        if response.status_code != 503 or response.headers.get("x-mesh-response-flags") != "FI":
            outcomes.note("sync fault abort")

    def breaker_transport() -> None:
        try:
            transport.handle_request(refused)
        except CircuitOpenError:
            return
        outcomes.note("sync breaker open, transport")

    def abort_transport() -> None:
        if transport.handle_request(aborted).status_code != 503:
            outcomes.note("sync fault abort, transport")

    return {
        "loopback": loopback,
        "breaker open": breaker,
        "fault abort": abort,
        "breaker open, transport only": breaker_transport,
        "fault abort, transport only": abort_transport,
        FLOOR_RAISE: raise_floor,
        FLOOR_REPLY: reply_floor,
        MESH_FLOOR_RAISE: mesh_raise_floor,
        MESH_FLOOR_REPLY: mesh_reply_floor,
    }


def async_rows(
    mesh: Mesh, bare_url: str, outcomes: Outcomes
) -> dict[str, Callable[[], Awaitable[Any]]]:
    bare = httpx.AsyncClient()
    meshed = mesh.async_client()
    transport = AsyncMeshTransport(mesh, httpx.AsyncHTTPTransport())
    refused = httpx.Request("GET", BREAKER_URL)
    aborted = httpx.Request("GET", ABORT_URL)
    floor_reply = httpx.AsyncClient(transport=httpx.MockTransport(_abort_reply))
    floor_raise = httpx.AsyncClient(transport=_Refusing())
    kind = type(meshed)  # the client class the mesh hands out
    mesh_reply = kind(transport=httpx.MockTransport(_abort_reply))
    mesh_raise = kind(transport=_Refusing())

    async def reply_floor() -> None:
        await floor_reply.get(ABORT_URL)

    async def raise_floor() -> None:
        with contextlib.suppress(httpx.ConnectError):
            await floor_raise.get(BREAKER_URL)

    async def mesh_reply_floor() -> None:
        await mesh_reply.get(ABORT_URL)

    async def mesh_raise_floor() -> None:
        with contextlib.suppress(httpx.ConnectError):
            await mesh_raise.get(BREAKER_URL)

    async def loopback() -> None:
        if (await bare.get(bare_url)).status_code != 200:
            outcomes.note("async loopback")

    async def breaker() -> None:
        try:
            await meshed.get(BREAKER_URL)
        except CircuitOpenError:
            return
        outcomes.note("async breaker open")

    async def abort() -> None:
        response = await meshed.get(ABORT_URL)
        if response.status_code != 503 or response.headers.get("x-mesh-response-flags") != "FI":
            outcomes.note("async fault abort")

    async def breaker_transport() -> None:
        try:
            await transport.handle_async_request(refused)
        except CircuitOpenError:
            return
        outcomes.note("async breaker open, transport")

    async def abort_transport() -> None:
        if (await transport.handle_async_request(aborted)).status_code != 503:
            outcomes.note("async fault abort, transport")

    return {
        "loopback": loopback,
        "breaker open": breaker,
        "fault abort": abort,
        "breaker open, transport only": breaker_transport,
        "fault abort, transport only": abort_transport,
        FLOOR_RAISE: raise_floor,
        FLOOR_REPLY: reply_floor,
        MESH_FLOOR_RAISE: mesh_raise_floor,
        MESH_FLOOR_REPLY: mesh_reply_floor,
    }


async def aiohttp_rows(
    mesh: Mesh, bare_url: str, outcomes: Outcomes
) -> tuple[dict[str, Callable[[], Awaitable[Any]]], Callable[[], Awaitable[None]]]:
    """The aiohttp rows (``mesh.aiohttp_session()``), and what closes their sessions: built in
    the running loop, as aiohttp's sessions are."""
    import aiohttp

    from meshlib.clients.aiohttp import CircuitOpenError as AiohttpCircuitOpenError
    from meshlib.clients.aiohttp import _local_response

    bare = aiohttp.ClientSession()
    meshed = mesh.aiohttp_session()
    middleware = mesh.aiohttp_middleware()
    captured: list[aiohttp.ClientRequest] = []

    async def capture(req: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        captured.append(req)
        return _local_response(req, 503, [], b"fault filter abort")

    async def refuse(req: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        raise aiohttp.ClientConnectionError("refused")

    floor_reply = aiohttp.ClientSession(middlewares=(capture,))
    floor_raise = aiohttp.ClientSession(middlewares=(refuse,))
    async with floor_reply.get(BREAKER_URL):
        pass
    async with floor_reply.get(ABORT_URL):
        pass
    refused, aborted = captured[0], captured[1]

    async def unsent(req: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        raise AssertionError("a fast failure reached aiohttp's handler")

    async def loopback() -> None:
        async with bare.get(bare_url) as response:
            await response.read()
            if response.status != 200:
                outcomes.note("aiohttp loopback")

    async def breaker() -> None:
        try:
            async with meshed.get(BREAKER_URL):
                pass
        except AiohttpCircuitOpenError:
            return
        outcomes.note("aiohttp breaker open")

    async def abort() -> None:
        async with meshed.get(ABORT_URL) as response:
            await response.read()
            if response.status != 503 or response.headers.get("x-mesh-response-flags") != "FI":
                outcomes.note("aiohttp fault abort")

    async def breaker_layer() -> None:
        try:
            await middleware(refused, unsent)
        except AiohttpCircuitOpenError:
            return
        outcomes.note("aiohttp breaker open, middleware")

    async def abort_layer() -> None:
        response = await middleware(aborted, unsent)
        if response.status != 503:
            outcomes.note("aiohttp fault abort, middleware")

    async def raise_floor() -> None:
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with floor_raise.get(BREAKER_URL):
                pass

    async def reply_floor() -> None:
        async with floor_reply.get(ABORT_URL) as response:
            await response.read()

    async def close() -> None:
        for session in (bare, meshed, floor_reply, floor_raise):
            await session.close()
        await middleware.aclose()

    rows = {
        "loopback (bare aiohttp)": loopback,
        "breaker open": breaker,
        "fault abort": abort,
        "breaker open, middleware only": breaker_layer,
        "fault abort, middleware only": abort_layer,
        "bare session, a middleware that raises (floor)": raise_floor,
        "bare session, a middleware's in-memory 503 (floor)": reply_floor,
    }
    return rows, close


# --------------------------------------------------------------------------- timing


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    return [names[i % len(names) :] + names[: i % len(names)] for i in range(rounds)]


def time_sync(rows: dict[str, Callable[[], Any]], calls: int, block: int) -> dict[str, list[int]]:
    clock = time.perf_counter_ns
    for call in rows.values():  # warm up: connections, caches, code paths
        for _ in range(min(block, 200)):
            call()
    samples: dict[str, list[int]] = {name: [] for name in rows}
    for order in rotations(list(rows), max(1, calls // block)):
        for name in order:
            call, out = rows[name], samples[name]
            for _ in range(block):
                started = clock()
                call()
                out.append(clock() - started)
    return samples


async def time_async(
    rows: dict[str, Callable[[], Awaitable[Any]]], calls: int, block: int
) -> dict[str, list[int]]:
    clock = time.perf_counter_ns
    for call in rows.values():
        for _ in range(min(block, 200)):
            await call()
    samples: dict[str, list[int]] = {name: [] for name in rows}
    for order in rotations(list(rows), max(1, calls // block)):
        for name in order:
            call, out = rows[name], samples[name]
            for _ in range(block):
                started = clock()
                await call()
                out.append(clock() - started)
    return samples


def summary(latencies: list[int]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "median_us": statistics.median(ordered) / 1000,
        "p99_us": percentile(ordered, 0.99) / 1000,
    }


# --------------------------------------------------------------------------- profiles


def top_costs(profile: cProfile.Profile, calls: int, count: int = 10) -> list[dict[str, Any]]:
    """The functions with the most time of their own, per fast-failing call."""
    stats = pstats.Stats(profile)
    rows = []
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (path, line, function), (_, ncalls, tottime, cumtime, _) in table.items():
        rows.append(
            {
                "function": function,
                "where": f"{_short(path)}:{line}",
                "calls_per_call": ncalls / calls,
                "own_us_per_call": tottime / calls * 1e6,
                "cumulative_us_per_call": cumtime / calls * 1e6,
            }
        )
    rows.sort(key=lambda row: row["own_us_per_call"], reverse=True)
    return rows[:count]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def profile_sync(call: Callable[[], Any], calls: int) -> list[dict[str, Any]]:
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        call()
    profile.disable()
    return top_costs(profile, calls)


def profile_async(
    loop: asyncio.AbstractEventLoop, call: Callable[[], Awaitable[Any]], calls: int
) -> list[dict[str, Any]]:
    async def run() -> None:
        for _ in range(calls):
            await call()

    profile = cProfile.Profile()

    async def profiled() -> None:
        profile.enable()
        await run()
        profile.disable()

    loop.run_until_complete(profiled())
    return top_costs(profile, calls)


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Fast failure, {result['environment']}",
        "",
        f"Yardstick: sync loopback p50 {result['loopback_p50_us']:.1f} µs "
        f"→ target ≤ {result['target_us']:.2f} µs (1/50).",
        "",
        "| row | median (µs) | p99 (µs) | median / loopback p50 | target | verdict |",
        "|---|---:|---:|---:|---|---|",
    ]
    for flavour in ("sync", "async"):
        for name, row in result[flavour].items():
            ratio = row["ratio"]
            shown = f"1/{1 / ratio:.1f} ({ratio:.4f})" if ratio < 1 else f"{ratio:.2f}"
            target = "≤ 1/50" if "met" in row else "–"
            lines.append(
                f"| {flavour} {name} | {row['median_us']:.2f} | {row['p99_us']:.2f} | {shown} "
                f"| {target} | {verdict(row.get('met'))} |"
            )
    for name, row in result.get("aiohttp", {}).items():
        ratio = row["ratio"]
        shown = f"1/{1 / ratio:.1f} ({ratio:.4f})" if ratio < 1 else f"{ratio:.2f}"
        target = f"≤ 1/{round(1 / row['target'])}" if "target" in row else "–"
        lines.append(
            f"| aiohttp {name} | {row['median_us']:.2f} | {row['p99_us']:.2f} | {shown} "
            f"| {target} | {verdict(row.get('met'))} |"
        )
    wrong = result["wrong_outcomes"]
    lines += [
        "",
        f"Calls per row: {result['calls_per_row']:,} in interleaved blocks of {result['block']:,}"
        ", concurrency 1. "
        + (f"Calls that ended otherwise than expected: {wrong}." if wrong else "")
        + f" Overall: {verdict(result['met'])}.",
    ]
    for title, costs in result["profiles"].items():
        lines += [
            "",
            f"Top costs, {title} (cProfile, {result['profile_calls']:,} calls; µs per call, "
            "inflated by the profiler):",
            "",
            "| function | where | calls | own µs | cumulative µs |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {c['function']} | {c['where']} | {c['calls_per_call']:.0f} "
            f"| {c['own_us_per_call']:.2f} | {c['cumulative_us_per_call']:.2f} |"
            for c in costs
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--calls", type=int, default=None, help="calls per row and flavour")
    parser.add_argument("--block", type=int, default=None, help="calls per block")
    parser.add_argument("--profile-calls", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    calls = args.calls or (3_000 if args.quick else 20_000)
    block = args.block or (250 if args.quick else 500)
    profile_calls = args.profile_calls or (2_000 if args.quick else 10_000)

    started = time.perf_counter()
    outcomes = Outcomes()
    with Upstream.start("v1") as upstream:
        bare_url = upstream.url("/reviews/0")
        mesh = Mesh.from_yaml(mesh_config(upstream.address), seed=1)
        sync = sync_rows(mesh, bare_url, outcomes)
        sync_samples = time_sync(sync, calls, block)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        rows = async_rows(mesh, bare_url, outcomes)
        async_samples = loop.run_until_complete(time_async(rows, calls, block))
        aio_rows: dict[str, Callable[[], Awaitable[Any]]] = {}
        aio_samples: dict[str, list[int]] = {}
        aio_close: Callable[[], Awaitable[None]] | None = None
        with contextlib.suppress(ImportError):  # without aiohttp: no aiohttp rows
            aio_rows, aio_close = loop.run_until_complete(aiohttp_rows(mesh, bare_url, outcomes))
        if aio_rows:
            aio_samples = loop.run_until_complete(time_async(aio_rows, calls, block))
        result: dict[str, Any] = {
            "environment": (
                f"Python {platform.python_version()}, httpx {httpx.__version__}, "
                f"{os.cpu_count()} CPUs, upstream in its own process on 127.0.0.1"
            ),
            "calls_per_row": calls,
            "block": block,
            "sync": {name: summary(values) for name, values in sync_samples.items()},
            "async": {name: summary(values) for name, values in async_samples.items()},
            "aiohttp": {name: summary(values) for name, values in aio_samples.items()},
        }
        loopback = result["sync"]["loopback"]["median_us"]
        result["loopback_p50_us"] = loopback
        result["target_us"] = loopback * TARGET_RATIO
        result["target_ratio"] = TARGET_RATIO
        for flavour in ("sync", "async"):
            for name, row in result[flavour].items():
                row["ratio"] = row["median_us"] / loopback
                if name != "loopback" and "floor" not in name:
                    row["met"] = row["ratio"] <= TARGET_RATIO
        for name, row in result["aiohttp"].items():
            # through the session ≤ 1/10 of a loopback call, the middleware's own part ≤ 1/50
            row["ratio"] = row["median_us"] / loopback
            if "loopback" not in name and "floor" not in name:
                row["target"] = TARGET_RATIO if "middleware only" in name else AIOHTTP_CLIENT_RATIO
                row["met"] = row["ratio"] <= row["target"]
        result["aiohttp_met"] = (
            all(row["met"] for row in result["aiohttp"].values() if "met" in row)
            if result["aiohttp"]
            else None
        )
        result["met"] = all(
            row["met"]
            for flavour in ("sync", "async")
            for name, row in result[flavour].items()
            if name in ("breaker open", "fault abort")
        )
        profiles: dict[str, list[dict[str, Any]]] = {}
        for name in ("breaker open", "fault abort"):
            if not result["sync"][name]["met"]:
                profiles[f"sync {name}"] = profile_sync(sync[name], profile_calls)
            if not result["async"][name]["met"]:
                profiles[f"async {name}"] = profile_async(loop, rows[name], profile_calls)
            own = f"{name}, transport only"
            if not result["sync"][own]["met"]:
                profiles[f"sync {own}"] = profile_sync(sync[own], profile_calls)
        if aio_close is not None:
            loop.run_until_complete(aio_close())
        loop.close()
    result["profiles"] = profiles
    result["profile_calls"] = profile_calls
    result["wrong_outcomes"] = outcomes.wrong
    result["seconds"] = round(time.perf_counter() - started, 1)
    publish("fast_fail", result, args.json, markdown)


if __name__ == "__main__":
    main()
