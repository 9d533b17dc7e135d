# examples/dataplane/default_client.py
"""meshlib.client: the process's default mesh, from $MESH_CONFIG (or ./mesh.yaml)."""

import asyncio
import os
from pathlib import Path

import httpx

# A service's deployment sets MESH_CONFIG; without it, ./mesh.yaml is read.
os.environ["MESH_CONFIG"] = str(Path(__file__).with_suffix(".yaml"))

from meshlib import client
from meshlib.testing import Reply, Upstreams, in_memory_mesh

# 1. Module-level calls go through the default mesh, built on first use from $MESH_CONFIG.
response = client.get("http://details:9080/details/0")
print("details:", response.status_code, response.text)
info = response.extensions["mesh"]
print("  route:", info.route, "| endpoint:", info.endpoint, "| attempts:", info.attempts)

# 2. configure() replaces the default mesh: here with in-memory upstreams.
upstreams = Upstreams()
upstreams.script("reviews", [Reply(503), Reply(200, json={"reviews": []})])
client.configure(in_memory_mesh(Path(os.environ["MESH_CONFIG"]).read_text(), upstreams))

response = client.get("http://reviews:9080/reviews/0")
info = response.extensions["mesh"]
print("reviews:", response.status_code, response.json())
print("  route:", info.route, "| endpoint:", info.endpoint, "| attempts:", info.attempts)
retry = info.decision.retry
print("  retry policy:", retry.attempts, "retries on", ",".join(retry.retry_on))

# 3. Client() and AsyncClient() are httpx clients whose transport is the mesh.
with client.Client(base_url="http://reviews:9080", timeout=2.0) as http:
    response = http.get("/reviews/1")
    print("Client() is an httpx.Client:", isinstance(http, httpx.Client), response.status_code)


async def main() -> None:
    async with client.AsyncClient(base_url="http://reviews:9080") as http:
        response = await http.get("/reviews/2")
        print(
            "AsyncClient() is an httpx.AsyncClient:",
            isinstance(http, httpx.AsyncClient),
            response.status_code,
        )


asyncio.run(main())
