# examples/dataplane/discovery.py
"""Discovery: static endpoints, ServiceEntry endpoints, and a watched registry file."""

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

from meshlib import Mesh
from meshlib.testing import FakeClock, Upstreams

logging.basicConfig(stream=sys.stdout, format="  log: %(message)s")

# A scratch directory with the config and the registry file it names.
workdir = tempfile.mkdtemp()
shutil.copy(Path(__file__).with_suffix(".yaml"), Path(workdir, "mesh.yaml"))
home = os.getcwd()
os.chdir(workdir)
endpoints = Path("endpoints.yaml")
endpoints.write_text("reviews:\n  - {address: 10.0.0.11:9080, labels: {version: v1}}\n")

clock = FakeClock()
upstreams = Upstreams()  # answers 200 at any address
mesh = Mesh.from_file("mesh.yaml", clock=clock, transport=upstreams.transport(), seed=1)


def show(http: httpx.Client, url: str) -> None:
    response = http.get(url)
    flags = response.headers.get("x-mesh-response-flags", "-")
    print(f"  {url:40} {response.status_code} {flags:2} {response.extensions['mesh'].endpoint}")


with mesh.client() as http:
    print("at start: the file gives reviews one v1 endpoint; the route wants subset v2")
    show(http, "http://details:9080/details/0")
    show(http, "http://ratings.legacy.example.com:8080/r")
    show(http, "http://ratings.legacy.example.com:8080/r")
    show(http, "http://reviews:9080/reviews/0")

    endpoints.write_text(
        "reviews:\n"
        "  - {address: 10.0.0.12:9080, labels: {version: v2}}\n"
        "  - {address: 10.0.0.13:9080, labels: {version: v2}}\n"
        "ratings:\n"
        "  - {address: 10.0.0.31:9080}\n"
    )
    print("the file changes; until refreshInterval has passed, the old endpoints stay")
    show(http, "http://reviews:9080/reviews/0")
    clock.advance(2)
    print("2s later a look sees the change: the file may still be being written")
    show(http, "http://reviews:9080/reviews/0")
    clock.advance(2)
    print("2s later the next look finds it as the last one did: it is read")
    show(http, "http://reviews:9080/reviews/0")
    show(http, "http://reviews:9080/reviews/0")
    print("a host new in the file is routed only after a config reload")
    show(http, "http://ratings:9080/ratings/0")
    mesh.reload()
    show(http, "http://ratings:9080/ratings/0")

    endpoints.write_text("reviews:\n  - {address: 10.0.0.14}\n")
    print("a bad file: the last good endpoints stay")
    for _ in range(2):
        clock.advance(2)
        show(http, "http://reviews:9080/reviews/0")

os.chdir(home)
shutil.rmtree(workdir)
