"""The live mesh page's server: polls the services (and Prometheus) in a background thread, and
serves the page — HTML, CSS and JavaScript shipped inside meshlib — and its data, ``GET
/api/mesh`` (JSON, see ``meshlib.dashboard.model``), on 127.0.0.1.

The page loads nothing from anywhere else: every response carries a Content-Security-Policy that
allows this origin only, and no inline script. A request whose ``Host`` is not this server's
loopback name is refused, so a web page elsewhere cannot read the mesh's state through DNS
rebinding.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from importlib import resources
from typing import Any

import httpx

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.dashboard.model import (
    ServiceSnapshot,
    Traffic,
    build_view,
    cumulative_traffic,
    mtls_shares,
    traffic_of,
)
from meshlib.dashboard.sources import (
    Poll,
    PrometheusError,
    PrometheusReader,
    Targets,
    poll_service,
)

log = logging.getLogger("meshlib.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 20001  # Kiali's
#: The files of the page, served at ``/<name>`` (``index.html`` at ``/`` too).
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
API = "/api/mesh"
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
#: How many services are polled at once.
WORKERS = 16


def static_files() -> dict[str, bytes]:
    """The page's files, from the package (``meshlib/dashboard/static``)."""
    folder = resources.files("meshlib.dashboard").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC}


class Dashboard:
    """The poller and the JSON it makes. ``poll()`` runs one round (the tests call it with a
    fake clock); ``run(stop)`` polls every ``interval`` seconds until ``stop`` is set.

    A service counts as stale when its last poll failed or it has not answered for
    ``stale_after`` seconds (default: three intervals); it stays on the page with its last known
    data and when it was last seen."""

    def __init__(
        self,
        targets: Targets,
        *,
        prometheus: str | None = None,
        interval: float = 2.0,
        window: float = 30.0,
        stale_after: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        timeout: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.targets = targets
        self.prometheus = PrometheusReader(prometheus) if prometheus else None
        self.interval = interval
        self.window = window
        self.stale_after = stale_after if stale_after is not None else 3 * interval + timeout
        self.clock = clock
        self.timeout = timeout
        self._transport = transport
        self._snapshots: dict[str, ServiceSnapshot] = {}
        self._order: list[str] = []
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._client_tls: ssl.SSLContext | None = None
        self._prometheus_client: httpx.Client | None = None
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="meshlib-dashboard")
        self.polls = 0
        self._view: bytes = json.dumps(self._build([], Traffic(), {}, [])).encode()

    # ------------------------------------------------------------------ polling

    def _http(self, tls: ssl.SSLContext | None) -> httpx.Client:
        if self._client is None or tls is not self._client_tls:
            if self._client is not None:
                self._client.close()
            self._client = httpx.Client(
                timeout=self.timeout,
                verify=tls if tls is not None else True,
                transport=self._transport,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=WORKERS * 2, max_keepalive_connections=64),
            )
            self._client_tls = tls
        return self._client

    def poll(self) -> dict[str, Any]:
        """One round: every service polled once (at most ``WORKERS`` at a time), Prometheus
        asked, the view rebuilt. Returns the view."""
        problems: list[str] = []
        targets = list(self.targets.targets())
        problem = getattr(self.targets, "problem", None)
        if problem:
            problems.append(str(problem))
        tls = self.targets.tls()
        http = self._http(tls)
        token = os.environ.get("MESHLIB_ADMIN_TOKEN")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        poll = Poll(
            now=self.clock.now(),
            wall=self.clock.wall(),
            window=self.window,
            metrics=self.prometheus is None,
        )
        with self._lock:
            for target in targets:
                if target.url not in self._snapshots:
                    self._snapshots[target.url] = ServiceSnapshot(target)
                    self._order.append(target.url)
                elif self._snapshots[target.url].target != target:
                    self._snapshots[target.url] = replace(
                        self._snapshots[target.url], target=target
                    )
            current = [self._snapshots[t.url] for t in targets]
        futures = [
            self._executor.submit(self._poll_one, http, snapshot, poll, headers)
            for snapshot in current
        ]
        updated = [future.result() for future in futures]
        with self._lock:
            for snapshot in updated:
                self._snapshots[snapshot.target.url] = snapshot
            # services no longer listed (a demo restarted on other ports) are forgotten; the
            # ones still listed that stopped answering stay, stale
            listed = {t.url for t in targets}
            if listed:
                self._order = [u for u in self._order if u in listed]
                for url in [u for u in self._snapshots if u not in listed]:
                    del self._snapshots[url]
            snapshots = [self._snapshots[u] for u in self._order]
        if self.prometheus is not None:
            try:
                traffic, seen = self.prometheus.traffic(self._prometheus_http(), self.window)
                mtls = mtls_shares(seen)
            except PrometheusError as exc:
                problems.append(str(exc))
                traffic, mtls = Traffic(), {}
        else:
            traffic = traffic_of(snapshots, poll.wall, self.stale_after)
            mtls = mtls_shares(cumulative_traffic(snapshots))
        view = self._build(snapshots, traffic, mtls, problems)
        body = json.dumps(view, ensure_ascii=True).encode()
        with self._lock:
            self._view = body
            self.polls += 1
        return view

    def _poll_one(
        self,
        http: httpx.Client,
        snapshot: ServiceSnapshot,
        poll: Poll,
        headers: dict[str, str],
    ) -> ServiceSnapshot:
        try:
            updated = poll_service(http, snapshot, poll, headers)
        except Exception as exc:
            log.warning("polling %s failed", snapshot.target.url, exc_info=True)
            return replace(snapshot, error=f"{type(exc).__name__}: {exc}")
        try:
            expected = self.targets.expected(updated.target)
        except Exception:
            expected = None
        return replace(updated, expected_revision=expected)

    def _prometheus_http(self) -> httpx.Client:
        if self._prometheus_client is None:
            self._prometheus_client = httpx.Client(timeout=self.timeout, trust_env=False)
        return self._prometheus_client

    def _build(
        self,
        snapshots: list[ServiceSnapshot],
        traffic: Traffic,
        mtls: Any,
        problems: list[str],
    ) -> dict[str, Any]:
        if self.prometheus is not None:
            mode, source = "prometheus", f"Prometheus at {self.prometheus.url}"
            if snapshots:
                source += f", and {self.targets.describe()}"
        else:
            mode, source = "admin", self.targets.describe()
        return build_view(
            now=self.clock.wall(),
            mode=mode,
            source=source,
            window=self.window,
            snapshots=snapshots,
            traffic=traffic,
            stale_after=self.stale_after,
            problems=problems,
            mtls_seen=mtls,
        )

    def view(self) -> bytes:
        """The latest view, as the page gets it."""
        with self._lock:
            return self._view

    def run(self, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; a round that fails is logged
        and the next one runs."""
        while not stop.is_set():
            started = self.clock.now()
            try:
                self.poll()
            except Exception:
                log.exception("a poll of the mesh failed")
            stop.wait(max(0.05, self.interval - (self.clock.now() - started)))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for client in (self._client, self._prometheus_client):
            if client is not None:
                client.close()


# --------------------------------------------------------------------------- HTTP


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: PageServer
    protocol_version = "HTTP/1.1"
    server_version = "meshctl-dashboard"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse(self, status: int, message: str) -> None:
        self._send(status, "text/plain; charset=utf-8", message.encode(), head=False)

    def do_POST(self) -> None:
        self._refuse(405, "GET only\n")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST  # noqa: N815 - http.server's names

    def _answer(self, head: bool) -> None:
        if not self.server.host_allowed(self.headers.get("Host")):
            self._refuse(421, "this page answers at its own address only\n")
            return
        path = self.path.split("?", 1)[0]
        if path == API:
            self._send(200, "application/json", self.server.dashboard.view(), head)
            return
        name = "index.html" if path == "/" else path.lstrip("/")
        body = self.server.files.get(name)
        if body is None or name not in STATIC:
            self._refuse(404, "not found\n")
            return
        self._send(200, STATIC[name], body, head)

    def _send(self, status: int, content_type: str, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class PageServer(http.server.ThreadingHTTPServer):
    """The page and ``/api/mesh`` on ``host:port`` (``port`` 0: a free one)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, dashboard: Dashboard, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.dashboard = dashboard
        self.files = static_files()
        self.host = host
        self.port: int = self.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def host_allowed(self, header: str | None) -> bool:
        """Bound to a loopback address, the page answers requests for a loopback name and its
        own port only; bound to another address, any ``Host``."""
        if not _loopback(self.host):
            return True
        if not header:
            return False
        if header.startswith("["):
            name, _, rest = header[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            name, _, port = header.partition(":")
        return _loopback(name) and port == str(self.port)


def serve(
    dashboard: Dashboard,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_ready: Callable[[PageServer], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the page and poll until ``stop`` is set (or KeyboardInterrupt)."""
    server = PageServer(dashboard, host, port)
    stop = stop or threading.Event()
    poller = threading.Thread(
        target=dashboard.run, args=(stop,), name="meshlib-dashboard-poll", daemon=True
    )
    poller.start()

    def shut_down_when_stopped() -> None:
        stop.wait()
        server.shutdown()

    waiter = threading.Thread(
        target=shut_down_when_stopped, name="meshlib-dashboard-stop", daemon=True
    )
    waiter.start()
    if on_ready is not None:
        on_ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()
        poller.join(timeout=dashboard.timeout + 5)
        dashboard.close()


__all__ = [
    "API",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Dashboard",
    "PageServer",
    "serve",
    "static_files",
]
