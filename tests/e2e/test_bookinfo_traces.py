"""Traces you can open: one product page load of the Bookinfo demo is one trace across every
hop — productpage's SERVER span, a CLIENT span for each call it makes (details, reviews), the
SERVER span of the service each reached, and reviews' own call to ratings — read back from the
services' ``GET /_mesh/traces``; with the fault-injection task's abort in force, the aborted call
to ratings is an event of reviews' span. The page is loaded through a stock ``httpx.Client``
and a stock ``httpx.AsyncClient``, each starting the trace with its own ``traceparent``, and
through ``meshctl bookinfo trace``."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.bookinfo.walkthrough import CLIENTS, RATINGS_ERROR, Demo
from meshlib import bookinfo

ALL_TO_V3 = "virtual-service-reviews-v3.yaml"
FAULT_TASK = (  # Istio's fault-injection task: jason goes to reviews v2, whose ratings call aborts
    "virtual-service-all-v1.yaml",
    "virtual-service-reviews-test-v2.yaml",
    "virtual-service-ratings-test-abort.yaml",
)


def load_traced(demo: Demo, kind: str, cookie: str | None = None) -> tuple[str, httpx.Response]:
    """One page load that starts a trace (its own ``traceparent``): the trace id and page."""
    trace_id = f"{secrets.randbits(128) | 1:032x}"
    headers = {"traceparent": f"00-{trace_id}-{secrets.randbits(64) | 1:016x}-01"}
    if cookie:
        headers["cookie"] = cookie
    if kind == "sync":
        with httpx.Client(timeout=15) as http:
            return trace_id, http.get(demo.productpage, headers=headers)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(timeout=15) as http:
            return await http.get(demo.productpage, headers=headers)

    return trace_id, asyncio.run(go())


def spans_of(demo: Demo, trace_id: str) -> list[dict[str, Any]]:
    return bookinfo.collect_trace(bookinfo.Demo.load(str(demo.run_dir)), trace_id)


def children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in spans if s["parent_span_id"] == parent["span_id"]]


def hop(spans: list[dict[str, Any]], caller: dict[str, Any], host: str) -> dict[str, Any]:
    """The SERVER span that ``caller``'s call to ``host`` reached: a CLIENT child of the caller
    whose URL names ``host``, and that attempt's one SERVER child."""
    calls = [
        s
        for s in children(spans, caller)
        if s["kind"] == "CLIENT" and httpx.URL(s["attributes"]["url.full"]).host == host
    ]
    assert len(calls) == 1, f"{caller['service']} → {host}: {calls}"
    (call,) = calls
    assert call["service"] == caller["service"]
    assert call["attributes"]["http.response.status_code"] == 200
    assert call["attributes"]["meshlib.destination"] == f"{host}.default.svc.cluster.local"
    (served,) = children(spans, call)
    assert (served["kind"], served["service"]) == ("SERVER", host)
    assert served["start_unix_nano"] >= call["start_unix_nano"]
    return served


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_page_load_is_one_trace_with_every_hop(demo: Demo, samples: Path, kind: str) -> None:
    demo.reset()
    demo.apply(samples / ALL_TO_V3)  # v3 calls ratings
    trace_id, page = load_traced(demo, kind)
    assert page.status_code == 200
    spans = spans_of(demo, trace_id)
    assert {s["trace_id"] for s in spans} == {trace_id}
    roots = [s for s in spans if s["parent_span_id"] not in {t["span_id"] for t in spans}]
    assert [(r["service"], r["kind"], r["name"]) for r in roots] == [
        ("productpage", "SERVER", "GET /productpage")
    ]
    (root,) = roots
    details = hop(spans, root, "details")
    reviews = hop(spans, root, "reviews")
    assert reviews["version"] == "v3"
    ratings = hop(spans, reviews, "ratings")
    assert ratings["attributes"]["http.response.status_code"] == 200
    assert len(spans) == 7  # three SERVER spans and three CLIENT spans below the root
    assert not children(spans, details)
    for span in spans:
        assert span["status"] != "ERROR"
        assert span["end_unix_nano"] >= span["start_unix_nano"]


@pytest.mark.parametrize("kind", CLIENTS)
def test_the_fault_tasks_abort_is_an_event_of_reviews_span(
    demo: Demo, samples: Path, kind: str
) -> None:
    demo.reset()
    demo.apply(*(samples / name for name in FAULT_TASK))
    trace_id, page = load_traced(demo, kind, cookie="user=jason")
    assert RATINGS_ERROR in page.text
    spans = spans_of(demo, trace_id)
    (root,) = [s for s in spans if s["service"] == "productpage" and s["kind"] == "SERVER"]
    reviews = hop(spans, root, "reviews")
    assert reviews["version"] == "v2"
    assert not children(spans, reviews)  # no attempt went to ratings: the mesh answered
    assert "ratings" not in {s["service"] for s in spans}
    (fault,) = [e for e in reviews["events"] if e["name"] == "meshlib.fault"]
    assert fault["attributes"]["meshlib.fault"] == "abort"
    assert fault["attributes"]["meshlib.fault.abort.http_status"] == 500
    assert fault["attributes"]["url.full"] == "http://ratings:9080/ratings/0"
    assert fault["attributes"]["meshlib.destination.subset"] == "v1"
    assert reviews["start_unix_nano"] <= fault["time_unix_nano"] <= reviews["end_unix_nano"]


def test_meshctl_bookinfo_trace(demo: Demo, samples: Path) -> None:
    demo.reset()
    demo.apply(*(samples / name for name in FAULT_TASK))
    shown = demo.meshctl("trace", "--user", "jason").splitlines()
    assert shown[0].startswith(f"GET {demo.productpage} as jason: 200 in ")
    assert shown[1] == "5 spans from 3 services: details v1, productpage v1, reviews v2"
    tree = [line[25:] for line in shown[3:]]  # past the start and duration columns
    assert tree[0] == "productpage v1  SERVER GET /productpage  200"
    assert tree[1].startswith("├─ productpage v1  CLIENT GET http://details:9080/details/0 → v1 ")
    assert tree[2] == "│  └─ details v1  SERVER GET /details/{product_id:int}  200"
    assert tree[3].startswith("└─ productpage v1  CLIENT GET http://reviews:9080/reviews/0 → v2 ")
    assert tree[4] == "   └─ reviews v2  SERVER GET /reviews/{product_id:int}  200"
    assert tree[5].endswith(
        "└─ ✱ fault injected: abort 500  GET http://ratings:9080/ratings/0 (v1)"
    )
    assert len(tree) == 6
    as_json = json.loads(demo.meshctl("trace", "--json"))  # not signed in: reviews v1
    assert as_json["status"] == 200
    assert {s["trace_id"] for s in as_json["spans"]} == {as_json["trace_id"]}
    assert {(s["service"], s["kind"]) for s in as_json["spans"]} == {
        ("productpage", "SERVER"),
        ("productpage", "CLIENT"),
        ("details", "SERVER"),
        ("reviews", "SERVER"),
    }
