"""Shadow requests against a mirror target that hangs: the route's timeout bounds them, and a
bounded queue drops (and counts) what does not fit, sync and async.

The misbehaving upstream is both the route's destination and its mirror: a request answers at
once, and its mirrored copy (``Host: chaos-shadow``) hangs (``shadow=hang``).
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
#: Shadow requests outstanding at most per mesh (meshlib.mirror.MIRROR_LIMIT, as documented).
MIRROR_LIMIT = 64


def mirrored(timeout: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: chaos}}
spec:
  hosts: [chaos]
  http:
  - route: [{{destination: {{host: chaos}}}}]
    {timeout}
    mirror: {{host: chaos}}
    mirrorPercentage: {{value: 100}}
"""


def test_mirrored_copies_end_by_the_route_timeout(
    chaos_mesh: Callable[..., Mesh],
    connect: Callable[..., Caller],
    base_path: str,
    misbehaving: Misbehaving,
) -> None:
    """``timeout: 1s``: 20 calls answer at once, their 20 copies hang at the mirror target.
    Each copy gets the route's timeout, as Envoy gives its shadows: a second later none is
    pending any more (before, all 20 still were 3 s later), and each is counted as failed."""
    mesh = chaos_mesh(mirrored("timeout: 1s"))
    caller = connect(mesh)
    path = f"/ok{base_path}"
    for _ in range(20):
        outcome = caller.call("GET", f"{URL}{path}?shadow=hang")
        assert outcome.status == 200, repr(outcome.error)
    shadow = f"{path} (shadow)"
    assert caller.wait_until(lambda: misbehaving.hits(shadow) >= 4)
    assert caller.wait_until(lambda: mesh.mirrors.outstanding == 0, timeout=5)
    assert caller.wait_until(lambda: misbehaving.active(shadow) == 0, timeout=5)
    assert misbehaving.hits(path) == 20
    mirrors = mesh.mirrors
    assert (mirrors.sent, mirrors.failed, mirrors.dropped) == (0, 20, 0)


def test_the_mirror_queue_is_bounded_and_counts_what_it_drops(
    chaos_mesh: Callable[..., Mesh],
    connect: Callable[..., Caller],
    base_path: str,
    misbehaving: Misbehaving,
) -> None:
    """100 calls behind a mirror target that hangs (``timeout: 20s``, far longer than the calls
    take): at most 64 copies are outstanding (before, all but the few in flight were queued,
    without bound); the others are dropped, counted on ``mesh.mirrors`` and in
    ``meshlib_mirror_dropped_total``. The callers never wait for any of it. Closing the mesh
    drops what is still queued."""
    mesh = chaos_mesh(mirrored("timeout: 20s"), telemetry=True)
    caller = connect(mesh)
    path = f"/ok{base_path}"
    for _ in range(100):
        outcome = caller.call("GET", f"{URL}{path}?shadow=hang")
        assert outcome.status == 200, repr(outcome.error)
        assert mesh.mirrors.outstanding <= MIRROR_LIMIT
    mirrors = mesh.mirrors
    assert (mirrors.outstanding, mirrors.dropped) == (MIRROR_LIMIT, 100 - MIRROR_LIMIT)
    assert (mirrors.sent, mirrors.failed) == (0, 0)
    _, body = metrics.scrape(mesh)
    [dropped] = [
        sample
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "meshlib_mirror_dropped_total"
    ]
    assert dropped.labels["destination_service"] == "chaos.default.svc.cluster.local"
    assert dropped.value == 100 - MIRROR_LIMIT
    assert misbehaving.hits(path) == 100
    mesh.close()
    assert caller.wait_until(lambda: mesh.mirrors.outstanding <= mesh.mirrors.threads)
