"""Side-by-side benchmark: meshlib against bare clients, a hand-wired stack and a proxy hop.

    python -m bench.compare [--quick] [--only PATTERN] [--seconds S] [--rounds N] [--out DIR]

``make bench`` runs it (the full run takes about 10 minutes on 2 cores; ``--quick`` about 2).
One upstream server (``tests/integration/upstream.py``) runs in a process of its own on
127.0.0.1, and HAProxy (Debian's package, installed with ``apt-get`` when missing) in another;
every client runs in this process, so the process CPU time per call is the client's own.

Stacks (``bench/_stacks.py``): bare ``httpx.Client``/``httpx.AsyncClient`` (the baseline) and
a second one (A/A: the noise floor); bare aiohttp (the async ceiling); httpx inside an
OpenTelemetry CLIENT span with ``inject``; a hand-wired stack (tenacity: 3 attempts on 5xx and
connect errors; pybreaker; an OpenTelemetry span and ``inject`` per attempt); meshlib with
Bookinfo's rules (``bench.data_plane.mesh_config``: header match, weighted route, default retry
policy, breaker, outlier detection), tracing off and on (an SDK ``TracerProvider`` with a
``BatchSpanProcessor`` and an exporter that drops the spans), on httpx's inner transport and on
meshlib's aiohttp one; bare httpx through one HAProxy hop (``bench/_haproxy.py``).

Workloads: sync concurrency 1 (small GET, 64 KiB response, 64 KiB POST), 32 threads sharing one
sync client, async concurrency 1, 32 and 256 (small GET) and 32 (64 KiB response, 64 KiB POST).
Within a workload every stack keeps one client, warmed up, and runs in interleaved blocks whose
order rotates every round, so drift hits all alike; a block stops at its count or its time,
whichever comes first. Per stack: median, p90 and p99 latency over every call, throughput,
client CPU per call (``time.process_time``), the upstream's and HAProxy's CPU, and the peak RSS
of a fresh process that runs only that stack (``--rss-child``). Each figure is also given as a
ratio to bare httpx of the same run, beside the A/A row's ratio.

Writes ``results.md``, ``compare.json`` (every figure) and charts (PNG) into ``--out`` (default
``bench/results``; with ``--only``, nothing is written unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import _haproxy, _measure, _stacks, report
from bench._stacks import Endpoints, Request, UnavailableError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = report.RESULTS
KIB64 = 65536
BODY = b"x" * KIB64

#: Istio's published per-hop figures (a sidecar's added latency, ms).
ISTIO_P90_MS = 0.228
ISTIO_P99_MS = 0.298

SYNC_ALL = (
    "httpx",
    "httpx-aa",
    "otel",
    "hand",
    "meshlib",
    "meshlib-stock",
    "meshlib-traced",
    "haproxy",
    "requests",
    "meshlib-requests",
)
SYNC_BODY = ("httpx", "httpx-aa", "hand", "meshlib", "meshlib-stock", "meshlib-traced", "haproxy")
THREADS = ("httpx", "httpx-aa", "hand", "meshlib", "meshlib-stock", "meshlib-traced")
ASYNC_ALL = (
    "a-httpx",
    "a-httpx-aa",
    "aiohttp",
    "a-httpx-aiohttp",
    "a-hand",
    "a-meshlib",
    "a-meshlib-traced",
    "a-meshlib-aiohttp",
    "a-meshlib-aiohttp-traced",
    "a-meshlib-aiomw",
    "a-meshlib-aiomw-traced",
    "a-haproxy",
)
ASYNC_BODY = (
    "a-httpx",
    "a-httpx-aa",
    "aiohttp",
    "a-meshlib",
    "a-meshlib-aiohttp",
    "a-meshlib-aiomw",
    "a-haproxy",
)


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    shape: str  # "sync", "threads" or "async"
    concurrency: int
    request: Request
    stacks: tuple[str, ...]
    quick_rss: bool = False  # peak RSS measured in --quick runs too
    weight: float = 1.0  # more time for the workloads the targets read

    @property
    def baseline(self) -> str:
        return "a-httpx" if self.shape == "async" else "httpx"

    @property
    def aa(self) -> str:
        return self.baseline + "-aa"


GET = Request()
GET64 = Request(query=f"?size={KIB64}")
POST64 = Request(method="POST", body=BODY)
WORKLOADS = (
    Workload("sync-c1", "sync, c=1, GET", "sync", 1, GET, SYNC_ALL, quick_rss=True, weight=2),
    Workload("sync-c1-64k", "sync, c=1, GET 64 KiB response", "sync", 1, GET64, SYNC_BODY),
    Workload("sync-c1-post64k", "sync, c=1, POST 64 KiB", "sync", 1, POST64, SYNC_BODY),
    Workload("threads-32", "32 threads, one client, GET", "threads", 32, GET, THREADS, weight=1.5),
    Workload("async-c1", "async, c=1, GET", "async", 1, GET, ASYNC_ALL),
    Workload(
        "async-c32", "async, c=32, GET", "async", 32, GET, ASYNC_ALL, quick_rss=True, weight=1.5
    ),
    Workload("async-c256", "async, c=256, GET", "async", 256, GET, ASYNC_ALL),
    Workload("async-c32-64k", "async, c=32, GET 64 KiB response", "async", 32, GET64, ASYNC_BODY),
    Workload("async-c32-post64k", "async, c=32, POST 64 KiB", "async", 32, POST64, ASYNC_BODY),
)


@dataclass
class Plan:
    """How long each stack runs in each workload."""

    seconds: float = 4.0  # per stack and workload, over all its blocks
    rounds: int = 5
    calls: int = 20_000  # per stack and workload, over all its blocks
    warm_seconds: float = 0.5
    warm_calls: int = 300
    rss: str = "all"  # "all", "quick" (workloads marked quick_rss) or "none"
    rss_seconds: float = 1.0
    rss_calls: int = 1000

    def blocks(self, workload: Workload) -> tuple[int, int, float]:
        """Rounds, calls per block and seconds per block for ``workload``: a workload of
        weight w gets w times the rounds, calls and seconds (never fewer calls per block than
        its concurrency)."""
        rounds = max(1, round(self.rounds * workload.weight))
        calls = max(workload.concurrency, int(self.calls * workload.weight) // rounds)
        return rounds, calls, self.seconds * workload.weight / rounds

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            seconds=0.5,
            rounds=3,
            calls=4000,
            warm_seconds=0.1,
            warm_calls=100,
            rss="quick",
            rss_seconds=0.3,
            rss_calls=300,
        )


# --------------------------------------------------------------------------- process CPU

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float:
    """Seconds of CPU (user + system) process ``pid`` has used, 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class Others:
    """The other processes whose CPU each block records."""

    upstream: int
    proxy: int | None

    def sample(self) -> tuple[float, float]:
        return process_cpu(self.upstream), process_cpu(self.proxy)


# --------------------------------------------------------------------------- one workload


@dataclass
class Outcome:
    series: dict[str, _measure.Series] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)


def _measured(
    block: tuple[_measure.Block, list[int]], before: tuple[float, float], others: Others
) -> tuple[_measure.Block, list[int]]:
    upstream, proxy = others.sample()
    block[0].upstream_cpu_seconds = upstream - before[0]
    block[0].proxy_cpu_seconds = proxy - before[1]
    return block


def run_sync(workload: Workload, stacks: list[str], where: Endpoints, plan: Plan, others: Others):
    outcome = Outcome()
    calls: dict[str, Any] = {}
    closers = []
    for key in stacks:
        try:
            built = _stacks.build_sync(key, where, workload.request, workload.concurrency)
        except UnavailableError as why:
            outcome.skipped[key] = str(why)
            continue
        calls[key] = _stacks.guarded_sync(built.call)
        closers.append(built.close)
        outcome.details[key] = built.detail

    def block(key: str, n: int, seconds: float) -> tuple[_measure.Block, list[int]]:
        if workload.shape == "threads":
            return _measure.threads_block(calls[key], workload.concurrency, n, seconds)
        return _measure.sync_block(calls[key], n, seconds)

    try:
        for key in list(calls):
            block(key, max(plan.warm_calls, workload.concurrency), plan.warm_seconds)
        rounds, per_block, block_seconds = plan.blocks(workload)
        outcome.series = {key: _measure.Series() for key in calls}
        for order in _measure.rotations(list(calls), rounds):
            for key in order:
                gc.collect()
                before = others.sample()
                done = _measured(block(key, per_block, block_seconds), before, others)
                outcome.series[key].add(*done)
    finally:
        for close in closers:
            close()
    return outcome


async def _run_async(
    workload: Workload, stacks: list[str], where: Endpoints, plan: Plan, others: Others
) -> Outcome:
    outcome = Outcome()
    calls: dict[str, Any] = {}
    closers = []
    concurrency = workload.concurrency
    try:
        for key in stacks:
            try:
                built = await _stacks.build_async(key, where, workload.request, concurrency)
            except UnavailableError as why:
                outcome.skipped[key] = str(why)
                continue
            calls[key] = _stacks.guarded_async(built.call)
            closers.append(built.close)
            outcome.details[key] = built.detail
        for call in calls.values():
            n = max(plan.warm_calls, concurrency)
            await _measure.async_block(call, concurrency, n, plan.warm_seconds)
        rounds, per_block, block_seconds = plan.blocks(workload)
        outcome.series = {key: _measure.Series() for key in calls}
        for order in _measure.rotations(list(calls), rounds):
            for key in order:
                gc.collect()
                before = others.sample()
                block = await _measure.async_block(
                    calls[key], concurrency, per_block, block_seconds
                )
                outcome.series[key].add(*_measured(block, before, others))
    finally:
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
    return outcome


def run_workload(
    workload: Workload, stacks: list[str], where: Endpoints, plan: Plan, others: Others
) -> Outcome:
    if workload.shape == "async":
        return asyncio.run(_run_async(workload, stacks, where, plan, others))
    return run_sync(workload, stacks, where, plan, others)


# --------------------------------------------------------------------------- peak RSS


def rss_child(spec_text: str) -> None:
    """In a fresh process: run one stack's workload, print its peak RSS (KiB) as JSON."""
    spec = json.loads(spec_text)
    workload = next(w for w in WORKLOADS if w.key == spec["workload"])
    where = Endpoints(spec["upstream"], spec["haproxy"], spec.get("haproxy_reason", ""))
    key, n, seconds = spec["stack"], spec["calls"], spec["seconds"]
    errors = 0
    if workload.shape == "async":

        async def go() -> int:
            built = await _stacks.build_async(key, where, workload.request, workload.concurrency)
            try:
                call = _stacks.guarded_async(built.call)
                block, _ = await _measure.async_block(call, workload.concurrency, n, seconds)
                return block.errors
            finally:
                await built.close()

        errors = asyncio.run(go())
    else:
        built = _stacks.build_sync(key, where, workload.request, workload.concurrency)
        call = _stacks.guarded_sync(built.call)
        if workload.shape == "threads":
            block, _ = _measure.threads_block(call, workload.concurrency, n, seconds)
        else:
            block, _ = _measure.sync_block(call, n, seconds)
        errors = block.errors
        built.close()
    print(json.dumps({"peak_rss_kib": peak_rss_kib(), "errors": errors}))


def peak_rss_kib() -> int:
    """This process's peak resident set (``VmHWM``, KiB). Not ``ru_maxrss``: Linux carries that
    over from the parent across fork and exec."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_rss(workload: Workload, key: str, where: Endpoints, plan: Plan) -> dict[str, Any]:
    spec = {
        "workload": workload.key,
        "stack": key,
        "upstream": where.upstream,
        "haproxy": where.haproxy,
        "haproxy_reason": where.haproxy_reason,
        "calls": max(plan.rss_calls, 2 * workload.concurrency),
        "seconds": plan.rss_seconds,
    }
    command = [sys.executable, "-m", "bench.compare", "--rss-child", json.dumps(spec)]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": last}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- figures


def figures(workload: Workload, outcome: Outcome) -> dict[str, Any]:
    """Every stack's summary, with its ratios to the workload's bare httpx."""
    rows: dict[str, Any] = {key: s.summary() for key, s in outcome.series.items()}
    base = rows.get(workload.baseline)
    for row in rows.values():
        if base is None:
            continue
        row["ratio"] = {
            "p50": row["p50_us"] / base["p50_us"],
            "p90": row["p90_us"] / base["p90_us"],
            "p99": row["p99_us"] / base["p99_us"],
            "p50_paired": _measure.paired(row["block_p50_us"], base["block_p50_us"]),
            "throughput": _measure.paired(row["block_throughput"], base["block_throughput"]),
            "throughput_totals": row["throughput_per_s"] / base["throughput_per_s"],
            "cpu": row["cpu_us_per_call"] / base["cpu_us_per_call"],
        }
        row["added"] = {
            "p50_us": row["p50_us"] - base["p50_us"],
            "p90_us": row["p90_us"] - base["p90_us"],
            "p99_us": row["p99_us"] - base["p99_us"],
            "p50_paired_us": _measure.paired(row["block_p50_us"], base["block_p50_us"], False),
            "cpu_us": _measure.paired(row["block_cpu_us"], base["block_cpu_us"], False),
        }
    return rows


def add_rss(rows: dict[str, Any], baseline: str) -> None:
    base = rows.get(baseline, {}).get("peak_rss_kib")
    for row in rows.values():
        peak = row.get("peak_rss_kib")
        if peak and base:
            row.setdefault("ratio", {})["rss"] = peak / base


# --------------------------------------------------------------------------- targets


def _get(result: dict[str, Any], workload: str, stack: str, *path: str) -> float | None:
    value: Any = result["workloads"].get(workload, {}).get("stacks", {}).get(stack)
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


TRACING_ROWS = ("meshlib-traced", "meshlib", "otel", "httpx")


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each acceptance target: what it says, the measured value, PASS, MISS or n/a, and whether
    the A/A row moved more than the measured value's distance from the target (then the verdict
    is within this run's noise)."""
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        want: str,
        value: float | None,
        ok: bool | None,
        shown: str,
        margin: float | None = None,
        noise: float | None = None,
    ) -> None:
        verdict = "n/a" if value is None or ok is None else ("PASS" if ok else "MISS")
        close = margin is not None and noise is not None and abs(margin) < abs(noise)
        out.append(
            {
                "target": name,
                "want": want,
                "value": value,
                "shown": shown,
                "verdict": verdict,
                "within_noise": bool(close and verdict != "n/a"),
            }
        )

    def get(workload: str, stack: str, *path: str) -> float | None:
        return _get(result, workload, stack, *path)

    # sync c=1: median latency and client CPU, for the client a mesh hands out and for the
    # same mesh in a stock httpx.Client (the mesh's own cost, httpx's bookkeeping unchanged)
    for stack, who in (("meshlib", "meshlib"), ("meshlib-stock", "meshlib on stock httpx")):
        ratio = get("sync-c1", stack, "ratio", "p50")
        aa = get("sync-c1", "httpx-aa", "ratio", "p50")
        add(
            f"sync c=1 median latency, {who} / bare httpx",
            "≤ 1.05×",
            ratio,
            None if ratio is None else ratio <= 1.05,
            f"{ratio:.3f}× (A/A {aa:.3f}×)" if ratio is not None and aa is not None else "–",
            None if ratio is None else ratio - 1.05,
            None if aa is None else aa - 1,
        )
        extra = get("sync-c1", stack, "added", "cpu_us")
        aa_extra = get("sync-c1", "httpx-aa", "added", "cpu_us")
        add(
            f"sync c=1 client CPU per call, {who} − bare httpx",
            "≤ +20 µs",
            extra,
            None if extra is None else extra <= 20.0,
            f"{extra:+.1f} µs (A/A {aa_extra:+.1f} µs)"
            if extra is not None and aa_extra is not None
            else "–",
            None if extra is None else extra - 20.0,
            aa_extra,
        )

    # sync c=1 through requests: the adapter against bare requests, blocks paired by round
    rows = result["workloads"].get("sync-c1", {}).get("stacks", {})
    bare, adapted = rows.get("requests"), rows.get("meshlib-requests")
    ratio = extra = None
    if bare is not None and adapted is not None:
        ratio = adapted["p50_us"] / bare["p50_us"]
        extra = _measure.paired(adapted["block_cpu_us"], bare["block_cpu_us"], False)
    aa = get("sync-c1", "httpx-aa", "ratio", "p50")
    aa_extra = get("sync-c1", "httpx-aa", "added", "cpu_us")
    add(
        "sync c=1 median latency, meshlib's requests adapter / bare requests",
        "≤ 1.05×",
        ratio,
        None if ratio is None else ratio <= 1.05,
        f"{ratio:.3f}× (A/A of httpx {aa:.3f}×)" if ratio is not None and aa is not None else "–",
        None if ratio is None else ratio - 1.05,
        None if aa is None else aa - 1,
    )
    add(
        "sync c=1 client CPU per call, meshlib's requests adapter − bare requests",
        "≤ +20 µs",
        extra,
        None if extra is None else extra <= 20.0,
        f"{extra:+.1f} µs (A/A of httpx {aa_extra:+.1f} µs)"
        if extra is not None and aa_extra is not None
        else "–",
        None if extra is None else extra - 20.0,
        aa_extra,
    )

    # tracing: meshlib's added median against a bare OTel span + inject's
    sync = result["workloads"].get("sync-c1", {}).get("stacks", {})
    blocks = {key: sync[key]["block_p50_us"] for key in TRACING_ROWS if key in sync}
    aa_p50 = get("sync-c1", "httpx-aa", "added", "p50_paired_us")
    value, ok, shown, margin = None, None, "–", None
    if len(blocks) == len(TRACING_ROWS):
        mesh_added = _measure.paired(blocks["meshlib-traced"], blocks["meshlib"], ratio=False)
        otel_added = _measure.paired(blocks["otel"], blocks["httpx"], ratio=False)
        if otel_added > 0:
            value = mesh_added / otel_added
            ok = mesh_added <= 1.25 * otel_added
            margin = mesh_added - 1.25 * otel_added
        shown = (
            f"+{mesh_added:.1f} µs (meshlib traced − meshlib) vs +{otel_added:.1f} µs "
            f"(httpx + OTel span − httpx)"
            + (f" = {value:.2f}×" if value is not None else "")
            + (f"; A/A {aa_p50:+.1f} µs" if aa_p50 is not None else "")
        )
    add(
        "tracing on: added median latency, meshlib vs a bare OTel span + inject (sync c=1, "
        "block medians paired by round)",
        "≤ 1.25×",
        value,
        ok,
        shown,
        margin,
        aa_p50,
    )

    # async c=32: meshlib's aiohttp middleware against bare aiohttp and bare httpx
    aa_tp = get("async-c32", "a-httpx-aa", "ratio", "throughput")
    skipped = result["workloads"].get("async-c32", {}).get("skipped", {})
    for against, want, limit in (("aiohttp", "≥ 0.8×", 0.8), ("a-httpx", "≥ 5×", 5.0)):
        value = get("async-c32", "a-meshlib-aiomw", "throughput_per_s")
        other = get("async-c32", against, "throughput_per_s")
        ratio = value / other if value is not None and other else None
        shown = (
            f"{ratio:.2f}× ({value:,.0f} vs {other:,.0f} calls/s"
            + (f"; A/A {aa_tp:.2f}×)" if aa_tp is not None else ")")
            if ratio is not None and value is not None and other is not None
            else "–"
        )
        if "a-meshlib-aiomw" in skipped:
            shown = f"not measured: {skipped['a-meshlib-aiomw']}"
        label = "aiohttp" if against == "aiohttp" else "bare httpx.AsyncClient"
        add(
            f"async c=32 throughput, meshlib's aiohttp middleware / {label}",
            want,
            ratio,
            None if ratio is None else ratio >= limit,
            shown,
            None if ratio is None else ratio / limit - 1,
            None if aa_tp is None else aa_tp - 1,
        )

    # 32 threads sharing one client
    ratio = get("threads-32", "meshlib", "ratio", "throughput")
    aa = get("threads-32", "httpx-aa", "ratio", "throughput")
    add(
        "32 threads sharing one client: throughput, meshlib / bare httpx",
        "≥ 0.95×",
        ratio,
        None if ratio is None else ratio >= 0.95,
        f"{ratio:.3f}× (A/A {aa:.3f}×)" if ratio is not None and aa is not None else "–",
        None if ratio is None else ratio / 0.95 - 1,
        None if aa is None else aa - 1,
    )

    # added p99 per hop
    mesh_p99 = get("sync-c1", "meshlib", "added", "p99_us")
    proxy_p99 = get("sync-c1", "haproxy", "added", "p99_us")
    aa_p99 = get("sync-c1", "httpx-aa", "added", "p99_us")
    noise = f"; A/A {aa_p99:+.0f} µs" if aa_p99 is not None else ""
    add(
        "added p99 per hop (sync c=1): meshlib below HAProxy's",
        "meshlib < HAProxy",
        mesh_p99,
        None if mesh_p99 is None or proxy_p99 is None else mesh_p99 < proxy_p99,
        f"meshlib {mesh_p99:+.0f} µs, HAProxy {proxy_p99:+.0f} µs{noise}"
        if mesh_p99 is not None and proxy_p99 is not None
        else "–",
        None if mesh_p99 is None or proxy_p99 is None else mesh_p99 - proxy_p99,
        aa_p99,
    )
    add(
        "added p99 per hop (sync c=1): meshlib below Istio's published 0.298 ms",
        "< 298 µs",
        mesh_p99,
        None if mesh_p99 is None else mesh_p99 < ISTIO_P99_MS * 1000,
        f"meshlib {mesh_p99:+.0f} µs vs Istio +298 µs{noise}" if mesh_p99 is not None else "–",
        None if mesh_p99 is None else mesh_p99 - ISTIO_P99_MS * 1000,
        aa_p99,
    )
    return out


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    from importlib import metadata

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as meminfo:
        mem = f"{int(meminfo.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    os_name = ""
    with contextlib.suppress(OSError), open("/etc/os-release", encoding="utf-8") as release:
        for line in release:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    versions = {}
    for package in (
        "meshlib",
        "httpx",
        "httpcore",
        "aiohttp",
        "tenacity",
        "pybreaker",
        "opentelemetry-sdk",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "commit": _commit(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory": mem,
        "os": os_name,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def _commit() -> str:
    """The checkout's commit, and whether meshlib/ differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    changed = git("status", "--porcelain", "--", "meshlib")
    return commit + (" with uncommitted changes in meshlib/" if changed else "")


# --------------------------------------------------------------------------- main


def selected(pattern: str | None) -> list[tuple[Workload, list[str]]]:
    """Workloads and their stacks matching ``--only`` (a case-insensitive regex searched in
    ``workload stack label``); each selected workload keeps its baseline and A/A stacks."""
    chosen = []
    for workload in WORKLOADS:
        stacks = list(workload.stacks)
        if pattern:
            regex = re.compile(pattern, re.IGNORECASE)
            matching = [
                key
                for key in stacks
                if regex.search(f"{workload.key} {key} {_stacks.STACKS[key].label}")
            ]
            if not matching:
                continue
            stacks = [k for k in stacks if k in matching or k in (workload.baseline, workload.aa)]
        chosen.append((workload, stacks))
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="about 2 minutes instead of 10")
    parser.add_argument("--only", metavar="PATTERN", help="regex on 'workload stack label'")
    parser.add_argument("--seconds", type=float, help="per stack and workload")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per workload")
    parser.add_argument("--calls", type=int, help="at most, per stack and workload")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS processes")
    parser.add_argument("--out", type=Path, help="where results.md/.json and charts go")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child)
        return

    plan = Plan.quick() if args.quick else Plan()
    if args.seconds:
        plan.seconds = args.seconds
    if args.rounds:
        plan.rounds = args.rounds
    if args.calls:
        plan.calls = args.calls
    if args.no_rss:
        plan.rss = "none"
    out = args.out if args.out is not None else (None if args.only else RESULTS)
    chosen = selected(args.only)
    if not chosen:
        parser.error(f"--only {args.only!r} matches no workload or stack")

    from tests.integration.upstream import Upstream

    started = time.monotonic()
    command = "python -m bench.compare" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    result: dict[str, Any] = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "plan": asdict(plan),
        "pools": _stacks.pools(),
        "workloads": {},
    }
    program, why = _haproxy.ensure()
    result["haproxy"] = {"program": program, "status": why}
    if program:
        result["haproxy"]["version"] = _haproxy.version(program)
    print(f"{command}: {len(chosen)} workloads; haproxy {why}", flush=True)

    with Upstream.start("v1") as upstream, contextlib.ExitStack() as cleanup:
        proxy = None
        reason = why
        if program:
            try:
                proxy = cleanup.enter_context(_haproxy.HAProxy.start(program, upstream.port))
            except RuntimeError as error:
                reason = str(error)
        where = Endpoints(
            upstream.address,
            None if proxy is None else f"{_haproxy.HOST}:{proxy.port}",
            "" if proxy is not None else f"HAProxy not running: {reason}",
        )
        others = Others(upstream.process.pid, None if proxy is None else proxy.process.pid)
        for workload, stacks in chosen:
            began = time.monotonic()
            outcome = run_workload(workload, stacks, where, plan, others)
            rows = figures(workload, outcome)
            result["workloads"][workload.key] = {
                "label": workload.label,
                "shape": workload.shape,
                "concurrency": workload.concurrency,
                "method": workload.request.method,
                "blocks": dict(
                    zip(("rounds", "calls", "seconds"), plan.blocks(workload), strict=True)
                ),
                "stacks": rows,
                "skipped": outcome.skipped,
                "details": {k: v for k, v in outcome.details.items() if v},
                "seconds": time.monotonic() - began,
            }
            print(_progress(workload, rows, outcome.skipped, time.monotonic() - began), flush=True)
        if plan.rss != "none":
            began = time.monotonic()
            for workload, _ in chosen:
                if plan.rss == "quick" and not workload.quick_rss:
                    continue
                entry = result["workloads"][workload.key]
                for key in entry["stacks"]:
                    measured = measure_rss(workload, key, where, plan)
                    if "peak_rss_kib" in measured:
                        entry["stacks"][key]["peak_rss_kib"] = measured["peak_rss_kib"]
                    else:
                        entry["stacks"][key]["rss_error"] = measured.get("error")
                add_rss(entry["stacks"], workload.baseline)
            print(f"peak RSS: {time.monotonic() - began:.0f} s", flush=True)
        _stacks.shutdown_tracing()

    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = time.monotonic() - started
    result["targets"] = targets(result)
    from bench import _results

    text = _results.markdown(result)
    print()
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() == report.RESULTS.resolve():
            report.write_json("compare", result)
        else:
            (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "results.md").write_text(text)
        charts = _results.charts(result, out)
        names = ", ".join(path.name for path in charts)
        print(f"\nwrote {out}: results.md, compare.json, {names}", flush=True)


def _progress(workload: Workload, rows: dict[str, Any], skipped: dict[str, str], took: float):
    parts = []
    for key, row in rows.items():
        parts.append(
            f"{_stacks.STACKS[key].label} {row['p50_us']:.0f}/{row['p99_us']:.0f} µs "
            f"{row['throughput_per_s']:,.0f}/s"
        )
    line = f"[{took:5.1f} s] {workload.label}: " + "; ".join(parts)
    for key, why in skipped.items():
        line += f"\n    skipped {_stacks.STACKS[key].label}: {why}"
    return line


if __name__ == "__main__":
    main()
