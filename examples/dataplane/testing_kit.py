# examples/dataplane/testing_kit.py
"""meshlib.testing: resilience tests that run in milliseconds. Run with pytest or python."""

import asyncio
from pathlib import Path

import httpx
import pytest

from meshlib import DeadlineExceeded
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()


def test_v2_recovers_from_two_503s() -> None:
    clock = FakeClock()
    upstreams = Upstreams()
    upstreams.script("reviews", subset="v1", replies=[Reply(200, json={"version": "v1"})])
    upstreams.script(
        "reviews",
        subset="v2",
        replies=[Reply(503), Reply(503), Reply(200, json={"version": "v2"})],
    )
    mesh = in_memory_mesh(CONFIG, upstreams, clock=clock, seed=1)

    with mesh.client() as http:
        response = http.get("http://reviews:9080/reviews/0", headers={"end-user": "jason"})

    assert response.json() == {"version": "v2"}
    assert response.extensions["mesh"].attempts == 3
    assert len(upstreams.calls("reviews", subset="v2")) == 3
    assert upstreams.calls("reviews", subset="v1") == []
    assert len(clock.sleeps) == 2  # two backoff waits, in fake time
    print("two 503s then 200: attempts=3, backoff waits", [f"{s:.4f}" for s in clock.sleeps])


def test_slow_upstream_hits_the_route_timeout() -> None:
    clock = FakeClock()
    upstreams = Upstreams()
    upstreams.script("reviews", subset="v2", replies=[Reply(200, delay=10.0)])
    mesh = in_memory_mesh(CONFIG, upstreams, clock=clock)

    with mesh.client(timeout=None) as http, pytest.raises(DeadlineExceeded) as caught:
        http.get("http://reviews:9080/reviews/0", headers={"end-user": "jason"})

    assert caught.value.flag == "UT"
    assert clock.now() - 1000.0 == pytest.approx(3.0)  # the route's timeout, in fake time
    print("10s upstream, 3s route timeout:", caught.value)


def test_connection_refused_async() -> None:
    upstreams = Upstreams()
    upstreams.script("reviews", subset="v1", replies=[Reply(error=httpx.ConnectError), Reply(200)])
    mesh = in_memory_mesh(CONFIG, upstreams)

    async def call() -> httpx.Response:
        async with mesh.async_client() as http:
            return await http.get("http://reviews:9080/reviews/0")

    response = asyncio.run(call())
    assert response.status_code == 200
    assert [c.endpoint for c in upstreams.calls()] == ["reviews-v1.upstream.test:80"] * 2
    print("async: connection refused, then 200 on the retry")


if __name__ == "__main__":
    test_v2_recovers_from_two_503s()
    test_slow_upstream_hits_the_route_timeout()
    test_connection_refused_async()
