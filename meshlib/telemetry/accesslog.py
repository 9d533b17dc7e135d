"""Access log: one line per request, inbound and outbound, through ``logging``.

Like Envoy's access log under Istio, each request the mesh sends (``RequestFinished``) and each
request the service serves (``InboundFinished``, from ``meshlib.server``) becomes one log record
on the ``meshlib.access`` logger (``spec.telemetry.accessLog.logger`` names another), at INFO.
Where the records go is the app's ``logging`` setup; the logger's level switches it at run time,
and a disabled level costs one ``isEnabledFor`` call a request.

Three formats (``spec.telemetry.accessLog.format``):

* ``json`` (the default): one JSON object a line, the fields of ``FIELDS``;
* ``text``: the shape of Envoy's default text format (``TEXT_FORMAT``);
* any string with Envoy's ``%OPERATOR%`` commands (``OPERATORS``), e.g.
  ``"%START_TIME% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION%"``.
  ``%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%`` takes a strftime format; ``%OPERATOR%:N`` keeps the
  first N characters, as in Envoy. An operator meshlib does not know is a config error.

Every record also carries the fields as a dict, ``record.access`` (``logging`` ``extra``), for
handlers that want them structured.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.config.logformat import OPERATORS, Piece, check_format, parse_format
from meshlib.routing import route_label
from meshlib.telemetry import InboundFinished, RequestFinished

if TYPE_CHECKING:
    from meshlib.config import model as m
    from meshlib.config.load import ServiceInfo

DEFAULT_LOGGER = "meshlib.access"

#: The fields of a line, in this order (``json`` format keys, ``record.access`` keys).
FIELDS: tuple[str, ...] = (
    "start_time",
    "direction",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "duration",
    "bytes_received",
    "bytes_sent",
    "authority",
    "upstream_host",
    "destination",
    "route",
    "attempts",
    "request_id",
    "trace_id",
)

#: ``format: text``: Envoy's default format, less what an in-process mesh cannot see
#: (``X-FORWARDED-FOR``, ``USER-AGENT``, upstream service time), plus the cluster, the route,
#: the direction and the trace id.
TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%ROUTE_NAME% %DIRECTION% %TRACE_ID%"
)

_FRACTION = re.compile(r"%([1-9])?f")


# --------------------------------------------------------------------------- the logger


class AccessLogger:
    """A mesh listener writing one access-log record per finished request."""

    def __init__(
        self,
        service: ServiceInfo,
        *,
        format: str = "json",
        logger: str | logging.Logger = DEFAULT_LOGGER,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.service = service
        self.logger = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
        self.clock = clock
        self.format = format
        self._write: Callable[[dict[str, Any], float], str]
        if format == "json":
            self._write = _json_line
        else:
            pieces = parse_format(TEXT_FORMAT if format == "text" else format)
            self._write = lambda fields, start: _text_line(pieces, fields, start)
        self._local = f"{service.name}.{service.namespace}.svc.cluster.local"

    def on_event(self, event: Any) -> None:
        kind = type(event)
        if kind is not RequestFinished and kind is not InboundFinished:
            return
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        if kind is RequestFinished:
            fields, start = self.outbound(event)
        else:
            fields, start = self.inbound(event)
        logger.info("%s", self._write(fields, start), extra={"access": fields})

    def outbound(self, event: RequestFinished) -> tuple[dict[str, Any], float]:
        """The fields of a call this service made, and its start (wall clock, seconds)."""
        clock = self.clock
        request = event.request
        decision = request.decision
        url = request.url
        start = clock.wall() - (clock.now() - request.started)
        target = decision.destination
        endpoint = event.endpoint
        fields = {
            "start_time": _rfc3339(start),
            "direction": "outbound",
            "method": request.method,
            "path": url.raw_path.decode("ascii", "replace"),
            "protocol": "http",
            "response_code": event.status if event.status is not None else 0,
            "response_flags": event.flags or "-",
            "duration": int(event.duration * 1000),
            "bytes_received": event.request_bytes or 0,
            "bytes_sent": event.response_bytes or 0,
            "authority": url.netloc.decode("ascii", "replace"),
            "upstream_host": endpoint.address if endpoint is not None else None,
            "destination": target.name if target is not None else decision.host,
            "route": route_label(decision) if decision.matched else None,
            "attempts": event.attempts,
            "request_id": request.request_id,
            "trace_id": _current_trace_id(),
        }
        # A call whose response broke off (a reset, the deadline) says why: one more field.
        if event.response_code_details:
            fields["response_code_details"] = event.response_code_details
        # A call sent with TLS says how, and whom it verified: two more fields, only then.
        if event.tls is not None:
            fields["upstream_tls_mode"] = event.tls
            if event.peer_identity is not None:
                fields["upstream_peer_uri_san"] = event.peer_identity
        return fields, start

    def inbound(self, event: InboundFinished) -> tuple[dict[str, Any], float]:
        """The fields of a request this service served, and its start."""
        start = self.clock.wall() - event.duration
        fields = {
            "start_time": _rfc3339(start),
            "direction": "inbound",
            "method": event.method,
            "path": event.path,
            "protocol": event.protocol or "http",
            "response_code": event.status,
            "response_flags": event.flags or "-",
            "duration": int(event.duration * 1000),
            "bytes_received": event.request_bytes or 0,
            "bytes_sent": event.response_bytes or 0,
            "authority": None,
            "upstream_host": None,
            "destination": self._local,
            "route": None,
            "attempts": 1,
            "request_id": event.request_id,
            "trace_id": event.trace_id or _current_trace_id(),
        }
        # An inbound request the mesh answered itself (RBAC, JWT, a bad path) says why, and one
        # an AUDIT AuthorizationPolicy matched is marked: two more fields, only then.
        if event.response_code_details:
            fields["response_code_details"] = event.response_code_details
        if event.audit_policy:
            fields["audit_policy"] = event.audit_policy
        # A caller known by its certificate or its metadata (x-envoy-peer-metadata) is named:
        # more fields, only then.
        if event.principal is not None:
            fields["downstream_peer_uri_san"] = "spiffe://" + event.principal
        peer = event.peer
        if peer is not None:
            if peer.workload:
                fields["source_workload"] = peer.workload
            if peer.namespace:
                fields["source_workload_namespace"] = peer.namespace
        return fields, start


def _current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _rfc3339(seconds: float) -> str:
    """Envoy's default ``%START_TIME%``: UTC, milliseconds, ``Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _strftime(seconds: float, pattern: str) -> str:
    """strftime with Envoy's ``%Nf`` (N digits of the second's fraction) besides ``%f``."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    fraction = f"{moment.microsecond:06d}000"
    pattern = _FRACTION.sub(lambda m: fraction[: int(m.group(1) or 9)].replace("%", "%%"), pattern)
    return moment.strftime(pattern)


def _json_line(fields: Mapping[str, Any], start: float) -> str:
    return json.dumps(fields, separators=(",", ":"))


def _text_line(pieces: tuple[Piece, ...], fields: Mapping[str, Any], start: float) -> str:
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        if piece.time_format is not None:
            value = _strftime(start, piece.time_format)
        else:
            found = fields.get(piece.field)
            value = "-" if found is None else str(found)
        out.append(value if piece.limit is None else value[: piece.limit])
    return "".join(out)


def logger_from_settings(
    settings: m.AccessLogSettings | None, service: ServiceInfo, clock: Clock = SYSTEM_CLOCK
) -> AccessLogger | None:
    """The access log for ``spec.telemetry.accessLog``: on when that section is present, unless
    it says ``enabled: false``; off (None, no cost) without it."""
    if settings is None or settings.enabled is False:
        return None
    return AccessLogger(
        service,
        format=settings.format or "json",
        logger=settings.logger or DEFAULT_LOGGER,
        clock=clock,
    )


__all__ = [
    "DEFAULT_LOGGER",
    "FIELDS",
    "OPERATORS",
    "TEXT_FORMAT",
    "AccessLogger",
    "check_format",
    "logger_from_settings",
    "parse_format",
]
