"""An etcd v3 client over etcd's JSON gateway (``/v3/...``), on httpx: the store's I/O shell.

etcd serves its gRPC API as JSON on the client port (grpc-gateway): keys and values are base64,
64-bit numbers are strings. This client uses the calls the store needs and nothing else:
``kv/range``, ``kv/txn``, ``watch`` (a stream of JSON objects, one per line), and
``lease/grant``, ``lease/keepalive``, ``lease/revoke``.

A client knows every member of the cluster. A call goes to the member that answered last; when
it cannot be reached, or answers that it cannot serve (no leader, unavailable), the call is
tried on the next member, once around the ring; only when no member answers does it raise
``StoreError``. So a member lost changes nothing a caller sees.

Watches ask etcd to cancel them when their member loses the cluster's leader (the
``hasleader`` gRPC metadata, sent through the gateway as ``Grpc-Metadata-hasleader``), so a
watch never stays open on a member that is cut off from the others.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from meshlib.errors import StoreError
from meshlib.store.state import Event

#: gRPC codes etcd answers with, through the gateway's ``code`` field.
OUT_OF_RANGE = 11  # a revision compacted away
UNAVAILABLE = 14  # no leader, member stopping, ...
DEADLINE_EXCEEDED = 4
_RETRY_ON_ANOTHER = frozenset(
    {UNAVAILABLE, DEADLINE_EXCEEDED, 13}
)  # 13: internal (a stopping member)


def b64(text: str | bytes) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One response of a watch stream."""

    revision: int  # the header's revision: the store's revision when it was sent
    events: tuple[Event, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


class Compacted(StoreError):  # noqa: N818 - etcd's word
    """The revision asked for was compacted away: list again."""

    def __init__(self, revision: int) -> None:
        self.revision = revision
        super().__init__(f"revision compacted (etcd keeps from {revision} on)")


def decode_kv(kv: dict[str, Any], event_type: str = "PUT") -> Event:
    """One gateway ``KeyValue`` (of a range or of a watch event) → ``Event``."""
    return Event(
        "delete" if event_type == "DELETE" else "put",
        unb64(kv.get("key")).decode("utf-8", "replace"),
        unb64(kv.get("value")),
        int(kv.get("mod_revision") or 0),
    )


def decode_watch(line: bytes | str) -> WatchBatch:
    """One line of the watch stream → ``WatchBatch``; raises ``StoreError`` for an error line."""
    try:
        data = json.loads(line)
    except ValueError:
        raise StoreError(f"etcd watch sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(data, dict):
        raise StoreError("etcd watch sent a line that is not a JSON object")
    if "error" in data and "result" not in data:
        error = data["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise StoreError(f"etcd watch failed: {message}")
    result = data.get("result") or {}
    header = result.get("header") or {}
    events = tuple(
        decode_kv(e.get("kv") or {}, e.get("type", "PUT")) for e in result.get("events") or ()
    )
    return WatchBatch(
        revision=int(header.get("revision") or 0),
        events=events,
        created=bool(result.get("created")),
        canceled=bool(result.get("canceled")),
        compact_revision=int(result.get("compact_revision") or 0),
        cancel_reason=str(result.get("cancel_reason") or ""),
    )


class EtcdClient:
    """A thread-safe etcd v3 client for the members ``endpoints`` (``host:port``).

    ``timeout`` bounds one call to one member; ``transport`` replaces httpx's (tests)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 3.0,
        connect_timeout: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("an etcd client needs at least one member")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )
        self._connect_timeout = connect_timeout
        self._current = 0
        self._lock = threading.Lock()
        self._closed = False
        self._streams: set[httpx.Response] = set()

    # ------------------------------------------------------------------ plumbing

    def _order(self) -> list[int]:
        start = self._current
        count = len(self.endpoints)
        return [(start + i) % count for i in range(count)]

    def _url(self, index: int, path: str) -> str:
        return f"http://{self.endpoints[index]}/v3/{path}"

    def call(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> Any:
        """POST ``body`` to ``/v3/<path>`` on the first member that answers; the JSON answer.
        Raises ``Compacted`` for a compacted revision, ``StoreError`` when no member answers
        or etcd refuses the call."""
        failures: list[str] = []
        for index in self._order():
            try:
                response = self._http.post(
                    self._url(index, path),
                    json=body,
                    timeout=httpx.Timeout(timeout or self.timeout, connect=self._connect_timeout),
                )
            except httpx.HTTPError as exc:
                failures.append(f"{self.endpoints[index]}: {_reason(exc)}")
                continue
            try:
                data = response.json()
            except ValueError:
                failures.append(f"{self.endpoints[index]}: HTTP {response.status_code}, not JSON")
                continue
            if not isinstance(data, dict):
                failures.append(f"{self.endpoints[index]}: not a JSON object")
                continue
            code = data.get("code")
            if response.status_code != 200 or code:
                message = str(data.get("message") or data.get("error") or response.status_code)
                if code == OUT_OF_RANGE and "compacted" in message:
                    raise Compacted(0)
                if code in _RETRY_ON_ANOTHER or response.status_code >= 500:
                    failures.append(f"{self.endpoints[index]}: {message}")
                    continue
                raise StoreError(f"etcd refused {path}: {message}")
            self._current = index
            return data
        raise StoreError("no etcd member answered: " + "; ".join(failures))

    # ------------------------------------------------------------------ kv

    def range(
        self, start: str, end: str | None = None, *, revision: int = 0, limit: int = 0
    ) -> tuple[list[Event], int]:
        """Every key in ``[start, end)`` (``end`` None: the key ``start`` alone), at
        ``revision`` (0: now). Returns the keys as put events and the revision read at."""
        body: dict[str, Any] = {"key": b64(start)}
        if end is not None:
            body["range_end"] = b64(end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        data = self.call("kv/range", body)
        header = data.get("header") or {}
        return [decode_kv(kv) for kv in data.get("kvs") or ()], int(header.get("revision") or 0)

    def get(self, key: str) -> Event | None:
        found, _ = self.range(key)
        return found[0] if found else None

    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        """Put one key; returns the revision it was written at."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = self.call("kv/put", body)
        return int((data.get("header") or {}).get("revision") or 0)

    def delete(self, start: str, end: str | None = None) -> int:
        """Delete a key (or ``[start, end)``); returns how many were deleted."""
        body: dict[str, Any] = {"key": b64(start)}
        if end is not None:
            body["range_end"] = b64(end)
        data = self.call("kv/deleterange", body)
        return int(data.get("deleted") or 0)

    def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> tuple[bool, int]:
        """One transaction (etcd's ``If compare Then success Else failure``): whether the
        comparisons held, and the revision after it."""
        data = self.call(
            "kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)}
        )
        return bool(data.get("succeeded")), int((data.get("header") or {}).get("revision") or 0)

    @staticmethod
    def op_put(key: str, value: bytes | str, lease: int = 0) -> dict[str, Any]:
        put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        return {"request_put": put}

    @staticmethod
    def op_delete(key: str) -> dict[str, Any]:
        return {"request_delete_range": {"key": b64(key)}}

    @staticmethod
    def compare_mod(key: str, revision: int) -> dict[str, Any]:
        """Holds when ``key``'s mod revision is ``revision`` (0: the key does not exist)."""
        return {
            "key": b64(key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": str(revision),
        }

    def compact(self, revision: int) -> None:
        self.call("kv/compaction", {"revision": str(revision), "physical": True})

    # ------------------------------------------------------------------ leases

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its ID."""
        data = self.call("lease/grant", {"TTL": str(ttl)})
        return int(data["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its TTL now (0: the lease is gone, expired or revoked)."""
        data = self.call("lease/keepalive", {"ID": str(lease)})
        result = data.get("result") or {}
        return int(result.get("TTL") or 0)

    def revoke(self, lease: int, *, timeout: float | None = None) -> None:
        """Revoke ``lease``: its keys go at once. A lease already gone is fine."""
        try:
            self.call("lease/revoke", {"ID": str(lease)}, timeout=timeout)
        except StoreError as exc:
            if "not found" not in str(exc):
                raise

    # ------------------------------------------------------------------ watch

    def watch(
        self, start: str, end: str, start_revision: int, *, idle: float = 10.0
    ) -> Iterator[WatchBatch]:
        """Watch ``[start, end)`` from ``start_revision`` on one member (tried in turn until
        one accepts). Yields each response; ends when the stream ends or stays silent for
        ``idle`` seconds (the caller watches again from where it was). Raises ``StoreError``
        when no member accepts the watch or the stream breaks."""
        body = {
            "create_request": {
                "key": b64(start),
                "range_end": b64(end),
                "start_revision": str(start_revision),
            }
        }
        failures: list[str] = []
        for index in self._order():
            request = self._http.build_request(
                "POST",
                self._url(index, "watch"),
                json=body,
                headers={"grpc-metadata-hasleader": "true"},
                timeout=httpx.Timeout(idle, connect=self._connect_timeout),
            )
            try:
                response = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                failures.append(f"{self.endpoints[index]}: {_reason(exc)}")
                continue
            if response.status_code != 200:
                response.read()
                response.close()
                failures.append(f"{self.endpoints[index]}: HTTP {response.status_code}")
                continue
            self._current = index
            with self._lock:
                self._streams.add(response)
            try:
                yield from self._stream(response, index)
            finally:
                with self._lock:
                    self._streams.discard(response)
            return
        raise StoreError("no etcd member accepted the watch: " + "; ".join(failures))

    def _stream(self, response: httpx.Response, index: int) -> Iterator[WatchBatch]:
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield decode_watch(line)
        except httpx.ReadTimeout:
            return  # silent for ``idle`` seconds: the caller watches again
        except httpx.HTTPError as exc:
            raise StoreError(
                f"etcd watch on {self.endpoints[index]} broke: {_reason(exc)}"
            ) from exc
        finally:
            response.close()

    def close(self) -> None:
        """Close the client; a watch another thread reads ends at once (its socket is shut)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            streams = list(self._streams)
        for response in streams:
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._http.close()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


__all__ = [
    "OUT_OF_RANGE",
    "UNAVAILABLE",
    "Compacted",
    "EtcdClient",
    "WatchBatch",
    "b64",
    "decode_kv",
    "decode_watch",
    "unb64",
]
