# examples/dataplane/retries.py
"""Retries: Istio's default policy, retryOn, idempotency, Retry-After and the hosts tried."""

from pathlib import Path

import httpx

from meshlib import MeshRequestError
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

ok, unavailable, error = Reply(200), Reply(503), Reply(500)
refused = Reply(error=httpx.ConnectError)  # the connection could not be made
reset = Reply(error=httpx.ReadError)  # the connection broke after the request was sent


def run(label: str, service: str, replies: list[Reply], method: str = "GET") -> None:
    """One call to a service whose only endpoint gives ``replies``; print what happened."""
    clock = FakeClock()
    upstreams = Upstreams()
    upstreams.script(service, replies)
    mesh = in_memory_mesh(CONFIG, upstreams, clock=clock, seed=1)
    with mesh.client() as http:
        try:
            response = http.request(method, f"http://{service}:9080/")
            flags = response.headers.get("x-mesh-response-flags", "-")
            seen = f"{response.status_code} flags={flags}"
        except MeshRequestError as exc:
            seen = f"{type(exc).__name__} flags={exc.flag}"
    waits = ", ".join(f"{s * 1000:.0f}ms" for s in clock.sleeps) or "-"
    print(f"{label:33} {seen:29} tries={len(upstreams.calls())} waits={waits}")


print("ratings: no retries field, so Istio's default policy")
run("  GET: 503, 200", "ratings", [unavailable, ok])
run("  GET: 503, 503, 503", "ratings", [unavailable] * 3)
run("  GET: 500", "ratings", [error])
run("  GET: refused x3", "ratings", [refused] * 3)
run("  GET: reset", "ratings", [reset])
run("  GET: 503 Retry-After: 2, 200", "ratings", [Reply(503, headers={"retry-after": "2"}), ok])
run("  POST: 503, 200", "ratings", [unavailable, ok], method="POST")
run("  POST: refused, 200", "ratings", [refused, ok], method="POST")

print("reviews: attempts 3, retryOn 5xx,429, backoff 100ms")
run("  GET: 500, 500, 200", "reviews", [error, error, ok])
run("  GET: 500 x4", "reviews", [error] * 4)
run("  GET: reset, 200", "reviews", [reset, ok])
run("  GET: 429 Retry-After: 1, 200", "reviews", [Reply(429, headers={"retry-after": "1"}), ok])
run("  POST: reset, 200", "reviews", [reset, ok], method="POST")

print("orders: annotated meshlib.dev/retry-non-idempotent")
run("  POST: 503, 200", "orders", [unavailable, ok], method="POST")
run("  POST: reset, 200", "orders", [reset, ok], method="POST")

print("a retry goes to an endpoint not tried yet, while there is one")
upstreams = Upstreams(default=error)  # every reviews endpoint answers 500
for index in range(3):
    upstreams.endpoint("reviews", index=index)
mesh = in_memory_mesh(CONFIG, upstreams, clock=FakeClock(), seed=1)
with mesh.client() as http:
    http.get("http://reviews:9080/")
print("  tried:", ", ".join(call.endpoint.split(".")[0] for call in upstreams.calls()))
