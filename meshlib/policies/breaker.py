"""Circuit breaking, twice: a Hystrix-style breaker on pybreaker, and Envoy's pool limits.

meshlib has two things that Istio users call "circuit breaking"; both end a request at once with
response flag ``UO`` and are never retried: an open breaker raises
``meshlib.errors.CircuitOpenError``; a pool overflow is answered with a 503 ``UO`` response, as
Envoy answers it.

``Breaker`` — one per destination and subset
    The classic closed / open / half-open breaker (Nygard's *Release It!*, Hystrix). Istio has no
    such breaker (its ``outlierDetection`` ejects single endpoints instead); meshlib offers it on
    top, built on pybreaker's own state machine:

    * **closed**: calls go through; ``failure_threshold`` consecutive failures open the circuit
      (pybreaker counts consecutive failures, a success resets the count; Hystrix 1.5 counts an
      error percentage over a rolling window instead).
    * **open**: calls fail at once, without being made, for ``reset_timeout`` seconds measured on
      the injected ``Clock``.
    * **half-open**: after the timeout, exactly **one** trial call is let through at a time and
      every concurrent call is refused, as Hystrix does (``attemptExecution``: only the request
      that moves the breaker from OPEN to HALF_OPEN runs). ``success_threshold`` consecutive
      successful trials close the circuit; a failed trial opens it again for a new
      ``reset_timeout``. A trial that is abandoned (its task cancelled) also re-opens it, as in
      Hystrix ("if the executing command gets unsubscribed, the status will transition to OPEN").

    What counts as a failure is decided by outcome, not only by exception: ``counts_as_failure``
    maps an HTTP status or an error kind through ``BreakerSettings.count``.

``PoolLimits`` — Envoy's circuit breakers (``DestinationRule.trafficPolicy.connectionPool``)
    Concurrency limits, not a state machine: at most ``tcp.maxConnections`` requests in flight
    (HTTP/1.1: one request per connection), up to ``http.http1MaxPendingRequests`` more waiting
    for one of them, and ``http.http2MaxRequests`` requests in flight overall. See the class for
    the exact rules and where meshlib differs. (``http.maxRetries`` limits retries: that is the
    retry budget's, ``meshlib.policies.retry.RetryBudget``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, ParamSpec, Protocol, TypeVar, cast

from meshlib.clock import SYSTEM_CLOCK, Clock, SystemClock
from meshlib.errors import CircuitOpenError, ConfigError, DeadlineExceeded

if TYPE_CHECKING:
    import pybreaker

    from meshlib.config.model import ConnectionPoolSettings
    from meshlib.policies._pybreaker import ClockedMemoryStorage

__all__ = [
    "DEFAULT_FAILURE_OUTCOMES",
    "ERROR_KINDS",
    "FAILURE_OUTCOMES",
    "UNLIMITED",
    "Breaker",
    "BreakerSettings",
    "BreakerState",
    "ErrorKind",
    "Lease",
    "PoolLimits",
    "Ticket",
    "counts_as_failure",
]

_log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

BreakerState = Literal["closed", "open", "half-open"]
ErrorKind = Literal["connect-failure", "reset", "refused-stream", "per-try-timeout", "other"]

ERROR_KINDS: Final = frozenset(
    {"connect-failure", "reset", "refused-stream", "per-try-timeout", "other"}
)
"""How an attempt can fail without a response (the transport's classification)."""

FAILURE_OUTCOMES: Final = frozenset({"5xx", "gateway-error", "connect-failure", "timeout", "reset"})
"""The outcome classes ``BreakerSettings.count`` may name."""

DEFAULT_FAILURE_OUTCOMES: Final = frozenset({"5xx", "connect-failure", "timeout", "reset"})

_GATEWAY_ERRORS: Final = frozenset({502, 503, 504})
_SETTINGS_FILE: Final = "BreakerSettings"

# pybreaker's state names (pybreaker itself is imported when the first breaker is made: it
# imports redis, when installed, which loads much more)
_CLOSED: Final = "closed"
_OPEN: Final = "open"
_HALF_OPEN: Final = "half-open"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """How one ``Breaker`` trips and recovers.

    ``failure_threshold``: consecutive failures that open the circuit (pybreaker's ``fail_max``).
    ``reset_timeout``: seconds the circuit stays open before one trial call is let through.
    ``success_threshold``: consecutive successful trials that close it again.
    ``count``: which outcomes are failures, from ``FAILURE_OUTCOMES`` (see ``counts_as_failure``).
    ``redis``: share the breaker's state between processes through Redis: a ``redis://`` URL or a
    ``redis.Redis`` client (pybreaker's ``CircuitRedisStorage``, one namespace per destination).
    Needs the optional ``redis`` package.
    """

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    success_threshold: int = 1
    count: frozenset[str] = DEFAULT_FAILURE_OUTCOMES
    redis: object | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.count, frozenset):
            object.__setattr__(self, "count", frozenset(self.count))
        if self.failure_threshold < 1:
            raise ConfigError.single(_SETTINGS_FILE, 0, "failure_threshold", "must be at least 1")
        if self.success_threshold < 1:
            raise ConfigError.single(_SETTINGS_FILE, 0, "success_threshold", "must be at least 1")
        if self.reset_timeout < 0:
            raise ConfigError.single(_SETTINGS_FILE, 0, "reset_timeout", "must be >= 0 seconds")
        unknown = sorted(self.count - FAILURE_OUTCOMES)
        if unknown:
            known = ", ".join(sorted(FAILURE_OUTCOMES))
            raise ConfigError.single(
                _SETTINGS_FILE, 0, "count", f"unknown outcome {unknown[0]!r} (use {known})"
            )


def counts_as_failure(
    settings: BreakerSettings, status: int | None, error_kind: str | None
) -> bool:
    """Whether one attempt's outcome is a failure for the breaker.

    ``status`` is the response's HTTP status (``None`` when there was no response) and
    ``error_kind`` the transport's classification of an attempt that got no response (one of
    ``ERROR_KINDS``; an unknown kind is treated as ``"other"``). The names in ``settings.count``:

    * ``5xx``: a response with status 500–599; ``gateway-error``: 502, 503 or 504 only.
    * ``connect-failure``: the connection could not be made.
    * ``timeout``: the per-try timeout expired (``per-try-timeout``).
    * ``reset``: the upstream gave no response at all: a reset or refused stream, or any other
      transport error (``reset``, ``refused-stream``, ``other``).

    Where meshlib differs from Envoy's ``retry_on`` vocabulary these names come from: there,
    ``5xx`` and ``gateway-error`` also cover connect failures, resets and refused streams; here
    each name covers only its own outcomes, so a breaker that counts only ``5xx`` responses can be
    configured. The default counts all of them.
    """
    count = settings.count
    if (
        status is not None
        and 500 <= status <= 599
        and ("5xx" in count or ("gateway-error" in count and status in _GATEWAY_ERRORS))
    ):
        return True
    if error_kind is None:
        return False
    if error_kind == "connect-failure":
        return "connect-failure" in count
    if error_kind == "per-try-timeout":
        return "timeout" in count
    return "reset" in count


# --------------------------------------------------------------------------- pybreaker storage


class _OpenClock(Protocol):
    """A storage that can say how long the circuit has been open, on the injected clock."""

    def seconds_open(self) -> float | None: ...


# --------------------------------------------------------------------------- breaker


class _OutcomeError(Exception):
    """The exception pybreaker's state machine records for a failed *outcome* (no exception)."""


_SUCCESS: Final = 0
_FAILURE: Final = 1
_ABANDON: Final = 2


class Ticket:
    """Permission for one call through a ``Breaker``; settle it exactly once with its outcome.

    Use it as a context manager (in sync and async code alike: nothing in it awaits)::

        with breaker.permit() as ticket:           # CircuitOpenError when open
            response = await send(request)          # or a sync call
            ticket.record(response.status_code, None)

    Leaving the block unsettled records a success; an ``Exception`` escaping it records a failure
    whatever ``BreakerSettings.count`` says (pybreaker's excluded exceptions count as successes,
    as in pybreaker), so classify transport errors with ``record`` to apply it; a ``BaseException``
    that is not an ``Exception`` (task cancelled, ``KeyboardInterrupt``) abandons the call: it
    counts neither way, except that an abandoned half-open trial re-opens the circuit.
    Settling again is a no-op.
    """

    __slots__ = ("_breaker", "_settled")

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    def success(self) -> None:
        """The call succeeded."""
        self._breaker._settle(self, _SUCCESS, None)

    def failure(self, error: BaseException | None = None) -> None:
        """The call failed; ``error``, if given, goes through pybreaker's exclusions."""
        self._breaker._settle(self, _FAILURE, error)

    def abandon(self) -> None:
        """The call ended without an outcome (cancelled): it counts neither way."""
        self._breaker._settle(self, _ABANDON, None)

    def record(self, status: int | None, error_kind: str | None) -> bool:
        """Settle by outcome through ``counts_as_failure``; returns whether it was a failure."""
        if error_kind is None and status is not None and status < 500:  # never a failure
            self._breaker._settle(self, _SUCCESS, None)
            return False
        failed = counts_as_failure(self._breaker.settings, status, error_kind)
        if failed:
            what = f"HTTP {status}" if error_kind is None else error_kind
            self._breaker._settle(self, _FAILURE, _OutcomeError(what))
        else:
            self._breaker._settle(self, _SUCCESS, None)
        return failed

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._settled:
            return
        if exc is None:
            self.success()
        elif isinstance(exc, Exception):
            self.failure(exc)
        else:
            self.abandon()


class Breaker:
    """A closed / open / half-open circuit breaker for one destination (+ subset), on pybreaker.

    The state machine is pybreaker's (``pybreaker.CircuitBreaker`` with its ``fail_max``,
    ``reset_timeout``, ``success_threshold``, exclusions, listeners and storage): failures and
    successes are recorded through its current state object, so its counters, its thresholds, its
    transitions and its listeners are the ones in force. What meshlib does differently is *when*
    the breaker's lock is held. ``pybreaker.CircuitBreaker.call`` holds it for the whole call,
    which serialises every call through the breaker, and its ``call_async`` is Tornado's. Here:

    1. ``permit()`` decides under the breaker's lock, in microseconds: closed → go; open and
       ``reset_timeout`` not elapsed on the injected clock → ``CircuitOpenError``; elapsed →
       pybreaker's ``half_open()`` and this caller becomes the one trial; half-open with a trial
       in flight → ``CircuitOpenError``.
    2. The call runs (or is awaited) outside the lock.
    3. The ``Ticket`` records the outcome under the lock through pybreaker's state.

    So sync and async callers share one breaker, and concurrency is never limited by it.

    pybreaker's own ``CircuitOpenState.before_call`` is not used: on an elapsed timeout it makes
    the call itself (inside the lock), which an adapter cannot allow. The open timeout check it
    performs is the one comparison done here instead, on the injected clock.

    Where meshlib differs from pybreaker: in half-open, pybreaker lets every caller through one by
    one (its lock queues them); meshlib refuses concurrent callers as Hystrix does. The call that
    trips the breaker keeps its own outcome (pybreaker raises ``CircuitBreakerError`` from it);
    only later calls fail fast. Outcomes of calls admitted before a half-open period are ignored
    while it lasts: only the trial decides. A trial never settled (a lost ticket) is given up
    after ``reset_timeout`` and a new trial is let through.

    With ``settings.redis`` the state is shared between processes (pybreaker's Redis storage):
    each process still admits at most one trial at a time of its own, and every permit and
    outcome makes blocking Redis round trips, from async code too.
    """

    __slots__ = (
        "_cb",
        "_clock",
        "_lock",
        "_memory",
        "_on_transition",
        "_storage",
        "_trial",
        "_trial_since",
        "_tripped",
        "destination",
        "settings",
    )

    def __init__(
        self,
        destination: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_transition: Callable[[str, str], object] | None = None,
        exclude: Iterable[type[BaseException] | Callable[[BaseException], bool]] = (),
    ) -> None:
        """``on_transition(old, new)`` is told every state change (for metrics); it runs under
        the breaker's lock, so keep it short. ``exclude`` lists exception types (or predicates)
        that are not failures, as pybreaker's ``exclude``."""
        self.destination = destination
        self.settings = settings = settings if settings is not None else BreakerSettings()
        self._clock = clock
        self._on_transition = on_transition
        self._trial: Ticket | None = None
        self._trial_since = 0.0
        from meshlib.policies import _pybreaker  # noqa: PLC0415 - pybreaker loads redis

        storage: _pybreaker.ClockedMemoryStorage | _pybreaker.ClockedRedisStorage
        if settings.redis is None:
            storage = _pybreaker.ClockedMemoryStorage(clock)
        else:
            storage = _pybreaker.redis_storage(destination, settings.redis, clock)
        self._storage: _OpenClock = storage
        self._memory: ClockedMemoryStorage | None = (
            storage if isinstance(storage, _pybreaker.ClockedMemoryStorage) else None
        )
        self._tripped: type[Exception] = _pybreaker.CircuitBreakerError
        self._cb = _pybreaker.CircuitBreaker(
            fail_max=settings.failure_threshold,
            reset_timeout=settings.reset_timeout,
            success_threshold=settings.success_threshold,
            exclude=list(exclude),
            listeners=[_pybreaker.TransitionListener(self._state_changed)],
            state_storage=storage,
            name=destination,
            throw_new_error_on_trip=True,
        )
        # The breaker's own lock: pybreaker's open()/close()/half_open() take it too.
        self._lock = self._cb._lock

    # ----------------------------------------------------------------- observation

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half-open"`` (pybreaker's state names)."""
        with self._lock:
            return cast("BreakerState", self._cb.state.name)

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted so far (pybreaker's ``fail_counter``)."""
        return self._cb.fail_counter

    @property
    def success_count(self) -> int:
        """Consecutive successful trials while half-open (pybreaker's ``success_counter``)."""
        return self._cb.success_counter

    def __repr__(self) -> str:
        return f"<Breaker {self.destination!r} {self.state}>"

    # ----------------------------------------------------------------- use

    def permit(self) -> Ticket:
        """Permission for one call, or ``CircuitOpenError`` (flag ``UO``) when the circuit is
        open or a half-open trial is already in flight. Settle the ticket with the outcome."""
        found = self.admit()
        if type(found) is str:
            raise self._refusal(found)
        return found  # type: ignore[return-value]

    def admit(self) -> Ticket | str:
        """``permit`` without raising: a ticket, or the reason the call is refused (what
        ``CircuitOpenError`` would say). The data plane's refusals cost no exception here."""
        memory = self._memory
        if memory is not None and memory.state == _CLOSED:
            return Ticket(self)  # closed, in this process's memory: nothing to decide
        with self._lock:
            state = self._cb.state
            name = state.name
            if name == _CLOSED:
                return Ticket(self)
            now = self._clock.now()
            if name == _OPEN:
                opened_for = self._storage.seconds_open()
                if opened_for is not None and opened_for < self._cb.reset_timeout:
                    return "circuit breaker is open"
                self._cb.half_open()  # pybreaker's transition; tells the listeners
            elif self._trial is not None and now - self._trial_since < self._cb.reset_timeout:
                return "circuit breaker is half-open and its trial call is in flight"
            ticket = Ticket(self)
            self._trial = ticket
            self._trial_since = now
            return ticket

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` through the breaker: an exception is a failure, a return a success."""
        with self.permit():
            return fn(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(...)`` through the breaker; the breaker's lock is never held across it."""
        with self.permit():
            return await fn(*args, **kwargs)

    def reset(self) -> None:
        """Close the circuit now (an operator's action)."""
        with self._lock:
            self._cb.close()

    # ----------------------------------------------------------------- internals

    def _refusal(self, reason: str) -> CircuitOpenError:
        return CircuitOpenError(reason, destination=self.destination)

    def _settle(self, ticket: Ticket, outcome: int, error: BaseException | None) -> None:
        memory = self._memory
        if (
            outcome == _SUCCESS
            and memory is not None
            and ticket is not self._trial
            and memory.counter == 0
            and memory.state == _CLOSED
        ):
            ticket._settled = True  # a success with no failure counted: nothing to reset
            return
        with self._lock:
            if ticket._settled:
                return
            ticket._settled = True
            trial = self._trial is ticket
            if trial:
                self._trial = None
            state = self._cb.state
            if state.name == _HALF_OPEN and not trial:
                return  # only the trial decides a half-open circuit
            if outcome == _SUCCESS:
                state._handle_success()
            elif outcome == _FAILURE:
                # On a trip pybreaker raises CircuitBreakerError: the call that tripped keeps
                # its own outcome; only later calls fail fast.
                with contextlib.suppress(self._tripped):
                    state._handle_error(error or _OutcomeError("failure"), reraise=False)
            elif trial and state.name == _HALF_OPEN:
                self._cb.open()  # abandoned trial: open again, as Hystrix does

    def _state_changed(
        self,
        old: pybreaker.CircuitBreakerState | None,
        new: pybreaker.CircuitBreakerState,
    ) -> None:
        """Called by pybreaker, under the lock, on every transition."""
        self._trial = None  # a trial belongs to the half-open period that admitted it
        if old is None or old.name == new.name or self._on_transition is None:
            return
        try:
            self._on_transition(old.name, new.name)
        except Exception:
            _log.exception("breaker %s: on_transition callback failed", self.destination)


# --------------------------------------------------------------------------- pool limits

UNLIMITED: Final = 2**32 - 1
"""Istio's default for every connection-pool threshold (it replaces Envoy's 1024/1024/1024/3)."""


def _threshold(value: int | None) -> int:
    # Istio (pilot applyConnectionPool) cannot tell 0 from unset and applies a threshold only > 0.
    return value if value else UNLIMITED


#: How often (real seconds) a request pending on a clock other than the system's looks at that
#: clock to see whether its deadline has passed.
_CLOCK_POLL: Final = 0.01


class _Waiter:
    """One pending request: a parked thread (``event``) or an asyncio task (``future``)."""

    __slots__ = ("event", "future", "granted", "loop")

    def __init__(
        self,
        event: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.event = event
        self.loop = loop
        self.future = future
        self.granted = False

    def wake(self) -> bool:
        """Tell the waiter it holds a slot now; ``False`` when it can no longer be told."""
        if self.event is not None:
            self.event.set()
            return True
        assert self.loop is not None
        assert self.future is not None
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # its event loop is closed: the task is gone
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _watch(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[None],
    clock: Clock,
    deadline: float,
    system: bool,
    timer: list[asyncio.TimerHandle],
) -> None:
    """End the wait on ``future`` when ``clock`` reaches ``deadline``: one timer on the system
    clock (the loop's own time), else a look at ``clock`` every ``_CLOCK_POLL`` seconds.
    ``timer`` holds the handle to cancel."""
    left = deadline - clock.now()
    if future.done():
        return
    if left <= 0:
        _resolve(future)
        return
    step = left if system else min(left, _CLOCK_POLL)
    handle = loop.call_later(step, _watch, loop, future, clock, deadline, system, timer)
    if timer:
        timer[0] = handle
    else:
        timer.append(handle)


class Lease:
    """One request slot of a ``PoolLimits``; ``release()`` it once.

    Releasing twice is a no-op. Also a context manager that releases on exit.
    """

    __slots__ = ("_pool", "_released")

    def __init__(self, pool: PoolLimits) -> None:
        self._pool = pool
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        self._pool._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


_GRANTED: Final = 0
_OVERFLOW: Final = 1
_QUEUE: Final = 2


class PoolLimits:
    """Envoy's circuit breakers for one destination, from Istio's ``connectionPool`` settings.

    Envoy keeps these limits per cluster — one destination host (and subset, and port) —
    shared by all of its endpoints, not per endpoint: make one ``PoolLimits`` per destination
    and subset and share it between every request to any of its endpoints.

    The rules (Envoy's, as Istio configures them):

    * Every threshold left unset — or set to 0, which Istio cannot tell from unset — is
      ``2^32 − 1`` (Istio replaces Envoy's defaults of 1024 / 1024 / 1024 / 3).
    * ``tcp.maxConnections``: HTTP/1.1 sends one request per connection, so at most that many
      requests are in flight (``active``).
    * ``http.http1MaxPendingRequests``: a request finding every connection busy waits as pending,
      up to this many; beyond that it overflows at once (503, flag ``UO``; Envoy counter
      ``upstream_rq_pending_overflow``; here ``pending_overflow``).
    * ``http.http2MaxRequests``: at most this many requests in flight overall, whatever the
      protocol; a request that finds a free connection but no request slot overflows (flag
      ``UO``; Envoy counts it in ``upstream_rq_pending_overflow`` too; here ``requests_overflow``).
    * When a request finishes, its slot goes to the longest-waiting pending request (FIFO).
    * ``http.maxRetries`` is not a limit of this pool: retries are limited, and their refusals
      counted, by the destination's retry budget alone (``RetryBudget``, Envoy's
      ``upstream_rq_retry_overflow``), which applies ``maxRetries`` when no ``retryBudget`` is set.

    Where meshlib differs: Envoy's limits count connections it opens lazily and per endpoint, and
    lets each endpoint have at least one connection even past ``maxConnections`` (the "leeway"
    Istio's circuit-breaking task shows); meshlib counts requests and is exact. A pending request
    waits for a slot until the caller's deadline, an absolute time on ``clock`` (the mesh's), the
    clock every other deadline of the call is measured on: on the system clock the thread or
    task parks until then; on another clock (a test's fake one) it looks at that clock every
    10 ms of real time, and a slot handed over meanwhile ends the wait at once.

    Thread- and asyncio-safe at once: one ``threading.Lock`` guards the counters; a thread waits
    on a ``threading.Event``, a task on an ``asyncio.Future`` resolved through
    ``loop.call_soon_threadsafe``, so any thread or loop can hand a slot to any other.
    """

    __slots__ = (
        "_active",
        "_clock",
        "_lock",
        "_pending",
        "_pending_overflow",
        "_requests_overflow",
        "_system",
        "_waiters",
        "destination",
        "max_connections",
        "max_pending_requests",
        "max_requests",
        "max_requests_per_connection",
    )

    def __init__(
        self,
        settings: ConnectionPoolSettings | None = None,
        *,
        destination: str = "",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        tcp = settings.tcp if settings is not None else None
        http = settings.http if settings is not None else None
        self.destination = destination
        self.max_connections = _threshold(tcp.max_connections if tcp else None)
        self.max_pending_requests = _threshold(http.http1_max_pending_requests if http else None)
        self.max_requests = _threshold(http.http2_max_requests if http else None)
        #: 0 means unlimited.
        self.max_requests_per_connection = (http.max_requests_per_connection if http else 0) or 0
        self._clock = clock
        #: the system clock's time is the one threads and event loops wait on
        self._system = type(clock) is SystemClock
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._active = 0
        self._pending = 0
        self._pending_overflow = 0
        self._requests_overflow = 0

    # ----------------------------------------------------------------- observation

    @property
    def keepalive_allowed(self) -> bool:
        """``False`` when ``maxRequestsPerConnection`` is 1: every request gets a new connection."""
        return self.max_requests_per_connection != 1

    @property
    def active(self) -> int:
        """Requests in flight (Envoy gauge ``upstream_rq_active``)."""
        return self._active

    @property
    def pending(self) -> int:
        """Requests waiting for a slot (Envoy gauge ``upstream_rq_pending_active``)."""
        return self._pending

    @property
    def pending_overflow(self) -> int:
        """Requests refused because the pending queue was full."""
        return self._pending_overflow

    @property
    def requests_overflow(self) -> int:
        """Requests refused by ``http2MaxRequests``."""
        return self._requests_overflow

    @property
    def upstream_rq_pending_overflow(self) -> int:
        """Envoy's counter, which counts both kinds of request overflow."""
        return self._pending_overflow + self._requests_overflow

    def __repr__(self) -> str:
        return f"<PoolLimits {self.destination!r} active={self._active} pending={self._pending}>"

    # ----------------------------------------------------------------- requests

    def acquire(
        self, timeout: float | None = None, *, deadline: float | None = None
    ) -> Lease | None:
        """A request slot for a thread; ``None`` when the request overflows (flag ``UO``).

        Waits as pending until ``deadline`` (absolute time on the pool's clock), or for at most
        ``timeout`` seconds of it (``None`` for both: no limit), then raises
        ``DeadlineExceeded`` (flag ``UT``); with no time left it is not even queued.
        """
        clock = self._clock
        if timeout is not None:
            ends = clock.now() + timeout
            deadline = ends if deadline is None else min(deadline, ends)
        with self._lock:
            verdict = self._admit()
            if verdict == _GRANTED:
                return Lease(self)
            if verdict == _OVERFLOW:
                return None
            if deadline is not None and deadline - clock.now() <= 0:
                raise self._timed_out()
            waiter = _Waiter(event=threading.Event())
            self._waiters.append(waiter)
            self._pending += 1
        event = waiter.event
        assert event is not None
        try:
            while True:
                if deadline is None:
                    event.wait()
                    break
                left = deadline - clock.now()
                if left <= 0 or event.wait(left if self._system else min(left, _CLOCK_POLL)):
                    break
        except BaseException:  # interrupted: leave the queue, pass on a slot handed over meanwhile
            lease = self._collect(waiter)
            if lease is not None:
                lease.release()
            raise
        lease = self._collect(waiter)
        if lease is None:
            raise self._timed_out()
        return lease

    async def aacquire(
        self, timeout: float | None = None, *, deadline: float | None = None
    ) -> Lease | None:
        """A request slot for an asyncio task; as ``acquire``. Cancelling the task while it waits
        leaves the queue cleanly (a slot handed to it meanwhile goes on to the next waiter)."""
        clock = self._clock
        if timeout is not None:
            ends = clock.now() + timeout
            deadline = ends if deadline is None else min(deadline, ends)
        with self._lock:
            verdict = self._admit()
            if verdict == _GRANTED:
                return Lease(self)
            if verdict == _OVERFLOW:
                return None
            if deadline is not None and deadline - clock.now() <= 0:
                raise self._timed_out()
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            waiter = _Waiter(loop=loop, future=future)
            self._waiters.append(waiter)
            self._pending += 1
        timer: list[asyncio.TimerHandle] = []
        if deadline is not None:
            _watch(loop, future, clock, deadline, self._system, timer)
        try:
            await future
        except BaseException:
            lease = self._collect(waiter)
            if lease is not None:
                lease.release()  # cancelled after a slot was handed over: pass it on
            raise
        finally:
            if timer:
                timer[0].cancel()
        lease = self._collect(waiter)
        if lease is None:
            raise self._timed_out()
        return lease

    # ----------------------------------------------------------------- internals

    def _admit(self) -> int:
        """Under the lock: take a slot, overflow, or queue."""
        if self._active < self.max_connections and not self._waiters:
            if self._active >= self.max_requests:
                self._requests_overflow += 1
                return _OVERFLOW
            self._active += 1
            return _GRANTED
        if self._pending >= self.max_pending_requests:
            self._pending_overflow += 1
            return _OVERFLOW
        return _QUEUE

    def _collect(self, waiter: _Waiter) -> Lease | None:
        """After a wait: the lease handed to ``waiter``, or ``None`` after leaving the queue."""
        with self._lock:
            if waiter.granted:
                return Lease(self)
            try:
                self._waiters.remove(waiter)
            except ValueError:  # already taken off the queue (its event loop had closed)
                return None
            self._pending -= 1
            return None

    def _release(self, lease: Lease) -> None:
        with self._lock:
            if lease._released:
                return
            lease._released = True
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                self._pending -= 1
                waiter.granted = True
                if waiter.wake():
                    return  # the slot passes straight to the waiter: ``active`` is unchanged
                waiter.granted = False
            self._active -= 1

    def _timed_out(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            "no connection-pool slot became free before the deadline",
            destination=self.destination,
        )
