# examples/dataplane/response_flags.py
"""Every response flag meshlib sets, and where the caller sees it."""

from pathlib import Path

import httpx

from meshlib import MeshRequestError
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

CONFIG = Path(__file__).with_suffix(".yaml").read_text()

upstreams = Upstreams()
upstreams.endpoint("reviews")
upstreams.endpoint("ratings", subset="v1")
upstreams.endpoint("details")
upstreams.endpoint("payments")
mesh = in_memory_mesh(CONFIG, upstreams, clock=FakeClock())


def show(what: str, url: str, replies: tuple[Reply, ...] = ()) -> None:
    service = httpx.URL(url).host
    upstreams.script(service, replies, subset="v1" if service == "ratings" else None)
    with mesh.client() as http:
        try:
            response = http.get(url)
            flags = response.headers.get("x-mesh-response-flags")
            seen = f"response {response.status_code}, x-mesh-response-flags: {flags}"
        except MeshRequestError as exc:
            seen = f"raises {type(exc).__name__}, .flag: {exc.flag}"
    print(f"{what:30} {seen}")


show("no route matched", "http://reviews/elsewhere")
show("subset not defined", "http://ratings/x")
show("no endpoint in the subset", "http://ratings/v2/x")
show("retries spent", "http://reviews/reviews/1", (Reply(503),) * 3)
show("retry budget refused a retry", "http://details/d", (Reply(503),))
show("route timeout ran out", "http://reviews/slow/1", (Reply(200, delay=2.0),))
show("connection refused", "http://reviews/reviews/1", (Reply(error=httpx.ConnectError),) * 3)
show("connection reset", "http://reviews/reviews/1", (Reply(error=httpx.ReadError),))
show("delay injected", "http://reviews/delay/1")
show("abort injected", "http://reviews/abort/1")
show("breaker trips on this 500", "http://payments/pay", (Reply(500),))
show("breaker open", "http://payments/pay")
