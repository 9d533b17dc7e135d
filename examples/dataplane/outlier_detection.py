# examples/dataplane/outlier_detection.py
"""Outlier detection: an endpoint failing in a row is ejected for a while, then comes back."""

from pathlib import Path

import httpx

from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

clock = FakeClock()
upstreams = Upstreams()
for service in ("reviews", "ratings"):
    upstreams.script(service, [Reply(500)] * 100, index=0)  # endpoint 0 is broken
    upstreams.endpoint(service, index=1)
    upstreams.endpoint(service, index=2)
mesh = in_memory_mesh(CONFIG, upstreams, clock=clock, seed=2)


def rounds(http: httpx.Client, service: str, n: int) -> str:
    """n calls; each shown as the endpoint's index and the status."""
    seen = []
    for _ in range(n):
        response = http.get(f"http://{service}:9080/")
        endpoint = response.extensions["mesh"].endpoint.split(".")[0]
        index = endpoint.rsplit("-", 1)[1] if "-" in endpoint else "0"
        seen.append(f"{index}:{response.status_code}")
    return " ".join(seen)


with mesh.client() as http:
    print("reviews, maxEjectionPercent 100")
    print("  t=0s  ", rounds(http, "reviews", 9))
    clock.advance(30)
    print("  t=30s ", rounds(http, "reviews", 9))
    clock.advance(60)  # second ejection: 2 x baseEjectionTime
    print("  t=90s ", rounds(http, "reviews", 6))
    print("ratings, maxEjectionPercent 10 (Istio's default)")
    print("  t=90s ", rounds(http, "ratings", 9))

print("reviews endpoints at t=90s")
target = mesh.explain("GET", "http://reviews:9080/").destination
detector = mesh.cluster(target).balancer.detector
for status in detector.snapshot():
    print(
        f"  {status.address}: ejected={status.ejected} for {status.ejected_for:g}s,",
        f"ejections={status.ejections}",
    )
