"""Fault injection: whether one request is delayed and/or aborted, and the synthetic abort reply.

The router resolves a route's ``fault`` into a ``meshlib.routing.FaultDecision`` once, when the
config is compiled (``percentage.value`` wins over the legacy integer ``percent``; neither set
means 0 %). This module makes the per-request draw and builds the reply, following Envoy's fault
filter (``envoy.filters.http.fault``), which is what Istio configures for a route's ``fault``:

* Delay and abort are independent events, each with its own percentage and its own draw: a
  request may be delayed, aborted, both (delay first, then the abort), or neither.
* A percentage is an Envoy ``FractionalPercent``: Istio sends ``value × 10 000`` per million,
  converted to an integer by truncation, and a request is hit when its draw, scaled to
  ``[0, 1 000 000)``, is below that numerator. So 0 never hits and 100 always does.
* A delay sets response flag ``DI``; an abort sets ``FI``; both give ``DI,FI``.
* An ``httpStatus`` abort is a local reply with that status, ``content-type: text/plain`` and
  the body ``fault filter abort``.
* A ``grpcStatus`` abort is a gRPC "trailers-only" local reply: HTTP status 200,
  ``content-type: application/grpc``, ``grpc-status: <number>`` and
  ``grpc-message: fault filter abort`` (Envoy percent-encodes the message; this one needs no
  escaping), with no body.

Where meshlib differs: Envoy builds the gRPC form only when the request itself is gRPC, and
answers a non-gRPC request with an HTTP 200 text reply; meshlib always answers a ``grpcStatus``
abort in the gRPC form. Every synthetic reply carries ``x-mesh-response-flags`` with the flags
of the action (``FI``, or ``DI,FI`` when the request was also delayed), so that callers and
tests can tell an injected abort from a real upstream answer.

Randomness is injected: ``decide`` takes any ``draw()`` returning floats in ``[0, 1)`` (for
example ``random.Random(seed).random``), and ``decide_for`` draws from a stable hash of the
request id (``draw_for``), so that a given request id always meets the same fate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from meshlib.config.model import GRPC_STATUS_CODES
from meshlib.routing import FaultDecision

#: Envoy's local-reply body for an injected abort (``FaultFilter::abortWithStatus``).
ABORT_BODY = b"fault filter abort"
#: The response header that carries the response flags of a synthetic reply.
FLAGS_HEADER = "x-mesh-response-flags"

_MILLION = 1_000_000
_HASH_SCALE = float(1 << 53)  # 53 bits: every value is exact and below 1.0


@dataclass(frozen=True, slots=True)
class FaultAction:
    """What happens to one request: an optional delay (seconds), then an optional abort.

    ``abort_status`` is the HTTP status of an ``httpStatus`` abort; ``abort_grpc_status`` the
    gRPC status name (``"UNAVAILABLE"``) of a ``grpcStatus`` abort. At most one of them is set.
    """

    delay: float | None = None
    abort_status: int | None = None
    abort_grpc_status: str | None = None

    @property
    def aborts(self) -> bool:
        """True when the request is answered with a synthetic reply instead of being sent."""
        return self.abort_status is not None or self.abort_grpc_status is not None

    @property
    def flags(self) -> str:
        """Envoy's response flags for this action: ``""``, ``"DI"``, ``"FI"`` or ``"DI,FI"``."""
        if self.delay is not None:
            return "DI,FI" if self.aborts else "DI"
        return "FI" if self.aborts else ""


#: The action of a request that no fault hits (shared: deciding "nothing" allocates nothing).
NO_ACTION = FaultAction()


def fractional_numerator(percentage: float) -> int:
    """Istio's ``FractionalPercent`` numerator per million for ``percentage`` (0–100).

    Pilot converts ``percentage.value`` with ``uint32(value * 10000)``: the product is truncated,
    not rounded, and meshlib does the same so that both hit the same share of requests.
    """
    if percentage <= 0:
        return 0
    return min(int(percentage * 10_000), _MILLION)


def hits(percentage: float, draw: float) -> bool:
    """Whether a request with ``draw`` in ``[0, 1)`` falls inside ``percentage`` percent.

    Envoy's ``featureEnabled`` for a fraction per million: ``random % 1 000 000 < numerator``.
    """
    return int(draw * _MILLION) < fractional_numerator(percentage)


def draw_for(request_id: str, salt: str) -> float:
    """A stable draw in ``[0, 1)`` for ``request_id``: the same id and salt give the same value.

    The value is a 64-bit BLAKE2b digest of the length-prefixed salt and the id, so draws with
    different salts (``"fault.delay"``, ``"fault.abort"``, a route's weighted pick) are
    independent of each other, and across request ids they are uniform.
    """
    key = f"{len(salt)}:{salt}{request_id}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(key, digest_size=8, person=b"meshlib.draw").digest()
    return (int.from_bytes(digest, "big") >> 11) / _HASH_SCALE


def decide(fault: FaultDecision, draw: Callable[[], float]) -> FaultAction:
    """The fault action for one request, drawing from ``draw`` (floats in ``[0, 1)``).

    Envoy's fault filter: the delay and the abort are decided independently, each by its own
    draw against its own percentage (delay first, then abort). A part that is not configured,
    or configured at 0 %, draws nothing. ``NO_ACTION`` is returned when nothing hits.
    """
    return _decide(fault, draw, draw)


def decide_for(fault: FaultDecision, request_id: str) -> FaultAction:
    """``decide`` with draws derived from ``request_id``: deterministic per request id.

    The delay uses ``draw_for(request_id, "fault.delay")`` and the abort
    ``draw_for(request_id, "fault.abort")``, so the two stay independent.
    """
    return _decide(
        fault,
        partial(draw_for, request_id, "fault.delay"),
        partial(draw_for, request_id, "fault.abort"),
    )


def _decide(
    fault: FaultDecision,
    delay_draw: Callable[[], float],
    abort_draw: Callable[[], float],
) -> FaultAction:
    delay: float | None = None
    if (
        fault.delay is not None
        and fault.delay > 0
        and fault.delay_percentage > 0
        and hits(fault.delay_percentage, delay_draw())
    ):
        delay = fault.delay
    aborted = (
        (fault.abort_status is not None or fault.abort_grpc_status is not None)
        and fault.abort_percentage > 0
        and hits(fault.abort_percentage, abort_draw())
    )
    if not aborted:
        return NO_ACTION if delay is None else FaultAction(delay=delay)
    if fault.abort_status is not None:
        return FaultAction(delay=delay, abort_status=fault.abort_status)
    return FaultAction(delay=delay, abort_grpc_status=fault.abort_grpc_status)


def abort_response_parts(action: FaultAction) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    """``(status, headers, body)`` of the synthetic reply for an aborting ``action``.

    ``httpStatus``: that status, ``content-type: text/plain``, body ``fault filter abort``.
    ``grpcStatus``: status 200, ``content-type: application/grpc``, ``grpc-status`` (the
    number of the status name), ``grpc-message: fault filter abort`` and an empty body.
    Both carry ``x-mesh-response-flags`` with the action's flags. Headers are lowercase
    ``(name, value)`` pairs, ready for ``httpx.Response(status, headers=..., content=...)``.

    Raises ``ValueError`` when ``action`` does not abort.
    """
    headers: tuple[tuple[str, str], ...]
    if action.abort_status is not None:
        headers = (
            ("content-type", "text/plain"),
            ("content-length", str(len(ABORT_BODY))),
            (FLAGS_HEADER, action.flags),
        )
        return action.abort_status, headers, ABORT_BODY
    if action.abort_grpc_status is not None:
        code = GRPC_STATUS_CODES.get(action.abort_grpc_status)
        if code is None:
            raise ValueError(f"{action.abort_grpc_status!r} is not a gRPC status name")
        headers = (
            ("content-type", "application/grpc"),
            ("grpc-status", str(code)),
            ("grpc-message", ABORT_BODY.decode("ascii")),
            (FLAGS_HEADER, action.flags),
        )
        return 200, headers, b""
    raise ValueError("the fault action does not abort")


__all__ = [
    "ABORT_BODY",
    "FLAGS_HEADER",
    "NO_ACTION",
    "FaultAction",
    "abort_response_parts",
    "decide",
    "decide_for",
    "draw_for",
    "fractional_numerator",
    "hits",
]
