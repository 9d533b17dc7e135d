# examples/dataplane/routing.py
"""Routing: first matching route, weighted destinations, and the mesh's own replies."""

from collections import Counter
from pathlib import Path

from meshlib.testing import Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

upstreams = Upstreams()
for version in ("v1", "v2", "v3"):  # one in-memory endpoint per version of reviews
    upstreams.script(
        "reviews", subset=version, replies=[Reply(200, json={"version": version})] * 1000
    )
upstreams.endpoint("ratings", subset="v1")  # ratings has v1 endpoints only

mesh = in_memory_mesh(CONFIG, upstreams, seed=7)

with mesh.client() as http:
    # 1. Header match: jason goes to v2, on every request.
    response = http.get("http://reviews:9080/reviews/0", headers={"end-user": "jason"})
    info = response.extensions["mesh"]
    print("jason       ->", response.json()["version"], "via", info.route, "at", info.endpoint)

    # 2. Weights 90/10: the share of 1000 requests each version got.
    versions = Counter(
        http.get("http://reviews:9080/reviews/0").json()["version"] for _ in range(1000)
    )
    print("1000 others ->", dict(sorted(versions.items())))

    # 3. Replies from the mesh itself: the upstream is never called.
    for label, url, headers in [
        ("no route", "http://reviews:9080/health", {}),
        ("subset not defined", "http://ratings:9080/ratings/0", {"end-user": "tester"}),
        ("subset without endpoints", "http://ratings:9080/ratings/0", {}),
        ("host not in registry", "http://www.example.com/", {}),
    ]:
        response = http.get(url, headers=headers)
        flags = response.headers["x-mesh-response-flags"]
        print(f"{label:24} -> {response.status_code} {flags:2} {response.text!r}")
