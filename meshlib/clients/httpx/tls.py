"""Client TLS that reads ahead: ``TLSStream``, and ``TLSBackend``, the sync network backend whose
``start_tls`` makes one.

httpcore's sync backend wraps the socket in an ``ssl.SSLSocket``, and OpenSSL reads from it one
TLS record at a time, in two ``recv`` calls (its 5-byte header, then its body); each read and
write also sets the socket's timeout again (a system call). ``TLSStream`` runs the same TLS
(``ssl.SSLContext.wrap_bio``: the context, SNI, certificate checks and errors are the same) over
memory BIOs, as asyncio and anyio do: a read takes everything the socket holds, up to 64 KiB, in
one ``recv`` and decrypts from memory; a write encrypts into memory and sends it with one ``send``.
The socket stays non-blocking, and every wait is a ``poll`` bounded by the call's timeout and what
is left of the current deadline (``meshlib.deadline``), as with ``DeadlineBackend``.

What httpcore sees does not change: ``read`` returns the decrypted bytes (``b""`` once the peer
has closed, cleanly or not, as ``SSLSocket`` does by default), errors are httpcore's
(``ReadTimeout`` / ``ReadError``, ``WriteTimeout`` / ``WriteError``, and ``ConnectTimeout`` /
``ConnectError`` for the handshake, the ``ssl.SSLError`` or ``OSError`` behind them as their
``__cause__``), ``get_extra_info`` answers ``ssl_object`` (the ``ssl.SSLObject``, which has
``getpeercert``, ``version``, ``selected_alpn_protocol`` …), ``client_addr``, ``server_addr``,
``socket`` and ``is_readable`` (bytes already received count). Closing closes the socket, as
``SSLSocket.close`` does (no ``close_notify``).

``TLSBackend`` is ``DeadlineBackend`` (a plain TCP connection bounded by the deadline) whose
streams' ``start_tls`` returns a ``TLSStream``; a stream without a plain socket under it (another
inner backend, TLS in TLS) falls back to the inner stream's own ``start_tls``.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Any

import httpcore

from meshlib.clients.httpx.httpcore import DeadlineBackend, _bounded, _DeadlineStream

__all__ = ["TLSBackend", "TLSStream"]

#: what one ``recv`` may take: four full TLS records
READ_SIZE = 65536

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_WantRead = ssl.SSLWantReadError
_EndOfStream = (ssl.SSLZeroReturnError, ssl.SSLEOFError)
_monotonic = time.monotonic


class TLSStream(httpcore.NetworkStream):
    """TLS over a connected TCP socket through memory BIOs (see the module doc)."""

    __slots__ = ("_incoming", "_outgoing", "_readable", "_sock", "_ssl", "_writable")

    def __init__(
        self,
        sock: socket.socket,
        ssl_object: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self._sock = sock
        self._ssl = ssl_object
        self._incoming = incoming
        self._outgoing = outgoing
        fd = sock.fileno()
        self._readable = select.poll()
        self._readable.register(fd, _POLLIN)
        self._writable = select.poll()
        self._writable.register(fd, _POLLOUT)

    @classmethod
    def connect(
        cls,
        sock: socket.socket,
        context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> TLSStream:
        """Shake hands over ``sock`` (connected, not yet TLS) within ``timeout`` seconds.
        Fails with ``httpcore.ConnectTimeout`` or ``httpcore.ConnectError`` (caused by the
        ``ssl.SSLError`` or ``OSError``), the socket closed, as httpcore's own backend does."""
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        try:
            ssl_object = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
            sock.setblocking(False)
            stream = cls(sock, ssl_object, incoming, outgoing)
            end = None if timeout is None else _monotonic() + timeout
            while True:
                try:
                    ssl_object.do_handshake()
                except _WantRead:
                    done = False
                else:
                    done = True
                if outgoing.pending:
                    stream._send(outgoing.read(), end, "handshake")
                if done:
                    return stream
                stream._receive(end, "handshake")
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:  # ssl.SSLError included
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            sock.close()
            raise

    # ------------------------------------------------------------------ socket I/O

    def _receive(self, end: float | None, what: str) -> None:
        """Wait until the socket is readable (by ``end``), then move what it holds into the
        incoming BIO (its end when the peer has closed)."""
        sock = self._sock
        while True:
            if end is None:
                self._readable.poll()
            else:
                left = end - _monotonic()
                if left <= 0 or not self._readable.poll(left * 1000.0):
                    raise TimeoutError(f"The {what} operation timed out")
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                continue  # woken with nothing to read after all
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            return

    def _send(self, data: bytes, end: float | None, what: str) -> None:
        """Send all of ``data``, waiting (by ``end``) while the socket's buffer is full."""
        sock = self._sock
        while True:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            if end is None:
                self._writable.poll()
            else:
                left = end - _monotonic()
                if left <= 0 or not self._writable.poll(left * 1000.0):
                    raise TimeoutError(f"The {what} operation timed out")

    # ------------------------------------------------------------------ NetworkStream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        timeout = _bounded(timeout, httpcore.ReadTimeout)
        ssl_object = self._ssl
        incoming = self._incoming
        end = None if timeout is None else _monotonic() + timeout
        try:
            while True:
                if incoming.pending or ssl_object.pending() or incoming.eof:
                    try:
                        data = ssl_object.read(max_bytes)
                    except _WantRead:  # a record not yet whole, or only handshake messages
                        if incoming.eof:
                            return b""
                    except _EndOfStream:
                        return b""  # the peer closed (SSLSocket's suppress_ragged_eofs)
                    else:
                        if self._outgoing.pending:  # e.g. a key update's answer
                            self._send(self._outgoing.read(), end, "read")
                        return data
                self._receive(end, "read")
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:  # ssl.SSLError included
            raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        timeout = _bounded(timeout, httpcore.WriteTimeout)
        try:
            self._ssl.write(buffer)
            self._send(
                self._outgoing.read(),
                None if timeout is None else _monotonic() + timeout,
                "write",
            )
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:  # ssl.SSLError included
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        raise NotImplementedError("TLS in TLS")

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._ssl
        if info == "is_readable":
            if self._incoming.pending or self._incoming.eof or self._sock.fileno() < 0:
                return True
            return bool(self._readable.poll(0))
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        return None


class _TCPStream(_DeadlineStream):
    """A plain TCP stream, bounded by the deadline, whose TLS is a ``TLSStream``."""

    __slots__ = ()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        sock = self._stream.get_extra_info("socket")
        if type(sock) is not socket.socket:  # not a plain socket: the inner stream's own TLS
            return super().start_tls(ssl_context, server_hostname, timeout)
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return TLSStream.connect(sock, ssl_context, server_hostname, bounded)


class TLSBackend(DeadlineBackend):
    """``DeadlineBackend`` whose TLS connections are ``TLSStream``s."""

    tcp_stream = _TCPStream
