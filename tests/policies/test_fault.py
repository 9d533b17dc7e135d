"""Fault injection: Envoy's fractional percentages, independent delay and abort, the abort reply."""

from __future__ import annotations

import random

import httpx
import pytest

from meshlib.config.compile import fault_decision
from meshlib.config.model import HTTPFaultInjection
from meshlib.policies.fault import (
    ABORT_BODY,
    NO_ACTION,
    FaultAction,
    abort_response_parts,
    decide,
    decide_for,
    draw_for,
    fractional_numerator,
    hits,
)
from meshlib.routing import NO_FAULT, FaultDecision

DRAWS = 100_000


def share(fault: FaultDecision, seed: int = 1) -> tuple[float, float, float]:
    """Fractions of DRAWS requests delayed, aborted, and both."""
    rng = random.Random(seed)
    delayed = aborted = both = 0
    for _ in range(DRAWS):
        action = decide(fault, rng.random)
        d, a = action.delay is not None, action.aborts
        delayed += d
        aborted += a
        both += d and a
    return delayed / DRAWS, aborted / DRAWS, both / DRAWS


# --------------------------------------------------------------------------- percentages


@pytest.mark.parametrize("percentage", [50.0, 0.1, 12.5, 99.9])
def test_abort_percentage_over_many_seeded_draws(percentage: float) -> None:
    _, aborted, _ = share(FaultDecision(abort_status=503, abort_percentage=percentage))
    assert abs(aborted * 100 - percentage) < 0.5


@pytest.mark.parametrize("percentage", [50.0, 0.1, 33.3])
def test_delay_percentage_over_many_seeded_draws(percentage: float) -> None:
    delayed, aborted, _ = share(FaultDecision(delay=2.0, delay_percentage=percentage))
    assert abs(delayed * 100 - percentage) < 0.5
    assert aborted == 0


def test_zero_percent_never_hits_even_on_the_smallest_draw() -> None:
    fault = FaultDecision(delay=1.0, delay_percentage=0.0, abort_status=500, abort_percentage=0.0)
    assert decide(fault, lambda: 0.0) is NO_ACTION
    assert share(fault) == (0.0, 0.0, 0.0)


def test_hundred_percent_always_hits_even_on_the_largest_draw() -> None:
    fault = FaultDecision(delay=7.0, delay_percentage=100.0, abort_status=500, abort_percentage=100)
    largest = 1.0 - 2**-53
    action = decide(fault, lambda: largest)
    assert action == FaultAction(delay=7.0, abort_status=500)
    assert share(fault) == (1.0, 1.0, 1.0)


def test_delay_and_abort_are_independent() -> None:
    fault = FaultDecision(delay=1.0, delay_percentage=25.0, abort_status=500, abort_percentage=50.0)
    delayed, aborted, both = share(fault, seed=42)
    assert abs(delayed - 0.25) < 0.005
    assert abs(aborted - 0.50) < 0.005
    assert abs(both - 0.125) < 0.005


def test_fractional_percent_is_per_million_truncated_like_pilot() -> None:
    assert fractional_numerator(0) == 0
    assert fractional_numerator(-1) == 0
    assert fractional_numerator(100) == 1_000_000
    assert fractional_numerator(0.1) == 1_000
    assert fractional_numerator(0.00001) == 0  # below one per million: never, as in Envoy
    assert fractional_numerator(0.0001) == 1
    # the boundary: 0.1 % hits draws in [0, 0.001) and nothing from 0.001 on
    assert hits(0.1, 0.000_999_9)
    assert not hits(0.1, 0.001)


def test_no_fault_draws_nothing() -> None:
    def draw() -> float:
        raise AssertionError("no draw expected")

    assert decide(NO_FAULT, draw) is NO_ACTION
    assert decide(FaultDecision(delay=1.0, delay_percentage=0.0), draw) is NO_ACTION


def test_each_configured_part_draws_once_delay_first() -> None:
    draws = iter([0.9, 0.1])  # delay misses at 50 %, abort hits at 50 %
    fault = FaultDecision(delay=1.0, delay_percentage=50, abort_status=500, abort_percentage=50)
    assert decide(fault, lambda: next(draws)) == FaultAction(abort_status=500)


# --------------------------------------------------------------------------- per request id


def test_draw_for_is_stable_and_in_unit_interval() -> None:
    values = [draw_for(f"req-{i}", "fault.abort") for i in range(20_000)]
    assert values == [draw_for(f"req-{i}", "fault.abort") for i in range(20_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.01
    assert draw_for("req-1", "fault.abort") != draw_for("req-1", "fault.delay")


def test_decide_for_is_deterministic_per_request_id() -> None:
    fault = FaultDecision(delay=1.0, delay_percentage=50, abort_status=500, abort_percentage=50)
    first = [decide_for(fault, f"id-{i}") for i in range(2_000)]
    again = [decide_for(fault, f"id-{i}") for i in range(2_000)]
    assert first == again
    delayed = sum(a.delay is not None for a in first) / len(first)
    aborted = sum(a.aborts for a in first) / len(first)
    both = sum(a.delay is not None and a.aborts for a in first) / len(first)
    assert abs(delayed - 0.5) < 0.05
    assert abs(aborted - 0.5) < 0.05
    assert abs(both - 0.25) < 0.05  # the two salts draw independently


# --------------------------------------------------------------------------- config → decision


def test_legacy_integer_percent_is_resolved_by_the_router() -> None:
    legacy = HTTPFaultInjection.model_validate(
        {"abort": {"httpStatus": 500, "percent": 30}, "delay": {"fixedDelay": "2s", "percent": 10}}
    )
    fault = fault_decision(legacy)
    assert (fault.abort_percentage, fault.delay_percentage, fault.delay) == (30.0, 10.0, 2.0)
    delayed, aborted, _ = share(fault, seed=3)
    assert abs(aborted - 0.30) < 0.005
    assert abs(delayed - 0.10) < 0.005


def test_neither_percentage_nor_percent_means_never() -> None:
    fault = fault_decision(
        HTTPFaultInjection.model_validate({"abort": {"grpcStatus": "UNAVAILABLE"}})
    )
    assert share(fault) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- flags and replies


def test_flags_use_envoy_spelling() -> None:
    assert NO_ACTION.flags == ""
    assert FaultAction(delay=1.0).flags == "DI"
    assert FaultAction(abort_status=500).flags == "FI"
    assert FaultAction(abort_grpc_status="UNAVAILABLE").flags == "FI"
    assert FaultAction(delay=1.0, abort_status=500).flags == "DI,FI"


def test_abort_parts_for_http_status() -> None:
    status, headers, body = abort_response_parts(FaultAction(abort_status=500))
    assert status == 500
    assert body == b"fault filter abort" == ABORT_BODY
    assert dict(headers) == {
        "content-type": "text/plain",
        "content-length": "18",
        "x-mesh-response-flags": "FI",
    }
    response = httpx.Response(status, headers=headers, content=body)
    assert response.text == "fault filter abort"
    assert response.headers["content-length"] == "18"


def test_abort_parts_for_grpc_status() -> None:
    status, headers, body = abort_response_parts(FaultAction(abort_grpc_status="UNAVAILABLE"))
    assert status == 200
    assert body == b""
    assert dict(headers) == {
        "content-type": "application/grpc",
        "grpc-status": "14",
        "grpc-message": "fault filter abort",
        "x-mesh-response-flags": "FI",
    }


def test_abort_after_delay_reports_both_flags() -> None:
    _, headers, _ = abort_response_parts(FaultAction(delay=0.5, abort_status=503))
    assert dict(headers)["x-mesh-response-flags"] == "DI,FI"


def test_abort_parts_refuse_an_action_that_does_not_abort() -> None:
    with pytest.raises(ValueError, match="does not abort"):
        abort_response_parts(FaultAction(delay=1.0))
    with pytest.raises(ValueError, match="gRPC status"):
        abort_response_parts(FaultAction(abort_grpc_status="NOT_A_CODE"))
