"""A service process for the store's tests: serves ``I am <name>`` on HOST:PORT, registers
that address in the store, then calls the other service through its mesh until it answers,
and prints what it said. Exits when its stdin closes.

    python -m tests.store.peer CONFIG HOST OTHER
"""

from __future__ import annotations

import http.server
import sys
import threading
import time

import httpx

from meshlib import Mesh


def main() -> None:
    config, host, other = sys.argv[1:4]
    mesh = Mesh.from_file(config)
    name = mesh.config.service.name

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"I am {name}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    registration = mesh.register(f"{host}:{server.server_address[1]}", ttl=5)
    answer = "no answer"
    with mesh.client(timeout=2.0) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                response = client.get(f"http://{other}:9080/")
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 200:
                answer = response.text
                break
            time.sleep(0.1)
    print(answer, flush=True)
    sys.stdin.read()
    registration.close()
    server.shutdown()
    mesh.close()


if __name__ == "__main__":
    main()
