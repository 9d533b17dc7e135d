"""Polling a service's admin endpoints, and finding the services: what each answer (or silence)
does to what the page shows. The admin endpoints here are ``httpx.MockTransport`` handlers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from meshlib.dashboard.model import ServiceSnapshot, Target
from meshlib.dashboard.sources import (
    MAX_BODY,
    BookinfoTargets,
    Poll,
    RegistryTargets,
    StaticTargets,
    poll_service,
)

CONFIG = {"service": "reviews", "namespace": "default", "version": "v2", "digest": "abc"}
CLUSTERS = {"service": "reviews", "workload": "reviews-v2", "clusters": []}
METRICS = (
    'istio_requests_total{reporter="source",source_workload="reviews-v2",'
    'source_workload_namespace="default",destination_workload="ratings-v1",'
    'destination_workload_namespace="default",response_code="200"} 5\n'
)
SPANS = {"spans": [{"trace_id": "t", "span_id": "s", "start_unix_nano": 1, "end_unix_nano": 2}]}

Handler = Callable[[httpx.Request], httpx.Response]


def admin(**answers: httpx.Response | Exception) -> Handler:
    """An admin endpoint: ``config``, ``clusters``, ``metrics``, ``traces`` answer as given
    (the good answers above by default); an exception is raised instead of answering."""
    defaults: dict[str, httpx.Response | Exception] = {
        "config": httpx.Response(200, json=CONFIG),
        "clusters": httpx.Response(200, json=CLUSTERS),
        "metrics": httpx.Response(200, text=METRICS),
        "traces": httpx.Response(200, json=SPANS),
    }
    defaults.update(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        part = request.url.path.rsplit("/", 1)[-1]
        answer = defaults[part]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle


def poll(
    handler: Handler, previous: ServiceSnapshot | None = None, at: float = 10.0, **kw: object
) -> ServiceSnapshot:
    seen = previous or ServiceSnapshot(Target("https://reviews.test:9082", "reviews", "v2"))
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        return poll_service(http, seen, Poll(now=at, wall=1000 + at, window=30, **kw))  # type: ignore[arg-type]


def test_a_service_that_answers_is_up_with_all_its_parts() -> None:
    asked: list[str] = []
    handler = admin()

    def recording(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return handler(request)

    snapshot = poll(recording)

    assert asked == [
        "https://reviews.test:9082/_mesh/config",
        "https://reviews.test:9082/_mesh/clusters",
        "https://reviews.test:9082/_mesh/metrics",
        "https://reviews.test:9082/_mesh/traces?limit=50",
    ]
    assert (snapshot.last_seen, snapshot.error, snapshot.problem) == (1010.0, None, None)
    assert snapshot.config == CONFIG
    assert snapshot.clusters == CLUSTERS
    assert snapshot.metrics == "on"
    [scrape] = snapshot.scrapes
    assert scrape.at == 10.0
    assert list(scrape.samples.values()) == [5.0]
    assert snapshot.spans == tuple(SPANS["spans"])


def test_successive_polls_keep_the_window_of_scrapes() -> None:
    snapshot = None
    for at in range(0, 50, 10):
        snapshot = poll(admin(), snapshot, at=float(at))
    assert snapshot is not None
    assert [s.at for s in snapshot.scrapes] == [10.0, 20.0, 30.0, 40.0]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (httpx.ConnectError("refused"), "connection refused or failed"),
        (httpx.ReadTimeout("slow"), "no answer in time"),
        (httpx.Response(401, json={"error": "no"}), "401: the admin endpoint wants a mesh"),
        (httpx.Response(404, text="nope"), "404: not a meshlib admin endpoint"),
        (httpx.Response(500, text="boom"), "500 Internal Server Error"),
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(200, json=["a list"]), "not a JSON object"),
        (httpx.Response(200, content=b"{" + b" " * (MAX_BODY + 1)), "answered more than"),
    ],
)
def test_a_service_that_does_not_answer_keeps_its_last_data_and_says_why(
    answer: httpx.Response | Exception, why: str
) -> None:
    good = poll(admin(), at=0.0)

    later = poll(admin(config=answer), good, at=10.0)

    assert later.error is not None
    assert later.error.startswith(why)
    assert later.last_seen == good.last_seen == 1000.0
    assert (later.config, later.clusters, later.scrapes, later.spans) == (
        good.config,
        good.clusters,
        good.scrapes,
        good.spans,
    )
    assert later.stale(now=1010.0, after=8)


def test_a_service_down_in_the_middle_of_a_poll_is_down() -> None:
    good = poll(admin(), at=0.0)

    later = poll(admin(metrics=httpx.RemoteProtocolError("closed")), good, at=10.0)

    assert later.error is not None
    assert later.scrapes == good.scrapes


def test_parts_it_does_not_have_are_empty_and_bad_parts_are_problems() -> None:
    missing = poll(
        admin(
            clusters=httpx.Response(404),
            metrics=httpx.Response(404),
            traces=httpx.Response(404),
        )
    )
    assert (missing.error, missing.problem) == (None, None)
    assert (missing.clusters, missing.scrapes, missing.metrics, missing.spans) == (
        None,
        (),
        "off",
        (),
    )

    bad = poll(
        admin(
            metrics=httpx.Response(200, text='istio_requests_total{a="1" 2\n'),
            traces=httpx.Response(200, text="not json"),
        )
    )
    assert bad.error is None  # it answered: up, not stale
    assert bad.problem is not None
    assert "/_mesh/metrics: not Prometheus' text format" in bad.problem
    assert "/_mesh/traces: not JSON" in bad.problem
    assert bad.scrapes == ()


def test_prometheus_mode_does_not_scrape_the_services() -> None:
    asked: list[str] = []
    handler = admin()

    def recording(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return handler(request)

    snapshot = poll(recording, metrics=False)

    assert "/_mesh/metrics" not in asked
    assert snapshot.metrics == "unknown"


def test_the_admin_token_is_sent_when_given() -> None:
    seen: list[str | None] = []
    handler = admin()

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return handler(request)

    with httpx.Client(transport=httpx.MockTransport(recording)) as http:
        poll_service(
            http,
            ServiceSnapshot(Target("http://r.test")),
            Poll(now=0, wall=0, window=30),
            {"authorization": "Bearer s3cret"},
        )
    assert seen == ["Bearer s3cret"] * 4


# --------------------------------------------------------------------------- targets


def test_static_targets_go_over_https_with_a_client_certificate() -> None:
    import ssl

    plain = StaticTargets(["http://127.0.0.1:9080/", "https://b.test"])
    assert [t.url for t in plain.targets()] == ["http://127.0.0.1:9080", "https://b.test"]
    tls = StaticTargets(["http://127.0.0.1:9080"], ssl.create_default_context())
    assert [t.url for t in tls.targets()] == ["https://127.0.0.1:9080"]


def test_a_registry_file_lists_every_endpoint_and_survives_a_bad_edit(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(
        "reviews:\n"
        "  - {address: 127.0.0.1:9082, labels: {version: v1}}\n"
        "  - {address: 127.0.0.1:9083, labels: {version: v2}}\n"
        "ratings:\n"
        "  - {address: 127.0.0.1:9085}\n",
        encoding="utf-8",
    )
    registry = RegistryTargets(str(path))
    first = list(registry.targets())
    assert [(t.url, t.name, t.version) for t in first] == [
        ("http://127.0.0.1:9082", "reviews", "v1"),
        ("http://127.0.0.1:9083", "reviews", "v2"),
        ("http://127.0.0.1:9085", "ratings", None),
    ]

    path.write_text("reviews: [{labels: {version: v1}}]\n", encoding="utf-8")
    assert list(registry.targets()) == first  # the last good list
    assert registry.problem is not None
    assert "an endpoint without an address" in registry.problem

    path.write_text("ratings:\n  - {address: 127.0.0.1:9999}\n", encoding="utf-8")
    os.utime(path, ns=(1, 2))  # a new stamp even within the clock's resolution
    assert [t.url for t in registry.targets()] == ["http://127.0.0.1:9999"]
    assert registry.problem is None

    (tmp_path / "bad.yaml").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(ValueError, match="registry file"):
        RegistryTargets(str(tmp_path / "bad.yaml"))


def test_bookinfo_targets_follow_the_demo_and_keep_its_services_when_it_stops(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config" / "reviews-v2.yaml"
    config.parent.mkdir()
    config.write_text(
        "apiVersion: meshlib.dev/v1\nkind: Service\n"
        "metadata: {name: reviews}\nspec: {version: v2}\n",
        encoding="utf-8",
    )
    state = {
        "rules": str(tmp_path / "rules.yaml"),
        "productpage": "http://127.0.0.1:9080/productpage",
        "services": [
            {
                "name": "reviews",
                "version": "v2",
                "url": "http://127.0.0.1:9082",
                "config": str(config),
            }
        ],
    }
    (tmp_path / "bookinfo.json").write_text(json.dumps(state), encoding="utf-8")

    targets = BookinfoTargets(str(tmp_path))

    [target] = targets.targets()
    assert (target.url, target.name, target.version) == ("http://127.0.0.1:9082", "reviews", "v2")
    assert targets.tls() is None  # no CA in this run directory: plain text
    from meshlib import control

    assert targets.expected(target) == control.expected_digest(
        control.ServiceRef("reviews", "v2", target.url, str(config))
    )
    (tmp_path / "bookinfo.json").unlink()  # the demo stopped
    assert list(targets.targets()) == [target]
    assert targets.problem is not None
    assert "no Bookinfo demo runs" in targets.problem
