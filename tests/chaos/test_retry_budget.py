"""Retry limits against a real upstream that answers nothing but 503: one mechanism, one counter.

``connectionPool.http.maxRetries`` and ``trafficPolicy.retryBudget`` both limit the retries
outstanding to a destination through its retry budget (``mesh.cluster(target).budget``); each
retry refused is counted once, in ``budget.refused`` (Envoy's ``upstream_rq_retry_overflow``)
and in ``meshlib_retry_budget_exhausted_total``, and its call is answered with flag ``UO``.
The connection pool keeps no second tally that would stay at zero.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshlib import Mesh
from meshlib.telemetry import metrics

from .conftest import Caller
from .misbehaving import Misbehaving

pytestmark = pytest.mark.integration

URL = "http://chaos:8080"
CALLS = 12

ROUTE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: chaos}
spec:
  hosts: [chaos]
  http:
  - route: [{destination: {host: chaos}}]
    retries: {attempts: 2, retryOn: 5xx, backoff: 1ms}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: chaos}
spec:
  host: chaos
  trafficPolicy:
"""


def exhausted(mesh: Mesh) -> float:
    """``meshlib_retry_budget_exhausted_total``, summed."""
    _, body = metrics.scrape(mesh)
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "meshlib_retry_budget_exhausted_total"
    )


@pytest.mark.parametrize(
    "limit",
    [
        "connectionPool: {http: {maxRetries: 1}}",
        "retryBudget: {percent: 0, minRetryConcurrency: 1}",
    ],
    ids=["maxRetries", "retryBudget"],
)
def test_every_refused_retry_is_counted_once_where_the_docs_say(
    chaos_mesh: Callable[..., Mesh],
    connect: Callable[..., Caller],
    base_path: str,
    misbehaving: Misbehaving,
    limit: str,
) -> None:
    """12 calls at once to an upstream answering 503 after 0.1 s, one retry outstanding at
    most: the calls whose retry was refused are answered 503 ``UO``; the budget's one counter,
    and the metric, say exactly how many; every retry made reached the upstream."""
    mesh = chaos_mesh(ROUTE + f"    {limit}\n", telemetry=True)
    caller = connect(mesh)
    path = f"/status{base_path}"
    outcomes = caller.concurrently(CALLS, "GET", f"{URL}{path}?code=503&s=0.1")
    flags = [o.response.headers.get("x-mesh-response-flags", "-") for o in outcomes if o.response]
    assert len(flags) == CALLS, [repr(o.error) for o in outcomes if o.error]
    refused = flags.count("UO")
    assert refused > 0

    target = outcomes[0].response.extensions["mesh"].decision.destination  # type: ignore[union-attr]
    cluster = mesh.cluster(target)
    budget = cluster.budget
    assert budget.refused == refused
    assert exhausted(mesh) == refused
    assert misbehaving.hits(path) == CALLS + budget.granted
    assert (budget.active_retries, budget.active_requests) == (0, 0)
    assert not hasattr(cluster.pool, "retry_overflow")
