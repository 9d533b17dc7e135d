"""Real servers on 127.0.0.1 in a thread of the test process: uvicorn for ASGI apps, Werkzeug's
threaded server for WSGI apps. Each binds port 0 and is stopped by ``stop()``."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from werkzeug.serving import make_server

HOST = "127.0.0.1"


class LiveServer:
    """A server running in a thread; ``url`` is where it listens."""

    def __init__(self, port: int, thread: threading.Thread, stop: Any) -> None:
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self._thread = thread
        self._stop = stop

    def stop(self) -> None:
        self._stop()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the test server did not stop"


def serve_asgi(app: Any) -> LiveServer:
    """``app`` served by uvicorn (lifespan on: a middleware must pass it through)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.005)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return LiveServer(port, thread, stop)


def serve_wsgi(app: Any) -> LiveServer:
    """``app`` served by Werkzeug's threaded development server."""
    server = make_server(HOST, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkzeug", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return LiveServer(server.server_port, thread, stop)
