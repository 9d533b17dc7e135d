"""Retries: Envoy's retry_on conditions, safe methods, backoff, Retry-After, budgets, deadlines."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import datetime, timezone
from email.utils import format_datetime

import httpx
import pytest
import tenacity

from meshlib.clients.httpx.errors import classify_error, outcome_of_error
from meshlib.clock import Clock
from meshlib.config.model import RetryBudget as RetryBudgetConfig
from meshlib.errors import CircuitOpenError, DeadlineExceeded, NoHealthyUpstream
from meshlib.policies.retry import (
    IDEMPOTENT_METHODS,
    Outcome,
    RetryBudget,
    RetryPolicy,
    RetryState,
    attempt_timeout,
    backoff_delay,
    policy_for,
    retry_after,
    wait_envoy_backoff,
)
from meshlib.routing import DEFAULT_RETRY, RetryDecision

WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    """Monotonic time that moves only when something sleeps or the test advances it."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL + self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


def policy(*conditions: str, codes: tuple[int, ...] = (), attempts: int = 2) -> RetryPolicy:
    return RetryPolicy.from_decision(
        RetryDecision(
            attempts=attempts, retry_on=conditions, retriable_status_codes=frozenset(codes)
        )
    )


def status(code: int, **headers: str) -> Outcome:
    return Outcome.of_response(code, {k.replace("_", "-"): v for k, v in headers.items()})


CONNECT = Outcome(error="connect-failure", request_sent=False)
RESET = Outcome(error="reset")
RESET_UNSENT = Outcome(error="reset", request_sent=False)
REFUSED = Outcome(error="refused-stream")
PER_TRY = Outcome(error="per-try-timeout")
OTHER = Outcome(error="other", request_sent=False)
ALL_OUTCOMES = {
    "200": status(200),
    "409": status(409),
    "429": status(429),
    "500": status(500),
    "501": status(501),
    "502": status(502),
    "503": status(503),
    "504": status(504),
    "599": status(599),
    "connect": CONNECT,
    "reset": RESET,
    "reset-unsent": RESET_UNSENT,
    "refused": REFUSED,
    "per-try": PER_TRY,
    "other": OTHER,
    "grpc-1": status(200, grpc_status="1"),
    "grpc-4": status(200, grpc_status="4"),
    "grpc-8": status(200, grpc_status="8"),
    "grpc-13": status(200, grpc_status="13"),
    "grpc-14": status(200, grpc_status="14"),
    "grpc-0": status(200, grpc_status="0"),
    "ratelimited-429": status(429, x_envoy_ratelimited="true"),
}

#: For every condition, exactly the outcomes it retries (for an idempotent method).
RETRIED_BY = {
    "5xx": {"500", "501", "502", "503", "504", "599", "connect", "reset", "reset-unsent",
            "refused", "per-try"},
    "gateway-error": {"502", "503", "504", "connect", "reset", "reset-unsent", "refused",
                      "per-try"},
    "reset": {"connect", "reset", "reset-unsent", "refused", "per-try"},
    "connect-failure": {"connect"},
    "retriable-4xx": {"409"},
    "refused-stream": {"refused"},
    "reset-before-request": {"connect", "reset-unsent"},
    "envoy-ratelimited": {"ratelimited-429"},
    "cancelled": {"grpc-1"},
    "deadline-exceeded": {"grpc-4"},
    "resource-exhausted": {"grpc-8"},
    "internal": {"grpc-13"},
    "unavailable": {"grpc-14"},
    "retriable-headers": set(),  # nothing in Istio configures the header matchers
}  # fmt: skip


# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize("condition", sorted(RETRIED_BY))
def test_each_condition_retries_exactly_its_outcomes(condition: str) -> None:
    p = policy(condition)
    retried = {name for name, o in ALL_OUTCOMES.items() if p.retryable(o, "GET")}
    assert retried == RETRIED_BY[condition]


def test_retriable_status_codes_use_the_configured_list() -> None:
    p = policy("retriable-status-codes", codes=(429, 503))
    assert p.retryable(status(429), "GET")
    assert p.retryable(status(503), "GET")
    assert not p.retryable(status(500), "GET")
    assert not p.retryable(status(502), "GET")
    assert not p.retryable(CONNECT, "GET")


def test_codes_without_the_condition_do_nothing() -> None:
    assert not policy("connect-failure", codes=(503,)).retryable(status(503), "GET")


def test_ratelimited_header_suppresses_every_other_condition() -> None:
    p = policy("5xx", "retriable-status-codes", codes=(429,))
    assert p.retryable(status(503), "GET")
    assert not p.retryable(status(503, x_envoy_ratelimited="true"), "GET")
    assert not p.retryable(status(429, x_envoy_ratelimited="true"), "GET")
    assert policy("envoy-ratelimited", "5xx").retryable(
        status(503, x_envoy_ratelimited="true"), "GET"
    )


def test_grpc_conditions_read_the_grpc_status_header() -> None:
    p = policy("unavailable", "cancelled")
    assert p.retryable(status(200, grpc_status="14"), "POST", allow_non_idempotent=True)
    assert not p.retryable(status(200, grpc_status="13"), "GET")
    assert not p.retryable(status(200, grpc_status="garbage"), "GET")
    assert not p.retryable(status(200), "GET")
    assert status(200, grpc_status=" 14 ").grpc_status == 14


def test_istio_default_policy() -> None:
    p = policy_for(DEFAULT_RETRY)
    assert p.attempts == 2
    assert p.retryable(status(503), "GET")
    assert p.retryable(CONNECT, "GET")
    assert p.retryable(REFUSED, "GET")
    assert p.retryable(status(200, grpc_status="14"), "GET")
    assert p.retryable(status(200, grpc_status="1"), "GET")
    assert not p.retryable(status(500), "GET")
    assert not p.retryable(status(502), "GET")
    assert not p.retryable(RESET, "GET")
    assert not p.retryable(PER_TRY, "GET")
    assert policy_for(DEFAULT_RETRY) is p


def test_no_response_and_no_error_is_never_retried() -> None:
    assert not policy("5xx", "reset", "reset-before-request").retryable(Outcome(), "GET")


@pytest.mark.parametrize("code", [200, 204, 301, 404, 409, 429, 500, 502, 503, 504])
@pytest.mark.parametrize(
    "conditions",
    [("5xx",), ("gateway-error",), ("retriable-4xx",), ("connect-failure",), ("unavailable",),
     ("envoy-ratelimited",), ("retriable-status-codes",)],
)  # fmt: skip
def test_cheap_screen_never_misses_a_retryable_response(
    code: int, conditions: tuple[str, ...]
) -> None:
    p = policy(*conditions, codes=(429,))
    for headers in ({}, {"grpc-status": "14"}, {"x-envoy-ratelimited": "1"}, {"grpc-status": "0"}):
        outcome = Outcome.of_response(code, headers)
        if p.retryable(outcome, "GET"):
            assert p.may_retry_response(code, headers)
    assert not p.may_retry_response(200, {})


def test_screen_is_off_when_attempts_are_zero() -> None:
    assert not policy("5xx", attempts=0).may_retry_response(503, {})


# --------------------------------------------------------------------------- safe methods


def test_post_is_not_retried_on_503_but_is_on_connect_failure() -> None:
    p = policy("5xx", "connect-failure", "refused-stream", "reset-before-request")
    assert not p.retryable(status(503), "POST")
    assert not p.retryable(RESET, "POST")
    assert not p.retryable(PER_TRY, "POST")
    assert p.retryable(CONNECT, "POST")
    assert p.retryable(REFUSED, "POST")
    assert p.retryable(RESET_UNSENT, "POST")


def test_opt_in_allows_non_idempotent_retries() -> None:
    p = policy("5xx")
    for method in ("POST", "PATCH", "CONNECT", "post"):
        assert not p.retryable(status(503), method)
        assert p.retryable(status(503), method, allow_non_idempotent=True)
        assert p.retryable(RESET, method, allow_non_idempotent=True)


def test_the_policy_carries_the_route_opt_in() -> None:
    decision = RetryDecision(attempts=1, retry_on=("5xx",))
    opted = RetryPolicy(attempts=1, conditions=frozenset({"5xx"}), allow_non_idempotent=True)
    assert not RetryPolicy.from_decision(decision).retryable(status(503), "POST")
    assert opted.retryable(status(503), "POST")
    assert not opted.retryable(status(503), "POST", allow_non_idempotent=False)
    state = RetryState(opted, clock=FakeClock(), rng=random.Random(1), method="POST")
    assert state.next_delay(status(503), 1) is not None


@pytest.mark.parametrize("method", [*sorted(IDEMPOTENT_METHODS), "get", "delete"])
def test_idempotent_methods_are_retried(method: str) -> None:
    assert policy("5xx").retryable(status(503), method)


# --------------------------------------------------------------------------- classifying errors


def refused_stream_error(text: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(text)


class _StreamReset:
    """Stands in for h2's ``StreamReset`` event, as httpcore passes it to its exception."""

    error_code = 7

    def __str__(self) -> str:
        return "<StreamReset stream_id:1, error_code:7, remote_reset:True>"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "connect-failure"),
        (httpx.ConnectTimeout("slow"), "connect-failure"),
        (ConnectionRefusedError(), "connect-failure"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "reset"),
        (httpx.ReadError("Connection reset by peer"), "reset"),
        (httpx.WriteError("Broken pipe"), "reset"),
        (httpx.CloseError("close"), "reset"),
        (ConnectionResetError(), "reset"),
        (BrokenPipeError(), "reset"),
        (
            refused_stream_error(
                "<StreamReset stream_id:1, error_code:ErrorCodes.REFUSED_STREAM, "
                "remote_reset:True>"
            ),
            "refused-stream",
        ),
        (refused_stream_error("<StreamReset stream_id:3, error_code:7, remote_reset:True>"),
         "refused-stream"),
        (httpx.RemoteProtocolError(_StreamReset()), "refused-stream"),  # type: ignore[arg-type]
        (refused_stream_error("<StreamReset stream_id:3, error_code:8, remote_reset:True>"),
         "reset"),
        (httpx.ReadTimeout("read"), "reset"),
        (httpx.WriteTimeout("write"), "reset"),
        (httpx.PoolTimeout("pool"), "reset"),
        (httpx.LocalProtocolError("bad"), "other"),
        (httpx.UnsupportedProtocol("ftp"), "other"),
        (CircuitOpenError("open"), "other"),
        (NoHealthyUpstream("none"), "other"),
        (DeadlineExceeded("late"), "other"),
        (ValueError("bug"), "other"),
        (KeyboardInterrupt(), "other"),
    ],
)  # fmt: skip
def test_classify_error(exc: BaseException, kind: str) -> None:
    assert classify_error(exc) == kind


def test_refused_stream_found_in_the_cause() -> None:
    outer = httpx.RemoteProtocolError("stream reset")
    outer.__cause__ = Exception("<StreamReset stream_id:5, error_code:7, remote_reset:True>")
    assert classify_error(outer) == "refused-stream"


@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout("r"), httpx.WriteTimeout("w"), httpx.PoolTimeout("p"), TimeoutError()]
)
def test_timeouts_of_a_per_try_deadline(exc: BaseException) -> None:
    assert classify_error(exc, per_try_timeout=True) == "per-try-timeout"
    assert classify_error(exc) == "reset"
    assert classify_error(httpx.ConnectTimeout("c"), per_try_timeout=True) == "connect-failure"


def test_outcome_of_error_knows_what_was_not_sent() -> None:
    assert outcome_of_error(httpx.ConnectError("x")) == CONNECT
    assert outcome_of_error(httpx.PoolTimeout("x")) == RESET_UNSENT
    assert outcome_of_error(httpx.ReadError("x")) == RESET
    assert outcome_of_error(httpx.ReadTimeout("x"), per_try_timeout=True) == PER_TRY


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (ConnectionRefusedError(), Outcome(error="connect-failure", request_sent=False)),
        (ConnectionResetError(), Outcome(error="reset")),
        (BrokenPipeError(), Outcome(error="reset")),
        (TimeoutError(), Outcome(error="reset")),
        (CircuitOpenError("open"), Outcome(error="other")),
        (ValueError("bug"), Outcome(error="other")),
        (httpx.ConnectError("its adapter classifies it"), Outcome(error="other")),
    ],
)  # fmt: skip
def test_outcome_of_a_builtin_error(exc: BaseException, outcome: Outcome) -> None:
    assert Outcome.of_error(exc) == outcome
    if isinstance(exc, TimeoutError):
        assert Outcome.of_error(exc, per_try_timeout=True) == Outcome(error="per-try-timeout")


def test_outcome_of_response_reads_retry_after_only_where_it_matters() -> None:
    headers = httpx.Headers({"Retry-After": "3", "X-Envoy-RateLimited": "1"})
    assert Outcome.of_response(503, headers).retry_after == 3.0
    assert Outcome.of_response(429, headers).retry_after == 3.0
    assert Outcome.of_response(500, headers).retry_after is None
    assert Outcome.of_response(503, headers).envoy_ratelimited
    date = format_datetime(datetime.fromtimestamp(WALL + 10, timezone.utc), usegmt=True)
    assert Outcome.of_response(503, {"retry-after": date}).retry_after is None  # no wall clock
    assert Outcome.of_response(503, {"retry-after": date}, wall=lambda: WALL).retry_after == 10.0


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(("retry", "bound"), [(1, 0.025), (2, 0.075), (3, 0.175)])
def test_backoff_ranges_match_envoy(retry: int, bound: float) -> None:
    rng = random.Random(7)
    samples = [backoff_delay(retry, 0.025, rng) for _ in range(20_000)]
    assert min(samples) >= 0.0
    assert max(samples) < bound
    assert max(samples) > 0.99 * bound
    assert abs(sum(samples) / len(samples) - bound / 2) < 0.02 * bound


def test_backoff_is_capped_at_ten_times_base_by_default() -> None:
    rng = random.Random(3)
    for retry in (4, 5, 10, 64, 1000):
        samples = [backoff_delay(retry, 0.025, rng) for _ in range(5_000)]
        assert max(samples) < 0.25
        assert max(samples) > 0.24
    samples = [backoff_delay(3, 0.025, rng, cap=0.1) for _ in range(5_000)]
    assert 0.099 < max(samples) < 0.1


def test_backoff_rejects_retry_zero_and_handles_zero_base() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        backoff_delay(0, 0.025, random.Random(1))
    assert backoff_delay(1, 0.0, random.Random(1)) == 0.0


def test_backoff_is_reproducible_with_a_seed() -> None:
    a = [backoff_delay(2, 0.025, random.Random(11)) for _ in range(3)]
    b = [backoff_delay(2, 0.025, random.Random(11)) for _ in range(3)]
    assert a == b


def test_tenacity_wait_strategy_uses_envoy_backoff() -> None:
    rng = random.Random(5)
    wait = wait_envoy_backoff(0.025, rng)
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = 3
    samples = [wait(state) for _ in range(2_000)]
    assert 0.17 < max(samples) < 0.175


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("45", 45.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("999999999999999999999", 60.0),  # capped
        ("-5", None),
        ("soon", None),
        ("", None),
        ("1e3", None),
        ("nan", None),
        ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0),
        ("Thursday, 01-Jan-26 00:00:30 GMT", 30.0),  # RFC 850, obsolete but valid
        ("Wed, 31 Dec 2025 23:59:00 GMT", 0.0),  # in the past: never negative
        ("Fri, 02 Jan 2026 00:00:00 GMT", 60.0),  # a day away: capped
        ("Thu, 01 Jan 2026 00:00:30 -0000", 30.0),
        ("Thu, 32 Foo 2026 99:00:30 GMT", None),
    ],
)
def test_retry_after(value: str, expected: float | None) -> None:
    assert retry_after({"retry-after": value}, WALL, cap=60.0) == expected


def test_retry_after_absent_and_case_insensitive() -> None:
    assert retry_after({}, WALL, cap=60.0) is None
    assert retry_after(httpx.Headers({"RETRY-AFTER": "2"}), WALL, cap=60.0) == 2.0


# --------------------------------------------------------------------------- one request


def make_state(
    p: RetryPolicy,
    clock: FakeClock,
    *,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
    method: str = "GET",
    seed: int = 1,
    allow_non_idempotent: bool = False,
) -> RetryState:
    return RetryState(
        p,
        clock=clock,
        rng=random.Random(seed),
        deadline=deadline,
        budget=budget,
        method=method,
        allow_non_idempotent=allow_non_idempotent,
    )


def test_fake_clock_is_a_clock() -> None:
    assert isinstance(FakeClock(), Clock)


def run(state: RetryState, clock: FakeClock, outcomes: list[Outcome]) -> int:
    """Play ``outcomes`` through ``state`` like a pipeline would; returns the tries made."""
    tries = 0
    for outcome in outcomes:
        tries += 1
        delay = state.next_delay(outcome, tries)
        if delay is None:
            break
        clock.sleep(delay)
    return tries


def test_attempts_bound_the_tries() -> None:
    clock = FakeClock()
    state = make_state(policy("5xx", attempts=2), clock)
    assert run(state, clock, [status(503)] * 10) == 3
    assert state.retries == 2
    assert state.stopped_by == "retry-limit"
    assert state.flag == "URX"
    assert len(clock.sleeps) == 2
    assert clock.sleeps[0] < 0.025
    assert clock.sleeps[1] < 0.075


def test_zero_attempts_never_retry() -> None:
    state = make_state(policy("5xx", attempts=0), FakeClock())
    assert state.next_delay(status(503), 1) is None
    assert state.stopped_by == "retry-limit"


def test_success_stops_with_not_retryable() -> None:
    clock = FakeClock()
    state = make_state(policy("5xx"), clock)
    assert run(state, clock, [status(503), status(200), status(503)]) == 2
    assert state.stopped_by == "not-retryable"
    assert state.flag == ""


def test_post_gets_a_retry_state_answer_too() -> None:
    clock = FakeClock()
    p = policy("5xx", "connect-failure")
    assert make_state(p, clock, method="post").next_delay(status(503), 1) is None
    assert make_state(p, clock, method="post").next_delay(CONNECT, 1) is not None
    assert (
        make_state(p, clock, method="POST", allow_non_idempotent=True).next_delay(status(503), 1)
        is not None
    )


def test_deadline_stops_retries() -> None:
    clock = FakeClock(start=100.0)
    state = make_state(policy("5xx", attempts=5), clock, deadline=100.05)
    tries = 0
    while True:
        tries += 1
        clock.t += 0.01  # each try takes 10 ms
        delay = state.next_delay(status(503), tries)
        if delay is None:
            break
        assert clock.now() + delay < 100.05
        clock.sleep(delay)
    assert state.stopped_by == "deadline"
    assert tries < 6


def test_deadline_already_passed_allows_no_retry() -> None:
    clock = FakeClock(start=10.0)
    state = make_state(policy("5xx"), clock, deadline=10.0)
    assert state.next_delay(status(503), 1) is None
    assert state.stopped_by == "deadline"


def test_retry_after_replaces_backoff_on_429_and_503() -> None:
    clock = FakeClock()
    p = policy("retriable-status-codes", "5xx", codes=(429,), attempts=3)
    state = make_state(p, clock)
    assert state.next_delay(status(503, retry_after="2"), 1) == 2.0
    assert state.next_delay(status(429, retry_after="0"), 2) == 0.0
    delay = state.next_delay(status(500, retry_after="2"), 3)  # not read on a 500
    assert delay is not None
    assert delay < 0.175


def test_retry_after_is_capped_and_never_beyond_the_deadline() -> None:
    clock = FakeClock(start=0.0)
    capped = RetryState(policy("5xx"), clock=clock, rng=random.Random(1), retry_after_cap=5.0)
    assert capped.next_delay(status(503, retry_after="3600"), 1) == 5.0
    late = make_state(policy("5xx"), clock, deadline=3.0)
    assert late.next_delay(status(503, retry_after="4"), 1) is None
    assert late.stopped_by == "deadline"


def test_attempt_timeout() -> None:
    assert attempt_timeout(None, None, 5.0) is None
    assert attempt_timeout(2.0, None, 5.0) == 2.0
    assert attempt_timeout(None, 8.0, 5.0) == 3.0
    assert attempt_timeout(2.0, 8.0, 5.0) == 2.0
    assert attempt_timeout(2.0, 6.5, 5.0) == 1.5
    assert attempt_timeout(2.0, 4.0, 5.0) == 0.0
    decision = RetryDecision(attempts=1, retry_on=("5xx",), per_try_timeout=2.0)
    state = RetryState(
        RetryPolicy.from_decision(decision), clock=FakeClock(5.0), rng=random.Random(), deadline=6.0
    )
    assert state.attempt_timeout() == 1.0


# --------------------------------------------------------------------------- budgets


def fill(budget: RetryBudget, active: int) -> int:
    """Start ``active`` requests, then take retry slots until refused; returns slots taken."""
    for _ in range(active):
        budget.request_started()
    taken = 0
    while budget.try_acquire_retry():
        taken += 1
        assert taken < 10_000
    return taken


def test_budget_min_concurrency_with_few_requests() -> None:
    budget = RetryBudget.from_config(RetryBudgetConfig())
    assert budget.uses_budget
    assert (budget.percent, budget.min_retry_concurrency) == (20.0, 3)
    assert fill(budget, 10) == 3
    assert budget.refused == 1
    assert budget.granted == 3


def test_budget_percent_with_many_requests() -> None:
    budget = RetryBudget.from_config(RetryBudgetConfig())
    assert fill(budget, 100) == 20
    assert budget.limit == 20
    budget.retry_finished()
    assert budget.try_acquire_retry()
    assert not budget.try_acquire_retry()


def test_budget_from_explicit_config() -> None:
    config = RetryBudgetConfig(percent=50.0, min_retry_concurrency=1)
    budget = RetryBudget.from_config(config, max_retries=2)
    assert fill(budget, 10) == 5  # the budget replaces maxRetries
    zero = RetryBudget.from_config(RetryBudgetConfig(min_retry_concurrency=0))
    assert fill(zero, 4) == 0  # 20 % of 4 is 0.8, truncated like Envoy
    assert fill(RetryBudget(percent=20.0), 5) == 3


def test_without_budget_max_retries_applies() -> None:
    unlimited = RetryBudget.from_config(None)
    assert not unlimited.uses_budget
    assert unlimited.limit is None
    for _ in range(1_000):
        assert unlimited.try_acquire_retry()
    limited = RetryBudget.from_config(None, max_retries=3)
    assert fill(limited, 1_000) == 3


def test_retry_state_holds_a_slot_until_the_next_decision() -> None:
    budget = RetryBudget(percent=20.0, min_retry_concurrency=1)
    clock = FakeClock()
    first = make_state(policy("5xx", attempts=3), clock, budget=budget)
    second = make_state(policy("5xx", attempts=3), clock, budget=budget)
    assert first.next_delay(status(503), 1) is not None
    assert budget.active_retries == 1
    assert second.next_delay(status(503), 1) is None
    assert second.stopped_by == "overflow"
    assert second.flag == "UO"
    assert first.next_delay(status(503), 2) is not None  # released, then taken again
    assert budget.active_retries == 1
    assert first.next_delay(status(200), 3) is None
    assert budget.active_retries == 0
    with make_state(policy("5xx"), clock, budget=budget) as third:
        assert third.next_delay(status(503), 1) is not None
        assert budget.active_retries == 1
    assert budget.active_retries == 0
    third.finish()
    assert budget.active_retries == 0


def test_threads_hammering_the_budget_keep_counts_consistent() -> None:
    budget = RetryBudget(percent=20.0, min_retry_concurrency=3)
    peak = 0
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        nonlocal peak
        start.wait()
        for _ in range(2_000):
            budget.request_started()
            if budget.try_acquire_retry():
                with lock:
                    peak = max(peak, budget.active_retries)
                budget.retry_finished()
            budget.request_finished()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.active_requests == 0
    assert budget.active_retries == 0
    assert budget.granted + budget.refused == 8 * 2_000
    assert budget.granted > 0
    assert peak <= 3  # at most 8 active requests: the limit is max(int(1.6), 3)


def test_counters_never_go_negative() -> None:
    budget = RetryBudget()
    budget.request_finished()
    budget.retry_finished()
    assert (budget.active_requests, budget.active_retries) == (0, 0)


# --------------------------------------------------------------------------- tenacity


class Upstream:
    """Scripted replies: status codes or exceptions, in order; records what was closed."""

    def __init__(self, *replies: int | BaseException) -> None:
        self.replies = list(replies)
        self.calls = 0
        self.closed: list[int] = []

    def send(self) -> httpx.Response:
        reply = self.replies[self.calls]
        self.calls += 1
        if isinstance(reply, BaseException):
            raise reply
        return httpx.Response(reply)

    async def asend(self) -> httpx.Response:
        await asyncio.sleep(0)
        return self.send()

    def close(self, response: httpx.Response) -> None:
        self.closed.append(response.status_code)

    async def aclose(self, response: httpx.Response) -> None:
        await asyncio.sleep(0)
        self.close(response)


def judge(response: httpx.Response) -> Outcome:
    return Outcome.of_response(response.status_code, response.headers)


def first_try(state: RetryState, upstream: Upstream) -> float:
    """The pipeline's first try, outside any retry machinery; returns the granted delay."""
    response = upstream.send()
    delay = state.next_delay(judge(response), 1)
    assert delay is not None
    upstream.close(response)
    return delay


def test_tenacity_runs_the_granted_retries_and_returns_the_last_response() -> None:
    clock = FakeClock()
    budget = RetryBudget(percent=20.0)
    upstream = Upstream(503, 503, 200)
    state = make_state(policy("5xx", attempts=2), clock, budget=budget)
    delay = first_try(state, upstream)
    response = state.retrying(judge, judge_error=outcome_of_error, discard=upstream.close)(
        upstream.send
    )
    assert response.status_code == 200
    assert upstream.calls == 3
    assert upstream.closed == [503, 503]
    assert clock.sleeps[0] == delay
    assert len(clock.sleeps) == 2
    assert state.stopped_by == "not-retryable"
    assert budget.active_retries == 0


def test_tenacity_stops_at_the_attempt_limit_without_retry_error() -> None:
    clock = FakeClock()
    upstream = Upstream(503, 503, 503, 503)
    state = make_state(policy("5xx", attempts=2), clock)
    first_try(state, upstream)
    response = state.retrying(judge, judge_error=outcome_of_error, discard=upstream.close)(
        upstream.send
    )
    assert response.status_code == 503
    assert upstream.calls == 3
    assert upstream.closed == [503, 503]  # the response returned is left open
    assert state.stopped_by == "retry-limit"


def test_tenacity_stops_at_the_deadline_and_on_overflow() -> None:
    clock = FakeClock(start=0.0)
    upstream = Upstream(503, 503, 503, 503)
    state = make_state(policy("5xx", attempts=3), clock, deadline=0.02, seed=4)
    delay = first_try(state, upstream)
    assert delay < 0.02
    response = state.retrying(judge, judge_error=outcome_of_error, discard=upstream.close)(
        upstream.send
    )
    assert response.status_code == 503
    assert state.stopped_by == "deadline"
    assert clock.now() < 0.02

    # the budget shrinks while the retry runs: the next retry overflows
    budget = RetryBudget(percent=50.0, min_retry_concurrency=0)
    budget.request_started()
    budget.request_started()
    upstream = Upstream(503, 503, 503)
    state = make_state(policy("5xx", attempts=3), clock, budget=budget)
    first_try(state, upstream)
    assert budget.active_retries == 1

    def send() -> httpx.Response:
        budget.request_finished()
        budget.request_finished()
        return upstream.send()

    assert state.retrying(judge, judge_error=outcome_of_error)(send).status_code == 503
    assert (state.stopped_by, state.flag, upstream.calls) == ("overflow", "UO", 2)
    assert (budget.active_retries, budget.refused) == (0, 1)


def test_tenacity_reraises_the_last_exception_as_is() -> None:
    clock = FakeClock()
    upstream = Upstream(503, httpx.ConnectError("down"), httpx.ConnectError("still down"))
    state = make_state(policy("5xx", attempts=2), clock)
    first_try(state, upstream)
    with pytest.raises(httpx.ConnectError, match="still down"):
        state.retrying(judge, judge_error=outcome_of_error, discard=upstream.close)(upstream.send)
    assert upstream.calls == 3


def test_tenacity_never_retries_an_other_error() -> None:
    clock = FakeClock()
    upstream = Upstream(503, ValueError("bug"), 200)
    state = make_state(policy("5xx", "reset"), clock)
    first_try(state, upstream)
    with pytest.raises(ValueError, match="bug"):
        state.retrying(judge, judge_error=outcome_of_error)(upstream.send)
    assert upstream.calls == 2


def test_tenacity_needs_a_granted_retry() -> None:
    state = make_state(policy("5xx"), FakeClock())
    with pytest.raises(ValueError, match="no retry granted"):
        state.retrying(judge, judge_error=outcome_of_error)
    assert state.next_delay(status(200), 1) is None
    with pytest.raises(ValueError, match="no retry granted"):
        state.async_retrying(judge, judge_error=outcome_of_error)


async def test_async_tenacity_retries_with_async_discard() -> None:
    clock = FakeClock()
    upstream = Upstream(503, httpx.ReadError("reset"), 503, 200)
    state = make_state(policy("5xx", attempts=3), clock)
    first_try(state, upstream)
    response: httpx.Response = await state.async_retrying(
        judge, judge_error=outcome_of_error, discard=upstream.aclose
    )(upstream.asend)
    assert response.status_code == 200
    assert upstream.calls == 4
    assert upstream.closed == [503, 503]
    assert len(clock.sleeps) == 3
    assert clock.sleeps[2] < 0.175


async def test_async_tenacity_reraises_without_retry_error() -> None:
    clock = FakeClock()
    upstream = Upstream(503, httpx.ConnectError("a"), httpx.ConnectError("b"))
    state = make_state(policy("5xx"), clock)
    first_try(state, upstream)
    with pytest.raises(httpx.ConnectError, match="b"):
        await state.async_retrying(judge, judge_error=outcome_of_error, discard=upstream.close)(
            upstream.asend
        )
