"""Header values as the mesh reads and carries them, whatever client holds them."""

from __future__ import annotations

import re

__all__ = ["carriable", "number"]

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
