# examples/dataplane/circuit_breaker.py
"""meshlib's circuit breaker: closed, open (CircuitOpenError), half-open, closed again."""

from pathlib import Path

import httpx

from meshlib import CircuitOpenError
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

clock = FakeClock()
upstreams = Upstreams()
upstreams.script(
    "reviews", [Reply(500), Reply(503), Reply(500), Reply(500), Reply(200), Reply(200)]
)
mesh = in_memory_mesh(CONFIG, upstreams, clock=clock)


def call(http: httpx.Client, n: int) -> None:
    try:
        response = http.get("http://reviews:9080/reviews/0")
        outcome = str(response.status_code)
    except CircuitOpenError as exc:
        outcome = f"CircuitOpenError flag={exc.flag}"
    breaker = mesh.breakers()["reviews.default.svc.cluster.local"]
    print(f"t={clock.now() - 1000:>4.0f}s call {n}: {outcome:28} breaker {breaker.state}")


with mesh.client() as http:
    for n in range(1, 6):
        call(http, n)
    clock.advance(10)  # resetTimeout: the next call is the one trial
    call(http, 6)
    clock.advance(10)
    call(http, 7)
    call(http, 8)

print("upstream calls:", len(upstreams.calls()))
