"""Request path normalisation before AuthorizationPolicy ``paths`` matching, as Istio's sidecar
does it (mesh config ``pathNormalization``).

The options are Istio's, applied in Istio's order:

``NONE``
    The path as received (query string excluded).
``BASE`` (Istio's default, and meshlib's)
    Envoy's ``normalize_path``: RFC 3986 normalisation with backslashes turned into slashes.
    Percent-encoded unreserved characters (``%41`` → ``A``, ``%2e`` → ``.``, ``%7e`` → ``~``) are
    decoded once (no double decoding: ``%252e`` stays), the hex of every other escape is upper-cased
    (``%2f`` → ``%2F``), characters that may not appear in a path (space, ``"``, ``<``, ``>``,
    `````, ``{``, ``}``, non-ASCII) are percent-encoded, and ``.`` and ``..`` segments are resolved
    (``..`` never climbs above the root).
``MERGE_SLASHES``
    ``BASE``, then runs of slashes merged (``//admin`` → ``/admin``).
``DECODE_AND_MERGE_SLASHES``
    ``%2F`` and ``%5C`` (any case) decoded to ``/`` and ``\\`` first, then ``MERGE_SLASHES``. The
    strictest; Istio recommends it where authorization policies decide on paths.

Requests Envoy refuses with 400 raise :class:`InvalidPathError` (``status`` 400): a path that
does not start with ``/``, a control character (NUL included), an encoded NUL (``%00``) or a
fragment (``#``). A path longer than ``max_length`` bytes raises it with status 431, as Envoy
answers headers over its limit (60 KiB by default). Nothing else is raised, whatever the input.

Paths are case-sensitive, in Istio as here: a rule for ``/admin`` does not match ``/Admin``.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

__all__ = [
    "DEFAULT_PATH_NORMALIZATION",
    "MAX_PATH_LENGTH",
    "PATH_NORMALIZATIONS",
    "InvalidPathError",
    "PathNormalization",
    "normalize_path",
    "split_query",
]

PathNormalization = Literal["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"]
PATH_NORMALIZATIONS: Final[tuple[str, ...]] = get_args(PathNormalization)
#: Istio's default (mesh config ``pathNormalization`` not set).
DEFAULT_PATH_NORMALIZATION: Final[PathNormalization] = "BASE"
#: Envoy's default limit on request headers (``max_request_headers_kb``: 60 KiB).
MAX_PATH_LENGTH: Final = 60 * 1024


class InvalidPathError(ValueError):
    """A request path the mesh refuses, with the status to answer (400 or 431)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_HEX: Final = "0123456789ABCDEF"
# Bytes kept as they are in a normalised path: RFC 3986 pchar (unreserved, sub-delims, ":", "@"),
# "/", "%" (escapes, handled apart) and the few that browsers and Envoy let through ("|^[]").
_KEPT: Final = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/%|^[]")
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_ENCODED_SLASH: Final = re.compile(r"%(2[fF]|5[cC])")
_SLASHES: Final = re.compile(r"/{2,}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def split_query(target: str) -> tuple[str, str]:
    """``/a/b?x=1`` → ``("/a/b", "x=1")``; the query is ``""`` when there is none."""
    path, _, query = target.partition("?")
    return path, query


def _as_bytes_text(target: str | bytes) -> str:
    """The request target as a text of one character per byte (latin-1), whatever came in:
    bytes as they are, text as its UTF-8 (lone surrogates included, so nothing raises)."""
    if isinstance(target, bytes):
        return target.decode("latin-1")
    return target.encode("utf-8", "surrogatepass").decode("latin-1")


def _decode_unreserved(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    if byte in _UNRESERVED:
        return chr(byte)
    return "%" + match.group(1).upper()


def _encode_others(path: str) -> str:
    if all(ord(c) in _KEPT for c in path):
        return path
    out = []
    for c in path:
        o = ord(c)
        out.append(c if o in _KEPT else "%" + _HEX[o >> 4] + _HEX[o & 15])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path: ``.`` dropped, ``..`` drops the segment
    before it (none above the root); a trailing ``.``/``..`` leaves a trailing slash."""
    if "." not in path:
        return path
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments and segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def normalize_path(
    target: str | bytes,
    normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION,
    *,
    max_length: int = MAX_PATH_LENGTH,
) -> str:
    """The path of ``target`` (a request target as sent: path and optional query, raw or text)
    as authorization policies see it under ``normalization``; the query is left out.

    Raises :class:`InvalidPathError` for what Envoy refuses (see the module's docstring)."""
    if len(target) > max_length:
        raise InvalidPathError(f"request path longer than {max_length} bytes", 431)
    text = _as_bytes_text(target)
    if len(text) > max_length:
        raise InvalidPathError(f"request path longer than {max_length} bytes", 431)
    path = text.partition("?")[0]
    if not path.startswith("/"):
        raise InvalidPathError("request path does not start with '/'")
    if "#" in path:
        raise InvalidPathError("request path has a fragment ('#')")
    if _CONTROL.search(path):
        raise InvalidPathError("request path has a control character")
    if "%00" in path:
        raise InvalidPathError("request path has an encoded NUL (%00)")
    if normalization == "NONE":
        return path
    if normalization == "DECODE_AND_MERGE_SLASHES" and "%" in path:
        path = _ENCODED_SLASH.sub(lambda m: "/" if m.group(1) in ("2f", "2F") else "\\", path)
    path = path.replace("\\", "/")
    if "%" in path:
        path = _ESCAPE.sub(_decode_unreserved, path)
    path = _remove_dot_segments(_encode_others(path))
    if normalization != "BASE" and "//" in path:
        path = _SLASHES.sub("/", path)
    return path
