"""Acceptance: a call chain of real service processes on 127.0.0.1, A → B → C.

* A: FastAPI behind ``MeshMiddleware``; B: Flask with ``@handler``; C: Starlette with
  ``@handler``, run twice, as ``version: v1`` and ``version: v2``. Each is
  ``chain_service.py`` with a ``mesh.yaml`` of its own, written here; A and B call the next one
  with ``from meshlib import client`` and write no header by hand.
* B's config routes ``end-user: jason`` to C v2 and everyone else to v1: a header rule at B's
  outbound side that works only if ``end-user`` came along from A without code in A or B.
* A writes B3 multi headers only (``propagation: [b3multi]``), B the default W3C: the trace goes
  on across the change of format, and C gets no stale B3 header.
* C's config says nothing about tracing: it traces because the app installed a provider.

Each process exports its spans as JSON lines; the test reads them: one trace id across all five
spans of a request, each parent the one before (A server → A client → B server → B client →
C server). Every request is made with ``httpx.Client`` and ``httpx.AsyncClient``, and each
service calls out with ``client.get`` (``/sync``) and ``client.AsyncClient`` (``/async``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

PROGRAM = Path(__file__).with_name("chain_service.py")
HOST = "127.0.0.1"


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    spans: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def spawn(
    tmp: Path, label: str, shape: str, config: str, *, next_url: str = "", version: str = "v1"
) -> subprocess.Popen[bytes]:
    """Start the process ``label`` (``a``, ``b``, ``c-v1``…) of service ``label``'s first part."""
    config_path = tmp / f"{label}.yaml"
    config_path.write_text(config, encoding="utf-8")
    command = [sys.executable, str(PROGRAM), "--name", label.partition("-")[0], "--shape", shape]
    command += ["--spans", str(tmp / f"{label}.jsonl"), "--version", version]
    if next_url:
        command += ["--next", next_url]
    env = {**os.environ, "MESH_CONFIG": str(config_path)}
    for variable in [v for v in env if v.startswith("OTEL_")]:
        del env[variable]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def port_of(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if readable else b""
    if not line:
        raise RuntimeError(f"service process did not start (exit code {process.poll()})")
    return int(line)


def stop(process: subprocess.Popen[bytes]) -> None:
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()  # the service exits when its stdin closes
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def service_doc(name: str, extra: str) -> str:
    return (
        "apiVersion: meshlib.dev/v1\nkind: Service\n"
        f"metadata: {{name: {name}}}\nspec:\n  propagateHeaders: [end-user]\n{extra}"
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Process]]:
    tmp = tmp_path_factory.mktemp("chain")
    started: dict[str, Process] = {}
    pending: list[subprocess.Popen[bytes]] = []

    def start(name: str, shape: str, config: str, **options: str) -> None:
        process = spawn(tmp, name, shape, config, **options)
        pending.append(process)
        started[name] = Process(name, process, port_of(process), tmp / f"{name}.jsonl")

    try:
        c_v1 = spawn(tmp, "c-v1", "starlette", service_doc("c", "  version: v1\n"), version="v1")
        c_v2 = spawn(tmp, "c-v2", "starlette", service_doc("c", "  version: v2\n"), version="v2")
        pending += [c_v1, c_v2]
        started["c-v1"] = Process("c-v1", c_v1, port_of(c_v1), tmp / "c-v1.jsonl")
        started["c-v2"] = Process("c-v2", c_v2, port_of(c_v2), tmp / "c-v2.jsonl")
        b_config = service_doc(
            "b",
            f"""\
  registry:
    static:
      c:
        - {{address: "{HOST}:{started["c-v1"].port}", labels: {{version: v1}}}}
        - {{address: "{HOST}:{started["c-v2"].port}", labels: {{version: v2}}}}
  telemetry: {{tracing: {{enabled: true, sampling: 100}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: c}}
spec:
  host: c
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: c}}
spec:
  hosts: [c]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: c, subset: v2}}}}]
  - route: [{{destination: {{host: c, subset: v1}}}}]
""",
        )
        start("b", "flask", b_config, next_url="http://c:9080")
        a_config = service_doc(
            "a",
            f"""\
  registry: {{static: {{b: [{{address: "{HOST}:{started["b"].port}"}}]}}}}
  telemetry: {{tracing: {{enabled: true, sampling: 100, propagation: [b3multi]}}}}
""",
        )
        start("a", "fastapi", a_config, next_url="http://b:9080")
        yield started
    finally:
        for process in pending:
            stop(process)


def fetch(url: str, client_kind: str, headers: dict[str, str]) -> httpx.Response:
    if client_kind == "sync":
        with httpx.Client(timeout=10) as http:
            return http.get(url, headers=headers)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.get(url, headers=headers)

    return asyncio.run(go())


def spans_of(chain: dict[str, Process], trace_id: str, count: int) -> list[dict[str, Any]]:
    """The spans of one trace from every process's file, once all ``count`` are written."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for process in chain.values():
            if process.spans.exists():
                for line in process.spans.read_text(encoding="utf-8").splitlines():
                    span = json.loads(line)
                    if span["trace_id"] == trace_id:
                        found.append(span)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


@pytest.mark.parametrize("client_kind", ["sync", "async"])
@pytest.mark.parametrize("outbound", ["sync", "async"])
@pytest.mark.parametrize("user", ["jason", "ann", None])
def test_one_trace_and_the_context_across_three_processes(
    chain: dict[str, Process], client_kind: str, outbound: str, user: str | None
) -> None:
    headers = {"end-user": user} if user else {}
    response = fetch(f"{chain['a'].url}/{outbound}", client_kind, headers)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]  # made by A, echoed
    assert uuid.UUID(request_id).version == 4
    body = response.json()
    assert body["service"] == "a"
    assert body["downstream"]["service"] == "b"
    c = body["downstream"]["downstream"]
    assert c["service"] == "c"

    # what C received, with no forwarding code in A or B
    received = c["headers"]
    assert received["x-request-id"] == request_id
    assert received.get("end-user") == user
    # B's header rule routed by the end-user that came along from A
    assert c["version"] == ("v2" if user == "jason" else "v1")
    # A wrote B3 only, B wrote W3C: C has B's traceparent and no stale B3 header of A's
    assert not [name for name in received if name.startswith("x-b3-") or name == "b3"]
    trace_id = received["traceparent"].split("-")[1]

    spans = spans_of(chain, trace_id, 5)
    by_role = {(s["service"], s["kind"]): s for s in spans}
    assert len(spans) == 5, spans
    a_server = by_role["a", "SERVER"]
    a_client = by_role["a", "CLIENT"]
    b_server = by_role["b", "SERVER"]
    b_client = by_role["b", "CLIENT"]
    c_server = by_role["c", "SERVER"]
    assert a_server["parent_id"] is None
    assert a_client["parent_id"] == a_server["span_id"]
    assert b_server["parent_id"] == a_client["span_id"]
    assert b_client["parent_id"] == b_server["span_id"]
    assert c_server["parent_id"] == b_client["span_id"]
    assert received["traceparent"].split("-")[2] == b_client["span_id"]

    assert a_server["name"] == f"GET /{outbound}"
    assert a_server["attributes"]["http.route"] == f"/{outbound}"
    assert a_client["attributes"]["url.full"] == f"http://b:9080/{outbound}"
    assert a_client["attributes"]["network.peer.address"] == HOST
    assert a_client["attributes"]["network.peer.port"] == chain["b"].port
    subset = "v2" if user == "jason" else "v1"
    assert b_client["attributes"]["meshlib.destination.subset"] == subset
    assert b_client["attributes"]["network.peer.port"] == chain["c-" + subset].port
    assert b_client["attributes"]["http.response.status_code"] == 200
    assert c_server["attributes"]["url.path"] == f"/{outbound}"


def test_a_caller_trace_and_request_id_are_continued(chain: dict[str, Process]) -> None:
    trace_id, parent = uuid.uuid4().hex, "00f067aa0ba902b7"
    headers = {
        "traceparent": f"00-{trace_id}-{parent}-01",
        "x-request-id": "from-the-edge",
        "end-user": "jason",
    }
    response = fetch(f"{chain['a'].url}/sync", "sync", headers)
    assert response.headers["x-request-id"] == "from-the-edge"
    received = response.json()["downstream"]["downstream"]["headers"]
    assert received["x-request-id"] == "from-the-edge"
    assert received["traceparent"].split("-")[1] == trace_id
    spans = spans_of(chain, trace_id, 5)
    a_server = next(s for s in spans if (s["service"], s["kind"]) == ("a", "SERVER"))
    assert a_server["parent_id"] == parent
