"""Scaling: what a routing decision, an endpoint pick and a whole in-memory call cost as the config
grows — more services, more routes per host, more endpoints per subset.

    python -m bench.scaling [--quick] [--rounds N] [--block-ms MS] [--json]

The Makefile's ``bench`` target runs it; the figures also go to ``bench/results/scaling.json``.

Three families, each a mesh built from generated config (no network: the inner transport is an
``httpx.MockTransport`` answering 200):

* **services**: 10, 100 and 1,000 VirtualServices, one host each, every host with one endpoint;
  the request goes to one of them. Target: flat.
* **routes per host**: 1, 10 and 100 ``http`` routes on one host, each matching its own value of
  the header ``x-route``. The request matches the last route (every route before it is tried and
  missed: the worst case) or the first (the best case). Target: the worst case at most linear in
  the routes scanned, the best case flat.
* **endpoints per subset**: 1, 10, 100 and 1,000 endpoints in the subset a route sends to, for
  each load balancer (``ROUND_ROBIN``, ``LEAST_REQUEST``, ``RANDOM``, ``consistentHash`` on a
  header: the ring hash, and ``maglev`` with Envoy's table of 65537). The pick is what the
  data plane does for each attempt: the subset's endpoints, the hash key (consistent hash
  only), then ``Balancer.choose``. Rows: a first attempt; a retry
  (the endpoint of the first attempt to avoid); a pick with outlier detection on and one
  endpoint ejected (none when there is one endpoint); the whole call. Target: flat, or
  logarithmic (ratio within ``FLAT_OR_LOG``). Reported for information: picks with unequal
  endpoint weights (smooth weighted round robin and least request's load-adjusted weights
  recompute every endpoint's weight on each pick, by design: see ``meshlib/balancing.py``), and
  the first pick after the endpoints changed (an ejection, a return, a registry change), when
  the picker rebuilds its table or ring.

Measures (per call):

* ``route``: ``RouteTable.route`` on a prebuilt request view.
* ``decision``: the mesh's decision for an ``httpx.Request``: its headers read into a dict, the
  router's view built, ``Mesh.route`` (what ``MeshTransport`` does before anything else).
* ``call``: ``httpx.Client.get`` through the mesh, the inner transport in memory.

Every probe of a family is timed in blocks, in an order that rotates each round, so that drift
hits every size alike; a figure is the median of its blocks, less the cost of calling an empty
probe the same way; the garbage collector is held off during a block (as ``timeit`` does).
Time is the thread's CPU time (``time.thread_time_ns``): everything measured is CPU work in
this thread, and on a shared machine wall time would also count the time the thread waited
for a core. A ratio (largest size to smallest) is the median over rounds of the ratio
within each round; a slope is ``log(ratio) / log(size ratio)`` (0: flat, 1: linear).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.report import verdict, write_json
from meshlib import Mesh
from meshlib.balancing import hash_key
from meshlib.clients.httpx.transport import header_map, view_of
from meshlib.routing import RouteRequest

SERVICES = (10, 100, 1000)
ROUTES = (1, 10, 100)
ENDPOINTS = (1, 10, 100, 1000)
BALANCERS = {
    "ROUND_ROBIN": "{simple: ROUND_ROBIN}",
    "LEAST_REQUEST": "{simple: LEAST_REQUEST}",
    "RANDOM": "{simple: RANDOM}",
    "consistentHash": "{consistentHash: {httpHeaderName: x-user}}",
    "maglev": "{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}",
}

FLAT = 1.25
"""Largest size over smallest, at most, for "flat" (two decades: a log-log slope of 0.05)."""
FLAT_OR_LOG = 1.5
"""Endpoints: 1,000 over 10, at most, for "flat or logarithmic"."""
LINEAR_SLOPE = 1.1
"""Routes scanned: log-log slope from 10 to 100 routes, at most, for "at most linear"."""

HEADERS = {"accept": "application/json", "x-user": "alice"}

Probe = Callable[[], object]


# --------------------------------------------------------------------------- config


def _service_doc(registry: dict[str, list[str]], labels: str = "") -> str:
    lines = [
        "apiVersion: meshlib.dev/v1",
        "kind: Service",
        "metadata: {name: client}",
        "spec:",
        "  registry:",
        "    static:",
    ]
    for name, addresses in registry.items():
        lines.append(f"      {name}:")
        lines += [f"        - {{address: '{a}'{labels}}}" for a in addresses]
    return "\n".join(lines) + "\n"


def _address(i: int) -> str:
    return f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}:9080"


def services_config(count: int) -> str:
    """``count`` VirtualServices, one host each, every host with one endpoint."""
    docs = [_service_doc({f"svc-{i}": [_address(i)] for i in range(count)})]
    docs += [
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}]\n"
        f"  http:\n  - route: [{{destination: {{host: svc-{i}}}}}]\n"
        for i in range(count)
    ]
    return "---\n".join(docs)


def routes_config(count: int) -> str:
    """One host whose ``count`` routes each match one value of the header ``x-route``."""
    routes = "".join(
        f"  - match: [{{headers: {{x-route: {{exact: r{i}}}}}}}]\n"
        "    route: [{destination: {host: reviews}}]\n"
        for i in range(count)
    )
    return (
        _service_doc({"reviews": [_address(0)]})
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n" + routes
    )


def endpoints_config(count: int, balancer: str, *, weighted: bool, outlier: bool) -> str:
    """One host whose subset v1 has ``count`` endpoints (and v2 one more), sent to v1."""
    registry = [f"{{address: '{_address(i)}', labels: {{version: v1}}" for i in range(count)]
    if weighted:
        registry = [f"{entry}, weight: {1 + i % 3}}}" for i, entry in enumerate(registry)]
    else:
        registry = [f"{entry}}}" for entry in registry]
    registry.append(f"{{address: '{_address(count)}', labels: {{version: v2}}}}")
    policy = f"    loadBalancer: {balancer}\n"
    if outlier:
        policy += (
            "    outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100,"
            " baseEjectionTime: 3600s}\n"
        )
    entries = "".join(f"      - {entry}\n" for entry in registry)
    return (
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: client}\nspec:\n"
        f"  registry:\n    static:\n      reviews:\n{entries}"
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n"
        f"{policy}"
        "  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n"
        "  http:\n  - route: [{destination: {host: reviews, subset: v1}}]\n"
    )


def in_memory(text: str) -> Mesh:
    return Mesh.from_yaml(
        text, seed=1, transport=httpx.MockTransport(lambda request: httpx.Response(200))
    )


# --------------------------------------------------------------------------- probes


def decision_probes(mesh: Mesh, url: str, headers: dict[str, str]) -> dict[str, Probe]:
    """``route``, ``decision`` and ``call`` for one request to ``mesh``."""
    request = httpx.Request("GET", url, headers=headers)
    view = view_of(request, header_map(request.headers))
    table, rng = mesh.table, mesh.rng
    client = mesh.client()
    decision = table.route(view, rng)
    if not decision.matched or decision.destination is None:
        raise RuntimeError(f"{url} {headers}: no route ({decision.flag})")
    response = client.get(url, headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.headers}")

    def route() -> object:
        return table.route(view, rng)

    def decide() -> object:
        return mesh.route(view_of(request, header_map(request.headers)))

    def call() -> object:
        return client.get(url, headers=headers)

    return {"route": route, "decision": decide, "call": call}


def pick_probe(mesh: Mesh, *, retry: bool = False) -> tuple[Probe, Any]:
    """One endpoint pick for the call ``http://reviews/``, as ``MeshTransport`` makes it for
    an attempt; also returns the cluster."""
    request = httpx.Request("GET", "http://reviews/r", headers=HEADERS)
    view = view_of(request, header_map(request.headers))
    target = mesh.route(view).destination
    assert target is not None
    cluster = mesh.cluster(target, view.port)
    balancer, lb = cluster.balancer, cluster.consistent_hash
    source, query, headers = mesh.source_address, view.query, request.headers

    def key() -> int | None:
        return hash_key(lb, headers, query, source) if lb is not None else None

    tried: list[Any] = []
    if retry:
        first = balancer.choose(cluster.endpoints(), key(), ())
        assert first is not None
        tried.append(first)

    def pick() -> object:
        endpoints = cluster.endpoints()
        hashed = hash_key(lb, headers, query, source) if lb is not None else None
        return balancer.choose(endpoints, hashed, tried)

    chosen = pick()
    if chosen is None or (retry and len(cluster.endpoints()) > 1 and chosen in tried):
        raise RuntimeError("the pick does not do what the benchmark says")
    return pick, cluster


def changed_pick_probe(mesh: Mesh) -> Probe:
    """A pick from a list that differs from the last one (one endpoint more or less, in turn),
    as after an ejection, a return or a registry change: what the picker rebuilds then."""
    _, cluster = pick_probe(mesh)
    endpoints = cluster.endpoints()
    lists = (endpoints, endpoints[:-1]) if len(endpoints) > 1 else (endpoints, tuple(endpoints))
    picker = cluster.balancer.picker
    turn = itertools.cycle(lists)
    key = 0x5EED if cluster.consistent_hash is not None else None

    def pick() -> object:
        return picker.pick(next(turn), key)

    return pick


def ejecting_pick_probe(mesh: Mesh) -> Probe:
    """A first-attempt pick with outlier detection on and one endpoint ejected (of two or more)."""
    pick, cluster = pick_probe(mesh)
    endpoints = cluster.endpoints()
    detector = cluster.balancer.detector
    assert detector is not None
    if len(endpoints) > 1:
        detector.available(endpoints)  # the detector learns the pool (maxEjectionPercent)
        if not detector.record(endpoints[-1], 503):
            raise RuntimeError("the endpoint was not ejected")
        for _ in range(50):
            if pick() is endpoints[-1]:
                raise RuntimeError("an ejected endpoint was picked")
    return pick


# --------------------------------------------------------------------------- timing


def _empty() -> object:
    return None


def calibrate(probe: Probe, block_seconds: float) -> int:
    """Calls per block so that a block takes about ``block_seconds``."""
    number = 1
    while True:
        started = time.thread_time()
        for _ in range(number):
            probe()
        spent = time.thread_time() - started
        if spent >= block_seconds / 10 or number >= 1 << 22:
            return max(1, int(number * block_seconds / max(spent, 1e-9)))
        number *= 4


def run_block(probe: Probe, number: int) -> float:
    """CPU nanoseconds (this thread's) per call over one block, the garbage collector held off
    during the block (as ``timeit`` does)."""
    clock = time.thread_time_ns
    gc.disable()
    try:
        started = clock()
        for _ in range(number):
            probe()
        return (clock() - started) / number
    finally:
        gc.enable()


@dataclass
class Family:
    """Probes measured together: name → probe, timed in rotating interleaved rounds."""

    probes: dict[str, Probe]
    samples: dict[str, list[float]] = field(default_factory=dict)

    def measure(self, rounds: int, block_seconds: float) -> None:
        probes = {"(empty)": _empty, **self.probes}
        names = list(probes)
        numbers = {name: calibrate(probe, block_seconds) for name, probe in probes.items()}
        for name in names:  # warm up
            run_block(probes[name], max(1, numbers[name] // 4))
        samples: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(run_block(probes[name], numbers[name]))
        empty = statistics.median(samples.pop("(empty)"))
        self.samples = {
            name: [max(v - empty, 1.0) for v in values] for name, values in samples.items()
        }

    def ns(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, larger: str, smaller: str) -> float:
        """Median over rounds of the round's ``larger / smaller``."""
        pairs = zip(self.samples[larger], self.samples[smaller], strict=True)
        return statistics.median(a / b for a, b in pairs)


# --------------------------------------------------------------------------- series


@dataclass
class Series:
    """One measure over sizes, with its target."""

    family: str
    measure: str
    sizes: tuple[int, ...]
    ns: list[float]
    ratio: float  # last size over the base size
    base: int  # the size the ratio is taken against
    slope: float
    target: str  # "flat", "linear", "flat-or-log", "info"
    limit: float
    met: bool | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "measure": self.measure,
            "sizes": list(self.sizes),
            "ns_per_call": [round(v, 1) for v in self.ns],
            "ratio": round(self.ratio, 3),
            "ratio_of": f"{self.sizes[-1]} / {self.base}",
            "slope": round(self.slope, 3),
            "target": self.target,
            "limit": self.limit,
            "met": self.met,
            "note": self.note,
        }


def series(
    family_name: str,
    measure: str,
    family: Family,
    names: Sequence[str],
    sizes: Sequence[int],
    target: str,
    *,
    base_index: int = 0,
    note: str = "",
) -> Series:
    """Figures of ``names`` (one per size) and the verdict for ``target``."""
    base, last = names[base_index], names[-1]
    decades = math.log(sizes[-1] / sizes[base_index])
    ratio = family.ratio(last, base)
    slope = math.log(ratio) / decades
    met: bool | None
    if target == "flat":
        limit, met = FLAT, ratio <= FLAT
    elif target == "flat-or-log":
        limit, met = FLAT_OR_LOG, ratio <= FLAT_OR_LOG
    elif target == "linear":
        # the slope over the last decade: a + b·n tends to 1 from below, n² to 2
        previous = names[-2]
        slope = math.log(family.ratio(last, previous)) / math.log(sizes[-1] / sizes[-2])
        limit, met = LINEAR_SLOPE, slope <= LINEAR_SLOPE
    else:
        limit, met = FLAT_OR_LOG, None
    return Series(
        family_name,
        measure,
        tuple(sizes),
        [family.ns(n) for n in names],
        ratio,
        sizes[base_index],
        slope,
        target,
        limit,
        met,
        note,
    )


def bench_services(rounds: int, block: float, sizes: Sequence[int]) -> list[Series]:
    probes: dict[str, Probe] = {}
    for count in sizes:
        mesh = in_memory(services_config(count))
        url = f"http://svc-{count // 2}:9080/items/1"
        for measure, probe in decision_probes(mesh, url, HEADERS).items():
            probes[f"{measure}/{count}"] = probe
    family = Family(probes)
    family.measure(rounds, block)
    return [
        series("services", measure, family, [f"{measure}/{n}" for n in sizes], sizes, "flat")
        for measure in ("route", "decision", "call")
    ]


def bench_routes(rounds: int, block: float, sizes: Sequence[int]) -> list[Series]:
    probes: dict[str, Probe] = {}
    for count in sizes:
        mesh = in_memory(routes_config(count))
        for case, header in (("last", f"r{count - 1}"), ("first", "r0")):
            headers = {**HEADERS, "x-route": header}
            found = mesh.route(RouteRequest.from_url("GET", "http://reviews/r", headers))
            expected = count - 1 if case == "last" else 0
            if found.route_index != expected:
                raise RuntimeError(f"route {found.route_index} matched, not {expected}")
            for measure, probe in decision_probes(mesh, "http://reviews/r", headers).items():
                probes[f"{measure}/{case}/{count}"] = probe
    family = Family(probes)
    family.measure(rounds, block)
    out = []
    for case, target in (("last", "linear"), ("first", "flat")):
        for measure in ("route", "decision", "call"):
            names = [f"{measure}/{case}/{n}" for n in sizes]
            label = f"{measure}, match {'last (worst)' if case == 'last' else 'first (best)'}"
            out.append(series("routes", label, family, names, sizes, target))
    return out


def bench_endpoints(
    rounds: int, block: float, sizes: Sequence[int], balancers: Sequence[str]
) -> list[Series]:
    out = []
    base_index = 1 if len(sizes) > 2 else 0  # one endpoint is a shortcut: compare from 10 on
    for name in balancers:
        lb = BALANCERS[name]
        probes: dict[str, Probe] = {}
        for count in sizes:
            plain = in_memory(endpoints_config(count, lb, weighted=False, outlier=False))
            probes[f"pick/{count}"] = pick_probe(plain)[0]
            probes[f"retry/{count}"] = pick_probe(plain, retry=True)[0]
            probes[f"call/{count}"] = decision_probes(plain, "http://reviews/r", HEADERS)["call"]
            ejecting = in_memory(endpoints_config(count, lb, weighted=False, outlier=True))
            probes[f"ejected/{count}"] = ejecting_pick_probe(ejecting)
            weighted = in_memory(endpoints_config(count, lb, weighted=True, outlier=False))
            probes[f"weighted/{count}"] = pick_probe(weighted)[0]
            other = in_memory(endpoints_config(count, lb, weighted=False, outlier=False))
            probes[f"changed/{count}"] = changed_pick_probe(other)  # a picker of its own
        family = Family(probes)
        family.measure(rounds, block)
        rows = (
            ("pick", "pick, first attempt", "flat-or-log", ""),
            ("retry", "pick, retry (first endpoint avoided)", "flat-or-log", ""),
            ("ejected", "pick, one endpoint ejected", "flat-or-log", ""),
            ("call", "whole call (in-memory)", "flat-or-log", ""),
            ("weighted", "pick, unequal weights (1, 2, 3, …)", "info", _weighted_note(name)),
            ("changed", "first pick after the endpoints changed", "info", _changed_note(name)),
        )
        for key, label, target, note in rows:
            names = [f"{key}/{n}" for n in sizes]
            out.append(
                series(
                    f"endpoints {name}",
                    label,
                    family,
                    names,
                    sizes,
                    target,
                    base_index=base_index,
                    note=note,
                )
            )
    return out


def _changed_note(balancer: str) -> str:
    if balancer == "consistentHash":
        return "Envoy's ring is rebuilt (1,024 entries to 2,000 here); known endpoints' hashes kept"
    if balancer == "maglev":
        return "two lists in turn: both tables kept (a list not seen lately builds 65,537 slots)"
    return "the picker's weight table is rebuilt"


def _weighted_note(balancer: str) -> str:
    if balancer == "ROUND_ROBIN":
        return "smooth weighted round robin: every endpoint's weight added on each pick (O(n))"
    if balancer == "LEAST_REQUEST":
        return "load-adjusted weights of every endpoint recomputed on each pick (O(n))"
    return ""


# --------------------------------------------------------------------------- report


def _figure(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:,.1f} ms"
    return f"{ns / 1000:,.1f} µs" if ns >= 10_000 else f"{ns:,.0f} ns"


def _target(s: Series) -> str:
    if s.target == "flat":
        return f"flat (≤ {FLAT}×)"
    if s.target == "flat-or-log":
        return f"flat or log (≤ {FLAT_OR_LOG}×)"
    if s.target == "linear":
        return f"≤ linear (slope ≤ {LINEAR_SLOPE})"
    return "info"


def markdown(result: dict[str, Any]) -> str:
    rows: list[Series] = result["series"]
    lines = [f"Scaling, {result['environment']}", ""]
    families: dict[str, list[Series]] = {}
    for s in rows:
        families.setdefault(s.family, []).append(s)
    for family, members in families.items():
        sizes = members[0].sizes
        header = " | ".join(f"{n:,}" for n in sizes)
        lines += [
            f"**{family}**",
            "",
            f"| measure | {header} | ratio | slope | target | verdict |",
            "|---|" + "---:|" * len(sizes) + "---:|---:|---|---|",
        ]
        for s in members:
            figures = " | ".join(_figure(v) for v in s.ns)
            note = f" ({s.note})" if s.note else ""
            lines.append(
                f"| {s.measure}{note} | {figures} | {s.ratio:.2f}× ({s.sizes[-1]:,}/{s.base:,}) "
                f"| {s.slope:.2f} | {_target(s)} | {verdict(s.met)} |"
            )
        lines.append("")
    met = [s.met for s in rows if s.met is not None]
    lines.append(
        f"Overall: {'PASS' if all(met) else '**MISS**'} ({sum(met)}/{len(met)} rows met). "
        f"{result['rounds']} rounds of ~{result['block_ms']} ms blocks per probe; figures are "
        "medians less the empty-probe cost; ratios are medians of per-round ratios; slope = "
        "log(ratio)/log(size ratio) (for routes scanned: over the last decade)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter blocks")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--block-ms", type=float, default=None, help="milliseconds per block")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 7)
    block_ms = args.block_ms or (8.0 if args.quick else 25.0)
    block = block_ms / 1000

    started = time.perf_counter()
    rows = bench_services(rounds, block, SERVICES)
    rows += bench_routes(rounds, block, ROUTES)
    rows += bench_endpoints(rounds, block, ENDPOINTS, list(BALANCERS))
    result: dict[str, Any] = {
        "environment": (
            f"Python {platform.python_version()}, httpx {httpx.__version__}, "
            f"{os.cpu_count()} CPUs, in-memory inner transport"
        ),
        "rounds": rounds,
        "block_ms": block_ms,
        "seconds": round(time.perf_counter() - started, 1),
        "series": rows,
    }
    payload = {
        **result,
        "series": [s.to_dict() for s in rows],
        "met": all(s.met for s in rows if s.met is not None),
    }
    path = write_json("scaling", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(markdown(result))
        print(f"\n({result['seconds']} s; JSON in {path})")


if __name__ == "__main__":
    main()
