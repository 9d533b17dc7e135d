"""Response flags against real upstream processes: the mesh's own record of what happened.

* ``x-mesh-response-flags`` is the mesh's header: an upstream's copy never reaches the caller.
* A connection that breaks in the middle of a body is a failed call (Envoy: the status as sent,
  flag ``UC``, details ``upstream_reset_after_response_started{connection_termination}``) in the
  metrics, the access log and ``MeshInfo`` — not a clean 200.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshlib import Mesh, MeshInfo, MeshRequestError
from meshlib.telemetry import RequestFinished, metrics

from .conftest import Caller

pytestmark = pytest.mark.integration

URL = "http://chaos:8080"
#: Envoy's response code details for a response whose upstream connection ended in its body.
LATE_RESET_DETAILS = "upstream_reset_after_response_started{connection_termination}"


class Finished:
    """A mesh listener keeping the ``RequestFinished`` events."""

    def __init__(self) -> None:
        self.events: list[RequestFinished] = []

    def on_event(self, event: Any) -> None:
        if isinstance(event, RequestFinished):
            self.events.append(event)


def requests_total(mesh: Mesh) -> dict[tuple[str, str], float]:
    """``istio_requests_total`` by response code and flags, from a scrape of ``mesh``."""
    _, body = metrics.scrape(mesh)
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "istio_requests_total":
                key = (sample.labels["response_code"], sample.labels["response_flags"])
                out[key] = out.get(key, 0) + sample.value
    return out


# --------------------------------------------------------------------------- item 5


def test_an_upstream_cannot_set_the_meshs_response_flags(
    chaos_mesh: Callable[..., Mesh], connect: Callable[..., Caller], base_path: str
) -> None:
    """A plain 200 whose upstream sent ``x-mesh-response-flags: UO,URX``: the caller sees no
    such header, as ``MeshInfo.flags`` says (nothing happened)."""
    caller = connect(chaos_mesh())
    spoof = "header=x-mesh-response-flags:UO,URX"
    outcome = caller.call("GET", f"{URL}/status{base_path}?{spoof}")
    assert outcome.response is not None, repr(outcome.error)
    assert outcome.status == 200
    assert "x-mesh-response-flags" not in outcome.response.headers
    info = outcome.response.extensions["mesh"]
    assert isinstance(info, MeshInfo)
    assert info.flags == ""


def test_the_flags_the_caller_sees_are_the_meshs_alone(
    chaos_mesh: Callable[..., Mesh], connect: Callable[..., Caller], base_path: str
) -> None:
    """503s (retried twice by Istio's default policy) that claim ``UO``: the header says what
    the mesh did, ``URX``, and nothing of the upstream's."""
    caller = connect(chaos_mesh())
    query = "code=503&header=x-mesh-response-flags:UO"
    outcome = caller.call("GET", f"{URL}/status{base_path}?{query}")
    assert outcome.response is not None, repr(outcome.error)
    assert outcome.status == 503
    assert outcome.response.headers.get_list("x-mesh-response-flags") == ["URX"]
    assert outcome.response.extensions["mesh"].flags == "URX"


# --------------------------------------------------------------------------- item 11


def test_a_reset_in_the_middle_of_a_body_is_recorded_as_a_failed_call(
    chaos_mesh: Callable[..., Mesh],
    connect: Callable[..., Caller],
    base_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Headers say 1000 bytes, 10 come, then a TCP reset. The caller gets httpx's error as it
    came; the mesh records what Envoy records: status 200 (as sent), flag ``UC``, details
    ``upstream_reset_after_response_started{connection_termination}`` — in the metrics, the
    access log and the response's ``MeshInfo``."""
    mesh = chaos_mesh(telemetry=True)
    finished = Finished()
    mesh.add_listener(finished)
    caller = connect(mesh)
    with caplog.at_level(logging.INFO, logger="meshlib.access"):
        outcome = caller.call("GET", f"{URL}/reset-body{base_path}?size=1000&sent=10")
    assert isinstance(outcome.error, caller.broken_body), repr(outcome.error)
    assert not isinstance(outcome.error, MeshRequestError)

    [event] = finished.events
    assert (event.status, event.flags) == (200, "UC")
    assert event.response_code_details == LATE_RESET_DETAILS
    assert event.error is outcome.error
    assert requests_total(mesh) == {("200", "UC"): 1}
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "meshlib.access"]
    assert (line["response_code"], line["response_flags"]) == (200, "UC")
    assert line["response_code_details"] == LATE_RESET_DETAILS


def test_a_body_read_whole_is_recorded_once_clean(
    chaos_mesh: Callable[..., Mesh], connect: Callable[..., Caller], base_path: str
) -> None:
    """The same upstream, answering in full: one clean record, when the body has been read."""
    mesh = chaos_mesh(telemetry=True)
    finished = Finished()
    mesh.add_listener(finished)
    caller = connect(mesh)
    outcome = caller.stream("GET", f"{URL}/trickle-body{base_path}?every=0.01&size=5")
    assert (outcome.error, outcome.body) == (None, b"xxxxx")
    [event] = finished.events
    assert (event.status, event.flags, event.response_code_details) == (200, "", "")
    assert event.duration >= 0.04  # recorded at the end of the body, as Envoy's %DURATION%
    assert requests_total(mesh) == {("200", "-"): 1}
