"""mTLS benchmark: ISTIO_MUTUAL against plain text through the mesh.

    python -m bench.mtls [--calls N] [--block N] [--json]

The Makefile's ``bench`` target runs it (``$(BIN)/python -m bench.mtls``).

Two upstreams, each in a process of its own, with workload certificates from a temporary CA
(``CertificateAuthority.init``):

* **a meshlib service** (this module with ``--serve-mesh``): a small ASGI app behind
  ``MeshMiddleware``, served by meshlib's runner (``make_server``) with PeerAuthentication
  PERMISSIVE, so one port takes both plain text and mutual TLS, as a meshlib service in the mesh
  does. ``mesh-plain`` (DestinationRule ``tls: DISABLE``) and ``mesh-mtls``
  (``tls: ISTIO_MUTUAL``) are two hosts whose endpoint is that port: the same server, the same
  app, the same per-request work, with and without TLS. The target is judged here: a call from
  one meshlib service to another.
* **the smallest upstream** (``--serve``): blocking sockets and ``ssl`` in a thread per
  connection, listening twice (plain text; TLS requiring the client's certificate, STRICT).
  ``plain`` and ``mtls`` reach it. Its answer costs next to nothing, so TLS is the largest share
  of the call it can be: the worst case. Two more clients give its floor: ``httpx.Client`` alone,
  plain text and TLS (the workload's client context): what TLS itself costs on this machine.

The client is ``mesh.client()`` of a workload with an identity from the same CA. Sync,
concurrency 1, keep-alive: each client sends ``--calls`` calls in interleaved blocks (the order
rotating every round), so that drift hits all alike.

Reported: median and p99 latency, client CPU per call, and requests per TLS handshake (the
smallest upstream counts its TLS connections). Target (reported, not enforced): mTLS median
≤ 1.10 × plain, between two meshlib services.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.data_plane import SyncSeries, rotations
from bench.report import publish, verdict
from meshlib import Mesh
from meshlib.security.ca import CertificateAuthority
from meshlib.security.tls import server_context
from meshlib.server.asgi import MeshMiddleware
from meshlib.server.runner import make_server

TARGET_MEDIAN_RATIO = 1.10
HEADERS = {"accept": "application/json"}
SERVER_ID = "spiffe://cluster.local/ns/default/sa/reviews"
MESH_SERVER_ID = SERVER_ID  # the --serve-mesh service: reviews, default service account
BODY = b'{"reviews": []}'


# --------------------------------------------------------------------------- the upstream


class _Stats:
    tls_connections = 0
    tls_requests = 0
    requests = 0


def _serve_connection(connection: socket.socket, secure: bool) -> None:
    """Keep-alive HTTP/1.1 on one connection, blocking reads and writes in C (``ssl`` or plain
    sockets): a thread per connection, which at concurrency 1 is one thread."""
    stats = _Stats
    buffer = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                buffer += connection.recv(65536)
            buffer = buffer[length:]
            if head.startswith(b"GET /_stats"):
                body = json.dumps(
                    {
                        "tls_connections": stats.tls_connections,
                        "tls_requests": stats.tls_requests,
                        "requests": stats.requests,
                    }
                ).encode()
            else:
                stats.requests += 1
                stats.tls_requests += secure
                body = BODY
            connection.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
    except (OSError, ssl.SSLError):
        pass
    finally:
        connection.close()


def _accept(listener: socket.socket, context: ssl.SSLContext | None) -> None:
    while True:
        raw, _ = listener.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is None:
            threading.Thread(target=_serve_connection, args=(raw, False), daemon=True).start()
            continue
        try:
            connection = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            continue
        _Stats.tls_connections += 1
        threading.Thread(target=_serve_connection, args=(connection, True), daemon=True).start()


def serve(ca_dir: str) -> None:
    """The upstream: a plain and a TLS listener (STRICT: a client certificate required)."""
    context = server_context(CertificateAuthority.load(ca_dir).issue(SERVER_ID))
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    for listener, tls in zip(listeners, (None, context), strict=True):
        threading.Thread(target=_accept, args=(listener, tls), daemon=True).start()
    print(f"{listeners[0].getsockname()[1]} {listeners[1].getsockname()[1]}", flush=True)
    sys.stdin.read()  # until the parent goes


def start_upstream(ca_dir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.mtls", "--serve", str(ca_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if len(line) != 2:
        process.kill()
        raise RuntimeError("the upstream did not start")
    return process, int(line[0]), int(line[1])


def serve_mesh(ca_dir: str, loop: str = "auto") -> None:
    """The meshlib upstream: ``MeshMiddleware`` over a small ASGI app on meshlib's runner,
    PERMISSIVE (plain text and mutual TLS on one port), until stdin closes."""
    mesh = Mesh.from_yaml(
        "apiVersion: meshlib.dev/v1\nkind: Service\n"
        "metadata: {name: reviews, namespace: default}\n"
        f"spec: {{identity: {{ca: {json.dumps(ca_dir)}}}}}\n"
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/_cpu":  # this process's CPU time so far, for CPU per request
            body = json.dumps({"cpu": time.process_time()}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})

    listener = socket.create_server(("127.0.0.1", 0))
    server = make_server(
        MeshMiddleware(app, mesh=mesh),
        mesh,
        port=listener.getsockname()[1],
        log_level="warning",
        access_log=False,
        loop=loop,
    )

    def until_stdin_closes() -> None:
        sys.stdin.read()
        server.should_exit = True

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    server.run(sockets=[listener])


def start_mesh_upstream(ca_dir: Path, loop: str) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.mtls", "--serve-mesh", str(ca_dir), "--server-loop", loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if len(line) != 1:
        process.kill()
        raise RuntimeError("the meshlib upstream did not start")
    return process, int(line[0])


# --------------------------------------------------------------------------- the client


def mesh_config(ca_dir: Path, plain_port: int, tls_port: int, mesh_port: int) -> str:
    return f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage, namespace: default}}
spec:
  identity: {{ca: {json.dumps(str(ca_dir))}}}
  telemetry: {{tracing: {{enabled: false}}}}
  registry:
    static:
      plain: [{{address: 127.0.0.1:{plain_port}}}]
      mtls: [{{address: 127.0.0.1:{tls_port}}}]
      mesh-plain: [{{address: 127.0.0.1:{mesh_port}}}]
      mesh-mtls: [{{address: 127.0.0.1:{mesh_port}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: mesh-plain, namespace: default}}
spec: {{host: mesh-plain, trafficPolicy: {{tls: {{mode: DISABLE}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: mesh-mtls, namespace: default}}
spec:
  host: mesh-mtls
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{MESH_SERVER_ID}]}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: plain, namespace: default}}
spec: {{host: plain, trafficPolicy: {{tls: {{mode: DISABLE}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: mtls, namespace: default}}
spec:
  host: mtls
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{SERVER_ID}]}}}}
"""


def bench(
    mesh: Mesh, plain_port: int, tls_port: int, mesh_port: int, calls: int, block: int
) -> dict[str, dict[str, Any]]:
    urls = {
        name: f"http://{name}:9080/reviews/0"
        for name in ("plain", "mtls", "mesh-plain", "mesh-mtls")
    }
    identity = mesh.identity
    assert identity is not None
    with (
        mesh.client() as client,
        httpx.Client() as bare,
        httpx.Client(verify=identity.client_context()) as bare_tls,
    ):
        for name in ("mtls", "mesh-mtls"):
            check = client.get(urls[name], headers=HEADERS)
            info = check.extensions["mesh"]
            if (
                check.status_code != 200
                or info.tls != "ISTIO_MUTUAL"
                or info.peer_identity != SERVER_ID
            ):
                raise RuntimeError(f"the {name} client is not set up as described: {info}")
        for name in ("plain", "mesh-plain"):
            check = client.get(urls[name], headers=HEADERS)
            if check.status_code != 200 or check.extensions["mesh"].tls is not None:
                raise RuntimeError(f"the {name} client is not plain text: {check}")
        calls_of = {
            name: (lambda url=url: client.get(url, headers=HEADERS).status_code)
            for name, url in urls.items()
        }
        calls_of["plain2"] = calls_of["plain"]
        # the floor: httpx alone, plain and TLS with the same certificate, to the same listeners
        bare_url = f"http://127.0.0.1:{plain_port}/reviews/0"
        tls_url = f"https://127.0.0.1:{tls_port}/reviews/0"
        calls_of["bare"] = lambda: bare.get(bare_url, headers=HEADERS).status_code
        calls_of["bare_tls"] = lambda: bare_tls.get(tls_url, headers=HEADERS).status_code
        for call in calls_of.values():  # warm up
            for _ in range(min(block, 300)):
                call()
        series = {name: SyncSeries() for name in calls_of}
        server_cpu = dict.fromkeys(("mesh-plain", "mesh-mtls"), 0.0)
        cpu_url = f"http://127.0.0.1:{mesh_port}/_cpu"  # plain text, straight to the upstream
        for order in rotations(list(calls_of), max(1, calls // block)):
            for name in order:
                before = bare.get(cpu_url).json()["cpu"] if name in server_cpu else 0.0
                series[name].run_block(calls_of[name], block)
                if name in server_cpu:
                    server_cpu[name] += bare.get(cpu_url).json()["cpu"] - before
    summaries = {name: s.summary() for name, s in series.items()}
    for name, seconds in server_cpu.items():  # the meshlib upstream's own CPU per request
        summaries[name]["server_cpu_us_per_call"] = seconds * 1e6 / max(1, series[name].calls)
    return summaries


def markdown(result: dict[str, Any]) -> str:
    sync = result["sync"]
    rows = [
        "| sync c=1 keep-alive | median µs | p99 µs | CPU µs/call | upstream CPU µs/call |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("mesh-plain", "mesh-mtls", "plain", "plain2", "mtls", "bare", "bare_tls"):
        row = sync[name]
        rows.append(
            f"| {name} | {row['median_us']:.1f} | {row['p99_us']:.1f} | "
            f"{row['cpu_us_per_call']:.1f} | "
            + (f"{row['server_cpu_us_per_call']:.1f} |" if "server_cpu_us_per_call" in row else "|")
        )
    ratio = result["median_ratio"]
    mesh_ratio = result["mesh_median_ratio"]
    rows += [
        "",
        f"Between two meshlib services, mesh-mtls median / mesh-plain median: "
        f"**{mesh_ratio:.3f}×** (target ≤ {TARGET_MEDIAN_RATIO}×: "
        f"{verdict(mesh_ratio <= TARGET_MEDIAN_RATIO)}); CPU of both sides per call, "
        f"mesh-mtls / mesh-plain: {result['mesh_cpu_ratio']:.3f}×",
        f"The smallest upstream (worst case), mtls median / plain median: {ratio:.3f}×; A/A "
        f"plain2/plain: {result['aa_ratio']:.3f}×; requests per TLS handshake: "
        f"{result['requests_per_handshake']:.0f} ({result['tls_connections']} handshakes)",
        f"Its floor, httpx alone: TLS median / plain median {result['bare_ratio']:.3f}×; the "
        f"mesh's mTLS over that floor: {ratio / result['bare_ratio']:.3f}×",
        "",
        result["environment"],
    ]
    return "\n".join(rows)


def _both_sides(row: dict[str, Any]) -> float:
    """Client and upstream CPU per call."""
    return float(row["cpu_us_per_call"] + row["server_cpu_us_per_call"])


def _loop_name(loop: str) -> str:
    """The event loop uvicorn runs for ``loop`` (``auto``: uvloop when it is installed)."""
    if loop != "auto":
        return loop
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="calls per client")
    parser.add_argument("--block", type=int, default=500, help="calls per measurement block")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--serve", metavar="CA_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--serve-mesh", metavar="CA_DIR", help=argparse.SUPPRESS)
    parser.add_argument(
        "--server-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the meshlib upstream's event loop (uvicorn's loop option; auto: uvloop if installed)",
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.serve_mesh:
        serve_mesh(args.serve_mesh, args.server_loop)
        return
    block = max(1, min(args.block, args.calls))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meshlib-bench-mtls-") as folder:
        ca_dir = Path(folder) / "ca"
        CertificateAuthority.init(ca_dir)
        process, plain_port, tls_port = start_upstream(ca_dir)
        meshed, mesh_port = start_mesh_upstream(ca_dir, args.server_loop)
        try:
            config = mesh_config(ca_dir, plain_port, tls_port, mesh_port)
            mesh = Mesh.from_yaml(config, seed=1)
            sync = bench(mesh, plain_port, tls_port, mesh_port, args.calls, block)
            stats = httpx.get(f"http://127.0.0.1:{plain_port}/_stats").json()
        finally:
            for upstream in (process, meshed):
                assert upstream.stdin is not None
                upstream.stdin.close()
            for upstream in (process, meshed):
                upstream.wait(10)
    result: dict[str, Any] = {
        "environment": (
            f"Python {platform.python_version()}, httpx {httpx.__version__}, "
            f"{ssl.OPENSSL_VERSION}, {os.cpu_count()} CPUs, each upstream in its own process; "
            f"the meshlib upstream on {_loop_name(args.server_loop)}"
        ),
        "server_loop": _loop_name(args.server_loop),
        "block": block,
        "sync": sync,
        "median_ratio": sync["mtls"]["median_us"] / sync["plain"]["median_us"],
        "mesh_median_ratio": sync["mesh-mtls"]["median_us"] / sync["mesh-plain"]["median_us"],
        "mesh_cpu_ratio": _both_sides(sync["mesh-mtls"]) / _both_sides(sync["mesh-plain"]),
        "aa_ratio": sync["plain2"]["median_us"] / sync["plain"]["median_us"],
        "bare_ratio": sync["bare_tls"]["median_us"] / sync["bare"]["median_us"],
        "tls_connections": stats["tls_connections"],
        "tls_requests": stats["tls_requests"],
        "requests_per_handshake": stats["tls_requests"] / max(1, stats["tls_connections"]),
        "target_median_ratio": TARGET_MEDIAN_RATIO,
        "seconds": round(time.perf_counter() - started, 1),
    }
    publish("mtls", result, args.json, markdown)


if __name__ == "__main__":
    main()
