"""A trace drawn as a tree (``meshlib.telemetry.spantree``): parents before children in the order
they started, the mesh's events in place, and spans that do not form a proper tree (a missing
parent, a span reported twice, a cycle, fields missing) drawn without failing."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshlib.telemetry.spantree import MAX_DEPTH, build, describe, describe_event, draw

MS = 1_000_000


def span(
    span_id: str,
    parent: str | None,
    start: int,
    end: int,
    service: str = "productpage",
    kind: str = "SERVER",
    name: str = "GET /productpage",
    attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "trace_id": "1" * 32,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "service": service,
        "version": "v1",
        "kind": kind,
        "start_unix_nano": start * MS,
        "end_unix_nano": end * MS,
        "status": "UNSET",
        "attributes": dict(attributes or {}),
        "events": [],
    }


def page() -> list[dict[str, Any]]:
    root = span("a", "f" * 16, 0, 30, attributes={"http.response.status_code": 200})
    call = span("b", "a", 2, 10, kind="CLIENT", name="GET")
    call["attributes"].update(
        {
            "url.full": "http://details:9080/details/0",
            "http.request.method": "GET",
            "network.peer.address": "127.0.0.1",
            "network.peer.port": 9081,
            "meshlib.destination.subset": "v1",
            "http.response.status_code": 503,
            "error.type": "503",
        }
    )
    retry = dict(call, span_id="c", start_unix_nano=12 * MS, end_unix_nano=20 * MS)
    retry["attributes"] = {
        **call["attributes"],
        "http.response.status_code": 200,
        "http.request.resend_count": 1,
    }
    del retry["attributes"]["error.type"]
    served = span("d", "c", 13, 19, service="details", name="GET /details/{id}")
    root["events"] = [
        {
            "name": "meshlib.retry",
            "time_unix_nano": 11 * MS,
            "attributes": {
                "meshlib.retry.attempt": 1,
                "meshlib.retry.delay": 0.025,
                "http.request.method": "GET",
                "url.full": "http://details:9080/details/0",
            },
        }
    ]
    return [served, retry, root, call]  # in any order


def test_a_page_with_a_retry() -> None:
    roots = build(page())
    assert [r.span["span_id"] for r in roots] == ["a"]  # its parent is not among the spans
    lines = draw(roots)
    assert [line[25:] for line in lines] == [
        "productpage v1  SERVER GET /productpage  200",
        "├─ productpage v1  CLIENT GET http://details:9080/details/0 → v1 127.0.0.1:9081  503",
        "├─ ✱ retry after attempt 1 failed (backoff 25 ms)  GET http://details:9080/details/0",
        "└─ productpage v1  CLIENT GET http://details:9080/details/0 → v1 127.0.0.1:9081 "
        "(retry 1)  200",
        "   └─ details v1  SERVER GET /details/{id}",
    ]
    assert lines[0].startswith("     0.0 ms     30.0 ms  ")
    assert lines[2].startswith("    11.0 ms             ")
    assert lines[4].startswith("    13.0 ms      6.0 ms  ")


def test_events_in_words() -> None:
    fault = {
        "name": "meshlib.fault",
        "attributes": {
            "meshlib.fault": "delay,abort",
            "meshlib.fault.delay": 7.0,
            "meshlib.fault.abort.http_status": 500,
            "http.request.method": "GET",
            "url.full": "http://ratings:9080/ratings/0",
            "meshlib.destination.subset": "v1",
        },
    }
    assert describe_event(fault) == (
        "fault injected: delay 7s, abort 500  GET http://ratings:9080/ratings/0 (v1)"
    )
    refused = {"name": "meshlib.retry.refused", "attributes": {"meshlib.retry.attempt": 2}}
    assert describe_event(refused) == "retry refused by the retry budget after attempt 2"
    boom = {"name": "exception", "attributes": {"exception.type": "KeyError"}}
    assert describe_event(boom) == "exception KeyError"
    assert describe_event({"name": "custom"}) == "custom"


def test_flags_and_errors_are_shown() -> None:
    timed_out = span("a", None, 0, 1, kind="CLIENT")
    timed_out["attributes"] = {
        "url.full": "http://r/",
        "error.type": "per-try-timeout",
        "meshlib.response_flags": "UT",
    }
    assert describe(timed_out).endswith("CLIENT  http://r/  per-try-timeout UT")


def test_duplicates_and_cycles_draw_once() -> None:
    a = span("a", "b", 0, 5)
    b = span("b", "a", 1, 4)
    twice = span("c", None, 2, 3)
    spans = [a, b, twice, dict(twice)]
    lines = draw(build(spans))
    assert len(lines) == 1  # c; a and b are each other's parent: no root reaches them
    assert build([]) == []
    assert draw([]) == []


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "span_id": st.sampled_from("abcdef"),
                "parent_span_id": st.one_of(st.none(), st.sampled_from("abcdefg")),
                "start_unix_nano": st.integers(0, 10**12),
                "end_unix_nano": st.integers(0, 10**12),
            },
            optional={
                "service": st.text(max_size=5),
                "kind": st.sampled_from(["SERVER", "CLIENT", "", "weird"]),
                "events": st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["meshlib.fault", "meshlib.retry", "x"])},
                        optional={"time_unix_nano": st.integers(0, 10**12)},
                    ),
                    max_size=3,
                ),
                "attributes": st.dictionaries(
                    st.sampled_from(["url.full", "error.type", "http.response.status_code"]),
                    st.one_of(st.text(max_size=5), st.integers()),
                    max_size=3,
                ),
            },
        ),
        max_size=8,
    )
)
def test_any_spans_draw_without_failing(spans: list[dict[str, Any]]) -> None:
    roots = build(spans)
    drawn = {n.span["span_id"] for r in roots for n in r.walk()}
    assert len(drawn) == sum(1 for r in roots for _ in r.walk())  # each span once
    assert all(isinstance(line, str) for line in draw(roots))


def test_a_hostile_chain_is_cut_at_max_depth() -> None:
    """Spans come from other processes: a chain thousands deep is drawn to MAX_DEPTH, with no
    RecursionError."""
    chain = [
        {
            "span_id": f"{i:016x}",
            "parent_span_id": f"{i - 1:016x}" if i else None,
            "name": f"hop {i}",
            "start_unix_nano": i,
            "end_unix_nano": i + 1,
        }
        for i in range(5000)
    ]
    (root,) = build(chain)
    assert len(list(root.walk())) == MAX_DEPTH
    assert len(draw([root])) == MAX_DEPTH
