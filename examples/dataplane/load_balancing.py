# examples/dataplane/load_balancing.py
"""Load balancing: weighted round robin, consistent hashing, least request."""

import asyncio
from collections import Counter
from pathlib import Path

import httpx

from meshlib import Mesh
from meshlib.testing import Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

mesh = in_memory_mesh(CONFIG, Upstreams(), seed=5)


def last_octet(response: httpx.Response) -> str:
    """The last number of the IP address the mesh sent the call to."""
    return response.extensions["mesh"].endpoint.split(":")[0].rsplit(".", 1)[1]


with mesh.client() as http:
    picks = [last_octet(http.get("http://reviews:9080/")) for _ in range(14)]
    print("ROUND_ROBIN, weights 5,1,1:", " ".join(picks))

    for user in ("jason", "lee", "raj", "jason", "kim", "lee"):
        response = http.get("http://ratings:9080/", headers={"end-user": user})
        print(f"consistentHash on end-user: {user:5} -> .{last_octet(response)}")
    picks = [last_octet(http.get("http://ratings:9080/")) for _ in range(6)]
    print("consistentHash, no end-user header (random):", " ".join(picks))


async def least_request() -> None:
    """Eight calls held in flight at once (the upstream answers when the gate opens)."""
    gate = asyncio.Event()

    async def slow_upstream(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200)

    held_mesh = Mesh.from_yaml(CONFIG, transport=httpx.MockTransport(slow_upstream), seed=5)
    async with held_mesh.async_client() as http:
        calls = [asyncio.create_task(http.get("http://details:9080/")) for _ in range(8)]
        await asyncio.sleep(0)
        gate.set()
        picks = Counter(last_octet(response) for response in await asyncio.gather(*calls))
    print("LEAST_REQUEST, 8 calls in flight at once:", dict(sorted(picks.items())))


asyncio.run(least_request())
