# examples/dataplane/connection_pool.py
"""Connection-pool limits (Istio's circuit-breaking task): one request in flight, one waiting,
and the next one overflows at once with 503, flag UO."""

import asyncio
from pathlib import Path

import httpx

from meshlib import Mesh
from meshlib.testing import FakeClock, Upstreams

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

upstreams = Upstreams()
upstreams.endpoint("httpbin")
gate = asyncio.Event()  # upstream answers wait for the gate: requests stay in flight


async def slow_upstream(request: httpx.Request) -> httpx.Response:
    await gate.wait()
    return upstreams.handle(request)


mesh = Mesh.from_yaml(
    CONFIG,
    clock=FakeClock(),
    transport=httpx.MockTransport(slow_upstream),
    extra_endpoints=upstreams.registry(),
)


async def main() -> None:
    async with mesh.async_client() as http:
        first = asyncio.create_task(http.get("http://httpbin:8000/get?n=1"))
        second = asyncio.create_task(http.get("http://httpbin:8000/get?n=2"))
        await asyncio.sleep(0)  # both start: the first takes the connection, the second waits

        third = await http.get("http://httpbin:8000/get?n=3")
        print(
            "third: ", third.status_code, third.headers["x-mesh-response-flags"], repr(third.text)
        )
        print("        x-envoy-overloaded:", third.headers["x-envoy-overloaded"])
        pool = mesh.cluster(third.extensions["mesh"].decision.destination).pool
        print(
            f"pool:   active={pool.active} pending={pool.pending}",
            f"upstream_rq_pending_overflow={pool.upstream_rq_pending_overflow}",
        )

        gate.set()  # the upstream answers; the first's slot passes to the second
        for name, task in (("first: ", first), ("second:", second)):
            response = await task
            print(name, response.status_code, response.headers.get("x-mesh-response-flags", "-"))
        print(f"pool:   active={pool.active} pending={pool.pending}")
        print("upstream saw:", [str(call.request.url.query, "ascii") for call in upstreams.calls()])


asyncio.run(main())
