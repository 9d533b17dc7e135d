"""An HTTP/1.1 upstream that misbehaves on request, in a process of its own, for the chaos tests.

Run as a program, it listens on 127.0.0.1 (port 0 unless ``--port``) and prints its port on
stdout. The first segment of each request's path chooses what it does (query parameters tune
it; the rest of the path is the caller's, e.g. a test's name, so that its hits count apart):

``/ok``                    200 at once, a small JSON body (``{"path", "method", "body"}``).
``/status?code=503``       that status; ``header=name:value`` (repeatable) adds response headers;
                           ``s=0.1`` waits that long first.
``/delay?s=0.2``           200 after that many seconds.
``/trickle-headers``       the status line and headers one byte at a time, ``every=0.1`` seconds
                           apart, then the body (``size=16`` bytes) at once.
``/trickle-body``          status line and headers at once (``content-length: size``), then the body
                           (``size=40`` bytes) one byte every ``every=0.1`` seconds.
``/hang``                  reads the request and never answers (until the client goes, or 60 s).
``/reset-body``            headers with ``content-length: size`` (default 1000), ``sent=10`` body
                           bytes, then the connection is reset (TCP RST).
``/reset``                 reads the request and resets the connection without a byte of answer.
anything else              404.

``fail=N`` on any of them: the first N requests on the path are answered as ``/status`` would,
with status ``fail_code`` (default 503) and the ``header`` parameters, before the behaviour runs.
``shadow=hang`` (any behaviour's name) on any of them: a copy of the request a mesh mirrored
(its ``Host`` ends in ``-shadow``) behaves that way instead; its hits count under
``<path> (shadow)``.

Every request but the control paths is counted per path when it has arrived whole, and as
active until its answer is over (or its client gone). Control: ``GET /_hits`` (``{"total",
"paths": {path: n}, "active": {path: n}}``), ``/_reset`` (counters cleared).

``--no-accept`` makes a listener that never accepts a connection: its accept queue is filled at
start, so a client's connect attempt waits (the kernel drops its SYN) until the client gives up.

The server is asyncio on the standard library only. The parent's side: ``Misbehaving.start()``
runs the program in a subprocess; the child exits when its parent's end of its stdin closes, so a
killed test run leaves no server behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

HOST = "127.0.0.1"
MAX_WAIT = 60.0


class _State:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.active: dict[str, int] = {}
        self.total = 0


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Status'}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST (linger 0), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _answer(
    state: _State,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> bool:
    """Answer one request; False when the connection must not be used again."""
    path, _, query = target.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)
    if path == "/_hits":
        counts = {"total": state.total, "paths": state.hits, "active": state.active}
        payload = json.dumps(counts).encode()
        writer.write(_head(200, [("content-length", str(len(payload)))]) + payload)
        return True
    if path == "/_reset":
        state.hits.clear()
        state.total = 0
        writer.write(_head(200, [("content-length", "0")]))
        return True
    behaviour = "/" + path.split("/")[1]
    key = path
    if "shadow" in params and headers.get("host", "").partition(":")[0].endswith("-shadow"):
        behaviour, key = "/" + params["shadow"], f"{path} (shadow)"
    state.hits[key] = state.hits.get(key, 0) + 1
    state.total += 1
    state.active[key] = state.active.get(key, 0) + 1
    try:
        return await _behave(state, key, behaviour, method, path, pairs, body, reader, writer)
    finally:
        state.active[key] -= 1


async def _behave(
    state: _State,
    key: str,
    behaviour: str,
    method: str,
    path: str,
    pairs: list[tuple[str, str]],
    body: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> bool:
    params = dict(pairs)
    every = float(params.get("every", "0.1"))
    if state.hits[key] <= int(params.get("fail", "0")):  # fail first, as /status would
        behaviour, params["code"] = "/status", params.get("fail_code", "503")
    if behaviour in ("/ok", "/delay", "/status"):
        if behaviour == "/delay" or "s" in params:
            await asyncio.sleep(min(float(params.get("s", "0.2")), MAX_WAIT))
        payload = json.dumps(
            {"path": path, "method": method, "body": body.decode("utf-8", "replace")}
        ).encode()
        extra = [tuple(v.split(":", 1)) for k, v in pairs if k == "header" and ":" in v]
        headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
        headers += [(name.strip(), value.strip()) for name, value in extra]
        writer.write(_head(int(params.get("code", "200")), headers) + payload)
        return True
    if behaviour == "/trickle-headers":
        payload = b"x" * int(params.get("size", "16"))
        head = _head(200, [("content-length", str(len(payload))), ("x-padding", "p" * 64)])
        for index in range(len(head)):
            writer.write(head[index : index + 1])
            await writer.drain()
            await asyncio.sleep(every)
        writer.write(payload)
        return True
    if behaviour == "/trickle-body":
        size = int(params.get("size", "40"))
        writer.write(_head(200, [("content-length", str(size))]))
        for _ in range(size):
            await writer.drain()
            await asyncio.sleep(every)
            writer.write(b"x")
        return True
    if behaviour == "/hang":
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(), MAX_WAIT)  # until the client goes
        return False
    if behaviour == "/reset-body":
        size, sent = int(params.get("size", "1000")), int(params.get("sent", "10"))
        writer.write(_head(200, [("content-length", str(size))]) + b"x" * min(sent, size))
        await writer.drain()
        await asyncio.sleep(float(params.get("after", "0.05")))
        _reset(writer)
        return False
    if behaviour == "/reset":
        _reset(writer)
        return False
    writer.write(_head(404, [("content-length", "0")]))
    return True


async def _serve_connection(
    state: _State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = b""
            if headers.get("content-length"):
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
                    parts.append(await reader.readexactly(size))
                    await reader.readline()
                while (await reader.readline()).strip():
                    pass
                body = b"".join(parts)
            if not await _answer(state, method, target, headers, body, reader, writer):
                return
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass  # the client went away, or sent something that is not HTTP/1.x
    finally:
        if not writer.transport.is_closing():
            writer.close()


async def serve(port: int, ready: Any) -> None:
    state = _State()
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(state, r, w), HOST, port, backlog=512
    )
    ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def never_accept(port: int, ready: Any) -> None:
    """Listen, fill the accept queue with connections of our own, and never accept."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, port))
    listener.listen(0)
    bound = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # a queue of backlog + 1; the rest wait (connect is non-blocking here)
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect((HOST, bound))
        fillers.append(filler)
    ready(bound)
    threading.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A misbehaving HTTP upstream for chaos tests.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-accept", action="store_true", help="never accept a connection")
    args = parser.parse_args(argv)

    def exit_when_parent_goes() -> None:
        sys.stdin.buffer.read()
        import os

        os._exit(0)

    threading.Thread(target=exit_when_parent_goes, daemon=True).start()

    def ready(port: int) -> None:
        print(port, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        if args.no_accept:
            never_accept(args.port, ready)
        else:
            asyncio.run(serve(args.port, ready))


# --------------------------------------------------------------------------- the parent's side


class Misbehaving:
    """One misbehaving upstream process; its control calls use the standard library."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @classmethod
    def start(cls, *, no_accept: bool = False, timeout: float = 10.0) -> Misbehaving:
        from tests.integration.upstream import _end, _read_port

        command = [sys.executable, str(Path(__file__).resolve())]
        if no_accept:
            command.append("--no-accept")
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            return cls(process, _read_port(process, timeout))
        except BaseException:
            _end(process)
            raise

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def control(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=5) as reply:
            return json.loads(reply.read() or b"null")

    def hits(self, path: str | None = None) -> int:
        """Requests that arrived whole so far: on ``path``, or on every path."""
        counts = self.control("/_hits")
        return int(counts["total"] if path is None else counts["paths"].get(path, 0))

    def hits_reaching(self, path: str, count: int, within: float = 3.0) -> int:
        """``hits(path)`` once it reaches ``count``, or after ``within`` seconds: a try the
        client gave up on may still wait in the upstream's socket, read later under load."""
        ends = time.monotonic() + within
        while (seen := self.hits(path)) < count and time.monotonic() < ends:
            time.sleep(0.02)
        return seen

    def active(self, path: str) -> int:
        """Requests on ``path`` whose answer is not over yet (their client still waiting)."""
        return int(self.control("/_hits")["active"].get(path, 0))

    def reset(self) -> None:
        self.control("/_reset")

    def stop(self) -> None:
        from tests.integration.upstream import _end

        _end(self.process)


if __name__ == "__main__":
    main()
