"""A tiny real HTTP/1.1 upstream for integration tests and benchmarks, in a process of its own.

Run as a program, it listens on 127.0.0.1 (port 0 unless ``--port``) and prints its port on
stdout::

    python tests/integration/upstream.py --version v2
    41733

Every request is answered with JSON ``{"version", "method", "path", "headers"}`` (header names
lowercase) and counted per path when it arrives. Behaviours are chosen per request, each by a
query parameter or by the header ``x-upstream-<name>``:

``status=503``       answer with that status.
``delay=0.2``        wait that many seconds before answering (at most 60).
``hold=<key>``       keep the response open until ``/_release?key=<key>`` (at most 60 s).
``fail=<n>``         the first ``n`` requests with the same ``key=<k>`` (default: the path) get
                     ``fail_status`` (default 503); the later ones succeed.
``echo``             add the request body, as text, under ``"body"``.
``size=65536``       pad the reply with a ``"pad"`` string of ``x`` to that many bytes (a reply
                     already longer is sent as it is).

Control paths, never counted: ``GET /_hits`` (``{"version", "total", "paths": {path: n}}``),
``/_release?key=<key>`` (``{"released": n}``) and ``/_reset`` (counters and fail keys cleared,
holds released).

The server is asyncio on the standard library only: fast enough for benchmarks (keep-alive, no
thread per connection) and hundreds of concurrent connections. Importing this module gives the
parent's side: ``Upstream.start("v1")`` runs the program in a subprocess and ``stop()`` ends it
(terminate, then wait); the child also exits when its parent's end of its stdin closes, so a
killed test run leaves no server behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

HOST = "127.0.0.1"
MAX_WAIT = 60.0
REASONS = {
    200: "OK",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# --------------------------------------------------------------------------- the server


class _State:
    """What the server remembers; touched only from its event loop."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.hits: dict[str, int] = {}
        self.total = 0
        self.failed: dict[str, int] = {}
        self.holds: dict[str, asyncio.Event] = {}

    def reset(self) -> None:
        self.hits.clear()
        self.total = 0
        self.failed.clear()
        self.release_all()

    def release(self, key: str) -> int:
        event = self.holds.pop(key, None)
        if event is None:
            return 0
        event.set()
        return 1

    def release_all(self) -> None:
        for key in list(self.holds):
            self.release(key)

    async def respond(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        path, _, query = target.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        if path.startswith("/_"):
            return self.control(path, params)
        self.hits[path] = self.hits.get(path, 0) + 1
        self.total += 1

        def option(name: str) -> str | None:
            value = params.get(name)
            return value if value is not None else headers.get(f"x-upstream-{name}")

        status = int(option("status") or 200)
        fail = option("fail")
        if fail is not None:
            key = option("key") or path
            served = self.failed.get(key, 0)
            if served < int(fail):
                self.failed[key] = served + 1
                status = int(option("fail_status") or 503)
        delay = option("delay")
        if delay is not None:
            await asyncio.sleep(min(float(delay), MAX_WAIT))
        hold = option("hold")
        if hold is not None:
            event = self.holds.setdefault(hold, asyncio.Event())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), MAX_WAIT)
        reply: dict[str, Any] = {
            "version": self.version,
            "method": method,
            "path": path,
            "headers": dict(headers),
        }
        if option("echo") is not None:
            reply["body"] = body.decode("utf-8", "replace")
        size = option("size")
        if size is not None:
            reply["pad"] = ""
            reply["pad"] = "x" * max(0, int(size) - len(json.dumps(reply)))
        return status, reply

    def control(self, path: str, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        if path == "/_hits":
            return 200, {"version": self.version, "total": self.total, "paths": self.hits}
        if path == "/_release":
            return 200, {"released": self.release(params.get("key", ""))}
        if path == "/_reset":
            self.reset()
            return 200, {"reset": True}
        return 404, {"error": f"no control path {path}"}


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()).strip():  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


async def _serve_connection(
    state: _State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(b"HTTP/1.1 431 " + REASONS[431].encode() + b"\r\n\r\n")
                break
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = b""
            length = headers.get("content-length")
            if length:
                body = await reader.readexactly(int(length))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(reader)
            status, reply = await state.respond(method, target, headers, body)
            payload = json.dumps(reply).encode()
            keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                f"content-type: application/json\r\n"
                f"content-length: {len(payload)}\r\n"
                f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            if not keep_alive:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass  # the client went away, or sent something that is not HTTP/1.x
    except Exception:
        traceback.print_exc()  # on the server's stderr: the test run shows it
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(version: str, port: int = 0, ready: Any = None) -> None:
    """Serve until the process ends; ``ready(port)`` is called once listening."""
    state = _State(version)
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(state, r, w), HOST, port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    async with server:
        await server.serve_forever()


def _exit_when_parent_goes() -> None:
    """Exit as soon as stdin reaches end of file (the parent closed it, or died)."""
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A tiny HTTP upstream for meshlib's tests.")
    parser.add_argument("--version", default="v1", help="the version label in every reply")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin closes (parent gone)"
    )
    args = parser.parse_args(argv)
    if args.watch_stdin:
        threading.Thread(target=_exit_when_parent_goes, daemon=True).start()

    def ready(port: int) -> None:
        print(port, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.version, args.port, ready))


# --------------------------------------------------------------------------- the parent's side


class Upstream:
    """One upstream server process; its control calls use the standard library, not httpx."""

    def __init__(self, version: str, process: subprocess.Popen[bytes], port: int) -> None:
        self.version = version
        self.process = process
        self.port = port

    @classmethod
    def start(cls, version: str, timeout: float = 10.0) -> Upstream:
        return cls.start_many([version], timeout)[0]

    @classmethod
    def start_many(cls, versions: Iterable[str], timeout: float = 10.0) -> list[Upstream]:
        """Start one process per version label, in parallel; each reports its port."""
        processes = [(version, _spawn(version)) for version in versions]
        started: list[Upstream] = []
        try:
            for version, process in processes:
                started.append(cls(version, process, _read_port(process, timeout)))
        except BaseException:
            for _, process in processes:
                _end(process)
            raise
        return started

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://{self.address}{path}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def control(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=5) as reply:
            return json.loads(reply.read())

    def hits(self, path: str | None = None) -> int:
        """Requests received so far: on ``path``, or on every path."""
        counts = self.control("/_hits")
        return int(counts["total"] if path is None else counts["paths"].get(path, 0))

    def release(self, key: str) -> int:
        return int(self.control(f"/_release?key={key}")["released"])

    def reset(self) -> None:
        self.control("/_reset")

    def stop(self) -> None:
        """Terminate the process and wait for it (killed if it will not go)."""
        _end(self.process)

    def __enter__(self) -> Upstream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return f"<Upstream {self.version} {self.address} {state}>"


def _spawn(version: str) -> subprocess.Popen[bytes]:
    program = str(Path(__file__).resolve())
    return subprocess.Popen(
        [sys.executable, program, "--version", version, "--watch-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def _read_port(process: subprocess.Popen[bytes], timeout: float) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"upstream process {process.pid} did not report its port")
        readable, _, _ = select.select([process.stdout], [], [], left)
        if readable:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"upstream process exited with {process.wait(timeout)}")
            return int(line)


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


if __name__ == "__main__":
    main()
