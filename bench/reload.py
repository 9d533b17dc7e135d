"""Hot reload under load: tail latency while a 100-route config is swapped in again and again.

    python -m bench.reload [--quick] [--rounds N] [--block SECONDS] [--interval-ms MS] [--json]

The Makefile's ``bench`` target runs it; the figures also go to ``bench/results/reload.json``.

One upstream server (``tests/integration/upstream.py``) runs in a process of its own on
127.0.0.1. An ``httpx.AsyncClient`` through the mesh keeps 32 requests in flight to it. The mesh's
``reviews`` host has 100 routes: 99 header matches and a catch-all; the request's header
``x-route: r50`` matches one of them half-way down. Two configs alternate: A (route ``i`` matches
``r<i>``) and B (route ``i`` matches ``r<98 - i>``, every route with a 10 s timeout), so every
swap changes the route that serves the request.

Arms, each a block of ``--block`` seconds on a new client (its pool opened by the block's first
calls, whose latencies are left out), in an order that rotates every round:

* ``steady``: no reload.
* ``steady (A/A)``: the same again — the noise floor of the comparison.
* ``apply``: a thread (as ``Mesh.watch`` runs one) calls ``Mesh.apply`` with A and B in turn
  every ``--interval-ms`` (parsed once beforehand: compile and swap). The default, 500 ms, is
  ``Mesh.watch``'s poll interval: a watcher never reloads more often, so this is a config that
  changes at every look; ``--interval-ms 75`` is a stress test well beyond that.
* ``reload``: the same with ``Mesh.reload`` of the two files in turn (read, parse, validate,
  compile, swap: what the watcher does on a change).

Figures: p50 and p99 of every request's latency per arm, and the ratio of each arm's p99 to
``steady``'s — the median over rounds of the round's ratio (block against block of the same
round, so drift hits both), and the ratio of the pooled p99s. Target: p99 with reloads
≤ 1.10 × without. ``reload CPU share`` is the reloading thread's CPU time over the arm's wall
time: the client runs saturated (32 requests always in flight, one core for the client, the GIL
shared), so its latency grows by about ``1 / (1 - share)`` — the target holds only while a swap
costs under ~9 % of the interval. Also the cost of one reload alone, on an idle mesh: parse and
validate (``load_config``), compile and swap (``Mesh.apply``), and the two (``Mesh.reload``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.report import percentile, publish, verdict
from meshlib import Mesh
from meshlib.clients.httpx.transport import AsyncMeshTransport
from meshlib.config.load import MeshConfig, load_config
from tests.integration.upstream import Upstream

URL = "http://reviews:9080/reviews/0"
HEADERS = {"x-route": "r50", "accept": "application/json"}
ROUTES = 100
CONCURRENCY = 32
WARMUP = 2 * CONCURRENCY
TARGET_P99_RATIO = 1.10
ARMS = ("steady", "steady (A/A)", "apply", "reload")


def config(address: str, flavour: str) -> str:
    """Config A or B: 99 header-match routes then a catch-all, all to ``reviews``."""
    routes = []
    timeout = "    timeout: 10s\n" if flavour == "B" else ""
    for i in range(ROUTES - 1):
        value = i if flavour == "A" else ROUTES - 2 - i
        routes.append(
            f"  - name: r{i}\n"
            f"    match: [{{headers: {{x-route: {{exact: r{value}}}}}}}]\n"
            f"{timeout}"
            "    route: [{destination: {host: reviews}}]\n"
        )
    routes.append(f"  - name: default\n{timeout}    route: [{{destination: {{host: reviews}}}}]\n")
    return (
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: productpage}\nspec:\n"
        f'  registry: {{static: {{reviews: [{{address: "{address}"}}]}}}}\n'
        "  telemetry: {tracing: {enabled: false}}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n" + "".join(routes)
    )


# --------------------------------------------------------------------------- reloading


class Reloader:
    """A thread that swaps the mesh's config every ``interval`` seconds while it runs."""

    def __init__(self, swap: Callable[[int], None], interval: float) -> None:
        self.swap = swap
        self.interval = interval
        self.durations: list[float] = []
        self.cpu = 0.0  # this thread's CPU seconds in swaps
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count = itertools.count(1)

    def __enter__(self) -> Reloader:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-reloader", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        clock, cpu = time.perf_counter, time.thread_time
        while not self._stop.wait(self.interval):
            started, used = clock(), cpu()
            self.swap(next(self._count))
            self.durations.append(clock() - started)
            self.cpu += cpu() - used


def reload_cost(mesh: Mesh, paths: list[Path], configs: list[MeshConfig], repeat: int) -> dict:
    """One reload's parts, timed alone on an idle mesh (milliseconds)."""
    parts: dict[str, list[float]] = {"load_config": [], "apply": [], "reload": []}
    clock = time.perf_counter
    for i in range(repeat):
        path, loaded = paths[i % 2], configs[i % 2]
        started = clock()
        load_config([str(path)])
        parts["load_config"].append(clock() - started)
        started = clock()
        mesh.apply(loaded)
        parts["apply"].append(clock() - started)
        started = clock()
        mesh.reload([path])
        parts["reload"].append(clock() - started)
    return {
        name: {
            "median_ms": statistics.median(values) * 1000,
            "max_ms": max(values) * 1000,
        }
        for name, values in parts.items()
    }


# --------------------------------------------------------------------------- load


async def run_block(
    mesh: Mesh, seconds: float, latencies: list[int], routes: dict[int, int]
) -> int:
    """Requests with ``CONCURRENCY`` in flight for ``seconds``, on a new client; returns the
    non-200s. The latencies of the first ``WARMUP`` to complete are dropped: those calls opened
    the client's connections."""
    limits = httpx.Limits(max_connections=2 * CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    transport = AsyncMeshTransport(mesh, httpx.AsyncHTTPTransport(limits=limits))
    errors = 0
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)

    async def worker() -> None:
        nonlocal errors
        while True:
            started = clock()
            if started >= deadline:
                return
            response = await client.get(URL, headers=HEADERS)
            latencies.append(clock() - started)
            if response.status_code != 200:
                errors += 1
            index = response.extensions["mesh"].decision.route_index
            routes[index] = routes.get(index, 0) + 1

    async with httpx.AsyncClient(transport=transport) as client:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    del latencies[:WARMUP]  # the calls that opened the block's connections
    return errors


async def bench_load(
    mesh: Mesh,
    swaps: dict[str, Callable[[int], None]],
    rounds: int,
    block: float,
    interval: float,
) -> dict[str, Any]:
    await run_block(mesh, min(block, 1.0), [], {})  # warm up
    samples: dict[str, list[list[int]]] = {arm: [] for arm in ARMS}
    routes: dict[str, dict[int, int]] = {arm: {} for arm in ARMS}
    errors = dict.fromkeys(ARMS, 0)
    reloads: dict[str, list[float]] = {arm: [] for arm in ARMS}
    reload_cpu = dict.fromkeys(ARMS, 0.0)
    wall = dict.fromkeys(ARMS, 0.0)
    for round_ in range(rounds):
        shift = round_ % len(ARMS)
        for arm in ARMS[shift:] + ARMS[:shift]:
            latencies: list[int] = []
            started = time.perf_counter()
            if arm in swaps:
                with Reloader(swaps[arm], interval) as reloader:
                    errors[arm] += await run_block(mesh, block, latencies, routes[arm])
                reloads[arm] += reloader.durations
                reload_cpu[arm] += reloader.cpu
            else:
                errors[arm] += await run_block(mesh, block, latencies, routes[arm])
            wall[arm] += time.perf_counter() - started
            samples[arm].append(latencies)
    return {
        "samples": samples,
        "routes": routes,
        "errors": errors,
        "reloads": reloads,
        "reload_cpu": reload_cpu,
        "wall": wall,
    }


def summarize(load: dict[str, Any]) -> dict[str, Any]:
    samples: dict[str, list[list[int]]] = load["samples"]
    arms: dict[str, Any] = {}
    for arm in ARMS:
        pooled = sorted(itertools.chain.from_iterable(samples[arm]))
        block_p99 = [percentile(sorted(b), 0.99) / 1000 for b in samples[arm]]
        durations = load["reloads"][arm]
        arms[arm] = {
            "requests": len(pooled),
            "p50_ms": percentile(pooled, 0.5) / 1e6,
            "p99_ms": percentile(pooled, 0.99) / 1e6,
            "block_p99_ms": [v / 1000 for v in block_p99],
            "throughput_per_s": len(pooled) / load["wall"][arm],
            "errors": load["errors"][arm],
            "routes_served": {str(k): v for k, v in sorted(load["routes"][arm].items())},
            "reloads": len(durations),
            "reload_median_ms": statistics.median(durations) * 1000 if durations else None,
            "reload_max_ms": max(durations) * 1000 if durations else None,
            "reload_cpu_share": load["reload_cpu"][arm] / load["wall"][arm],
        }
    steady = arms["steady"]
    for arm in ARMS[1:]:
        row = arms[arm]
        paired = [a / b for a, b in zip(row["block_p99_ms"], steady["block_p99_ms"], strict=True)]
        row["p99_ratio"] = statistics.median(paired)
        row["p99_ratio_pooled"] = row["p99_ms"] / steady["p99_ms"]
        row["p50_ratio_pooled"] = row["p50_ms"] / steady["p50_ms"]
        if arm != "steady (A/A)":
            row["met"] = row["p99_ratio"] <= TARGET_P99_RATIO
    return arms


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    arms = result["arms"]
    lines = [
        f"Hot reload under load, {result['environment']}",
        "",
        f"{ROUTES}-route table, async client, concurrency {CONCURRENCY}, a swap every "
        f"{result['interval_ms']:.0f} ms in the reload arms; {result['rounds']} rounds of a "
        f"{result['block']:.1f} s block per arm.",
        "",
        "| arm | requests | p50 (ms) | p99 (ms) | p99 / steady (per round, median) | p99 / steady "
        "(pooled) | reloads (median, max ms) | reload CPU share | target | verdict |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for arm in ARMS:
        row = arms[arm]
        ratio = f"{row['p99_ratio']:.3f}×" if "p99_ratio" in row else "–"
        pooled = f"{row['p99_ratio_pooled']:.3f}×" if "p99_ratio_pooled" in row else "–"
        swaps = (
            f"{row['reloads']} ({row['reload_median_ms']:.1f}, {row['reload_max_ms']:.1f})"
            if row["reloads"]
            else "–"
        )
        share = f"{row['reload_cpu_share']:.1%}" if row["reloads"] else "–"
        target = f"≤ {TARGET_P99_RATIO}×" if "met" in row else ("noise" if "A/A" in arm else "–")
        lines.append(
            f"| {arm} | {row['requests']:,} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {ratio} | {pooled} | {swaps} | {share} | {target} | {verdict(row.get('met'))} |"
        )
    cost = result["reload_cost"]
    lines += [
        "",
        "One reload alone, idle mesh, 100 routes (median / max ms): "
        + ", ".join(
            f"{name} {part['median_ms']:.1f} / {part['max_ms']:.1f}" for name, part in cost.items()
        )
        + " (load_config: read, parse, validate; apply: compile, swap; reload: both).",
    ]
    errors = {arm: row["errors"] for arm, row in arms.items() if row["errors"]}
    served = {arm: row["routes_served"] for arm, row in arms.items()}
    lines.append(
        f"Routes that served the request per arm: {served}. "
        + (f"Non-200 responses: {errors}. " if errors else "Every response was a 200. ")
        + f"Overall: {verdict(result['met'])}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--block", type=float, default=None, help="seconds per arm and round")
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=500.0,
        help="time between swaps (default: Mesh.watch's poll interval, the most often a "
        "watcher reloads; lower it for a stress test)",
    )
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    rounds = args.rounds or (4 if args.quick else 8)
    block = args.block or (1.0 if args.quick else 2.5)
    interval = args.interval_ms / 1000

    started = time.perf_counter()
    with Upstream.start("v1") as upstream, tempfile.TemporaryDirectory() as scratch:
        paths = [Path(scratch) / "a.yaml", Path(scratch) / "b.yaml"]
        for path, flavour in zip(paths, "AB", strict=True):
            path.write_text(config(upstream.address, flavour), encoding="utf-8")
        configs = [load_config([str(p)]) for p in paths]
        mesh = Mesh.from_files([paths[0]], seed=1)
        cost = reload_cost(mesh, paths, configs, 6 if args.quick else 20)

        def apply(n: int) -> None:
            mesh.apply(configs[n % 2])

        def reload(n: int) -> None:
            mesh.reload([paths[n % 2]])

        load = asyncio.run(
            bench_load(mesh, {"apply": apply, "reload": reload}, rounds, block, interval)
        )
    arms = summarize(load)
    result: dict[str, Any] = {
        "environment": (
            f"Python {platform.python_version()}, httpx {httpx.__version__}, "
            f"{os.cpu_count()} CPUs, upstream in its own process on 127.0.0.1"
        ),
        "routes": ROUTES,
        "concurrency": CONCURRENCY,
        "interval_ms": args.interval_ms,
        "rounds": rounds,
        "block": block,
        "target_p99_ratio": TARGET_P99_RATIO,
        "reload_cost": cost,
        "arms": arms,
        "met": all(row["met"] for row in arms.values() if "met" in row),
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    publish("reload", result, args.json, markdown)


if __name__ == "__main__":
    main()
