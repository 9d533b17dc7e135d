"""meshlib's errors as httpx raises them, and httpx's errors as the retry conditions see them.

Each class here is at once meshlib's (``meshlib.errors``) and httpx's: what an httpx client of
the mesh raises is caught by ``except meshlib.CircuitOpenError`` and by
``except httpx.TransportError`` alike.

```
meshlib.MeshRequestError + httpx.TransportError       MeshRequestError
 ├─ meshlib.NoRouteError                               NoRouteError
 ├─ meshlib.NoHealthyUpstream                          NoHealthyUpstream
 ├─ meshlib.CircuitOpenError                           CircuitOpenError
 ├─ meshlib.UpstreamTLSError + httpx.ConnectError      UpstreamTLSError
 └─ meshlib.DeadlineExceeded + httpx.TimeoutException  DeadlineExceeded
```
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from meshlib import errors
from meshlib.errors import MeshError
from meshlib.policies.retry import ErrorKind, Outcome

__all__ = [
    "CircuitOpenError",
    "DeadlineExceeded",
    "MeshRequestError",
    "NoHealthyUpstream",
    "NoRouteError",
    "UpstreamTLSError",
    "classify_error",
    "flavor",
    "outcome_of_error",
]


class MeshRequestError(errors.MeshRequestError, httpx.TransportError):
    """``meshlib.MeshRequestError`` that is also an ``httpx.TransportError``."""


class NoRouteError(errors.NoRouteError, MeshRequestError):
    """``meshlib.NoRouteError`` that is also an ``httpx.TransportError``."""


class NoHealthyUpstream(errors.NoHealthyUpstream, MeshRequestError):  # noqa: N818 - Envoy's term
    """``meshlib.NoHealthyUpstream`` that is also an ``httpx.TransportError``."""


class CircuitOpenError(errors.CircuitOpenError, MeshRequestError):
    """``meshlib.CircuitOpenError`` that is also an ``httpx.TransportError``."""


class UpstreamTLSError(errors.UpstreamTLSError, MeshRequestError, httpx.ConnectError):
    """``meshlib.UpstreamTLSError`` that is also an ``httpx.ConnectError``."""


class DeadlineExceeded(  # noqa: N818 - reads as a state
    errors.DeadlineExceeded, MeshRequestError, httpx.TimeoutException
):
    """``meshlib.DeadlineExceeded`` that is also an ``httpx.TimeoutException``."""


#: meshlib's class → its httpx flavor.
FLAVORS: dict[type[errors.MeshRequestError], type[errors.MeshRequestError]] = {
    errors.MeshRequestError: MeshRequestError,
    errors.NoRouteError: NoRouteError,
    errors.NoHealthyUpstream: NoHealthyUpstream,
    errors.CircuitOpenError: CircuitOpenError,
    errors.UpstreamTLSError: UpstreamTLSError,
    errors.DeadlineExceeded: DeadlineExceeded,
}


def flavor(kind: type[errors.MeshRequestError]) -> type[errors.MeshRequestError]:
    """The httpx flavor of one of meshlib's request errors (itself when it is one already)."""
    return FLAVORS.get(kind, kind)


def mesh_error(kind: type[errors.MeshRequestError], message: str, **fields: Any) -> Exception:
    """An instance of ``kind``'s httpx flavor."""
    return flavor(kind)(message, **fields)


# --------------------------------------------------------------------------- retry conditions

_REFUSED_STREAM_TEXT = re.compile(r"REFUSED_STREAM|error_code:\s*7\b")
_H2_REFUSED_STREAM = 7


def outcome_of_error(exc: BaseException, *, per_try_timeout: bool = False) -> Outcome:
    """The outcome of an attempt that raised ``exc`` (see ``classify_error``). A connect failure
    or a wait for a pooled connection that ran out sent nothing."""
    kind = classify_error(exc, per_try_timeout=per_try_timeout)
    sent = kind != "connect-failure" and not isinstance(exc, httpx.PoolTimeout)
    return Outcome(error=kind, request_sent=sent)


def classify_error(exc: BaseException, *, per_try_timeout: bool = False) -> ErrorKind:
    """Map an attempt's exception to the failure kinds Envoy's retry conditions speak of.

    * ``httpx.ConnectError``/``ConnectTimeout`` (and a raw ``ConnectionRefusedError``) →
      ``"connect-failure"``.
    * An HTTP/2 stream reset with ``REFUSED_STREAM`` (error code 7; httpx raises
      ``RemoteProtocolError`` carrying h2's ``StreamReset``) → ``"refused-stream"``.
    * Other ``RemoteProtocolError``, ``ReadError``, ``WriteError``, ``CloseError`` and raw
      connection resets → ``"reset"``: the upstream "does not respond at all".
    * ``ReadTimeout``/``WriteTimeout``/``PoolTimeout`` (any httpx timeout but a connect
      timeout) → ``"per-try-timeout"`` when the caller's per-try deadline caused it
      (``per_try_timeout=True``), else ``"reset"`` (Envoy's ``5xx`` covers "disconnect/reset/read
      timeout").
    * meshlib's own errors (no route, no healthy upstream, circuit open, deadline exceeded) and
      anything else → ``"other"``, never retried.
    """
    if isinstance(exc, MeshError):
        return "other"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionRefusedError)):
        return "connect-failure"
    if isinstance(exc, (httpx.TimeoutException, TimeoutError, asyncio.TimeoutError)):
        return "per-try-timeout" if per_try_timeout else "reset"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "refused-stream" if _is_refused_stream(exc) else "reset"
    if isinstance(exc, (httpx.NetworkError, ConnectionResetError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "reset"
    return "other"


def _is_refused_stream(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause) is an HTTP/2 stream reset with ``REFUSED_STREAM``."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 4:
        for arg in current.args:
            if getattr(arg, "error_code", None) == _H2_REFUSED_STREAM:
                return True
        if _REFUSED_STREAM_TEXT.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
