"""Retries: which outcomes are retried, how long to wait, and whether the budget allows it.

The router hands the data plane a ``meshlib.routing.RetryDecision`` (Istio's ``HTTPRetry``, or
the mesh default: 2 retries on ``connect-failure,refused-stream,unavailable,cancelled,503``).
This module turns it into decisions, following Envoy's router (``RetryStateImpl``), which is what
Istio configures:

* ``RetryPolicy.retryable`` — Envoy's ``retry_on`` conditions on one attempt's ``Outcome``.
* ``backoff_delay`` — Envoy's fully jittered exponential backoff.
* ``retry_after`` — the ``Retry-After`` response header, as seconds to wait.
* ``RetryBudget`` — Envoy's retry budget / ``max_retries`` circuit breaker, per destination.
* ``RetryState`` — one request's bookkeeping: attempts, budget slot, backoff, deadline.
* ``attempt_timeout`` — the per-try timeout of one attempt, bounded by the route deadline.

The request pipeline runs its first attempt with none of this: it builds an ``Outcome`` only for
a failure (``RetryPolicy.may_retry_response`` screens responses without allocating) and creates a
``RetryState`` only when a retry is actually considered. The retry loop can be written by hand
around ``RetryState.next_delay`` or driven by tenacity (``RetryState.retrying`` /
``RetryState.async_retrying``); either way no tenacity exception escapes.

Where meshlib differs from Envoy, on purpose:

* **Safe by default.** Envoy retries any method. meshlib retries a non-idempotent request
  (anything but GET, HEAD, OPTIONS, PUT, DELETE, TRACE — so POST, PATCH, CONNECT, …) only when
  it provably never reached the application: a connect failure, a refused stream
  (HTTP/2 ``REFUSED_STREAM``), or a reset before the request was sent. A route opts in to
  Envoy's behaviour with ``allow_non_idempotent``.
* **Retry-After.** Envoy reads ``Retry-After`` only when a route configures
  ``rate_limited_retry_back_off`` (Istio never does), jitters it to ``[v, 1.5 v)`` and discards
  values above ``max_interval`` (300 s). meshlib always honours ``Retry-After`` on a 429 or 503
  that is retried: the wait is the header's value, capped (300 s by default), instead of the
  jittered backoff.
* **Deadline.** Envoy arms the backoff timer and, if the route timeout fires first, answers 504
  (flag ``UT``). meshlib does not start a retry it cannot begin before the deadline: the last
  outcome is returned at once and ``RetryState.stopped_by`` says ``"deadline"``.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import random
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timezone
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

import tenacity

from meshlib.clock import Clock
from meshlib.config import model as m
from meshlib.errors import MeshError
from meshlib.pipeline.headers import number
from meshlib.routing import RetryDecision

ErrorKind = Literal["connect-failure", "reset", "refused-stream", "per-try-timeout", "other"]
"""How an attempt failed without a response (``"other"``: never retried)."""

StopReason = Literal["not-retryable", "retry-limit", "overflow", "deadline"]
"""Why a request is not retried (again): the outcome does not qualify; ``attempts`` are spent
(Envoy flag ``URX``); the retry budget or ``maxRetries`` refused (Envoy flag ``UO``); or the
retry could not start before the route deadline."""

#: Methods RFC 9110 defines as idempotent; every other method is retried only when safe.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: The longest ``Retry-After`` honoured, in seconds (Envoy's rate-limited ``max_interval``).
DEFAULT_RETRY_AFTER_CAP = 300.0
#: Istio's and Envoy's retry budget defaults.
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3

_GRPC_CONDITIONS = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
_NO_RESPONSE: frozenset[ErrorKind] = frozenset(
    {"connect-failure", "reset", "refused-stream", "per-try-timeout"}
)
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_STOP_FLAGS: dict[StopReason, str] = {"retry-limit": "URX", "overflow": "UO"}
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")

T = TypeVar("T")


class HeaderLookup(Protocol):
    """Response headers as this module reads them: ``name in headers`` and ``get(name)`` with
    lowercase names.

    ``httpx.Headers`` qualifies as it is (case-insensitive); so does a dict with lowercase keys.
    (A membership test comes first because ``httpx.Headers.get`` of a missing name costs twice
    as much as ``in``.)
    """

    def get(self, key: str, /) -> str | None: ...

    def __contains__(self, key: object, /) -> bool: ...


def _header(headers: HeaderLookup, name: str) -> str | None:
    return headers.get(name) if name in headers else None


def _screened(headers: HeaderLookup) -> tuple[str | None, bool]:
    """``grpc-status`` (or None) and whether ``x-envoy-ratelimited`` is present, in one pass.

    ``httpx.Headers`` is read through its list of lowercased raw names (its ``_list``, as
    ``meshlib.clients.httpx.headers`` reads it): a miss through its public lookup raises and
    catches a ``KeyError`` inside, three times the cost of the scan."""
    raw = getattr(headers, "_list", None)
    if not isinstance(raw, list):
        return _header(headers, "grpc-status"), "x-envoy-ratelimited" in headers
    grpc: str | None = None
    limited = False
    for _, name, value in raw:
        if name == b"grpc-status":
            grpc = value.decode("latin-1") if grpc is None else grpc
        elif name == b"x-envoy-ratelimited":
            limited = True
    return grpc, limited


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to, as the retry conditions see it.

    Either ``status`` (a response arrived) or ``error`` (none did) is set. ``grpc_status`` is the
    ``grpc-status`` response header (Envoy judges gRPC conditions on headers, not trailers);
    ``retry_after`` the parsed ``Retry-After`` in seconds; ``envoy_ratelimited`` whether the
    response carried ``x-envoy-ratelimited``. ``request_sent`` is False when the request
    provably never left (a connect failure, no pooled connection), which makes a retry safe
    for any method.
    """

    status: int | None = None
    error: ErrorKind | None = None
    grpc_status: int | None = None
    retry_after: float | None = None
    request_sent: bool = True
    envoy_ratelimited: bool = False

    @classmethod
    def of_response(
        cls,
        status: int,
        headers: HeaderLookup,
        *,
        wall: Callable[[], float] | None = None,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
    ) -> Outcome:
        """The outcome of a response. ``Retry-After`` is read on 429 and 503 only (the
        statuses it can shorten a wait for); ``wall`` (epoch seconds, e.g.
        ``SystemClock.wall``) is called only to resolve an HTTP-date, which is ignored without
        it."""
        grpc_status: int | None = None
        raw = _header(headers, "grpc-status")
        if raw is not None:
            text = raw.strip()
            grpc_status = number(text)
        after: float | None = None
        if status in _RETRY_AFTER_STATUSES:
            value = _header(headers, "retry-after")
            if value is not None:
                after = _parse_retry_after(value, wall, retry_after_cap)
        return cls(
            status=status,
            grpc_status=grpc_status,
            retry_after=after,
            envoy_ratelimited="x-envoy-ratelimited" in headers,
        )

    @classmethod
    def of_error(cls, exc: BaseException, *, per_try_timeout: bool = False) -> Outcome:
        """The outcome of an attempt that raised a built-in exception: a refused connection
        (``"connect-failure"``, nothing sent), a timeout (``"per-try-timeout"`` when the per-try
        deadline caused it, else ``"reset"``), a connection reset, abort or broken pipe
        (``"reset"``); meshlib's own errors and anything else are ``"other"``. Each client
        adapter classifies its client's own errors (``meshlib.clients.httpx.errors``)."""
        kind = classify_builtin_error(exc, per_try_timeout=per_try_timeout)
        return cls(error=kind, request_sent=kind != "connect-failure")


def classify_builtin_error(exc: BaseException, *, per_try_timeout: bool = False) -> ErrorKind:
    """``Outcome.of_error``'s kind of a built-in exception (see there)."""
    if isinstance(exc, MeshError):
        return "other"
    if isinstance(exc, ConnectionRefusedError):
        return "connect-failure"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "per-try-timeout" if per_try_timeout else "reset"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "reset"
    return "other"


# --------------------------------------------------------------------------- the conditions


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry policy, compiled once from its ``RetryDecision`` (``from_decision``).

    ``conditions`` are Envoy ``retry_on`` names; unknown names (``retriable-headers``,
    ``http3-post-connect-failure``: nothing in Istio's API configures them) never match.
    ``backoff_cap`` is Envoy's default maximum interval, 10 × ``backoff``.
    ``allow_non_idempotent`` is the route's opt-in to retrying any method (see ``retryable``).
    """

    attempts: int
    conditions: frozenset[str]
    retriable_status_codes: frozenset[int] = frozenset()
    per_try_timeout: float | None = None
    backoff: float = 0.025
    backoff_cap: float = 0.25
    allow_non_idempotent: bool = False
    _statuses: frozenset[int] = field(init=False, repr=False, compare=False)
    _grpc: frozenset[int] = field(init=False, repr=False, compare=False)
    _errors: frozenset[ErrorKind] = field(init=False, repr=False, compare=False)
    _before_request: bool = field(init=False, repr=False, compare=False)
    _ratelimited: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        on = self.conditions
        statuses: set[int] = set()
        if "5xx" in on:
            statuses.update(range(500, 600))
        if "gateway-error" in on:
            statuses.update((502, 503, 504))
        if "retriable-4xx" in on:
            statuses.add(409)
        if "retriable-status-codes" in on:
            statuses.update(self.retriable_status_codes)
        errors: set[ErrorKind] = set()
        if on & {"5xx", "gateway-error", "reset"}:
            errors.update(_NO_RESPONSE)
        if "connect-failure" in on:
            errors.add("connect-failure")
        if "refused-stream" in on:
            errors.add("refused-stream")
        set_ = object.__setattr__
        set_(self, "_statuses", frozenset(statuses))
        set_(self, "_grpc", frozenset(code for n, code in _GRPC_CONDITIONS.items() if n in on))
        set_(self, "_errors", frozenset(errors))
        set_(self, "_before_request", "reset-before-request" in on)
        set_(self, "_ratelimited", "envoy-ratelimited" in on)

    @classmethod
    def from_decision(cls, decision: RetryDecision) -> RetryPolicy:
        """Compile ``decision`` (prefer ``policy_for``, which caches)."""
        return cls(
            attempts=decision.attempts,
            conditions=frozenset(decision.retry_on),
            retriable_status_codes=decision.retriable_status_codes,
            per_try_timeout=decision.per_try_timeout,
            backoff=decision.backoff,
            backoff_cap=10 * decision.backoff,
            # read leniently: decisions compiled before the router knew the opt-in lack it
            allow_non_idempotent=bool(getattr(decision, "allow_non_idempotent", False)),
        )

    def may_retry_response(self, status: int, headers: HeaderLookup) -> bool:
        """A cheap screen for a response: False means ``retryable`` is surely False for it.

        One set lookup, plus a header membership test when gRPC or ``envoy-ratelimited``
        conditions are configured (the mesh default has gRPC ones: about 0.5 µs with
        ``httpx.Headers``); no allocation. The success path calls this and nothing else.
        """
        if self.attempts <= 0:
            return False
        if status in self._statuses:
            return True
        if not self._grpc and not self._ratelimited:
            return False
        found = _screened(headers)
        if self._grpc and found[0] is not None and found[0] != "0":
            return True
        return self._ratelimited and found[1]

    def retryable(
        self, outcome: Outcome, method: str, allow_non_idempotent: bool | None = None
    ) -> bool:
        """Whether ``outcome`` qualifies for a retry under Envoy's ``retry_on`` conditions.

        Responses (``RetryStateImpl::wouldRetryFromHeaders``):

        * ``x-envoy-ratelimited`` present → retried only under ``envoy-ratelimited``, whatever
          the status; absent, ``envoy-ratelimited`` matches nothing.
        * ``5xx``: any 5xx. ``gateway-error``: 502, 503, 504. ``retriable-4xx``: 409.
          ``retriable-status-codes``: a status in the configured codes.
        * ``cancelled`` (1), ``deadline-exceeded`` (4), ``resource-exhausted`` (8),
          ``internal`` (13), ``unavailable`` (14): the ``grpc-status`` response header.

        No response (``RetryStateImpl::wouldRetryFromReset``):

        * ``5xx``, ``gateway-error`` and ``reset`` cover every failure without a response —
          connect failure, reset, refused stream and per-try timeout (Envoy counts any upstream
          reset as a 5xx, and answers a per-try timeout with 504).
        * ``connect-failure``: connect failures only. ``refused-stream``: refused streams only.
        * ``reset-before-request``: any of them when the request was not sent.

        Then meshlib's safety rule (see the module docstring): a non-idempotent ``method`` is
        retried only for a connect failure, a refused stream, or a failure before the request
        was sent — unless ``allow_non_idempotent`` (None: the policy's own setting).
        """
        error = outcome.error
        if error is not None:
            if error == "other":
                return False
            if error not in self._errors and not (
                self._before_request and not outcome.request_sent
            ):
                return False
        elif outcome.status is None:
            return False
        elif outcome.envoy_ratelimited:
            if not self._ratelimited:
                return False
        elif outcome.status not in self._statuses and (
            outcome.grpc_status is None or outcome.grpc_status not in self._grpc
        ):
            return False
        if allow_non_idempotent is None:
            allow_non_idempotent = self.allow_non_idempotent
        if allow_non_idempotent or method in IDEMPOTENT_METHODS:
            return True
        if method.upper() in IDEMPOTENT_METHODS:
            return True
        return error is not None and (
            error in ("connect-failure", "refused-stream") or not outcome.request_sent
        )


def policy_for(decision: RetryDecision) -> RetryPolicy:
    """The compiled ``RetryPolicy`` of ``decision``, made once and kept on it (the router hands
    out the same settings object for every request of a route: one attribute read per call)."""
    policy: RetryPolicy | None = decision.compiled
    if policy is None:
        policy = RetryPolicy.from_decision(decision)
        object.__setattr__(decision, "compiled", policy)  # derived, not part of its value
    return policy


# --------------------------------------------------------------------------- waits


def backoff_delay(
    retry_number: int, base: float, rng: random.Random, cap: float | None = None
) -> float:
    """Envoy's fully jittered exponential backoff for retry ``retry_number`` (1-based).

    Envoy's router docs: "Given a base interval B and retry number N, the back-off for the retry
    is in the range [0, (2^N−1)·B)" — 0–24 ms, 0–74 ms, 0–174 ms … with the default 25 ms — and
    "the interval is capped at a maximum interval, which defaults to 10 times the base
    interval". The wait is drawn uniformly from ``[0, min((2^N − 1)·base, cap))``, ``cap``
    defaulting to ``10 × base``. (Envoy's current ``JitteredExponentialBackOffStrategy`` doubles
    from ``[0, B)`` instead; meshlib follows the documented ranges, which Istio's docs repeat.)
    """
    if retry_number < 1:
        raise ValueError(f"retry numbers start at 1, got {retry_number}")
    if base <= 0:
        return 0.0
    limit = 10 * base if cap is None else cap
    bound = limit if retry_number >= 63 else min(((1 << retry_number) - 1) * base, limit)
    return rng.random() * bound


def retry_after(headers: HeaderLookup, now_wall: float, cap: float) -> float | None:
    """Seconds to wait according to the ``Retry-After`` header, or None without a usable one.

    RFC 9110: ``delta-seconds`` (meshlib also accepts a decimal fraction) or an HTTP-date,
    read with ``email.utils.parsedate_to_datetime`` against ``now_wall`` (epoch seconds). A
    date in the past gives 0; the result is never negative and never above ``cap``. A negative
    number or anything else unparsable gives None.
    """
    value = _header(headers, "retry-after")
    if value is None:
        return None
    return _parse_retry_after(value, lambda: now_wall, cap)


def _parse_retry_after(value: str, wall: Callable[[], float] | None, cap: float) -> float | None:
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        if wall is None or not text:
            return None
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322
            when = when.replace(tzinfo=timezone.utc)
        try:
            seconds = when.timestamp() - wall()
        except (OverflowError, OSError, ValueError):
            return None
    return min(max(seconds, 0.0), max(cap, 0.0))


def attempt_timeout(
    per_try_timeout: float | None, deadline: float | None, now: float
) -> float | None:
    """The timeout of one attempt: the smaller of the per-try timeout and the time left before
    the route's ``deadline`` (absolute clock time); None when neither bounds it; never negative.

    Envoy: ``perTryTimeout`` bounds one attempt, the route timeout bounds all of them together,
    "including any retries".
    """
    if deadline is None:
        return per_try_timeout
    left = max(deadline - now, 0.0)
    return left if per_try_timeout is None else min(per_try_timeout, left)


# --------------------------------------------------------------------------- the budget


class RetryBudget:
    """How many retries to one destination may be outstanding at once (thread-safe).

    Envoy's retry circuit breaker (``RetryBudgetImpl``), as Istio configures it:

    * With a DestinationRule ``retryBudget``, the budget is in use: retries may be outstanding
      while their number is below ``max(int(percent / 100 × active requests),
      min_retry_concurrency)`` — Istio's defaults are 20 % and 3. ``maxRetries`` then does not
      apply (Envoy ignores ``max_retries`` while a budget is configured).
    * Without one, Istio configures no budget and only ``connectionPool.http.maxRetries``
      limits outstanding retries; Istio's default is unlimited (pilot replaces Envoy's 3 by
      2³²−1), which is ``max_retries=None`` here.

    The pipeline calls ``request_started``/``request_finished`` around every attempt it sends to
    the destination (Envoy counts active and pending upstream requests), and
    ``try_acquire_retry``/``retry_finished`` around each retry, from the moment it is
    scheduled (its backoff included) until its outcome is known. ``RetryState`` does the latter.
    """

    __slots__ = (
        "_active",
        "_lock",
        "_retries",
        "granted",
        "max_retries",
        "min_retry_concurrency",
        "percent",
        "refused",
    )

    def __init__(
        self,
        *,
        percent: float | None = None,
        min_retry_concurrency: int | None = None,
        max_retries: int | None = None,
    ) -> None:
        """A budget is in use when ``percent`` or ``min_retry_concurrency`` is given (the other
        takes its default); otherwise ``max_retries`` (None: unlimited) is the limit."""
        in_use = percent is not None or min_retry_concurrency is not None
        self.percent: float | None = (
            (DEFAULT_BUDGET_PERCENT if percent is None else float(percent)) if in_use else None
        )
        self.min_retry_concurrency: int = (
            DEFAULT_MIN_RETRY_CONCURRENCY
            if min_retry_concurrency is None
            else min_retry_concurrency
        )
        self.max_retries = max_retries
        self._lock = threading.Lock()
        self._active = 0
        self._retries = 0
        self.granted = 0
        self.refused = 0

    @classmethod
    def from_config(
        cls, budget: m.RetryBudget | None, max_retries: int | None = None
    ) -> RetryBudget:
        """From a DestinationRule's ``trafficPolicy.retryBudget`` (None: no budget) and its
        ``connectionPool.http.maxRetries``."""
        if budget is None:
            return cls(max_retries=max_retries)
        return cls(
            percent=budget.percent if budget.percent is not None else DEFAULT_BUDGET_PERCENT,
            min_retry_concurrency=(
                budget.min_retry_concurrency
                if budget.min_retry_concurrency is not None
                else DEFAULT_MIN_RETRY_CONCURRENCY
            ),
            max_retries=max_retries,
        )

    @property
    def uses_budget(self) -> bool:
        """True when the percentage budget (not ``max_retries``) is the limit."""
        return self.percent is not None

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def active_retries(self) -> int:
        return self._retries

    @property
    def limit(self) -> int | None:
        """The current limit on outstanding retries (None: unlimited)."""
        return self._limit(self._active)

    def _limit(self, active: int) -> int | None:
        if self.percent is None:
            return self.max_retries
        return max(int(self.percent / 100.0 * active), self.min_retry_concurrency)

    def request_started(self) -> None:
        with self._lock:
            self._active += 1

    def request_finished(self) -> None:
        with self._lock:
            if self._active > 0:
                self._active -= 1

    def try_acquire_retry(self) -> bool:
        """Take a retry slot if the limit allows; count the refusal otherwise."""
        with self._lock:
            limit = self._limit(self._active)
            if limit is not None and self._retries >= limit:
                self.refused += 1
                return False
            self._retries += 1
            self.granted += 1
            return True

    def retry_finished(self) -> None:
        with self._lock:
            if self._retries > 0:
                self._retries -= 1


# --------------------------------------------------------------------------- one request


class RetryState:
    """One request's retry bookkeeping, created only once a retry is considered.

    ``next_delay(outcome, attempt_number)`` after each failed try returns the seconds to wait
    before the next try, or None to stop (``stopped_by`` says why). In this order (Envoy checks
    the budget before arming the backoff timer; meshlib first rules out a retry past the deadline,
    so that it never takes a budget slot it would not use):

    1. release the budget slot of the previous retry, if one is held;
    2. not ``retryable`` → ``"not-retryable"``;
    3. ``attempt_number`` tries made and ``attempts`` retries allowed: at most
       ``1 + attempts`` tries, else ``"retry-limit"`` (Envoy flag ``URX``);
    4. the wait: ``Retry-After`` on a 429/503 (capped at ``retry_after_cap``), else
       ``backoff_delay(attempt_number, …)``;
    5. a wait that ends at or past ``deadline`` (absolute clock time) → ``"deadline"``;
    6. no budget slot → ``"overflow"`` (Envoy flag ``UO``).

    Use it as a context manager, or call ``finish()``, so that a slot held when the request is
    abandoned (cancelled during a backoff, say) is given back.
    """

    __slots__ = (
        "_budget",
        "_clock",
        "_deadline",
        "_holding",
        "_rng",
        "allow_non_idempotent",
        "granted",
        "method",
        "policy",
        "retries",
        "retry_after_cap",
        "stopped_by",
        "tries",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Clock,
        rng: random.Random,
        deadline: float | None = None,
        budget: RetryBudget | None = None,
        method: str = "GET",
        allow_non_idempotent: bool | None = None,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
    ) -> None:
        self.policy = policy
        self.method = method.upper()
        self.allow_non_idempotent = (
            policy.allow_non_idempotent if allow_non_idempotent is None else allow_non_idempotent
        )
        self.retry_after_cap = retry_after_cap
        self._clock = clock
        self._rng = rng
        self._deadline = deadline
        self._budget = budget
        self._holding = False
        self.retries = 0
        self.tries = 0
        self.granted: float | None = None
        self.stopped_by: StopReason | None = None

    @property
    def flag(self) -> str:
        """The Envoy response flag for why retrying stopped: ``URX``, ``UO`` or ``""``."""
        return _STOP_FLAGS.get(self.stopped_by, "") if self.stopped_by else ""

    def next_delay(self, outcome: Outcome, attempt_number: int) -> float | None:
        """Seconds to wait before retrying after try ``attempt_number`` (1-based) ended in
        ``outcome``; None when the request is not retried."""
        self._release()
        self.tries = attempt_number
        self.granted = None
        if not self.policy.retryable(outcome, self.method, self.allow_non_idempotent):
            self.stopped_by = "not-retryable"
            return None
        if attempt_number > self.policy.attempts:
            self.stopped_by = "retry-limit"
            return None
        if outcome.retry_after is not None and outcome.status in _RETRY_AFTER_STATUSES:
            delay = min(outcome.retry_after, self.retry_after_cap)
        else:
            delay = backoff_delay(
                attempt_number, self.policy.backoff, self._rng, self.policy.backoff_cap
            )
        if self._deadline is not None and delay >= self._deadline - self._clock.now():
            self.stopped_by = "deadline"
            return None
        if self._budget is not None:
            if not self._budget.try_acquire_retry():
                self.stopped_by = "overflow"
                return None
            self._holding = True
        self.retries += 1
        self.stopped_by = None
        self.granted = delay
        return delay

    def attempt_timeout(self) -> float | None:
        """The timeout for the next try (per-try timeout bounded by the deadline)."""
        return attempt_timeout(self.policy.per_try_timeout, self._deadline, self._clock.now())

    def finish(self) -> None:
        """Give back a budget slot still held (idempotent)."""
        self._release()

    def __enter__(self) -> RetryState:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            if self._budget is not None:
                self._budget.retry_finished()

    # ----------------------------------------------------------------------- tenacity

    def retrying(
        self,
        judge: Callable[[T], Outcome],
        *,
        discard: Callable[[T], object] | None = None,
        judge_error: Callable[[BaseException], Outcome] = Outcome.of_error,
    ) -> tenacity.Retrying:
        """A ``tenacity.Retrying`` that runs the retries this state grants, on its clock.

        Call it after ``next_delay`` granted a retry; its first attempt is that retry, made after
        the granted wait. Each attempt's result is judged with ``judge`` (exceptions with
        ``judge_error``) and fed to ``next_delay``; a discarded result is passed to ``discard``
        (close the response) before the wait. It returns the last result, or re-raises the last
        exception, as is: it never stops on its own, so ``tenacity.RetryError`` cannot occur.
        """
        hooks = _Hooks(self, judge, judge_error, discard)
        sleep = self._clock.sleep

        def before(retry_state: tenacity.RetryCallState) -> None:
            if retry_state.attempt_number == 1 and hooks.first_wait > 0:
                sleep(hooks.first_wait)

        def before_sleep(retry_state: tenacity.RetryCallState) -> None:
            hooks.discard_result(retry_state)

        return tenacity.Retrying(
            sleep=sleep,
            stop=tenacity.stop_never,
            wait=_WaitGranted(hooks),
            retry=_RetryJudged(hooks),
            before=before,
            before_sleep=before_sleep,
            reraise=True,
        )

    def async_retrying(
        self,
        judge: Callable[[T], Outcome],
        *,
        discard: Callable[[T], Awaitable[object] | object] | None = None,
        judge_error: Callable[[BaseException], Outcome] = Outcome.of_error,
    ) -> tenacity.AsyncRetrying:
        """``retrying`` for coroutines: waits with ``clock.asleep``; ``discard`` may be async
        (``httpx.Response.aclose``)."""
        hooks = _Hooks(self, judge, judge_error, None)
        asleep = self._clock.asleep

        async def before(retry_state: tenacity.RetryCallState) -> None:
            if retry_state.attempt_number == 1 and hooks.first_wait > 0:
                await asleep(hooks.first_wait)

        async def before_sleep(retry_state: tenacity.RetryCallState) -> None:
            fut = retry_state.outcome
            if discard is not None and fut is not None and not fut.failed:
                result = discard(fut.result())
                if inspect.isawaitable(result):
                    await result

        return tenacity.AsyncRetrying(
            sleep=asleep,
            stop=tenacity.stop_never,
            wait=_WaitGranted(hooks),
            retry=_RetryJudged(hooks),
            before=before,
            before_sleep=before_sleep,
            reraise=True,
        )


class _Hooks(Generic[T]):
    """Shared state of one tenacity controller: how to judge, and the wait last granted."""

    __slots__ = ("discard", "first_try", "first_wait", "judge", "judge_error", "state", "wait")

    def __init__(
        self,
        state: RetryState,
        judge: Callable[[T], Outcome],
        judge_error: Callable[[BaseException], Outcome],
        discard: Callable[[T], object] | None,
    ) -> None:
        if state.granted is None:
            raise ValueError("no retry granted: call next_delay() first and retry only on a delay")
        self.state = state
        self.judge = judge
        self.judge_error = judge_error
        self.discard = discard
        self.first_wait = state.granted
        self.first_try = state.tries + 1
        self.wait = 0.0

    def decide(self, retry_state: tenacity.RetryCallState) -> bool:
        fut = retry_state.outcome
        if fut is None:  # pragma: no cover - tenacity judges only finished attempts
            return False
        if fut.failed:
            exc = fut.exception()
            outcome = self.judge_error(exc) if exc is not None else Outcome(error="other")
        else:
            outcome = self.judge(fut.result())
        attempt = self.first_try + retry_state.attempt_number - 1
        delay = self.state.next_delay(outcome, attempt)
        self.wait = 0.0 if delay is None else delay
        return delay is not None

    def discard_result(self, retry_state: tenacity.RetryCallState) -> None:
        fut = retry_state.outcome
        if self.discard is not None and fut is not None and not fut.failed:
            self.discard(fut.result())


class _RetryJudged(tenacity.retry_base):
    """tenacity retry strategy: the attempt's outcome, judged by ``RetryState.next_delay``."""

    def __init__(self, hooks: _Hooks[Any]) -> None:
        self.hooks = hooks

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.hooks.decide(retry_state)


class _WaitGranted(tenacity.wait.wait_base):
    """tenacity wait strategy: the wait ``RetryState.next_delay`` just granted."""

    def __init__(self, hooks: _Hooks[Any]) -> None:
        self.hooks = hooks

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.hooks.wait


class wait_envoy_backoff(tenacity.wait.wait_base):  # noqa: N801 - tenacity's naming
    """tenacity wait strategy with Envoy's jittered backoff (``backoff_delay``) and an injected
    ``random.Random``, for code that drives tenacity itself: attempt N waits uniformly in
    ``[0, min((2^N − 1)·base, cap))``."""

    def __init__(self, base: float, rng: random.Random, cap: float | None = None) -> None:
        self.base = base
        self.rng = rng
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return backoff_delay(retry_state.attempt_number, self.base, self.rng, self.cap)


__all__ = [
    "DEFAULT_BUDGET_PERCENT",
    "DEFAULT_MIN_RETRY_CONCURRENCY",
    "DEFAULT_RETRY_AFTER_CAP",
    "IDEMPOTENT_METHODS",
    "ErrorKind",
    "HeaderLookup",
    "Outcome",
    "RetryBudget",
    "RetryPolicy",
    "RetryState",
    "StopReason",
    "attempt_timeout",
    "backoff_delay",
    "policy_for",
    "retry_after",
    "wait_envoy_backoff",
]
