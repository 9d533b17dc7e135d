# examples/dataplane/route_actions.py
"""Route actions: redirect, direct response, rewrite, header operations and mirroring."""

import asyncio
from pathlib import Path

from meshlib.testing import Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

upstreams = Upstreams()
upstreams.script(
    "productpage", subset="v1", replies=[Reply(200, headers={"x-internal-trace": "a1"})]
)
upstreams.endpoint("productpage", subset="v2")
mesh = in_memory_mesh(CONFIG, upstreams)


async def main() -> None:
    async with mesh.async_client() as http:
        response = await http.get("http://productpage:9080/api/v0/products?page=2")
        print("redirect:", response.status_code, response.headers["location"])

        response = await http.get("http://productpage:9080/healthz")
        print("direct response:", response.status_code, response.text)

        response = await http.get("http://productpage:9080/api/v1/products/7")
        print("api:", response.status_code, "x-internal-trace" in response.headers)
        await asyncio.sleep(0)  # let the fire-and-forget mirror go out
        for call in upstreams.calls("productpage"):
            request = call.request
            print(
                f"  {call.endpoint} got {request.url.path}",
                f"host={request.headers['host']}",
                f"x-api-version={request.headers.get('x-api-version')}",
            )


asyncio.run(main())
