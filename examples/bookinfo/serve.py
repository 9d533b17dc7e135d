"""What every Bookinfo service process does around its app: log with its name, watch its mesh
config, answer ``GET /_mesh/config``, and serve on 127.0.0.1 with meshlib's runner (uvicorn with
the workload's certificate, each connection taken as the PeerAuthentication in force says:
PERMISSIVE, Istio's default, until a rule says otherwise).

    MESH_CONFIG=run/config/reviews-v2.yaml python -m examples.bookinfo.reviews --port 9083

The launcher passes a socket it has already bound (``--fd``), so that it knows every port before
any service starts. A service whose config names an etcd store (the demo on etcd) registers
its address there while it serves. With ``--watch-stdin`` the process exits when its parent's
end of stdin closes: a killed launcher leaves no service behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from meshlib import client
from meshlib.server import MeshAdmin
from meshlib.server.runner import make_server

HOST = "127.0.0.1"
#: How often each service looks at its config files (meshlib's ConfigWatcher).
WATCH_INTERVAL = 0.25
#: How long a change must stay still before it is applied: ``meshctl bookinfo apply`` replaces
#: the rules file atomically and an editor writes a file in one go, so a tenth of a second is
#: enough here. Measured median of ``meshctl bookinfo apply``: 0.4 s with no settling, 0.5 s
#: with 0.1 s, 0.6 s with the default (the interval, 0.25 s).
WATCH_SETTLE = 0.1


def _exit_when_parent_goes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def run(name: str, build: Callable[[str], Any], *, default_version: str = "v1") -> None:
    """Parse the command line, then serve ``build(version)`` until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog=f"python -m examples.bookinfo.{name}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=0, help="listen on 127.0.0.1:PORT")
    where.add_argument("--fd", type=int, default=None, help="serve on this bound socket")
    parser.add_argument("--version", default=default_version)
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    args = parser.parse_args()
    if args.watch_stdin:
        threading.Thread(target=_exit_when_parent_goes, daemon=True).start()

    label = f"{name}-{args.version}"
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {label:<12} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per outbound call
    mesh = client.default_mesh()  # from $MESH_CONFIG: a bad config stops the service here
    mesh.watch(interval=WATCH_INTERVAL, settle=WATCH_SETTLE)

    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, args.port))
        logging.getLogger(label).info("listening on http://%s:%d", HOST, sock.getsockname()[1])
    server = make_server(
        MeshAdmin(build(args.version), mesh),
        mesh,
        host=HOST,
        port=sock.getsockname()[1],
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
        register=mesh.store is not None,  # on etcd: found there while it serves
    )
    server.run(sockets=[sock])
    mesh.close()
