"""``meshctl dashboard``: the live mesh page on 127.0.0.1.

meshctl dashboard [--bookinfo [RUN_DIR]] [--admin URL]... [--registry FILE] [--ca DIR]
                  [--prometheus URL] [--host H] [--port P] [--interval S] [--window S]

With no service named, the Bookinfo demo's default run directory is used when a demo runs there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, TextIO

from meshlib.dashboard.server import DEFAULT_HOST, DEFAULT_PORT, Dashboard, PageServer, serve
from meshlib.dashboard.sources import (
    BookinfoTargets,
    RegistryTargets,
    StaticTargets,
    Targets,
    ca_context,
)


def register(commands: Any) -> None:
    """Add ``dashboard`` to meshctl's subparsers."""
    parser = commands.add_parser(
        "dashboard",
        help="serve the live mesh page: service graph, routes, breakers, revisions, traces",
        description="Serve a local web page that shows the mesh live: the service graph "
        "(workloads and versions; each edge's request rate, error rate, p50/p99 latency and "
        "mutual TLS), the golden signals of each route, circuit breakers and ejected endpoints, "
        "the config revision each service runs, and the call trees of recent traces. The "
        "numbers come from Prometheus with --prometheus, else from the services' own admin "
        "endpoints (/_mesh/metrics, scraped every --interval). A service whose admin endpoint "
        "does not answer stays on the page, shown stale. Ctrl-C stops.",
    )
    parser.add_argument(
        "--bookinfo",
        nargs="?",
        const="",
        default=None,
        metavar="RUN_DIR",
        help="the services of the running Bookinfo demo (its run directory; default "
        "$BOOKINFO_RUN_DIR or the demo's default), over mutual TLS with its CA",
    )
    parser.add_argument(
        "--admin",
        action="append",
        default=[],
        metavar="URL",
        help="a service's base URL, whose /_mesh/... admin endpoints to poll (repeatable)",
    )
    parser.add_argument(
        "--registry",
        default=None,
        metavar="FILE",
        help="a registry file (service: [{address, labels}], as registry.file reads it): poll "
        "every endpoint in it; re-read when it changes",
    )
    parser.add_argument(
        "--ca",
        default=None,
        metavar="DIR",
        help="the mesh CA's directory (meshctl ca init): call the --admin and --registry "
        "endpoints over mutual TLS with a certificate of it. $MESHLIB_ADMIN_TOKEN, when set, "
        "is sent as a bearer token",
    )
    parser.add_argument(
        "--prometheus",
        default=None,
        metavar="URL",
        help="take the graph's and the routes' numbers from this Prometheus (PromQL over "
        "istio_requests_total and the duration histograms) instead of scraping the services",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"the address to listen on (default {DEFAULT_HOST}; the page shows the mesh's "
        "state to whoever reaches it)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: a free one"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often to poll the services (default 2)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="the rates are over this many seconds (default 30)",
    )
    parser.set_defaults(run=_run)


def targets_of(args: argparse.Namespace) -> Targets:
    """The services the arguments name; raises ``ValueError`` saying what is wrong."""
    named = sum(1 for x in (args.bookinfo is not None, args.admin, args.registry) if x)
    if named > 1:
        raise ValueError("name the services one way: --bookinfo, --admin or --registry")
    if args.bookinfo is not None or (named == 0 and args.prometheus is None):
        from meshlib.bookinfo import STATE_FILE, default_run_dir  # noqa: PLC0415

        run_dir = args.bookinfo or default_run_dir()
        if args.bookinfo is None and not os.path.exists(os.path.join(run_dir, STATE_FILE)):
            raise ValueError(
                "which services? --bookinfo [RUN_DIR] for the Bookinfo demo, --admin URL "
                "(repeatable), --registry FILE, or --prometheus URL"
            )
        return BookinfoTargets(run_dir)
    tls = None
    if args.ca is not None:
        try:
            tls = ca_context(args.ca)
        except Exception as exc:
            raise ValueError(f"--ca {args.ca}: {exc}") from None
    if args.registry is not None:
        return RegistryTargets(args.registry, tls)
    for url in args.admin:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--admin {url}: not an http:// or https:// URL")
    return StaticTargets(args.admin, tls)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.interval <= 0 or args.window < args.interval:
        print(
            "meshctl dashboard: --interval must be above 0 and --window at least one interval",
            file=sys.stderr,
        )
        return 2
    if args.prometheus is not None and not args.prometheus.startswith(("http://", "https://")):
        print(f"meshctl dashboard: --prometheus {args.prometheus}: not a URL", file=sys.stderr)
        return 2
    try:
        targets = targets_of(args)
    except ValueError as exc:
        print(f"meshctl dashboard: {exc}", file=sys.stderr)
        return 2
    dashboard = Dashboard(
        targets, prometheus=args.prometheus, interval=args.interval, window=args.window
    )
    stop = threading.Event()

    def ready(server: PageServer) -> None:
        print(f"meshctl dashboard: {server.url}", file=out)
        print(f"  data: {_source(args, targets)}; Ctrl-C stops.", file=out, flush=True)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        serve(dashboard, args.host, args.port, on_ready=ready, stop=stop)
    except OSError as exc:
        dashboard.close()
        print(
            f"meshctl dashboard: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc}; choose another --port (0: a free one)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _source(args: argparse.Namespace, targets: Targets) -> str:
    polled = targets.describe()
    if args.prometheus:
        return f"Prometheus at {args.prometheus}; revisions, breakers and traces from {polled}"
    return polled


__all__ = ["register", "targets_of"]
