"""Header values as the mesh reads and carries them, whatever client holds them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["apply_operations", "carriable", "number"]

#: A header value an HTTP client can send as it is: visible ASCII characters, spaces and tabs
#: between them (RFC 9110 field-value without obs-text, which httpx refuses to encode).
_SENDABLE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")


def carriable(value: str) -> str | None:
    """``value`` as an outbound call can carry it (surrounding spaces and tabs taken off), or
    None when it cannot be sent: a character outside visible ASCII (raw non-ASCII bytes, read
    as Latin-1 by the server), or a control character."""
    if value.isascii() and value.isprintable():  # the common case, without a regex
        return value.strip(" ")
    stripped = value.strip(" \t")
    return stripped if not stripped or _SENDABLE.fullmatch(stripped) else None


def number(value: str | None) -> int | None:
    """A header's value as a count (milliseconds, bytes, a status): ASCII digits, at most 18 of
    them (``"²".isdigit()`` is true, and ``int`` refuses it); None for anything else."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return int(value)


def _same(value: str) -> str:
    return value


def apply_operations(
    ops: Any,
    get: Callable[[str], str | None],
    put: Callable[[str, str], None],
    drop: Callable[[str], None],
    encode: Callable[[str], str] = _same,
) -> None:
    """Istio's header operations (``remove``, ``set``, ``add`` of a VirtualService's or a
    destination's ``headers.request``/``headers.response``) in Envoy's order: the names removed,
    then the values set, then the values added, an added value appended as ``,value`` to one
    already there. Each client says how its headers are read (``get``: the value or None), set
    (``put``) and removed (``drop``); ``encode`` turns a configured value into what its client
    sends (applied to the configured value only, never to one already in the headers)."""
    for name in ops.remove or ():
        drop(name)
    for name, value in (ops.set or {}).items():
        put(name, encode(value))
    for name, value in (ops.add or {}).items():
        found = get(name)
        put(name, encode(value) if found is None else f"{found},{encode(value)}")
