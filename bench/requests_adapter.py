"""Fast failure through the requests adapter, beside a loopback call of bare requests.

    python -m bench.requests_adapter [--calls N] [--json]

The Makefile's ``bench`` target runs it. One upstream process (``tests/integration/upstream.py``)
on 127.0.0.1 answers the loopback calls of a bare ``requests.Session`` (the yardstick). The
fast failures need no upstream: an open breaker (``circuitBreakers: {failureThreshold: 1}``,
opened by one refused connection) and a fault abort (100 % ``abort: {httpStatus: 503}``), each
measured in the adapter layer (``MeshAdapter.send`` with a prepared request: what the mesh
adds) and through the client (``session.get``: requests' own work too). Each row is the median
per call of interleaved blocks (wall clock); the targets are a fast failure in at most 1/50 of a
loopback call in the adapter layer and 1/10 through the client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import requests

from meshlib import Mesh
from meshlib.errors import CircuitOpenError
from tests.integration.upstream import Upstream

CONFIG = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  registry:
    static:
      reviews: [{address: "127.0.0.1:%(port)d", labels: {version: v1}}]
      ratings: [{address: "127.0.0.1:%(port)d", labels: {version: v1}}]
  circuitBreakers: {failureThreshold: 1, resetTimeout: 3600s}
  telemetry: {tracing: {enabled: false}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 0}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
"""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _per_call(call: Callable[[], Any], calls: int, blocks: int = 10) -> float:
    """Median over blocks of the wall time per call, in microseconds."""
    for _ in range(min(200, calls)):
        call()
    each = max(1, calls // blocks)
    found = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(each):
            call()
        found.append((time.perf_counter() - start) / each * 1e6)
    return statistics.median(found)


def measure(calls: int) -> dict[str, Any]:
    mesh = Mesh.from_yaml(CONFIG % {"port": _closed_port()}, seed=1)
    session = mesh.requests_session()
    adapter = session.get_adapter("http://reviews/")
    with contextlib.suppress(requests.exceptions.ConnectionError):
        session.get("http://reviews/r", timeout=2)  # the refused connection that opens it
    opened = requests.Request("GET", "http://reviews/r").prepare()
    aborted = requests.Request("GET", "http://ratings/r").prepare()

    def adapter_open() -> None:
        try:
            adapter.send(opened, timeout=2)
        except CircuitOpenError:
            return
        raise AssertionError("the breaker should be open")

    def client_open() -> None:
        try:
            session.get("http://reviews/r", timeout=2)
        except CircuitOpenError:
            return
        raise AssertionError("the breaker should be open")

    def adapter_abort() -> None:
        assert adapter.send(aborted, timeout=2).status_code == 503

    def client_abort() -> None:
        assert session.get("http://ratings/r", timeout=2).status_code == 503

    with Upstream.start("v1") as upstream, requests.Session() as bare:
        url = upstream.url("/bench")

        def loopback() -> None:
            assert bare.get(url, timeout=5).status_code == 200

        rows = {
            "loopback call, bare requests": _per_call(loopback, calls // 4),
            "open breaker, adapter layer": _per_call(adapter_open, calls),
            "open breaker, through requests.Session": _per_call(client_open, calls),
            "fault abort, adapter layer": _per_call(adapter_abort, calls),
            "fault abort, through requests.Session": _per_call(client_abort, calls),
        }
    session.close()
    base = rows["loopback call, bare requests"]
    return {
        "us_per_call": rows,
        "fraction_of_loopback": {name: value / base for name, value in rows.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20_000, help="per fast-failure row")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    found = measure(args.calls)
    if args.json:
        print(json.dumps(found, indent=2))
        return
    print("requests adapter: fast failure beside a loopback call (median µs per call)")
    for name, value in found["us_per_call"].items():
        share = found["fraction_of_loopback"][name]
        limit = 1 / 50 if "adapter layer" in name else 1 / 10
        verdict = "" if name.startswith("loopback") else (" PASS" if share <= limit else " MISS")
        want = "" if name.startswith("loopback") else f" (target ≤ 1/{round(1 / limit)})"
        print(f"  {name:42} {value:9.1f} µs  = 1/{1 / share:6.1f} of loopback{want}{verdict}")


if __name__ == "__main__":
    main()
