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

Three floors, with no mesh, say what requests itself costs: ``HTTPAdapter.build_response`` of an
in-memory 503 (every response requests hands over is built so, the mesh's replies too), and a
bare ``requests.Session`` whose adapter raises at once or answers such a 503 (the session's own
work around any adapter: preparing the request, the environment's proxy and ``.netrc``
settings, hooks, cookies).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import requests
import requests.adapters
import urllib3

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


FLOOR_BUILD = "floor: requests builds an in-memory 503 (adapter layer)"
FLOOR_RAISES = "floor: a bare Session, its adapter raises at once"
FLOOR_REPLY = "floor: a bare Session, its adapter answers a 503 from memory"
FLOORS = (FLOOR_BUILD, FLOOR_RAISES, FLOOR_REPLY)


class _FloorAdapter(requests.adapters.HTTPAdapter):
    """No mesh: raises requests' ConnectionError at once (path ``/raise``), or answers 503 with
    a body from memory through requests' own ``build_response``, as the mesh's replies are."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if (request.url or "").endswith("/raise"):
            raise requests.exceptions.ConnectionError("refused", request=request)
        body = b"fault filter abort"
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers=urllib3.HTTPHeaderDict(
                [("content-type", "text/plain"), ("content-length", str(len(body)))]
            ),
            status=503,
            reason="Service Unavailable",
            preload_content=False,
            decode_content=False,
        )
        return self.build_response(request, raw)


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

    # the floors: what requests itself costs around an adapter that fails at once, or answers a
    # 503 from memory the way requests builds every response (``HTTPAdapter.build_response``)
    floor = _FloorAdapter()
    floor_session = requests.Session()
    floor_session.mount("http://", floor)
    prepared = requests.Request("GET", "http://floor/r").prepare()

    def floor_raises() -> None:
        try:
            floor_session.get("http://floor/raise", timeout=2)
        except requests.exceptions.ConnectionError:
            return
        raise AssertionError("the floor adapter should raise")

    def floor_reply() -> None:
        assert floor_session.get("http://floor/r", timeout=2).status_code == 503

    def floor_build() -> None:
        assert floor.send(prepared, timeout=2).status_code == 503

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
            FLOOR_BUILD: _per_call(floor_build, calls),
            FLOOR_RAISES: _per_call(floor_raises, calls),
            FLOOR_REPLY: _per_call(floor_reply, calls),
        }
    session.close()
    floor_session.close()
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
        plain = name.startswith("loopback") or name in FLOORS
        verdict = "" if plain else (" PASS" if share <= limit else " MISS")
        want = "" if plain else f" (target ≤ 1/{round(1 / limit)})"
        print(f"  {name:62} {value:9.1f} µs  = 1/{1 / share:6.1f} of loopback{want}{verdict}")


if __name__ == "__main__":
    main()
