"""The grammar of an access log format (``spec.telemetry.accessLog.format``): Envoy's
``%OPERATOR%`` commands meshlib fills, checked when a config is loaded and parsed once for the
access logger (``meshlib.telemetry.accesslog``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["OPERATORS", "Command", "Piece", "check_format", "parse_format"]

#: Envoy's ``%OPERATOR%`` commands meshlib fills, and the field each one shows.
OPERATORS: dict[str, str] = {
    "START_TIME": "start_time",
    "REQ(:METHOD)": "method",
    "REQ(:PATH)": "path",
    "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": "path",
    "REQ(:AUTHORITY)": "authority",
    "REQ(HOST)": "authority",
    "REQ(X-REQUEST-ID)": "request_id",
    "PROTOCOL": "protocol",
    "RESPONSE_CODE": "response_code",
    "RESPONSE_FLAGS": "response_flags",
    "RESPONSE_CODE_DETAILS": "response_code_details",
    "DURATION": "duration",
    "BYTES_RECEIVED": "bytes_received",
    "BYTES_SENT": "bytes_sent",
    "UPSTREAM_HOST": "upstream_host",
    "UPSTREAM_CLUSTER": "destination",
    "ROUTE_NAME": "route",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": "attempts",
    "TRACE_ID": "trace_id",
    "DIRECTION": "direction",  # meshlib's own: inbound or outbound
    "UPSTREAM_PEER_URI_SAN": "upstream_peer_uri_san",  # outbound TLS: the verified peer
    "UPSTREAM_TLS_MODE": "upstream_tls_mode",  # meshlib's own: the DestinationRule tls mode
    "DOWNSTREAM_PEER_URI_SAN": "downstream_peer_uri_san",  # inbound mTLS: the verified caller
    "SOURCE_WORKLOAD": "source_workload",  # meshlib's own: the caller's metadata
    "SOURCE_WORKLOAD_NAMESPACE": "source_workload_namespace",
}

_OPERATOR = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*(?:\([^)]*\))?)%(?::(\d+))?")


@dataclass(frozen=True, slots=True)
class Command:
    field: str
    time_format: str | None
    limit: int | None


Piece = str | Command


def parse_format(text: str) -> tuple[Piece, ...]:
    """A custom format's literal text and commands. Raises ``ValueError`` naming an operator
    meshlib does not know, or when the text has no operator at all."""
    pieces: list[Piece] = []
    position = 0
    for match in _OPERATOR.finditer(text):
        if match.start() > position:
            pieces.append(text[position : match.start()])
        pieces.append(_command(match.group(1), match.group(2)))
        position = match.end()
    if not any(isinstance(p, Command) for p in pieces):
        raise ValueError(
            f"{text!r} is not an access log format: use json, text, or a format string with "
            "Envoy operators such as %START_TIME% %REQ(:METHOD)% %RESPONSE_CODE%"
        )
    if position < len(text):
        pieces.append(text[position:])
    return tuple(pieces)


def _command(operator: str, limit: str | None) -> Command:
    name, _, argument = operator.partition("(")
    name = name.upper()
    if name == "START_TIME" and argument:
        return Command("start_time", argument[:-1], int(limit) if limit else None)
    key = f"{name}({argument.upper()}" if argument else name
    field = OPERATORS.get(key)
    if field is None:
        known = ", ".join(f"%{op}%" for op in OPERATORS)
        raise ValueError(f"unknown access log operator %{operator}%: meshlib knows {known}")
    return Command(field, None, int(limit) if limit else None)


def check_format(text: str | None) -> str | None:
    """Validate ``spec.telemetry.accessLog.format`` (the config model's validator)."""
    if text is None or text in ("json", "text"):
        return text
    parse_format(text)
    return text
