"""Measurement blocks for ``bench.compare``: one client, ``n`` calls or ``seconds``, whichever
comes first; the calls' latencies, the block's wall time, and the process CPU time it took.

Three shapes: sequential calls on one thread (``sync_block``), ``threads`` threads sharing one
client (``threads_block``) and ``concurrency`` asyncio tasks sharing one client
(``async_block``). A block that reaches its time limit stops starting calls; calls in flight
finish and count.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Block:
    calls: int
    seconds: float
    cpu_seconds: float
    errors: int
    p50_us: float = float("nan")
    upstream_cpu_seconds: float = 0.0  # the upstream process's CPU time over the block
    proxy_cpu_seconds: float = 0.0  # HAProxy's, when it runs

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.calls * 1e6 if self.calls else 0.0


@dataclass
class Series:
    """One stack's blocks in one workload, and every call's latency (ns)."""

    latencies: list[int] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)

    def add(self, block: Block, latencies: list[int]) -> None:
        if latencies:
            block.p50_us = statistics.median(latencies) / 1000
        self.blocks.append(block)
        self.latencies.extend(latencies)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        calls = sum(b.calls for b in self.blocks)
        seconds = sum(b.seconds for b in self.blocks)
        cpu = sum(b.cpu_seconds for b in self.blocks)
        upstream = sum(b.upstream_cpu_seconds for b in self.blocks)
        proxy = sum(b.proxy_cpu_seconds for b in self.blocks)
        return {
            "calls": calls,
            "errors": sum(b.errors for b in self.blocks),
            "seconds": seconds,
            "p50_us": percentile(ordered, 0.50) / 1000,
            "p90_us": percentile(ordered, 0.90) / 1000,
            "p99_us": percentile(ordered, 0.99) / 1000,
            "max_us": ordered[-1] / 1000 if ordered else float("nan"),
            "throughput_per_s": calls / seconds if seconds else 0.0,
            "cpu_us_per_call": cpu / calls * 1e6 if calls else float("nan"),
            "upstream_busy": upstream / seconds if seconds else float("nan"),
            "proxy_cpu_us_per_call": proxy / calls * 1e6 if calls else float("nan"),
            "block_calls": [b.calls for b in self.blocks],
            "block_throughput": [round(b.throughput, 2) for b in self.blocks],
            "block_cpu_us": [round(b.cpu_us, 3) for b in self.blocks],
            "block_p50_us": [round(b.p50_us, 3) for b in self.blocks],
        }


def percentile(ordered: list[int], q: float) -> float:
    """The nearest-rank percentile of sorted values (nan for none)."""
    if not ordered:
        return float("nan")
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


def paired(values: list[float], baseline: list[float], ratio: bool = True) -> float:
    """The median over rounds of value/baseline (or value - baseline), block against the block of
    the same round: what hits one round hits both sides of its pair."""
    pairs = [(v, b) for v, b in zip(values, baseline, strict=False) if b]
    if not pairs:
        return float("nan")
    if ratio:
        return statistics.median(v / b for v, b in pairs)
    return statistics.median(v - b for v, b in pairs)


def sync_block(call: Callable[[], int], n: int, seconds: float) -> tuple[Block, list[int]]:
    clock = time.perf_counter_ns
    latencies: list[int] = []
    append = latencies.append
    errors = 0
    calls = 0
    cpu = time.process_time()
    started = clock()
    deadline = started + int(seconds * 1e9)
    while calls < n:
        before = clock()
        status = call()
        after = clock()
        append(after - before)
        calls += 1
        if status != 200:
            errors += 1
        if after > deadline:
            break
    wall = (clock() - started) / 1e9
    return Block(calls, wall, time.process_time() - cpu, errors), latencies


def threads_block(
    call: Callable[[], int], threads: int, n: int, seconds: float
) -> tuple[Block, list[int]]:
    clock = time.perf_counter_ns
    counter = itertools.count()
    per_thread: list[list[int]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    deadline = [0]

    def worker(index: int) -> None:
        latencies = per_thread[index]
        start.wait()
        while next(counter) < n:
            before = clock()
            status = call()
            after = clock()
            latencies.append(after - before)
            if status != 200:
                errors[index] += 1
            if after > deadline[0]:
                break

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    cpu = time.process_time()
    started = clock()
    deadline[0] = started + int(seconds * 1e9)
    start.wait()
    for thread in pool:
        thread.join()
    wall = (clock() - started) / 1e9
    latencies = [x for chunk in per_thread for x in chunk]
    return Block(len(latencies), wall, time.process_time() - cpu, sum(errors)), latencies


async def async_block(
    call: Callable[[], Awaitable[int]], concurrency: int, n: int, seconds: float
) -> tuple[Block, list[int]]:
    clock = time.perf_counter_ns
    counter = itertools.count()
    latencies: list[int] = []
    append = latencies.append
    errors = 0
    deadline = 0

    async def worker() -> None:
        nonlocal errors
        while next(counter) < n:
            before = clock()
            status = await call()
            after = clock()
            append(after - before)
            if status != 200:
                errors += 1
            if after > deadline:
                break

    cpu = time.process_time()
    started = clock()
    deadline = started + int(seconds * 1e9)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = (clock() - started) / 1e9
    return Block(len(latencies), wall, time.process_time() - cpu, errors), latencies


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    """Each round's order: every name first, middle and last equally often."""
    return [names[i % len(names) :] + names[: i % len(names)] for i in range(rounds)]
