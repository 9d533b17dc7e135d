"""What the live mesh page costs: the per-route tallies on the request path, and a poll of many
services.

    python -m bench.dashboard [--services 200] [--rounds 6] [--json]

1. ``meshlib_route_*`` on the request path: one ``RequestFinished`` recorded by a metrics
   recorder with its route tallies, and by the same recorder with them taken out of its cached
   label sets, interleaved, in turn first and second (the minimum of 80 alternations of each).
2. ``meshctl dashboard``'s poll of ``--services`` synthetic services
   (``tests/e2e/synthetic_mesh.py``: one HTTP server in this process answers every service's
   admin endpoints), the median of
   ``--rounds`` rounds after the first; building the page's JSON from their scrapes; its size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import timeit
from typing import Any

from meshlib.dashboard import model
from meshlib.dashboard.server import Dashboard
from meshlib.dashboard.sources import StaticTargets
from meshlib.telemetry import RequestFinished, metrics
from meshlib.testing import FakeClock, Upstreams, in_memory_mesh
from tests.e2e.synthetic_mesh import SyntheticMesh

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
  telemetry: {metrics: {}}
"""


def _recorder() -> tuple[metrics.MetricsRecorder, RequestFinished]:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v1")
    mesh = in_memory_mesh(SERVICE, upstreams)
    finished: list[RequestFinished] = []

    class Keep:
        def on_event(self, event: object) -> None:
            if isinstance(event, RequestFinished):
                finished.append(event)

    mesh.add_listener(Keep())
    with mesh.client() as client:
        client.get("http://reviews:9080/reviews/0")
    recorder = metrics.recorder_of(mesh)
    assert recorder is not None
    return recorder, finished[0]


def route_tallies() -> dict[str, float]:
    with_routes, event = _recorder()
    without, other = _recorder()
    for key, found in list(without._routes.items()):
        without._routes[key] = (*found[:4], None, None)
    a: list[float] = []
    b: list[float] = []
    number = 5000
    for turn in range(80):
        first, second = (a, b) if turn % 2 == 0 else (b, a)
        calls = (
            (lambda: with_routes.on_event(event), lambda: without.on_event(other))
            if turn % 2 == 0
            else (lambda: without.on_event(other), lambda: with_routes.on_event(event))
        )
        first.append(timeit.timeit(calls[0], number=number))
        second.append(timeit.timeit(calls[1], number=number))
    with_us, without_us = min(a) / number * 1e6, min(b) / number * 1e6
    return {"with_us": with_us, "without_us": without_us, "route_tallies_us": with_us - without_us}


def poll(services: int, rounds: int) -> dict[str, float]:
    mesh = SyntheticMesh(services)
    dashboard = Dashboard(StaticTargets(mesh.urls()), interval=1, window=10)
    try:
        took = []
        for _ in range(rounds + 1):
            started = time.perf_counter()
            dashboard.poll()
            took.append(time.perf_counter() - started)
        snapshots = list(dashboard._snapshots.values())
        builds = []
        for _ in range(10):
            started = time.perf_counter()
            now = time.time()
            model.build_view(
                now=now,
                mode="admin",
                source="",
                window=10,
                snapshots=snapshots,
                traffic=model.traffic_of(snapshots, now, 100),
                stale_after=100,
            )
            builds.append(time.perf_counter() - started)
        size = len(dashboard.view())
    finally:
        dashboard.close()
        mesh.close()
    return {
        "services": services,
        "poll_s": statistics.median(took[1:]),
        "build_view_ms": statistics.median(builds) * 1000,
        "json_bytes": size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "machine": platform.platform(),
        "route": route_tallies(),
        "poll": poll(args.services, args.rounds),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    route, polled = result["route"], result["poll"]
    print("meshlib_route_* tallies on the request path (one RequestFinished):")
    print(
        f"  recorder with them {route['with_us']:.2f} us, without {route['without_us']:.2f} us: "
        f"+{route['route_tallies_us']:.2f} us"
    )
    print(f"meshctl dashboard, {polled['services']} services (admin mode):")
    print(f"  a poll round            {polled['poll_s']:.2f} s (median)")
    print(f"  building the page JSON  {polled['build_view_ms']:.1f} ms (median)")
    print(f"  the page JSON           {polled['json_bytes'] / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
