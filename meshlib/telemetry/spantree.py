"""One trace as a tree: its spans — in the form ``GET /_mesh/traces`` answers them and the
``file`` exporter writes them (``tracing.span_record``) — arranged parent to children, and drawn
as text, each span with its timing, what it called or served, and the mesh's events (faults,
retries) in place under the span they happened in (``meshctl bookinfo trace`` prints
one).

A span whose parent is not among the spans (the trace's root, or a span whose parent another
process made and did not report) is a root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Span = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Node:
    """A span and the spans it is the parent of, in the order they started."""

    span: Span
    children: tuple[Node, ...]

    def walk(self) -> Iterable[Node]:
        yield self
        for child in self.children:
            yield from child.walk()


#: How deep a tree ``build`` makes: a call chain deeper than this is cut (a mesh's real traces are
#: a few hops deep; the spans come from other processes).
MAX_DEPTH = 64


def build(spans: Iterable[Span]) -> list[Node]:
    """The roots of the trees ``spans`` make (each span once, by ``span_id``), oldest first."""
    by_id: dict[str, Span] = {}
    for span in spans:
        by_id.setdefault(str(span.get("span_id")), span)
    children: dict[str | None, list[Span]] = {}
    for span in by_id.values():
        parent = span.get("parent_span_id")
        key = parent if isinstance(parent, str) and parent in by_id else None
        children.setdefault(key, []).append(span)

    # Each span has one parent, so what hangs from a root has no cycle; a chain deeper than
    # MAX_DEPTH (spans come from other processes) is cut there, so nothing recurses unbounded.
    def node(span: Span, depth: int) -> Node:
        if depth >= MAX_DEPTH:
            return Node(span, ())
        below = sorted(children.get(str(span.get("span_id")), ()), key=_start)
        return Node(span, tuple(node(c, depth + 1) for c in below))

    return [node(span, 1) for span in sorted(children.get(None, ()), key=_start)]


def draw(roots: Sequence[Node]) -> list[str]:
    """The trees as text lines: start (from the first span's start) and duration, then the span
    or event, indented under its parent."""
    if not roots:
        return []
    origin = min(_start(n.span) for root in roots for n in root.walk())
    lines: list[str] = []

    def emit(node: Node, lead: str, branch: str) -> None:
        span = node.span
        start = (_start(span) - origin) / 1e6
        duration = (int(span.get("end_unix_nano") or 0) - _start(span)) / 1e6
        lines.append(f"{start:8.1f} ms {duration:8.1f} ms  {lead}{branch}{describe(span)}")
        below = lead + {"": "", "└─ ": "   "}.get(branch, "│  ")
        items: list[tuple[int, int, Any]] = [
            (int(e.get("time_unix_nano") or 0), 0, e) for e in span.get("events") or ()
        ]
        items += [(_start(c.span), 1, c) for c in node.children]
        items.sort(key=lambda item: (item[0], item[1]))
        for index, (when, kind, item) in enumerate(items):
            mark = "└─ " if index == len(items) - 1 else "├─ "
            if kind == 1:
                emit(item, below, mark)
            else:
                at = (when - origin) / 1e6
                lines.append(f"{at:8.1f} ms {'':>11}  {below}{mark}✱ {describe_event(item)}")

    for root in roots:
        emit(root, "", "")
    return lines


def describe(span: Span) -> str:
    """One span in a line: who, what kind, what it served or called, how it ended."""
    attributes: Mapping[str, Any] = span.get("attributes") or {}
    who = " ".join(str(part) for part in (span.get("service"), span.get("version")) if part)
    kind = str(span.get("kind") or "INTERNAL")
    text = f"{who}  {kind} {span.get('name') or ''}"
    if kind == "CLIENT" and attributes.get("url.full"):
        text = f"{who}  CLIENT {attributes.get('http.request.method', '')} {attributes['url.full']}"
        where = [str(attributes[k]) for k in ("meshlib.destination.subset",) if k in attributes]
        if "network.peer.address" in attributes:
            where.append(f"{attributes['network.peer.address']}:{attributes['network.peer.port']}")
        if where:
            text += " → " + " ".join(where)
        if attributes.get("http.request.resend_count"):
            text += f" (retry {attributes['http.request.resend_count']})"
    outcome = (
        [str(attributes["http.response.status_code"])]
        if ("http.response.status_code" in attributes)
        else []
    )
    error = attributes.get("error.type")
    if error is not None and str(error) not in outcome:
        outcome.append(str(error))
    flags = attributes.get("meshlib.response_flags")
    if flags:
        outcome.append(str(flags))
    if outcome:
        text += "  " + " ".join(outcome)
    return text


def describe_event(event: Span) -> str:
    """One span event in words: the mesh's own (a fault, a retry), else its name."""
    attributes: Mapping[str, Any] = event.get("attributes") or {}
    name = str(event.get("name") or "")
    call = ""
    if "url.full" in attributes:
        call = f"  {attributes.get('http.request.method', '')} {attributes['url.full']}"
        subset = attributes.get("meshlib.destination.subset")
        if subset:
            call += f" ({subset})"
    if name == "meshlib.fault":
        parts = []
        if "meshlib.fault.delay" in attributes:
            parts.append(f"delay {float(attributes['meshlib.fault.delay']):g}s")
        if "meshlib.fault.abort.http_status" in attributes:
            parts.append(f"abort {attributes['meshlib.fault.abort.http_status']}")
        if "meshlib.fault.abort.grpc_status" in attributes:
            parts.append(f"abort grpc {attributes['meshlib.fault.abort.grpc_status']}")
        return f"fault injected: {', '.join(parts) or attributes.get('meshlib.fault', '')}{call}"
    if name == "meshlib.retry":
        delay = float(attributes.get("meshlib.retry.delay") or 0) * 1000
        attempt = attributes.get("meshlib.retry.attempt")
        return f"retry after attempt {attempt} failed (backoff {delay:.0f} ms){call}"
    if name == "meshlib.retry.refused":
        attempt = attributes.get("meshlib.retry.attempt")
        return f"retry refused by the retry budget after attempt {attempt}{call}"
    if name == "exception":
        kind = attributes.get("exception.type", "")
        message = attributes.get("exception.message", "")
        return f"exception {kind}: {message}".rstrip(": ")
    return name


def _start(span: Span) -> int:
    return int(span.get("start_unix_nano") or 0)


__all__ = ["MAX_DEPTH", "Node", "build", "describe", "describe_event", "draw"]
