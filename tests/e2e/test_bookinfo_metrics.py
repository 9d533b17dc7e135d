"""The demo shows its numbers: as it starts, every Bookinfo service serves Istio's metrics on a
scrape port of its own, ``bookinfo.json``, ``meshctl bookinfo routes`` and the Prometheus target
file say where, and a page load shows up on both sides of each hop (``reporter="source"`` at the
caller, ``reporter="destination"`` at the callee, with the caller named)."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from examples.bookinfo.walkthrough import Demo

#: Each Bookinfo workload and whom it calls (reviews v1 calls nobody).
WORKLOADS = ("productpage-v1", "details-v1", "reviews-v1", "reviews-v2", "reviews-v3", "ratings-v1")


def samples(url: str, name: str) -> list[dict[str, str]]:
    text = httpx.get(url, timeout=5).text
    return [
        dict(sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_every_service_says_where_its_metrics_are(demo: Demo) -> None:
    state = json.loads((demo.run_dir / "bookinfo.json").read_text(encoding="utf-8"))
    urls = {f"{s['name']}-{s['version']}": s["metrics"] for s in state["services"]}
    assert sorted(urls) == sorted(WORKLOADS)
    for workload, url in urls.items():
        assert url.startswith("http://127.0.0.1:"), workload
        assert url.endswith("/metrics"), workload
        assert url.split("/")[2] not in {s["url"].split("/")[2] for s in state["services"]}
        # istio_build, as Istio's proxies export it, is there before any traffic
        assert samples(url, "istio_build") == [{"component": "proxy", "tag": "meshlib-0.1.0"}], (
            workload
        )
    # the same endpoints as a Prometheus file_sd_configs file
    targets = json.loads((demo.run_dir / "prometheus-targets.json").read_text(encoding="utf-8"))
    assert state["prometheus_targets"] == str(demo.run_dir / "prometheus-targets.json")
    assert {
        f"{g['labels']['app']}-{g['labels']['version']}": (
            f"http://{g['targets'][0]}{g['labels']['__metrics_path__']}"
        )
        for g in targets
    } == urls
    routes = demo.meshctl("routes")
    assert "Metrics (Prometheus scrape targets):" in routes
    for url in urls.values():
        assert url in routes


def test_a_page_load_is_counted_on_both_sides_of_each_hop(demo: Demo) -> None:
    demo.reset()
    for visitor in demo.visitors():
        assert visitor.load().status == 200
    state = json.loads((demo.run_dir / "bookinfo.json").read_text(encoding="utf-8"))
    urls = {f"{s['name']}-{s['version']}": s["metrics"] for s in state["services"]}
    page = samples(urls["productpage-v1"], "istio_requests_total")
    sent = {
        (s["destination_workload"], s["response_code"]) for s in page if s["reporter"] == "source"
    }
    assert ("details-v1", "200") in sent
    assert any(w.startswith("reviews-v") for w, _ in sent)
    details = samples(urls["details-v1"], "istio_requests_total")
    # the caller is known (metadata exchange over mutual TLS); other tests of the session may
    # call details from outside the mesh too (they are the unknown callers)
    served = [
        s
        for s in details
        if s["reporter"] == "destination" and s["source_workload"] == "productpage-v1"
    ]
    assert served
    for series in served:
        assert series["source_app"] == "productpage"
        assert series["source_version"] == "v1"
        assert series["source_workload_namespace"] == "default"
        assert series["source_principal"] == (
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        )
        assert series["connection_security_policy"] == "mutual_tls"
        assert series["destination_workload"] == "details-v1"
