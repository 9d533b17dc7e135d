"""Micro-benchmark: one routing decision on the Bookinfo rules, against an empty function call.

    python -m bench.route_decision [--json]

The request misses a header-match route (``end-user: jason``) and lands on a weighted 80/20 route:
a header match plus a weighted pick. Both figures come from the same run, timed the same way
(``timeit``, median of repeats, per call).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import timeit
from pathlib import Path

from examples.bookinfo import NETWORKING
from meshlib import Mesh, RouteRequest

BOOKINFO = NETWORKING

REVIEWS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v3}, weight: 20}
"""


def per_call(stmt: str, namespace: dict[str, object], number: int, repeat: int) -> float:
    """Median seconds per call of ``stmt`` over ``repeat`` runs of ``number`` calls."""
    timer = timeit.Timer(stmt, globals=namespace)
    return statistics.median(t / number for t in timer.repeat(repeat=repeat, number=number))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rules = BOOKINFO / "destination-rule-all.yaml"
    with tempfile.TemporaryDirectory() as scratch:
        extra = Path(scratch) / "reviews-header-and-weights.yaml"
        extra.write_text(REVIEWS)
        mesh = Mesh.from_files([rules, extra], seed=1)
    table, rng = mesh.table, mesh.rng
    headers = {"end-user": "alice", "accept": "text/html", "x-request-id": "abc"}
    request = RouteRequest("GET", "http", "reviews", 9080, "/reviews/0", "", headers)
    decision = table.route(request, rng)
    assert decision.destination is not None
    assert decision.route_index == 1

    def empty() -> None:
        pass

    namespace: dict[str, object] = {
        "empty": empty,
        "route": table.route,
        "request": request,
        "rng": rng,
        "RouteRequest": RouteRequest,
        "headers": headers,
    }
    empty_s = per_call("empty()", namespace, args.number, args.repeat)
    route_s = per_call("route(request, rng)", namespace, args.number, args.repeat)
    full_s = per_call(
        "route(RouteRequest('GET', 'http', 'reviews', 9080, '/reviews/0', '', headers), rng)",
        namespace,
        args.number,
        args.repeat,
    )
    result = {
        "python": platform.python_version(),
        "empty_call_ns": round(empty_s * 1e9, 1),
        "route_ns": round(route_s * 1e9, 1),
        "route_ratio_to_empty_call": round(route_s / empty_s, 1),
        "route_with_request_view_ns": round(full_s * 1e9, 1),
        "route_with_request_view_ratio": round(full_s / empty_s, 1),
        "budget_ratio": 50,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"empty function call:                 {result['empty_call_ns']:8.1f} ns")
    print(
        f"RouteTable.route (header + weighted): {result['route_ns']:8.1f} ns"
        f"  = {result['route_ratio_to_empty_call']}x empty call (budget 50x)"
    )
    print(
        f"  + building the RouteRequest view:  {result['route_with_request_view_ns']:8.1f} ns"
        f"  = {result['route_with_request_view_ratio']}x empty call"
    )


if __name__ == "__main__":
    main()
