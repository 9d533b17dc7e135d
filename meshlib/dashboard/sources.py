"""Where the live mesh page's data comes from: the services' admin endpoints (polled directly, over
mutual TLS when the mesh has identities), and Prometheus when one is named.

* Which services: ``BookinfoTargets`` (the running demo's ``bookinfo.json``, re-read when it
  changes, with a certificate of the run's CA), ``RegistryTargets`` (a registry file: service →
  endpoints, as ``registry.file`` reads it) and ``StaticTargets`` (a list of admin URLs).
* ``poll_service``: one service's ``/_mesh/config``, ``/_mesh/clusters``, ``/_mesh/metrics``
  and ``/_mesh/traces``; what failed is said, never raised.
* ``PrometheusReader``: the rates, error rates and latency quantiles as PromQL computes them.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx
import yaml

from meshlib.dashboard.model import (
    DURATION,
    REQUESTS,
    ROUTE_DURATION,
    ROUTE_REQUESTS,
    ScrapeError,
    ServiceSnapshot,
    Target,
    Traffic,
    keep_window,
    parse_scrape,
    traffic_from_vectors,
)

CONFIG = "/_mesh/config"
CLUSTERS = "/_mesh/clusters"
METRICS = "/_mesh/metrics"
TRACES = "/_mesh/traces"
#: The most an admin endpoint may answer, in bytes (a scrape of a busy service is ~100 KB).
MAX_BODY = 8 * 1024 * 1024
#: Spans asked of each service at each poll.
TRACE_LIMIT = 50


class Targets(Protocol):
    """The services to poll, looked up again before every poll."""

    def targets(self) -> Sequence[Target]: ...

    def tls(self) -> ssl.SSLContext | None: ...

    def expected(self, target: Target) -> str | None:
        """The config digest ``target``'s files hold now, when the dashboard can read them."""
        ...

    def describe(self) -> str: ...


class StaticTargets:
    """Admin endpoints named on the command line (``--admin URL``), over mutual TLS with a
    certificate of ``ca_dir``'s CA when given."""

    def __init__(self, urls: Sequence[str], tls: ssl.SSLContext | None = None) -> None:
        self._targets = [Target(_https(u.rstrip("/"), tls)) for u in urls]
        self._tls = tls

    def targets(self) -> Sequence[Target]:
        return self._targets

    def tls(self) -> ssl.SSLContext | None:
        return self._tls

    def expected(self, target: Target) -> str | None:
        return None

    def describe(self) -> str:
        return f"{len(self._targets)} admin endpoint(s)"


class RegistryTargets:
    """Every endpoint of a registry file (``service: [{address, labels}]``, the format of
    ``registry.file`` and of the Bookinfo run's ``registry.yaml``), re-read when it changes. A
    file that does not read keeps the last good list."""

    def __init__(
        self, path: str, tls: ssl.SSLContext | None = None, namespace: str = "default"
    ) -> None:
        self.path = path
        self.namespace = namespace
        self._tls = tls
        self._stamp: tuple[int, int] | None = None
        self._targets: list[Target] = []
        self.problem: str | None = None
        self.targets()
        if self.problem is not None and not self._targets:
            raise ValueError(self.problem)

    def targets(self) -> Sequence[Target]:
        try:
            info = os.stat(self.path)
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp == self._stamp:
                return self._targets
            with open(self.path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
            self._targets = self._read(data)
            self._stamp, self.problem = stamp, None
        except (OSError, yaml.YAMLError, ValueError) as exc:
            self.problem = f"registry file {self.path}: {exc}"
        return self._targets

    def _read(self, data: object) -> list[Target]:
        if not isinstance(data, Mapping):
            raise ValueError("not a map of service names to endpoints")
        out = []
        for name, endpoints in data.items():
            if not isinstance(endpoints, list):
                raise ValueError(f"{name}: not a list of endpoints")
            for endpoint in endpoints:
                address = endpoint.get("address") if isinstance(endpoint, Mapping) else None
                if not isinstance(address, str) or ":" not in address:
                    raise ValueError(f"{name}: an endpoint without an address host:port")
                labels = endpoint.get("labels") or {}
                version = labels.get("version") if isinstance(labels, Mapping) else None
                url = _https(f"http://{address}", self._tls)
                out.append(Target(url, str(name), version, self.namespace))
        return out

    def tls(self) -> ssl.SSLContext | None:
        return self._tls

    def expected(self, target: Target) -> str | None:
        return None

    def describe(self) -> str:
        return f"the endpoints of {os.path.basename(self.path)}"


class BookinfoTargets:
    """The services of the running Bookinfo demo (``meshctl bookinfo``'s run directory):
    ``bookinfo.json`` re-read when it changes (a restarted demo has new ports and a new CA);
    when the demo stops, the last list stays, and its services show stale."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._stamp: tuple[int, int] | None = None
        self._targets: list[Target] = []
        self._configs: dict[str, str] = {}
        self._tls: ssl.SSLContext | None = None
        self._ca_stamp: tuple[int, int] | None = None
        self.problem: str | None = None
        self.targets()

    def targets(self) -> Sequence[Target]:
        from meshlib.bookinfo import CA_DIR, STATE_FILE  # noqa: PLC0415 - a demo's own layout

        path = os.path.join(self.run_dir, STATE_FILE)
        try:
            info = os.stat(path)
        except OSError:
            self.problem = f"no Bookinfo demo runs from {self.run_dir} (no {STATE_FILE})"
            return self._targets
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            try:
                with open(path, encoding="utf-8") as handle:
                    state = json.load(handle)
                services = state["services"]
                self._tls = self._context(os.path.join(self.run_dir, CA_DIR))
                targets, configs = [], {}
                for service in services:
                    url = _https(str(service["url"]).rstrip("/"), self._tls)
                    targets.append(
                        Target(url, str(service["name"]), service.get("version"), "default")
                    )
                    configs[url] = str(service["config"])
                self._targets, self._configs, self._stamp = targets, configs, stamp
                self.problem = None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.problem = f"{path}: {exc}"
        return self._targets

    def _context(self, folder: str) -> ssl.SSLContext | None:
        from meshlib.bookinfo import admin_context  # noqa: PLC0415

        try:
            info = os.stat(os.path.join(folder, "ca.pem"))
        except OSError:
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._ca_stamp or self._tls is None:
            self._tls = admin_context(self.run_dir)
            self._ca_stamp = stamp
        return self._tls

    def tls(self) -> ssl.SSLContext | None:
        return self._tls

    def expected(self, target: Target) -> str | None:
        from meshlib import control  # noqa: PLC0415
        from meshlib.errors import ConfigError  # noqa: PLC0415

        config = self._configs.get(target.url)
        if config is None:
            return None
        try:
            return control.expected_digest(control.ServiceRef("", None, target.url, config))
        except (ConfigError, OSError):
            return None

    def describe(self) -> str:
        return f"the Bookinfo demo in {self.run_dir}"


def ca_context(ca_dir: str) -> ssl.SSLContext:
    """A client context with a fresh certificate of the CA in ``ca_dir`` (``meshctl ca init``),
    as ``meshctl``'s own identity: what the admin endpoints of a mesh with identities admit."""
    from meshlib.bookinfo import ADMIN_ACCOUNT  # noqa: PLC0415
    from meshlib.security.ca import CertificateAuthority  # noqa: PLC0415
    from meshlib.security.workload import WorkloadIdentity  # noqa: PLC0415

    authority = CertificateAuthority.load(ca_dir)
    namespace, account = ADMIN_ACCOUNT
    spiffe_id = f"spiffe://{authority.trust_domain}/ns/{namespace}/sa/{account}"
    return WorkloadIdentity.from_ca(authority, spiffe_id).client_context()


def _https(url: str, tls: ssl.SSLContext | None) -> str:
    if tls is not None and url.startswith("http://"):
        return "https://" + url.removeprefix("http://")
    return url


# --------------------------------------------------------------------------- polling


class Refused(Exception):  # noqa: N818 - an answer, not a bug
    """An admin endpoint answered, but not with what was asked."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _get(http: httpx.Client, url: str, headers: Mapping[str, str]) -> bytes:
    """The body of ``GET url``: raises ``Refused`` for a status other than 200 or a body over
    ``MAX_BODY``, ``httpx.HTTPError`` when no answer came."""
    with http.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise Refused(response.status_code, f"{response.status_code} {response.reason_phrase}")
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_BODY:
                raise Refused(200, f"answered more than {MAX_BODY} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(200, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused(200, "not a JSON object")
    return data


def _why(exc: Exception) -> str:
    if isinstance(exc, Refused):
        if exc.status == 401:
            return (
                "401: the admin endpoint wants a mesh identity or the admin token "
                "(--ca DIR, or $MESHLIB_ADMIN_TOKEN)"
            )
        if exc.status == 404:
            return "404: not a meshlib admin endpoint"
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or failed"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class Poll:
    """What one service is asked at each poll."""

    now: float  # the dashboard's monotonic clock: scrape times
    wall: float  # its wall clock: "last seen"
    window: float
    metrics: bool = True  # scrape its metrics (admin mode)
    trace_limit: int = TRACE_LIMIT


def poll_service(
    http: httpx.Client,
    previous: ServiceSnapshot,
    poll: Poll,
    headers: Mapping[str, str] | None = None,
) -> ServiceSnapshot:
    """``previous`` brought up to date: each admin endpoint asked once. When the service does
    not answer ``/_mesh/config`` it keeps its last good data and says why (it shows stale); an
    endpoint it does not have (an older meshlib, metrics off) leaves that part empty."""
    base = previous.target.url
    sent = dict(headers or {})
    try:
        config = _json(_get(http, base + CONFIG, sent))
    except (httpx.HTTPError, Refused, OSError, ssl.SSLError) as exc:
        return replace(previous, error=_why(exc))
    problems: list[str] = []
    clusters = previous.clusters
    try:
        clusters = _json(_get(http, base + CLUSTERS, sent))
    except Refused as exc:
        clusters = None if exc.status == 404 else clusters
        if exc.status != 404:
            problems.append(f"{CLUSTERS}: {_why(exc)}")
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return replace(previous, error=_why(exc))
    scrapes, metrics = previous.scrapes, previous.metrics
    if poll.metrics:
        try:
            text = _get(http, base + METRICS, {**sent, "accept": "text/plain"})
            scrape = parse_scrape(text.decode("utf-8", "replace"), poll.now)
            scrapes, metrics = keep_window((*previous.scrapes, scrape), poll.window), "on"
        except Refused as exc:
            if exc.status == 404:
                scrapes, metrics = (), "off"
            else:
                problems.append(f"{METRICS}: {_why(exc)}")
        except ScrapeError as exc:
            problems.append(f"{METRICS}: {exc}")
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            return replace(previous, error=_why(exc))
    spans = previous.spans
    try:
        found = _json(_get(http, f"{base}{TRACES}?limit={poll.trace_limit}", sent)).get("spans")
        spans = tuple(s for s in found if isinstance(s, Mapping)) if isinstance(found, list) else ()
    except Refused as exc:
        spans = () if exc.status == 404 else spans
        if exc.status != 404:
            problems.append(f"{TRACES}: {_why(exc)}")
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return replace(previous, error=_why(exc))
    return ServiceSnapshot(
        target=previous.target,
        last_seen=poll.wall,
        error=None,
        problem="; ".join(problems) or None,
        config=config,
        clusters=clusters,
        scrapes=scrapes,
        metrics=metrics,
        spans=spans,
        expected_revision=previous.expected_revision,
    )


# --------------------------------------------------------------------------- Prometheus

_EDGE = (
    "reporter, source_workload, source_workload_namespace, destination_workload, "
    "destination_workload_namespace"
)
_NAMES = "source_app, source_version, destination_app, destination_version"
_ROUTE = "source_workload, source_workload_namespace, virtual_service, route, destination_service"


class PrometheusError(Exception):
    """Prometheus did not answer a query."""


class PrometheusReader:
    """The page's numbers from PromQL: request and error rates of ``istio_requests_total``,
    p50/p99 with ``histogram_quantile`` over ``istio_request_duration_milliseconds_bucket``,
    mutual TLS from ``connection_security_policy``, and the same per route from meshlib's route
    metrics, each over the last ``window`` seconds."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def queries(self, window: float) -> dict[str, str]:
        """The PromQL the page runs, by what it is for."""
        w = f"{max(int(window), 1)}s"
        out = {
            "requests": f"sum by ({_EDGE}, {_NAMES}, response_code, connection_security_policy) "
            f"(rate({REQUESTS}[{w}]))",
            "known": f"sum by ({_EDGE}, {_NAMES}, connection_security_policy) ({REQUESTS})",
            "routes": f"sum by ({_ROUTE}, response_code) (rate({ROUTE_REQUESTS}[{w}]))",
        }
        for q in (0.5, 0.99):
            name = f"p{round(q * 100)}"
            out[f"edge_{name}"] = (
                f"histogram_quantile({q}, sum by ({_EDGE}, le) (rate({DURATION}[{w}])))"
            )
            out[f"route_{name}"] = (
                f"histogram_quantile({q}, sum by ({_ROUTE}, le) (rate({ROUTE_DURATION}[{w}])))"
            )
        return out

    def query(self, http: httpx.Client, promql: str) -> list[Any]:
        try:
            response = http.get(f"{self.url}/api/v1/query", params={"query": promql})
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self.url}: {_why(exc)}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise PrometheusError(
                f"Prometheus at {self.url}: {error or f'HTTP {response.status_code}'}"
            )
        data = body.get("data")
        result = data.get("result") if isinstance(data, dict) else None
        return result if isinstance(result, list) else []

    def traffic(self, http: httpx.Client, window: float) -> tuple[Traffic, Traffic]:
        """The window's traffic, and every request counted so far (for mutual TLS on edges idle
        now)."""
        found = {name: self.query(http, q) for name, q in self.queries(window).items()}
        traffic = traffic_from_vectors(
            {REQUESTS: found["requests"], ROUTE_REQUESTS: found["routes"]},
            known=found["known"],
            quantiles={
                (REQUESTS, 0.5): found["edge_p50"],
                (REQUESTS, 0.99): found["edge_p99"],
                (ROUTE_REQUESTS, 0.5): found["route_p50"],
                (ROUTE_REQUESTS, 0.99): found["route_p99"],
            },
        )
        return traffic, traffic_from_vectors({REQUESTS: found["known"]})


__all__ = [
    "BookinfoTargets",
    "Poll",
    "PrometheusError",
    "PrometheusReader",
    "RegistryTargets",
    "StaticTargets",
    "Targets",
    "ca_context",
    "poll_service",
]
