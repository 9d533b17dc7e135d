# examples/dataplane/faults.py
"""Fault injection: delays and aborts, their flags, and the caller's own timeout."""

from collections import Counter
from pathlib import Path

import httpx

from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

clock = FakeClock()  # the 7s delay takes no real time
upstreams = Upstreams(default=Reply(200, json={"stars": 4}))
upstreams.endpoint("ratings")
mesh = in_memory_mesh(CONFIG, upstreams, clock=clock, seed=3)


def call(http: httpx.Client, headers: dict[str, str]) -> str:
    start = clock.now()
    try:
        response = http.get("http://ratings:9080/ratings/0", headers=headers)
    except httpx.TimeoutException as exc:
        outcome = f"raised {type(exc).__name__}: {exc}"
    else:
        flags = response.headers.get("x-mesh-response-flags", "-")
        outcome = f"{response.status_code} flags={flags} body={response.content!r}"
    return f"{outcome} after {clock.now() - start:g}s"


# 1. The delay, with three caller timeouts: the caller's own timeout bounds the injected delay.
for timeout in (10.0, 5.0, 2.5):
    with mesh.client(timeout=timeout) as http:
        print(f"jason, timeout={timeout:g}s:", call(http, {"end-user": "jason"}))

with mesh.client() as http:
    # 2. The abort: a synthetic response; the upstream is not called.
    before = len(upstreams.calls())
    print("kim:", call(http, {"end-user": "kim"}))
    print("upstream calls for kim:", len(upstreams.calls()) - before)

    # 3. A gRPC abort: HTTP 200 with grpc-status 14 (UNAVAILABLE).
    grpc = http.get("http://ratings:9080/", headers={"content-type": "application/grpc"})
    print("grpc:", grpc.status_code, grpc.headers["grpc-status"], grpc.headers["grpc-message"])

    # 4. Percentages: delay and abort are drawn independently.
    flags: Counter[str] = Counter()
    for _ in range(1000):
        response = http.get("http://ratings:9080/", headers={"x-chaos": "on"})
        flags[response.headers.get("x-mesh-response-flags", "-")] += 1
    print("1000 chaos requests:", dict(sorted(flags.items())))

# 5. A route with a fault has no retries (Istio's rule); other routes keep the default policy.
with mesh.client(timeout=10.0) as http:
    for user in ("jason", "anyone"):
        upstreams.script("ratings", [Reply(503)])
        before = len(upstreams.calls())
        response = http.get("http://ratings:9080/ratings/0", headers={"end-user": user})
        tries = len(upstreams.calls()) - before
        print(
            f"{user}: upstream 503 -> caller sees {response.status_code}, upstream called {tries}x"
        )
