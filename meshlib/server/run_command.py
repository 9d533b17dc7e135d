"""``meshctl run module:app``: serve an ASGI or WSGI app with the mesh's identity
(``meshlib.server.runner``; uvicorn is imported only when the command runs)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, TextIO

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``run`` to meshctl's subcommands."""
    run = commands.add_parser(
        "run",
        help="serve an ASGI or WSGI app with the mesh's identity (inbound mTLS)",
        description="Serve APP (module:attribute) on uvicorn with the workload's identity: each "
        "connection as the port's PeerAuthentication says (STRICT: mutual TLS only; PERMISSIVE: "
        "mutual TLS and plain text on the same port; DISABLE: plain text). Stops gracefully on "
        "SIGINT or SIGTERM.",
    )
    run.add_argument("app", metavar="APP", help="the app, as module:attribute")
    run.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="config file (repeatable; default: $MESH_CONFIG or mesh.yaml)",
    )
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    run.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    run.add_argument(
        "--interface",
        choices=("auto", "asgi", "wsgi"),
        default="auto",
        help="the app's interface (auto: ASGI when its call is a coroutine function)",
    )
    run.add_argument("--threads", type=int, default=16, help="WSGI threads (16)")
    run.add_argument(
        "--app-dir", default=".", help="directory put first on sys.path to import APP (.)"
    )
    run.add_argument("--log-level", default="info", help="uvicorn's log level (info)")
    run.add_argument(
        "--register",
        action="store_true",
        help="register in the mesh's store (spec.store: etcd://...) while serving: the bound "
        "address, the config's labels, on a lease revoked at shutdown",
    )
    run.add_argument(
        "--advertise",
        default=None,
        metavar="HOST[:PORT]",
        help="with --register: the address others call (default: --host and the bound port; "
        "needed when --host is 0.0.0.0 or ::)",
    )
    run.set_defaults(run=_run)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    from uvicorn.config import LOG_LEVELS  # noqa: PLC0415
    from uvicorn.importer import ImportFromStringError, import_from_string  # noqa: PLC0415

    from meshlib.client import default_mesh  # noqa: PLC0415
    from meshlib.errors import ConfigError, IdentityError, StoreError  # noqa: PLC0415
    from meshlib.mesh import Mesh  # noqa: PLC0415
    from meshlib.server import runner  # noqa: PLC0415

    sys.path.insert(0, os.path.abspath(args.app_dir))
    try:
        app = import_from_string(args.app)
    except ImportFromStringError as exc:
        print(f"meshctl run: {exc}", file=sys.stderr)
        return 1
    try:
        mesh = Mesh.from_files(args.config) if args.config else default_mesh()
        mesh.identity  # noqa: B018 - a CA or certificate that cannot be used fails here
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except IdentityError as exc:
        print(f"meshctl run: {exc}", file=sys.stderr)
        return 1
    wsgi = args.interface == "wsgi" or (args.interface == "auto" and not runner.is_asgi(app))
    options: dict[str, Any] = {"host": args.host, "port": args.port, "log_level": args.log_level}
    if args.register:
        options.update(register=True, advertise=args.advertise)
    elif args.advertise is not None:
        print("meshctl run: --advertise goes with --register", file=sys.stderr)
        return 2
    try:
        if wsgi:
            server = runner.make_wsgi_server(app, mesh, threads=args.threads, **options)
        else:
            server = runner.make_server(app, mesh, **options)
    except (StoreError, ValueError) as exc:
        if not args.register:
            raise
        print(f"meshctl run: --register: {exc}", file=sys.stderr)
        return 1
    handler = logging.StreamHandler()  # meshlib's lines next to uvicorn's
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logging.getLogger("meshlib").addHandler(handler)
    logging.getLogger("meshlib").setLevel(LOG_LEVELS.get(args.log_level, logging.INFO))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it stopped on
        server.run()
    return 0 if server.started else 1
