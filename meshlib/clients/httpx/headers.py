"""Reading and building ``httpx.Headers`` through the list httpx keeps inside them.

httpx keeps a header set as a list of ``(name as sent, lowercase name, value)`` byte triples.
Its public lookups normalise the name and scan that list on every call, and a miss raises and
catches a ``KeyError`` inside; on the request path that costs more than the mesh's own work.
This module is the one place meshlib reads that list (the retry screen, the router's header
map, the tracer's trace headers, the clients' cookie check and header merge), each caller with
a public fallback for when it is not there (``entries`` returns None).
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["Entry", "entries", "with_entries"]

#: One header as httpx keeps it: name as sent, lowercase name, value (all bytes).
Entry = tuple[bytes, bytes, bytes]

_new = object.__new__
#: Whether an ``httpx.Headers`` is its list and its encoding, and nothing else (then
#: ``with_entries`` makes one without running ``__init__``).
_BARE = set(vars(httpx.Headers())) == {"_list", "_encoding"}


def entries(headers: Any) -> list[Entry] | None:
    """The header list of an ``httpx.Headers`` (the object's own: do not modify it), or None for
    any other mapping, or an httpx whose headers are kept another way."""
    found = getattr(headers, "_list", None)
    return found if isinstance(found, list) else None


def with_entries(items: list[Entry], like: httpx.Headers) -> httpx.Headers:
    """New ``httpx.Headers`` holding ``items`` (taken over, already in httpx's own normalised
    form, so not parsed and checked again one by one) with ``like``'s encoding."""
    encoding = getattr(like, "_encoding", None)  # not ``like.encoding``: that may decode all
    if _BARE:  # without ``__init__``, a third of the cost of a call to it
        headers = _new(httpx.Headers)
        headers._list = items
        headers._encoding = encoding
        return headers
    headers = httpx.Headers(encoding=encoding)
    if entries(headers) is None:  # pragma: no cover - another httpx layout
        return httpx.Headers([(key, value) for key, _, value in items], encoding=like.encoding)
    headers._list = items
    return headers
