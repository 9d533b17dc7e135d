"""A synthetic mesh of many services behind one HTTP server on 127.0.0.1, each answering meshlib's
admin endpoints under a path of its own (``http://127.0.0.1:P/svc-007/_mesh/config``), for the
dashboard's tests: 200 services, names that are markup, services that go away.

Service ``i`` calls services ``2i+1`` and ``2i+2`` (a tree); every call of service 3 fails with a
500; each scrape of a service counts 5 more calls on each of its edges. The hostile strings go
where a real mesh would carry them: a service's name and version (so its workload label), a
VirtualService's name, a span's name and a header recorded on it, a breaker's destination, an
ejected endpoint, a config error.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from typing import Any

#: Markup in every place the page shows text from the mesh; none of it may become markup.
HOSTILE_NAME = "<script>window.__pwned=1</script>"
HOSTILE_VERSION = '<img src=x onerror="window.__pwned=2">'
HOSTILE_ROUTE = '"><svg onload=window.__pwned=3>'
HOSTILE_SPAN = "</title><script>window.__pwned=4</script>"
HOSTILE_HEADER = "<iframe srcdoc='<script>parent.__pwned=5</script>'>"
HOSTILE_ERROR = "rules.yaml:1: <b onmouseover=window.__pwned=6>bad</b>"


def _label(value: str) -> str:
    """A label value in Prometheus' text format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class SyntheticMesh:
    """``count`` services; ``down_after`` maps a service index to the number of config polls it
    answers before it stops answering (its connections are closed without a reply)."""

    def __init__(self, count: int = 200, down_after: dict[int, int] | None = None) -> None:
        self.count = count
        self.down_after = dict(down_after or {})
        self._polls: dict[int, int] = {}
        self._scrapes: dict[int, int] = {}
        self._lock = threading.Lock()
        mesh = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                mesh._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ who is who

    def name(self, index: int) -> str:
        return HOSTILE_NAME if index == 0 else f"svc-{index:03d}"

    def version(self, index: int) -> str:
        return HOSTILE_VERSION if index == 1 else "v1"

    def workload(self, index: int) -> str:
        return f"{self.name(index)}-{self.version(index)}"

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port}/svc-{index:03d}"

    def urls(self) -> list[str]:
        return [self.url(i) for i in range(self.count)]

    def callees(self, index: int) -> list[int]:
        return [c for c in (2 * index + 1, 2 * index + 2) if c < self.count]

    # ------------------------------------------------------------------ answers

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        prefix, _, part = path.strip("/").partition("/_mesh/")
        try:
            index = int(prefix.removeprefix("svc-"))
        except ValueError:
            index = -1
        if not 0 <= index < self.count:
            self._send(handler, 404, b"{}")
            return
        with self._lock:
            if part == "config":
                self._polls[index] = self._polls.get(index, 0) + 1
            polls = self._polls.get(index, 0)
            if part == "metrics":
                self._scrapes[index] = self._scrapes.get(index, 0) + 1
            scrapes = self._scrapes.get(index, 0)
        limit = self.down_after.get(index)
        if limit is not None and polls > limit:
            handler.close_connection = True  # gone: no answer at all
            return
        if part == "config":
            body = {
                "service": self.name(index),
                "namespace": "default",
                "version": self.version(index),
                "digest": f"{index:064x}",
                "watch": {
                    "running": True,
                    "reloads": 1,
                    "last_error": HOSTILE_ERROR if index == 2 else None,
                },
            }
            self._send(handler, 200, json.dumps(body).encode())
        elif part == "clusters":
            self._send(handler, 200, json.dumps(self._clusters(index)).encode())
        elif part == "metrics":
            self._send(handler, 200, self._metrics(index, scrapes).encode(), "text/plain")
        elif part == "traces":
            self._send(handler, 200, json.dumps({"spans": self._spans(index)}).encode())
        else:
            self._send(handler, 404, b"{}")

    @staticmethod
    def _send(
        handler: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str = "application/json",
    ) -> None:
        handler.send_response(status)
        handler.send_header("content-type", content_type)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _clusters(self, index: int) -> dict[str, Any]:
        clusters = []
        for callee in self.callees(index):
            clusters.append(
                {
                    "name": f"{self.name(callee)}.default.svc.cluster.local",
                    "breaker": {"state": "open" if callee == 3 else "closed", "failures": 5},
                    "endpoints": [
                        {
                            "address": HOSTILE_ROUTE if callee == 3 else f"127.0.0.1:{callee}",
                            "ejected": callee == 3,
                            "ejections": 1,
                            "ejected_for": 12.5,
                        }
                    ],
                }
            )
        return {
            "service": self.name(index),
            "namespace": "default",
            "version": self.version(index),
            "workload": self.workload(index),
            "clusters": clusters,
        }

    def _metrics(self, index: int, scrapes: int) -> str:
        lines = []
        for callee in self.callees(index):
            code = "500" if callee == 3 else "200"
            labels = {
                "reporter": "source",
                "source_workload": self.workload(index),
                "source_workload_namespace": "default",
                "source_app": self.name(index),
                "source_version": self.version(index),
                "destination_workload": self.workload(callee),
                "destination_workload_namespace": "default",
                "destination_app": self.name(callee),
                "destination_version": self.version(callee),
                "response_code": code,
                "connection_security_policy": "unknown",
            }
            inside = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"istio_requests_total{{{inside}}} {5 * scrapes}")
            route = {
                "source_workload": self.workload(index),
                "source_workload_namespace": "default",
                "virtual_service": f"default/{HOSTILE_ROUTE}" if index == 1 else "",
                "route": "default",
                "destination_service": f"{self.name(callee)}.default.svc.cluster.local",
                "response_code": code,
            }
            inside = ",".join(f'{k}="{_label(v)}"' for k, v in route.items())
            lines.append(f"meshlib_route_requests_total{{{inside}}} {5 * scrapes}")
        return "\n".join(lines) + "\n"

    def _spans(self, index: int) -> list[dict[str, Any]]:
        if index != 0:
            return []
        trace = "ab" * 16
        return [
            {
                "trace_id": trace,
                "span_id": "1" * 16,
                "parent_span_id": None,
                "name": HOSTILE_SPAN,
                "service": self.name(0),
                "kind": "SERVER",
                "start_unix_nano": 1_000_000_000,
                "end_unix_nano": 1_020_000_000,
                "status": "ERROR",
                "attributes": {"http.request.header.end-user": HOSTILE_HEADER},
                "events": [],
            },
            {
                "trace_id": trace,
                "span_id": "2" * 16,
                "parent_span_id": "1" * 16,
                "name": "GET",
                "service": self.name(0),
                "kind": "CLIENT",
                "start_unix_nano": 1_002_000_000,
                "end_unix_nano": 1_010_000_000,
                "status": "OK",
                "attributes": {"http.response.status_code": 200},
                "events": [],
            },
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
