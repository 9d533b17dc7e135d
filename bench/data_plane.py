"""Data-plane benchmark: meshlib's clients against bare httpx, side by side, on one real upstream.

    python -m bench.data_plane [--calls N] [--async-calls N] [--memory-calls N] [--json]

The Makefile's ``bench`` target runs it (``$(BIN)/python -m bench.data_plane``).

One upstream server (``tests/integration/upstream.py``) runs in a process of its own on
127.0.0.1; every client keeps its connections alive. The meshlib client has Bookinfo's rules
loaded — ``destination-rule-all.yaml`` unmodified, plus a ``reviews`` VirtualService with a
header match (``end-user: jason`` → v2) before a weighted route (v1 80 / v3 20), the mesh's
default retry policy, a breaker from ``spec.circuitBreakers`` and ``outlierDetection`` in a
DestinationRule of its own (merged with Bookinfo's, as Istio merges them) — and every subset's
endpoint is that same server. No fault fires; tracing is off (``spec.telemetry.tracing``), metrics
and access log are left at their defaults. The bare clients call the server's address directly.

Rows, each measured in interleaved blocks (bare, meshlib, bare again, in an order that rotates
every round) so that drift — CPU frequency, the other process, the allocator — hits all alike:

* sync, concurrency 1: median and p99 latency, client CPU per call (``time.process_time``);
  the meshlib client is a stock ``httpx.Client(transport=MeshTransport(mesh))``, so the figures
  are the data plane's own cost (``bench.compare`` also measures ``mesh.client()``).
* A/A: the second bare client against the first, measured the same way: the noise floor.
* async, concurrency 1 and 32: throughput of ``httpx.AsyncClient`` bare and through the mesh
  (a new client for each block: see ``_bench_async``).
* memory: RSS (``VmRSS``) before, halfway and after ``--memory-calls`` calls through one meshlib
  client, after a warm-up.

Targets (reported, not enforced): sync median ≤ 1.05 × bare; CPU ≤ bare + 20 µs per call; async
throughput ≥ 0.95 × bare at concurrency 1 and 32.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.report import percentile, rss_kib
from examples.bookinfo import NETWORKING
from meshlib import Mesh
from meshlib.clients.httpx.transport import AsyncMeshTransport, MeshInfo, MeshTransport
from tests.integration.upstream import Upstream

BOOKINFO = NETWORKING
MESH_URL = "http://reviews:9080/reviews/0"
HEADERS = {"end-user": "alice", "accept": "application/json"}

TARGET_MEDIAN_RATIO = 1.05
TARGET_CPU_EXTRA_US = 20.0
TARGET_THROUGHPUT_RATIO = 0.95


def mesh_config(address: str) -> str:
    """The benchmark's config: Bookinfo's DestinationRules, every reviews subset at ``address``."""
    endpoints = "\n".join(
        f"        - {{address: {address}, labels: {{version: {v}}}}}" for v in ("v1", "v2", "v3")
    )
    rules = json.dumps(str((BOOKINFO / "destination-rule-all.yaml").resolve()))
    return f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  registry:
    static:
      reviews:
{endpoints}
  circuitBreakers: {{failureThreshold: 5, resetTimeout: 30s}}
  telemetry: {{tracing: {{enabled: false}}}}
  include: [{rules}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-outlier-detection}}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 80}}
    - {{destination: {{host: reviews, subset: v3}}, weight: 20}}
"""


def check_mesh(mesh: Mesh, response: httpx.Response) -> None:
    """The meshlib client really does what the benchmark says it does."""
    response.raise_for_status()
    info = response.extensions["mesh"]
    decision = info.decision
    target = decision.destination
    policy = target.traffic_policy if target is not None else None
    checks = {
        "a MeshInfo on the response": isinstance(info, MeshInfo),
        "the header match tried, the weighted route taken": decision.route_index == 1,
        "the default retry policy": decision.retry.source == "default",
        "no fault": not decision.fault.active,
        "a weighted subset": target is not None and target.subset in ("v1", "v3"),
        "outlier detection": policy is not None and policy.outlier_detection is not None,
        "a breaker from spec.circuitBreakers": bool(mesh.breakers()),
        "no response flags": info.flags == "",
    }
    missing = [what for what, ok in checks.items() if not ok]
    if missing:
        raise RuntimeError(f"the meshlib client is not set up as described: {missing}")


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: every name first, middle and last equally often."""
    return [names[i % len(names) :] + names[: i % len(names)] for i in range(rounds)]


# --------------------------------------------------------------------------- sync


@dataclass
class SyncSeries:
    """Per-call latencies (ns) and CPU seconds of one client, over its blocks."""

    latencies: list[int] = field(default_factory=list)
    cpu: float = 0.0
    calls: int = 0
    errors: int = 0
    block_cpu_us: list[float] = field(default_factory=list)

    def run_block(self, call: Callable[[], int], n: int) -> None:
        clock = time.perf_counter_ns
        latencies = self.latencies
        errors = 0
        cpu = time.process_time()
        for _ in range(n):
            started = clock()
            status = call()
            latencies.append(clock() - started)
            if status != 200:
                errors += 1
        spent = time.process_time() - cpu
        self.cpu += spent
        self.block_cpu_us.append(spent / n * 1e6)
        self.calls += n
        self.errors += errors

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "calls": self.calls,
            "median_us": statistics.median(ordered) / 1000,
            "p99_us": percentile(ordered, 0.99) / 1000,
            "cpu_us_per_call": self.cpu / self.calls * 1e6,
            "errors": self.errors,
            "block_cpu_us": self.block_cpu_us,
        }


def bench_sync(mesh: Mesh, bare_url: str, calls: int, block: int) -> dict[str, dict[str, Any]]:
    # the data plane as shipped (MeshTransport on its default inner transport) in a stock
    # httpx.Client: what the mesh itself costs (mesh.client()'s lighter bookkeeping is left out)
    with (
        httpx.Client() as bare,
        httpx.Client() as bare2,
        httpx.Client(transport=MeshTransport(mesh)) as meshed,
    ):
        clients: dict[str, Callable[[], int]] = {
            "bare": lambda: bare.get(bare_url, headers=HEADERS).status_code,
            "mesh": lambda: meshed.get(MESH_URL, headers=HEADERS).status_code,
            "bare2": lambda: bare2.get(bare_url, headers=HEADERS).status_code,
        }
        check_mesh(mesh, meshed.get(MESH_URL, headers=HEADERS))
        for call in clients.values():  # warm up: connections, caches, code paths
            for _ in range(min(block, 500)):
                call()
        series = {name: SyncSeries() for name in clients}
        for order in rotations(list(clients), max(1, calls // block)):
            for name in order:
                series[name].run_block(clients[name], block)
    return {name: s.summary() for name, s in series.items()}


# --------------------------------------------------------------------------- async


async def _async_block(
    call: Callable[[], Awaitable[int]], n: int, concurrency: int
) -> tuple[float, int]:
    """Seconds to make ``n`` calls with ``concurrency`` tasks, and how many were not 200."""
    counter = itertools.count()
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while next(counter) < n:
            if await call() != 200:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, errors


async def _bench_async(
    mesh: Mesh, bare_url: str, calls: int, block: int, concurrency: int
) -> dict[str, dict[str, Any]]:
    """Each block runs on a new client (its first calls open the connections). With one client
    kept across blocks, httpx's pool drifts between states — how many connections it holds — in
    which the same client runs at anywhere from 1× to 3× the speed (seen at concurrency 32), and
    the blocks would measure that state more than the client."""

    def limits() -> httpx.Limits:  # the same pool for every client, sized for the concurrency
        return httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=concurrency)

    def new_bare() -> tuple[httpx.AsyncClient, str]:
        return httpx.AsyncClient(limits=limits()), bare_url

    def new_mesh() -> tuple[httpx.AsyncClient, str]:
        inner = httpx.AsyncHTTPTransport(limits=limits())
        return httpx.AsyncClient(transport=AsyncMeshTransport(mesh, inner)), MESH_URL

    async def run(make: Callable[[], tuple[httpx.AsyncClient, str]], n: int) -> tuple[float, int]:
        client, url = make()
        async with client:

            async def call() -> int:
                return (await client.get(url, headers=HEADERS)).status_code

            return await _async_block(call, n, concurrency)

    clients = {"bare": new_bare, "mesh": new_mesh, "bare2": new_bare}
    client, url = new_mesh()
    async with client:
        check_mesh(mesh, await client.get(url, headers=HEADERS))
    for make in clients.values():
        await run(make, min(block, 500))
    wall = dict.fromkeys(clients, 0.0)
    cpu = dict.fromkeys(clients, 0.0)
    done = dict.fromkeys(clients, 0)
    errors = dict.fromkeys(clients, 0)
    block_cpu: dict[str, list[float]] = {name: [] for name in clients}
    block_throughput: dict[str, list[float]] = {name: [] for name in clients}
    for order in rotations(list(clients), max(1, calls // block)):
        for name in order:
            spent = time.process_time()
            seconds, failed = await run(clients[name], block)
            spent = time.process_time() - spent
            cpu[name] += spent
            wall[name] += seconds
            block_cpu[name].append(spent / block * 1e6)
            block_throughput[name].append(block / seconds)
            done[name] += block
            errors[name] += failed
    return {
        name: {
            "calls": done[name],
            "throughput_per_s": done[name] / wall[name],
            "cpu_us_per_call": cpu[name] / done[name] * 1e6,
            "errors": errors[name],
            "block_cpu_us": block_cpu[name],
            "block_throughput": block_throughput[name],
        }
        for name in clients
    }


def bench_async(
    mesh: Mesh, bare_url: str, calls: int, block: int, concurrency: int
) -> dict[str, dict[str, Any]]:
    return asyncio.run(_bench_async(mesh, bare_url, calls, block, concurrency))


# --------------------------------------------------------------------------- memory


def bench_memory(mesh: Mesh, calls: int) -> dict[str, float]:
    errors = 0
    with mesh.client() as client:

        def run(n: int) -> None:
            nonlocal errors
            for _ in range(n):
                if client.get(MESH_URL, headers=HEADERS).status_code != 200:
                    errors += 1

        run(1000)
        gc.collect()
        before = rss_kib()
        half = calls // 2
        run(half)
        gc.collect()
        middle = rss_kib()
        run(calls - half)
        gc.collect()
        after = rss_kib()
    return {
        "calls": calls,
        "errors": errors,
        "rss_before_kib": before,
        "rss_half_kib": middle,
        "rss_after_kib": after,
        "growth_kib": after - before,
        "growth_second_half_kib": after - middle,
        "growth_bytes_per_call": (after - before) * 1024 / calls,
    }


# --------------------------------------------------------------------------- report


def paired(mesh: list[float], bare: list[float], ratio: bool) -> float:
    """The median over rounds of ``mesh / bare`` (or ``mesh - bare``), block against block of
    the same round: interference that hits one round hits both sides of its pair."""
    if ratio:
        return statistics.median(m / b for m, b in zip(mesh, bare, strict=True))
    return statistics.median(m - b for m, b in zip(mesh, bare, strict=True))


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    sync = result["sync"]
    bare, meshed, bare2 = sync["bare"], sync["mesh"], sync["bare2"]
    out: dict[str, Any] = {
        "sync_median_ratio": meshed["median_us"] / bare["median_us"],
        "sync_p99_ratio": meshed["p99_us"] / bare["p99_us"],
        "sync_cpu_extra_us": paired(meshed["block_cpu_us"], bare["block_cpu_us"], ratio=False),
        "aa_median_ratio": bare2["median_us"] / bare["median_us"],
        "aa_p99_ratio": bare2["p99_us"] / bare["p99_us"],
        "aa_cpu_extra_us": paired(bare2["block_cpu_us"], bare["block_cpu_us"], ratio=False),
    }
    for key in ("async_c1", "async_c32"):
        rows = result[key]
        out[f"{key}_throughput_ratio"] = paired(
            rows["mesh"]["block_throughput"], rows["bare"]["block_throughput"], ratio=True
        )
        out[f"{key}_aa_throughput_ratio"] = paired(
            rows["bare2"]["block_throughput"], rows["bare"]["block_throughput"], ratio=True
        )
        out[f"{key}_cpu_extra_us"] = paired(
            rows["mesh"]["block_cpu_us"], rows["bare"]["block_cpu_us"], ratio=False
        )
    out["met"] = {
        "sync_median": out["sync_median_ratio"] <= TARGET_MEDIAN_RATIO,
        "sync_cpu": out["sync_cpu_extra_us"] <= TARGET_CPU_EXTRA_US,
        "async_c1_throughput": out["async_c1_throughput_ratio"] >= TARGET_THROUGHPUT_RATIO,
        "async_c32_throughput": out["async_c32_throughput_ratio"] >= TARGET_THROUGHPUT_RATIO,
    }
    return out


def total_ratio(rows: dict[str, dict[str, Any]], name: str) -> float:
    return float(rows[name]["throughput_per_s"] / rows["bare"]["throughput_per_s"])


def markdown(result: dict[str, Any]) -> str:
    sync, v, met = result["sync"], result["verdicts"], result["verdicts"]["met"]
    bare, meshed, bare2 = sync["bare"], sync["mesh"], sync["bare2"]

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    lines = [
        f"Data plane, {result['environment']}",
        "",
        "| row | bare httpx | meshlib | meshlib / bare | target | met |",
        "|---|---:|---:|---:|---|---|",
        f"| sync c=1 median latency (µs) | {bare['median_us']:.1f} | {meshed['median_us']:.1f} "
        f"| {v['sync_median_ratio']:.3f}× | ≤ {TARGET_MEDIAN_RATIO}× | {yes(met['sync_median'])} |",
        f"| sync c=1 p99 latency (µs) | {bare['p99_us']:.1f} | {meshed['p99_us']:.1f} "
        f"| {v['sync_p99_ratio']:.3f}× | – | – |",
        f"| sync c=1 client CPU per call (µs) | {bare['cpu_us_per_call']:.1f} "
        f"| {meshed['cpu_us_per_call']:.1f} | {v['sync_cpu_extra_us']:+.1f} µs "
        f"| ≤ +{TARGET_CPU_EXTRA_US:.0f} µs | {yes(met['sync_cpu'])} |",
        f"| A/A sync c=1 median (µs), bare vs bare | {bare['median_us']:.1f} "
        f"| {bare2['median_us']:.1f} (bare) | {v['aa_median_ratio']:.3f}× | noise | – |",
        f"| A/A sync c=1 p99 (µs), bare vs bare | {bare['p99_us']:.1f} "
        f"| {bare2['p99_us']:.1f} (bare) | {v['aa_p99_ratio']:.3f}× | noise | – |",
        f"| A/A sync c=1 CPU per call (µs) | {bare['cpu_us_per_call']:.1f} "
        f"| {bare2['cpu_us_per_call']:.1f} (bare) | {v['aa_cpu_extra_us']:+.1f} µs | noise | – |",
    ]
    for key, label in (("async_c1", "async c=1"), ("async_c32", "async c=32")):
        rows = result[key]
        lines += [
            f"| {label} throughput (calls/s) | {rows['bare']['throughput_per_s']:.0f} "
            f"| {rows['mesh']['throughput_per_s']:.0f} | {v[key + '_throughput_ratio']:.3f}× "
            f"(totals {total_ratio(rows, 'mesh'):.3f}×) "
            f"| ≥ {TARGET_THROUGHPUT_RATIO}× | {yes(met[key + '_throughput'])} |",
            f"| A/A {label} throughput (calls/s) | {rows['bare']['throughput_per_s']:.0f} "
            f"| {rows['bare2']['throughput_per_s']:.0f} (bare) "
            f"| {v[key + '_aa_throughput_ratio']:.3f}× (totals {total_ratio(rows, 'bare2'):.3f}×) "
            "| noise | – |",
            f"| {label} client CPU per call (µs) | {rows['bare']['cpu_us_per_call']:.1f} "
            f"| {rows['mesh']['cpu_us_per_call']:.1f} | {v[key + '_cpu_extra_us']:+.1f} µs "
            "| – | – |",
        ]
    memory = result["memory"]
    failed = {
        f"{row}/{name}": n
        for row in ("sync", "async_c1", "async_c32")
        for name, numbers in result[row].items()
        if (n := numbers["errors"])
    }
    if memory["errors"]:
        failed["memory/mesh"] = memory["errors"]
    lines += [
        f"| memory: RSS over {memory['calls']:,} meshlib calls (KiB) "
        f"| – | {memory['rss_before_kib']:,} → {memory['rss_half_kib']:,} → "
        f"{memory['rss_after_kib']:,} | {memory['growth_kib']:+,} KiB "
        f"({memory['growth_bytes_per_call']:.2f} B/call; second half "
        f"{memory['growth_second_half_kib']:+,} KiB) | – | – |",
        "",
        f"Calls per client: sync {bare['calls']:,}, async {result['async_c1']['bare']['calls']:,} "
        f"per concurrency, in interleaved blocks of {result['block']:,}. Medians and p99 over "
        "every call; CPU and throughput figures are totals, their differences and ratios the "
        "median over rounds of block against block. "
        + (f"Non-200 responses: {failed}." if failed else "Every response was a 200."),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="sync calls per client")
    parser.add_argument("--async-calls", type=int, default=10_000, help="per client and level")
    parser.add_argument("--memory-calls", type=int, default=100_000)
    parser.add_argument("--block", type=int, default=1000, help="calls per measurement block")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    block = max(1, min(args.block, args.calls, args.async_calls))

    with Upstream.start("v1") as upstream:
        bare_url = upstream.url("/reviews/0")
        config = mesh_config(upstream.address)
        result: dict[str, Any] = {
            "environment": (
                f"Python {platform.python_version()}, httpx {httpx.__version__}, "
                f"{os.cpu_count()} CPUs, upstream in its own process on 127.0.0.1"
            ),
            "block": block,
            "sync": bench_sync(Mesh.from_yaml(config, seed=1), bare_url, args.calls, block),
        }
        for concurrency in (1, 32):
            result[f"async_c{concurrency}"] = bench_async(
                Mesh.from_yaml(config, seed=1), bare_url, args.async_calls, block, concurrency
            )
        result["memory"] = bench_memory(Mesh.from_yaml(config, seed=1), args.memory_calls)
    result["verdicts"] = verdicts(result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))


if __name__ == "__main__":
    main()
