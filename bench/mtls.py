"""mTLS benchmark: ISTIO_MUTUAL against plain text through the mesh, on one upstream process.

    python -m bench.mtls [--calls N] [--block N] [--json]

The Makefile's ``bench`` target runs it (``$(BIN)/python -m bench.mtls``).

One upstream process (this module with ``--serve``) listens on 127.0.0.1 twice: plain text, and
TLS with a workload certificate from a temporary CA (``CertificateAuthority.init``), requiring
the client's certificate (PeerAuthentication STRICT). The client is ``mesh.client()`` of a
workload with an identity from the same CA; ``plain`` (DestinationRule ``tls: DISABLE``) and
``mtls`` (``tls: ISTIO_MUTUAL``) are two hosts whose endpoints are the two listeners. Sync,
concurrency 1, keep-alive: each client sends ``--calls`` calls in interleaved blocks (plain,
mtls, plain again, the order rotating every round), so that drift hits all alike.

Two more clients give the floor: ``httpx.Client`` alone, plain text to the plain listener and
TLS (the workload's client context) to the TLS one: what TLS itself costs on this machine.

Reported: median and p99 latency, client CPU per call, and requests per TLS handshake (the
server counts its TLS connections). Target (reported, not enforced): mTLS median ≤ 1.10 × plain.
"""

from __future__ import annotations

import argparse
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

TARGET_MEDIAN_RATIO = 1.10
HEADERS = {"accept": "application/json"}
SERVER_ID = "spiffe://cluster.local/ns/default/sa/reviews"
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


# --------------------------------------------------------------------------- the client


def mesh_config(ca_dir: Path, plain_port: int, tls_port: int) -> str:
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
    mesh: Mesh, plain_port: int, tls_port: int, calls: int, block: int
) -> dict[str, dict[str, Any]]:
    urls = {"plain": "http://plain:9080/reviews/0", "mtls": "http://mtls:9080/reviews/0"}
    identity = mesh.identity
    assert identity is not None
    with (
        mesh.client() as client,
        httpx.Client() as bare,
        httpx.Client(verify=identity.client_context()) as bare_tls,
    ):
        check = client.get(urls["mtls"], headers=HEADERS)
        info = check.extensions["mesh"]
        if (
            check.status_code != 200
            or info.tls != "ISTIO_MUTUAL"
            or info.peer_identity != SERVER_ID
        ):
            raise RuntimeError(f"the mtls client is not set up as described: {info}")
        if client.get(urls["plain"], headers=HEADERS).extensions["mesh"].tls is not None:
            raise RuntimeError("the plain client is not plain text")
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
        for order in rotations(list(calls_of), max(1, calls // block)):
            for name in order:
                series[name].run_block(calls_of[name], block)
    return {name: s.summary() for name, s in series.items()}


def markdown(result: dict[str, Any]) -> str:
    sync = result["sync"]
    rows = [
        "| sync c=1 keep-alive | median µs | p99 µs | CPU µs/call |",
        "|---|---:|---:|---:|",
    ]
    for name in ("plain", "plain2", "mtls", "bare", "bare_tls"):
        row = sync[name]
        rows.append(
            f"| {name} | {row['median_us']:.1f} | {row['p99_us']:.1f} | "
            f"{row['cpu_us_per_call']:.1f} |"
        )
    ratio = result["median_ratio"]
    rows += [
        "",
        f"mTLS median / plain median: **{ratio:.3f}×** (target ≤ {TARGET_MEDIAN_RATIO}×: "
        f"{verdict(ratio <= TARGET_MEDIAN_RATIO)}); A/A plain2/plain: "
        f"{result['aa_ratio']:.3f}×; requests per TLS handshake: "
        f"{result['requests_per_handshake']:.0f} ({result['tls_connections']} handshakes)",
        f"The floor, httpx alone: TLS median / plain median {result['bare_ratio']:.3f}×; the "
        f"mesh's mTLS over that floor: {ratio / result['bare_ratio']:.3f}×",
        "",
        result["environment"],
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="calls per client")
    parser.add_argument("--block", type=int, default=500, help="calls per measurement block")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--serve", metavar="CA_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    block = max(1, min(args.block, args.calls))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meshlib-bench-mtls-") as folder:
        ca_dir = Path(folder) / "ca"
        CertificateAuthority.init(ca_dir)
        process, plain_port, tls_port = start_upstream(ca_dir)
        try:
            mesh = Mesh.from_yaml(mesh_config(ca_dir, plain_port, tls_port), seed=1)
            sync = bench(mesh, plain_port, tls_port, args.calls, block)
            stats = httpx.get(f"http://127.0.0.1:{plain_port}/_stats").json()
        finally:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(10)
    result: dict[str, Any] = {
        "environment": (
            f"Python {platform.python_version()}, httpx {httpx.__version__}, "
            f"{ssl.OPENSSL_VERSION}, {os.cpu_count()} CPUs, upstream in its own process"
        ),
        "block": block,
        "sync": sync,
        "median_ratio": sync["mtls"]["median_us"] / sync["plain"]["median_us"],
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
