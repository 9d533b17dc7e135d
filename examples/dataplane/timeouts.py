# examples/dataplane/timeouts.py
"""Timeouts: the route timeout, per-try timeouts, and the caller's own httpx timeout."""

from pathlib import Path

import httpx

from meshlib import MeshRequestError
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()


def run(
    label: str,
    service: str,
    replies: list[Reply],
    timeout: float | None = 5.0,  # httpx's own default is 5 seconds
    headers: dict[str, str] | None = None,
) -> None:
    """One call to a service whose only endpoint gives ``replies``; print what happened."""
    clock = FakeClock()
    upstreams = Upstreams()
    upstreams.script(service, replies)
    mesh = in_memory_mesh(CONFIG, upstreams, clock=clock, seed=1)
    with mesh.client(timeout=timeout) as http:
        try:
            response = http.get(f"http://{service}:9080/", headers=headers)
            seen = (
                f"{response.status_code} flags={response.headers.get('x-mesh-response-flags', '-')}"
            )
        except MeshRequestError as exc:
            seen = f"{type(exc).__name__} flags={exc.flag}"
        except httpx.TimeoutException as exc:
            seen = f"httpx.{type(exc).__name__}"
    print(f"{label:40} {seen:28} tries={len(upstreams.calls())} after {clock.now() - 1000:.3f}s")


slow, fast = Reply(200, delay=2.0), Reply(200, delay=0.1)

print("reviews: timeout 0.5s (and Istio's default retries)")
run("  upstream takes 2s", "reviews", [slow])
run("  upstream 503 after 0.3s, then 2s", "reviews", [Reply(503, delay=0.3), slow])
run(
    "  header x-envoy-upstream-rq-timeout-ms",
    "reviews",
    [slow],
    headers={"x-envoy-upstream-rq-timeout-ms": "3000"},
)

print("ratings: timeout 1s, perTryTimeout 0.4s, 3 retries on 5xx")
run("  slow, then 0.1s", "ratings", [slow, fast])
run("  always slow", "ratings", [slow] * 4)

print("details: perTryTimeout 0.4s, default retryOn")
run("  slow, then 0.1s", "details", [slow, fast])

print("the caller's own timeout bounds the whole call, retries included")
run("  ratings, httpx timeout 0.6s", "ratings", [slow, slow, fast], timeout=0.6)
run("  reviews, httpx timeout 0.2s", "reviews", [slow], timeout=0.2)
