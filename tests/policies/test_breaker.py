"""Circuit breaker (on pybreaker, sync and asyncio) and Envoy connection-pool limits."""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import Callable

import pybreaker
import pytest

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.config.model import ConnectionPoolSettings, HTTPSettings, TCPSettings
from meshlib.errors import CircuitOpenError, ConfigError, DeadlineExceeded, MeshRequestError
from meshlib.policies.breaker import (
    UNLIMITED,
    Breaker,
    BreakerSettings,
    Lease,
    PoolLimits,
    counts_as_failure,
)


class FakeClock:
    """Monotonic time that moves only when told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    async def asleep(self, seconds: float) -> None:
        self.t += seconds


class UpstreamError(Exception):
    pass


def make(
    failures: int = 3, timeout: float = 10.0, successes: int = 1, **kwargs: object
) -> tuple[Breaker, FakeClock, list[tuple[str, str]]]:
    clock = FakeClock()
    transitions: list[tuple[str, str]] = []
    settings = BreakerSettings(
        failure_threshold=failures, reset_timeout=timeout, success_threshold=successes
    )
    breaker = Breaker(
        "reviews|v2",
        settings,
        clock=clock,
        on_transition=lambda old, new: transitions.append((old, new)),
        **kwargs,  # type: ignore[arg-type]
    )
    return breaker, clock, transitions


def fail(breaker: Breaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.permit().record(503, None)


# --------------------------------------------------------------------------- breaker: states


def test_opens_after_failure_threshold_and_fails_fast_without_calling() -> None:
    breaker, _, transitions = make(failures=3)
    calls = 0

    def upstream() -> str:
        nonlocal calls
        calls += 1
        raise UpstreamError

    for _ in range(2):
        with pytest.raises(UpstreamError):
            breaker.call(upstream)
    assert breaker.state == "closed"
    assert breaker.failure_count == 2
    # The call that trips the breaker keeps its own error (pybreaker would raise its own).
    with pytest.raises(UpstreamError):
        breaker.call(upstream)
    assert breaker.state == "open"
    assert transitions == [("closed", "open")]

    with pytest.raises(CircuitOpenError) as err:
        breaker.call(upstream)
    assert calls == 3  # fail fast: the upstream was not called
    assert err.value.flag == "UO"
    assert err.value.destination == "reviews|v2"
    assert isinstance(err.value, MeshRequestError)


def test_success_resets_the_consecutive_failure_count() -> None:
    breaker, _, _ = make(failures=3)
    fail(breaker, 2)
    breaker.permit().success()
    assert breaker.failure_count == 0
    fail(breaker, 2)
    assert breaker.state == "closed"


def test_half_opens_after_reset_timeout_of_fake_time_then_closes() -> None:
    breaker, clock, transitions = make(failures=1, timeout=10.0)
    fail(breaker)
    clock.advance(9.999)
    with pytest.raises(CircuitOpenError):
        breaker.permit()
    clock.advance(0.001)
    trial = breaker.permit()
    assert breaker.state == "half-open"
    trial.success()
    assert breaker.state == "closed"
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_closes_only_after_success_threshold_trials() -> None:
    breaker, clock, _ = make(failures=1, timeout=5.0, successes=3)
    fail(breaker)
    clock.advance(5.0)
    for expected in (1, 2):
        breaker.permit().success()
        assert breaker.state == "half-open"
        assert breaker.success_count == expected
    breaker.permit().success()
    assert breaker.state == "closed"


def test_failed_trial_reopens_for_a_new_reset_timeout() -> None:
    breaker, clock, transitions = make(failures=2, timeout=10.0)
    fail(breaker, 2)
    clock.advance(10.0)
    breaker.permit().failure()
    assert breaker.state == "open"
    clock.advance(9.0)  # 19 s after the first trip, 9 s after the re-open
    with pytest.raises(CircuitOpenError):
        breaker.permit()
    clock.advance(1.0)
    breaker.permit().success()
    assert breaker.state == "closed"
    assert transitions == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


def test_half_open_admits_one_trial_at_a_time() -> None:
    breaker, clock, _ = make(failures=1, timeout=1.0, successes=2)
    fail(breaker)
    clock.advance(1.0)
    trial = breaker.permit()
    with pytest.raises(CircuitOpenError, match="trial"):
        breaker.permit()
    trial.success()  # 1 of 2: still half-open, and the next trial may go
    assert breaker.state == "half-open"
    second = breaker.permit()
    with pytest.raises(CircuitOpenError):
        breaker.permit()
    second.success()
    assert breaker.state == "closed"
    breaker.permit().success()


def test_admit_answers_as_permit_does_without_raising() -> None:
    """The data plane asks ``admit``: the same decisions as ``permit``, a refusal as its reason."""
    breaker, clock, _ = make(failures=1, timeout=1.0, successes=1)
    ticket = breaker.admit()
    assert not isinstance(ticket, str)
    ticket.failure()
    assert breaker.admit() == "circuit breaker is open"
    clock.advance(1.0)
    trial = breaker.admit()
    assert not isinstance(trial, str)
    assert breaker.admit() == "circuit breaker is half-open and its trial call is in flight"
    with pytest.raises(CircuitOpenError, match="trial call is in flight"):
        breaker.permit()
    trial.success()
    assert breaker.state == "closed"


def test_half_open_trial_is_exclusive_across_threads() -> None:
    breaker, clock, _ = make(failures=1, timeout=1.0)
    fail(breaker)
    clock.advance(1.0)
    barrier = threading.Barrier(8)
    admitted: list[object] = []
    refused: list[object] = []

    def contender() -> None:
        barrier.wait()
        try:
            admitted.append(breaker.permit())
        except CircuitOpenError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(admitted), len(refused)) == (1, 7)


def test_outcomes_of_calls_admitted_before_half_open_are_ignored() -> None:
    breaker, clock, _ = make(failures=1, timeout=1.0)
    straggler = breaker.permit()  # admitted while closed, still in flight
    fail(breaker)
    clock.advance(1.0)
    trial = breaker.permit()
    straggler.failure()  # would re-open the circuit if counted
    assert breaker.state == "half-open"
    trial.success()
    assert breaker.state == "closed"


def test_lost_trial_is_given_up_after_reset_timeout() -> None:
    breaker, clock, _ = make(failures=1, timeout=2.0)
    fail(breaker)
    clock.advance(2.0)
    lost = breaker.permit()
    clock.advance(1.0)
    with pytest.raises(CircuitOpenError):
        breaker.permit()
    clock.advance(1.0)
    fresh = breaker.permit()
    lost.failure()  # settled too late: no longer the trial
    assert breaker.state == "half-open"
    fresh.success()
    assert breaker.state == "closed"


def test_reset_closes_and_settling_twice_is_a_no_op() -> None:
    breaker, _, _ = make(failures=1)
    ticket = breaker.permit()
    ticket.failure()
    assert breaker.state == "open"
    ticket.failure()
    ticket.success()
    breaker.reset()
    assert breaker.state == "closed"
    assert breaker.failure_count == 0


# --------------------------------------------------------------------------- breaker: ticket use


def test_ticket_context_manager_records_by_exception() -> None:
    breaker, _, _ = make(failures=2, exclude=[KeyError])
    with breaker.permit():
        pass
    assert breaker.failure_count == 0
    with pytest.raises(UpstreamError), breaker.permit():
        raise UpstreamError
    assert breaker.failure_count == 1
    # pybreaker's exclusions: a business error is not a failure (and counts as a success).
    with pytest.raises(KeyError), breaker.permit():
        raise KeyError("x")
    assert breaker.failure_count == 0
    with breaker.permit() as ticket:
        assert ticket.record(500, None) is True
    assert breaker.failure_count == 1
    assert ticket.settled


def test_cancelled_call_counts_neither_way_but_a_cancelled_trial_reopens() -> None:
    breaker, clock, transitions = make(failures=1, timeout=1.0)
    with pytest.raises(KeyboardInterrupt), breaker.permit():
        raise KeyboardInterrupt
    assert (breaker.state, breaker.failure_count) == ("closed", 0)
    fail(breaker)
    clock.advance(1.0)
    with pytest.raises(KeyboardInterrupt), breaker.permit():
        raise KeyboardInterrupt
    assert breaker.state == "open"
    assert breaker.failure_count == 1  # the abandoned trial was not counted as a failure
    assert transitions[-1] == ("half-open", "open")
    with pytest.raises(CircuitOpenError):
        breaker.permit()


def test_no_pybreaker_exception_escapes_a_tripping_failure() -> None:
    breaker, _, _ = make(failures=1)
    ticket = breaker.permit()
    ticket.failure(UpstreamError())  # pybreaker raises CircuitBreakerError here internally
    with pytest.raises(CircuitOpenError) as err:
        breaker.permit()
    assert not isinstance(err.value, pybreaker.CircuitBreakerError)


def test_on_transition_callback_errors_do_not_break_the_breaker() -> None:
    def broken(old: str, new: str) -> None:
        raise RuntimeError("metrics down")

    breaker = Breaker("d", BreakerSettings(failure_threshold=1), on_transition=broken)
    fail(breaker)
    assert breaker.state == "open"


async def test_async_call_and_half_open_with_tasks() -> None:
    breaker, clock, _ = make(failures=2, timeout=3.0)
    calls = 0

    async def upstream(ok: bool) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if not ok:
            raise UpstreamError
        return "ok"

    assert await breaker.acall(upstream, True) == "ok"
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await breaker.acall(upstream, False)
    with pytest.raises(CircuitOpenError):
        await breaker.acall(upstream, True)
    assert calls == 3

    clock.advance(3.0)
    release = asyncio.Event()

    async def slow_trial() -> str:
        await release.wait()
        return "trial"

    trial = asyncio.create_task(breaker.acall(slow_trial))
    await asyncio.sleep(0)  # the trial task is admitted and parks on the event
    others = await asyncio.gather(
        *(breaker.acall(upstream, True) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, CircuitOpenError) for o in others)
    release.set()
    assert await trial == "trial"
    assert breaker.state == "closed"
    assert await breaker.acall(upstream, True) == "ok"


async def test_cancelled_async_trial_reopens() -> None:
    breaker, clock, _ = make(failures=1, timeout=1.0)
    fail(breaker)
    clock.advance(1.0)
    task = asyncio.create_task(breaker.acall(asyncio.sleep, 3600))
    await asyncio.sleep(0)
    assert breaker.state == "half-open"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "open"


def test_breaker_is_thread_safe_under_mixed_outcomes() -> None:
    breaker = Breaker("d", BreakerSettings(failure_threshold=10**9))
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for n in range(500):
            with breaker.permit() as ticket:
                if (n + i) % 7 == 0:
                    ticket.failure()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert breaker.state == "closed"
    breaker.permit().success()
    assert breaker.failure_count == 0


# --------------------------------------------------------------------------- breaker: settings


@pytest.mark.parametrize(
    ("count", "status", "kind", "expected"),
    [
        (None, 200, None, False),
        (None, 404, None, False),
        (None, 500, None, True),
        (None, 503, None, True),
        (None, 599, None, True),
        (None, None, "connect-failure", True),
        (None, None, "per-try-timeout", True),
        (None, None, "reset", True),
        (None, None, "refused-stream", True),
        (None, None, "other", True),
        (None, None, None, False),
        ({"gateway-error"}, 500, None, False),
        ({"gateway-error"}, 502, None, True),
        ({"gateway-error"}, 504, None, True),
        ({"gateway-error"}, None, "connect-failure", False),
        ({"5xx"}, None, "reset", False),
        ({"5xx"}, 501, None, True),
        ({"connect-failure"}, 503, None, False),
        ({"connect-failure"}, None, "connect-failure", True),
        ({"timeout"}, None, "per-try-timeout", True),
        ({"timeout"}, None, "reset", False),
        ({"reset"}, None, "refused-stream", True),
        ({"reset"}, None, "per-try-timeout", False),
    ],
)
def test_counts_as_failure(
    count: set[str] | None, status: int | None, kind: str | None, expected: bool
) -> None:
    settings = BreakerSettings() if count is None else BreakerSettings(count=frozenset(count))
    assert counts_as_failure(settings, status, kind) is expected


def test_settings_defaults_and_validation() -> None:
    settings = BreakerSettings()
    assert (settings.failure_threshold, settings.reset_timeout, settings.success_threshold) == (
        5,
        30.0,
        1,
    )
    assert settings.count == frozenset({"5xx", "connect-failure", "timeout", "reset"})
    assert BreakerSettings(count={"5xx"}).count == frozenset({"5xx"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="count: unknown outcome '4xx'"):
        BreakerSettings(count=frozenset({"4xx"}))
    with pytest.raises(ConfigError, match="failure_threshold"):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(ConfigError, match="success_threshold"):
        BreakerSettings(success_threshold=0)
    with pytest.raises(ConfigError, match="reset_timeout"):
        BreakerSettings(reset_timeout=-1)


def test_redis_url_without_the_redis_package_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail
    with pytest.raises(ConfigError, match="needs the 'redis' package") as err:
        Breaker("d", BreakerSettings(redis="redis://localhost:6379/0"))
    assert isinstance(err.value.__cause__, ImportError)


def test_shared_state_through_a_real_redis_server(redis_url: str) -> None:
    assert pybreaker.HAS_REDIS_SUPPORT
    clock = FakeClock()

    def process_breaker(destination: str) -> Breaker:
        settings = BreakerSettings(failure_threshold=2, reset_timeout=5.0, redis=redis_url)
        return Breaker(destination, settings, clock=clock)

    one, two, other = process_breaker("ratings"), process_breaker("ratings"), process_breaker("x")
    fail(one)
    fail(two)  # the failures of both "processes" add up
    assert one.state == "open"
    assert two.state == "open"
    assert other.state == "closed"  # one namespace per destination
    with pytest.raises(CircuitOpenError):
        one.permit()
    clock.advance(6.0)  # the shared open time is kept in whole seconds
    two.permit().success()
    assert one.state == "closed"


# --------------------------------------------------------------------------- pool limits


def pool(
    connections: int | None = None,
    pending: int | None = None,
    requests: int | None = None,
    retries: int | None = None,
    per_connection: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> PoolLimits:
    return PoolLimits(
        ConnectionPoolSettings(
            tcp=TCPSettings(max_connections=connections),
            http=HTTPSettings(
                http1_max_pending_requests=pending,
                http2_max_requests=requests,
                max_retries=retries,
                max_requests_per_connection=per_connection,
            ),
        ),
        destination="httpbin",
        clock=clock,
    )


def test_istio_defaults_are_unlimited() -> None:
    for limits in (PoolLimits(None), PoolLimits(ConnectionPoolSettings()), pool(0, 0, 0, 0, 0)):
        assert limits.max_connections == UNLIMITED == 2**32 - 1
        assert limits.max_pending_requests == UNLIMITED
        assert limits.max_requests == UNLIMITED
        assert limits.keepalive_allowed
    assert not pool(per_connection=1).keepalive_allowed
    assert pool(per_connection=2).keepalive_allowed


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for another thread to reach a state; not a timing assumption."""
    tick = threading.Event()
    for _ in range(10_000):
        if condition():
            return
        tick.wait(0.001)
    raise AssertionError("condition not reached")


def run_thread_callers(limits: PoolLimits, callers: int) -> list[str]:
    """``callers`` threads start together; each holds its slot until ``go`` is set."""
    barrier = threading.Barrier(callers)
    go = threading.Event()
    reports: queue.Queue[str] = queue.Queue()

    def caller() -> None:
        barrier.wait()
        lease = limits.acquire(timeout=10)
        if lease is None:
            reports.put("overflow")
            return
        reports.put("ok")
        go.wait(10)
        lease.release()

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    # Whatever the order of arrival: first one in flight, next pending, the rest overflow.
    immediate = [reports.get(timeout=10) for _ in range(callers - 1)]
    # With 3 callers the overflow proves the queue is full; with 2, wait for the second to queue.
    wait_until(lambda: limits.pending == 1)
    assert limits.active == 1
    go.set()
    for t in threads:
        t.join()
    outcomes = [*immediate, *(reports.get_nowait() for _ in range(reports.qsize()))]
    assert (limits.active, limits.pending) == (0, 0)
    return outcomes


def test_istio_circuit_breaking_task_with_threads() -> None:
    # DestinationRule: maxConnections 1, http1MaxPendingRequests 1 (fortio -c 3 / -c 2).
    limits = pool(connections=1, pending=1)
    outcomes = run_thread_callers(limits, 3)
    assert sorted(outcomes) == ["ok", "ok", "overflow"]
    assert limits.pending_overflow == 1
    assert limits.upstream_rq_pending_overflow == 1

    limits = pool(connections=1, pending=1)
    assert sorted(run_thread_callers(limits, 2)) == ["ok", "ok"]
    assert limits.pending_overflow == 0


async def run_task_callers(limits: PoolLimits, callers: int) -> list[str]:
    go = asyncio.Event()
    outcomes: list[str] = []

    async def caller() -> None:
        lease = await limits.aacquire(timeout=10)
        if lease is None:
            outcomes.append("overflow")
            return
        outcomes.append("ok")
        await go.wait()
        lease.release()

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert (limits.active, limits.pending) == (1, 1 if callers > 1 else 0)
    go.set()
    await asyncio.gather(*tasks)
    assert (limits.active, limits.pending) == (0, 0)
    return outcomes


async def test_istio_circuit_breaking_task_with_tasks() -> None:
    limits = pool(connections=1, pending=1)
    assert sorted(await run_task_callers(limits, 3)) == ["ok", "ok", "overflow"]
    assert limits.pending_overflow == 1
    limits = pool(connections=1, pending=1)
    assert sorted(await run_task_callers(limits, 2)) == ["ok", "ok"]
    assert limits.pending_overflow == 0


def test_max_requests_overflows_even_with_free_connections() -> None:
    limits = pool(requests=2)
    first, second = limits.acquire(), limits.acquire()
    assert first is not None
    assert second is not None
    assert limits.acquire() is None
    assert limits.requests_overflow == 1
    assert limits.pending_overflow == 0
    assert limits.upstream_rq_pending_overflow == 1
    first.release()
    third = limits.acquire()
    assert third is not None
    second.release()
    third.release()
    assert limits.active == 0


def test_max_retries_is_not_a_limit_of_the_pool() -> None:
    """``maxRetries`` limits retries through the destination's retry budget alone (one
    mechanism, one counter: ``RetryBudget.refused``); the pool keeps no second, unused tally."""
    limits = pool(connections=1, retries=1)
    for name in ("max_retries", "try_acquire_retry", "retries_active", "retry_overflow"):
        assert not hasattr(limits, name), name


def test_a_pending_thread_waits_until_the_deadline_on_the_pools_clock() -> None:
    """Deadlines are measured on the mesh's clock, pool waits too: on a fake clock a pending
    request's deadline passes when that clock passes it, not after that much real time (here an
    hour of it)."""
    clock = FakeClock()
    limits = pool(connections=1, pending=5, clock=clock)
    holder = limits.acquire()
    assert holder is not None
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(limits.acquire(deadline=clock.now() + 3600))
        except DeadlineExceeded as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    wait_until(lambda: limits.pending == 1)
    clock.advance(3600)
    waiter.join(timeout=5)
    assert not waiter.is_alive(), "the wait ran on real time"
    assert isinstance(outcome[0], DeadlineExceeded)
    assert limits.pending == 0
    holder.release()
    assert limits.active == 0


async def test_a_pending_task_waits_until_the_deadline_on_the_pools_clock() -> None:
    clock = FakeClock()
    limits = pool(connections=1, pending=5, clock=clock)
    holder = await limits.aacquire()
    assert holder is not None
    waiter = asyncio.create_task(limits.aacquire(deadline=clock.now() + 3600))
    while limits.pending == 0:
        await asyncio.sleep(0)
    clock.advance(3600)
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(waiter, 5)
    assert limits.pending == 0
    holder.release()


def test_on_a_fake_clock_a_slot_handed_over_ends_the_wait() -> None:
    """A fake clock that nobody advances: the pending request gets the slot when it is freed."""
    clock = FakeClock()
    limits = pool(connections=1, pending=5, clock=clock)
    holder = limits.acquire()
    assert holder is not None
    got: queue.Queue[object] = queue.Queue()
    waiter = threading.Thread(
        target=lambda: got.put(limits.acquire(deadline=clock.now() + 1)), daemon=True
    )
    waiter.start()
    wait_until(lambda: limits.pending == 1)
    holder.release()
    lease = got.get(timeout=5)
    assert isinstance(lease, Lease)
    lease.release()
    assert limits.active == 0


def test_double_release_does_not_free_a_second_slot() -> None:
    limits = pool(connections=1, pending=0)
    lease = limits.acquire()
    assert lease is not None
    lease.release()
    lease.release()
    assert limits.active == 0
    with limits.acquire() as again:  # type: ignore[union-attr]
        assert limits.active == 1
        assert again is not None
    assert limits.active == 0


def test_thread_waiter_times_out_and_leaves_the_queue() -> None:
    limits = pool(connections=1, pending=5)
    holder = limits.acquire()
    assert holder is not None
    with pytest.raises(DeadlineExceeded) as err:
        limits.acquire(timeout=0.02)
    assert err.value.flag == "UT"
    assert err.value.destination == "httpbin"
    assert limits.pending == 0
    with pytest.raises(DeadlineExceeded):
        limits.acquire(timeout=0)  # deadline already spent: not even queued
    assert limits.pending == 0
    holder.release()
    assert limits.active == 0  # the slot was not handed to a departed waiter


async def test_task_waiter_times_out_and_leaves_the_queue() -> None:
    limits = pool(connections=1, pending=5)
    holder = await limits.aacquire()
    assert holder is not None
    with pytest.raises(DeadlineExceeded):
        await limits.aacquire(timeout=0.02)
    assert limits.pending == 0
    holder.release()
    assert limits.active == 0


async def test_cancelled_waiter_leaks_no_slot() -> None:
    limits = pool(connections=1, pending=5)
    holder = await limits.aacquire()
    assert holder is not None
    waiter = asyncio.create_task(limits.aacquire())
    await asyncio.sleep(0)
    assert limits.pending == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limits.pending == 0
    holder.release()
    assert limits.active == 0


async def test_slot_handed_to_a_task_cancelled_before_it_resumes_goes_on() -> None:
    limits = pool(connections=1, pending=5)
    holder = await limits.aacquire()
    assert holder is not None
    doomed = asyncio.create_task(limits.aacquire())
    heir = asyncio.create_task(limits.aacquire())
    await asyncio.sleep(0)
    assert limits.pending == 2
    holder.release()  # hands the slot to `doomed`...
    doomed.cancel()  # ...which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await doomed
    lease = await asyncio.wait_for(heir, 5)
    assert lease is not None
    assert (limits.active, limits.pending) == (1, 0)
    lease.release()
    assert limits.active == 0


async def test_pending_waiters_are_served_fifo() -> None:
    limits = pool(connections=1)
    holder = await limits.aacquire()
    assert holder is not None
    order: list[int] = []

    async def waiter(i: int) -> None:
        lease = await limits.aacquire(timeout=5)
        assert lease is not None
        order.append(i)
        await asyncio.sleep(0)
        lease.release()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)
    holder.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_thread_releases_wake_tasks_and_tasks_wake_threads() -> None:
    limits = pool(connections=1)
    holder = limits.acquire()
    assert holder is not None
    task = asyncio.create_task(limits.aacquire(timeout=5))
    await asyncio.sleep(0)
    threading.Thread(target=holder.release).start()
    lease = await task
    assert lease is not None

    got = threading.Event()

    def thread_waiter() -> None:
        other = limits.acquire(timeout=5)
        assert other is not None
        got.set()
        other.release()

    t = threading.Thread(target=thread_waiter)
    t.start()
    while limits.pending == 0:
        await asyncio.sleep(0.001)
    lease.release()
    await asyncio.to_thread(t.join)
    assert got.is_set()
    assert (limits.active, limits.pending) == (0, 0)


def test_stress_threads_and_tasks_together() -> None:
    limits = pool(connections=4, pending=6)
    in_flight = 0
    peak = 0
    count_lock = threading.Lock()
    granted = 0

    def enter() -> None:
        nonlocal in_flight, peak, granted
        with count_lock:
            in_flight += 1
            granted += 1
            peak = max(peak, in_flight)

    def leave() -> None:
        nonlocal in_flight
        with count_lock:
            in_flight -= 1

    start = threading.Event()

    def thread_worker() -> None:
        start.wait(10)
        for _ in range(300):
            lease = limits.acquire(timeout=5)
            if lease is None:
                continue
            enter()
            leave()
            lease.release()

    async def task_worker() -> None:
        for _ in range(60):
            lease = await limits.aacquire(timeout=5)
            if lease is None:
                await asyncio.sleep(0)
                continue
            enter()
            await asyncio.sleep(0)
            leave()
            lease.release()

    async def tasks() -> None:
        workers = [asyncio.create_task(task_worker()) for _ in range(50)]
        start.set()  # the threads start while the tasks run
        await asyncio.gather(*workers)

    threads = [threading.Thread(target=thread_worker) for _ in range(16)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    assert (limits.active, limits.pending) == (0, 0)
    assert peak == 4
    attempts = 16 * 300 + 50 * 60
    assert granted + limits.pending_overflow == attempts
    assert limits.requests_overflow == 0
    # Every slot came back: all four can be taken at once, and a fifth must wait.
    leases = [limits.acquire(timeout=0) for _ in range(4)]
    assert all(lease is not None for lease in leases)
    with pytest.raises(DeadlineExceeded):
        limits.acquire(timeout=0)
