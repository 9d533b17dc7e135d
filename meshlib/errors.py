"""The one exception tree of meshlib.

```
MeshError
 ├─ ConfigError            (also ValueError)   every problem with file, line and field path
 ├─ IdentityError                              this workload's identity: CA, keys, certificates
 │   └─ SpiffeIdError      (also ValueError)   a string that is not a valid SPIFFE ID
 ├─ PeerIdentityError                          a peer's certificate was refused (expected/presented)
 ├─ StoreError                                 the fleet's store (etcd) cannot be read or written
 └─ MeshRequestError                         a call the mesh could not complete
     ├─ NoRouteError                           no route matched (flag NR)
     ├─ NoHealthyUpstream                      no endpoint to send to (flags UH / NC)
     ├─ CircuitOpenError                       breaker open (flag UO)
     ├─ UpstreamTLSError                       TLS origination failed (flag UF)
     └─ DeadlineExceeded                       route timeout spent (flag UT)
```

This tree needs no HTTP client library. What a call raises is at once meshlib's and the client's
own: each client adapter raises a subclass of the class above that also derives from its
client's error (``meshlib.clients.httpx.errors``: ``MeshRequestError`` is also an
``httpx.TransportError``, ``UpstreamTLSError`` an ``httpx.ConnectError``, ``DeadlineExceeded`` an
``httpx.TimeoutException``; ``meshlib.clients.requests``: ``requests.exceptions.ConnectionError``,
``DeadlineExceeded`` a ``requests.exceptions.Timeout``; ``meshlib.clients.aiohttp``:
``aiohttp.ClientConnectionError``, ``DeadlineExceeded`` an ``aiohttp.ServerTimeoutError``). So
``except meshlib.CircuitOpenError`` and ``except httpx.TransportError`` both catch an open
breaker through httpx.

As under Envoy, the mesh answers some calls itself with a response rather than an exception: no
route (404 ``NR``), no endpoint (503 ``UH``/``NC``), connection-pool overflow (503 ``UO``).
``meshlib.raise_for_mesh(response)`` turns those into ``NoRouteError``, ``NoHealthyUpstream`` and
``CircuitOpenError`` for code that prefers exceptions. An open breaker always raises.

No exception of pybreaker, tenacity, PyYAML or pydantic escapes meshlib: each is wrapped in one of
these, with the original kept as ``__cause__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a config: where it is and what is wrong.

    ``line`` is 1-based; 0 when the place has no line (a missing file, say).
    """

    file: str
    line: int
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        prefix = "" if self.severity == "error" else "warning: "
        if self.path:
            return f"{where}: {prefix}{self.path}: {self.message}"
        return f"{where}: {prefix}{self.message}"


class MeshError(Exception):
    """Base of every error meshlib raises."""


class ConfigError(MeshError, ValueError):
    """A config that cannot be used. ``problems`` lists every error found, in file order."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid config")

    @classmethod
    def single(cls, file: str, line: int, path: str, message: str) -> ConfigError:
        return cls([Problem(file, line, path, message)])


class IdentityError(MeshError):
    """This workload's identity cannot be set up: a CA directory, key file or certificate that is
    missing, malformed or not private enough."""


class SpiffeIdError(IdentityError, ValueError):
    """A string that is not a valid SPIFFE ID (``spiffe://<td>/ns/<namespace>/sa/<sa>``)."""


class PeerIdentityError(MeshError):
    """A peer's certificate was refused: no certificate, a chain the mesh CA did not sign, or not
    the SPIFFE ID expected. ``expected`` and ``presented`` say what was wanted and what came."""

    def __init__(self, message: str, *, expected: str = "", presented: str = "") -> None:
        self.expected = expected
        self.presented = presented
        super().__init__(message)


class StoreError(MeshError):
    """The fleet's store could not be read or written: no member of the etcd cluster answered,
    an answer that is not etcd's, a write that lost a race (``meshlib.store``)."""


class MeshRequestError(MeshError):
    """A request the mesh could not complete; says which route, destination and response flag.
    ``request`` is the request as the client holds it (None when not known)."""

    flag: str = ""

    def __init__(
        self,
        message: str,
        *,
        request: Any = None,
        route: str | None = None,
        destination: str | None = None,
        flag: str | None = None,
    ) -> None:
        self.route = route
        self.destination = destination
        if flag is not None:
            self.flag = flag
        details = [
            f"{name}={value}"
            for name, value in (
                ("route", route),
                ("destination", destination),
                ("flag", self.flag or None),
            )
            if value
        ]
        text = f"{message} ({', '.join(details)})" if details else message
        super().__init__(text)
        self._attach(request)

    def _attach(self, request: Any) -> None:
        """Keep the request (a client's subclass keeps it where its client's errors do)."""
        self._request = request

    @property
    def request(self) -> Any:
        return self._request

    @request.setter
    def request(self, request: Any) -> None:
        self._request = request


class NoRouteError(MeshRequestError):
    """No route of the host's VirtualService matched the request (Envoy: 404, flag NR)."""

    flag = "NR"


class NoHealthyUpstream(MeshRequestError):  # noqa: N818 - the Envoy term
    """The destination has no endpoint to send to (flag UH), or its subset is unknown (NC)."""

    flag = "UH"


class CircuitOpenError(MeshRequestError):
    """A breaker is open (flag UO): the call fails fast and is never retried. A connection-pool
    overflow is a 503 ``UO`` response instead, as Envoy answers it (see ``raise_for_mesh``)."""

    flag = "UO"


class UpstreamTLSError(MeshRequestError):
    """The mesh could not originate TLS to the upstream: the handshake failed, the peer's
    certificate or SPIFFE ID was refused, or the destination's TLS settings cannot be used (flag
    UF, as Envoy reports a TLS failure: an upstream connection failure). No byte of the request
    was sent. The reason is the ``__cause__`` (often a ``PeerIdentityError``); ``reason`` is
    the message without the route and destination."""

    flag = "UF"

    def __init__(
        self,
        message: str,
        *,
        request: Any = None,
        route: str | None = None,
        destination: str | None = None,
    ) -> None:
        self.reason = message
        super().__init__(message, request=request, route=route, destination=destination)


class DeadlineExceeded(MeshRequestError):  # noqa: N818 - reads as a state
    """The route's overall timeout ran out across all attempts (Envoy: 504, flag UT)."""

    flag = "UT"


__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "IdentityError",
    "MeshError",
    "MeshRequestError",
    "NoHealthyUpstream",
    "NoRouteError",
    "PeerIdentityError",
    "Problem",
    "SpiffeIdError",
    "UpstreamTLSError",
]
