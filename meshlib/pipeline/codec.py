"""``Codec``: how the client-neutral core (``meshlib.pipeline.call``) reads and edits one HTTP
client's requests and responses, and raises that client's errors.

Each client adapter (``meshlib.clients.httpx``, ``meshlib.clients.requests``, …) has one codec;
the core never sees the client's types, only what a codec's methods take and give. A codec
edits the caller's request in place for an attempt (``edit``, ``stamp``, ``point``, ``bound``)
and puts back what the caller sent when the call is over (``save`` / ``restore``), so that an
attempt costs no copy of the request.

The shell around a ``Call`` — the adapter's transport, adapter or middleware — does the sending
itself, in its client's own way (sync or async).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from meshlib.config.model import HeaderOperations
    from meshlib.discovery import Endpoint
    from meshlib.errors import MeshRequestError
    from meshlib.pipeline.info import MeshInfo
    from meshlib.policies.retry import Outcome
    from meshlib.routing import RouteRequest

__all__ = ["Codec", "Req", "Resp"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
ReqIn_contra = TypeVar("ReqIn_contra", contravariant=True)


class Codec(Protocol[ReqIn_contra, Resp]):
    """One client's requests and responses as the core reads and edits them. URLs are the
    client's own URL type (``url_of``), which telemetry reads (``meshlib.telemetry.URLView``)."""

    # ------------------------------------------------------------------ the request

    def view(self, request: ReqIn_contra) -> RouteRequest:
        """The router's view: method (upper case), scheme, host (lower case), port (the
        scheme's default when none), path (decoded), query, headers (a dict with lowercase
        names, the values of a repeated header joined with ", "), authority (the ``host``
        header, else host[:port])."""
        ...

    def save(self, request: ReqIn_contra) -> Any:
        """What ``restore`` needs to give the caller back its request as it sent it."""
        ...

    def restore(self, request: ReqIn_contra, saved: Any) -> None: ...

    def carry(self, request: ReqIn_contra, carried: Mapping[str, str]) -> None:
        """Add the inbound request's context headers the caller did not set itself."""
        ...

    def url_of(self, request: ReqIn_contra) -> Any:
        """The request's URL (the client's type; telemetry reads it)."""
        ...

    def with_path(self, url: Any, path: str) -> Any:
        """``url`` with its path replaced (a route's rewrite)."""
        ...

    def point(self, request: ReqIn_contra, url: Any, endpoint: Endpoint | None) -> None:
        """Send the next attempt of ``request`` to ``url``, its host and port replaced by the
        endpoint's (None: to the host as ``url`` names it)."""
        ...

    def edit(
        self,
        request: ReqIn_contra,
        *,
        authority: str | None,
        operations: list[HeaderOperations],
        close: bool,
        remove: str | None,
    ) -> None:
        """The route's edits, once per call: the ``host`` header (a rewrite's authority),
        Istio's header operations in order (remove, set, add: ``add`` appends ``,value``),
        ``connection: close`` when the destination keeps no connection alive, and one header
        removed (``remove``). Configured values that are not ASCII go out as UTF-8."""
        ...

    def stamp(self, request: ReqIn_contra, entries: Sequence[tuple[bytes, bytes, bytes]]) -> None:
        """Replace the request's metadata exchange headers (``x-envoy-peer-metadata*``) with
        ``entries`` (name as sent, lower-case name, value)."""
        ...

    def request_headers(self, request: ReqIn_contra) -> Mapping[str, str]:
        """The request's headers as they are now."""
        ...

    def replayable(self, request: ReqIn_contra) -> bool:
        """Whether the body can be sent again (a retry, a mirror): it is in memory."""
        ...

    def caller_timeout(self, request: ReqIn_contra) -> float | None:
        """The caller's own timeout for the whole call (its read timeout), seconds; None: none."""
        ...

    def caller_bounds_all(self, request: ReqIn_contra) -> bool:
        """Whether the caller's own timeouts bound every wait of a try as tightly as its read
        timeout (then a first try needs no timeout of the mesh's)."""
        ...

    def bound(self, request: ReqIn_contra, timeout: float) -> Any:
        """Bound the next attempt's waits by ``timeout`` seconds (each kept at the caller's own
        when shorter); returns what ``body_bound`` changes (None: nothing to change)."""
        ...

    def body_bound(self, bound: Any, timeout: float | None) -> None:
        """The response head is in: reads of the body wait at most ``timeout`` (None: no bound)."""
        ...

    def trace_headers(self, request: ReqIn_contra, names: frozenset[str]) -> dict[str, str]:
        """The request's headers of ``names`` (lower case), for a tracer."""
        ...

    def put_trace_headers(
        self, request: ReqIn_contra, names: frozenset[str], pairs: list[tuple[str, str]]
    ) -> None:
        """Remove the request's headers of ``names`` and add ``pairs``."""
        ...

    # ------------------------------------------------------------------ the response

    def status(self, response: Resp) -> int: ...

    def response_headers(self, response: Resp) -> Mapping[str, str]: ...

    def reply(
        self, request: ReqIn_contra, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> Resp:
        """A response the mesh gives itself (a local reply), in the client's response type."""
        ...

    def location(
        self, scheme: str, host: str, port: int | None, path: str, query: str | None
    ) -> str:
        """The ``location`` of a redirect (the client's way of writing a URL)."""
        ...

    def finish(
        self,
        response: Resp,
        operations: list[HeaderOperations],
        flags: str,
        info: MeshInfo,
        local: bool,
    ) -> str | None:
        """Stamp the call's answer: apply the route's response header operations; unless it is
        a ``local`` reply, remove the upstream's ``x-envoy-peer-metadata``,
        ``x-envoy-peer-metadata-id`` and ``x-mesh-response-flags`` (returning the peer
        metadata, None when not sent); set ``x-mesh-response-flags`` to ``flags`` when there
        are any; attach ``info`` (see ``info``)."""
        ...

    def info(self, response: Resp) -> MeshInfo | None:
        """The ``MeshInfo`` attached to a response, if any."""
        ...

    def set_info(self, response: Resp, info: MeshInfo) -> None: ...

    # ------------------------------------------------------------------ errors

    def error(self, kind: type[MeshRequestError], message: str, **fields: Any) -> MeshRequestError:
        """An instance of ``kind`` (a class of ``meshlib.errors``) that is also the client's
        own error: the adapter's subclass of both (``fields``: ``request``, ``route``,
        ``destination``, ``flag``)."""
        ...

    def caller_timeout_error(self, request: ReqIn_contra, message: str) -> Exception:
        """The client's own timeout error, for a call the caller's timeout ended."""
        ...

    def is_read_timeout(self, exc: BaseException) -> bool:
        """Whether the client's ``exc`` is a timeout once connected (not a connect timeout)."""
        ...

    def outcome_of_error(self, exc: BaseException, *, per_try_timeout: bool) -> Outcome:
        """What a try that raised the client's ``exc`` came to, in Envoy's failure kinds
        (``meshlib.policies.retry.Outcome``)."""
        ...
