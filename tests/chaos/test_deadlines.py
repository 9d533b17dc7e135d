"""Deadlines against real upstream processes that misbehave: what bounds a call.

One absolute deadline per call, on the mesh's clock: the route ``timeout`` (or
``x-envoy-upstream-rq-timeout-ms``), bounded by the caller's own timeout. Each try is
bounded by ``min(perTryTimeout, what is left)`` until its response headers arrive; the body is
bounded by what is left of the call's deadline. Every phase counts — connect, send, response
headers, body, and the wait for a connection-pool slot — and an upstream cannot stretch it by
trickling bytes. Each scenario runs through ``httpx.Client``, ``httpx.AsyncClient`` on every
inner transport, and a requests session (``kind``). The elapsed-time bounds are generous: they
tell a deadline (well under a second here) from an upstream's pace (several seconds), not a fast
machine from a slow one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshlib import DeadlineExceeded, Mesh, MeshRequestError
from meshlib.clock import SystemClock

from .conftest import Caller
from .misbehaving import Misbehaving
from .test_response_flags import Finished

pytestmark = pytest.mark.integration

URL = "http://chaos:8080"

#: A route timeout of 0.3 s, no retries: the route timeout alone bounds the call.
ROUTE_TIMEOUT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: chaos}
spec:
  hosts: [chaos]
  http:
  - route: [{destination: {host: chaos}}]
    timeout: 0.3s
    retries: {attempts: 0}
"""

#: What the trickling upstreams take to answer in full (seconds): far past every deadline here.
TRICKLE = "every=0.1&size=40"  # 4 s of body
TRICKLED_HEAD = "every=0.1"  # about 110 bytes of head: 11 s


def _deadline_error(outcome_error: BaseException | None) -> DeadlineExceeded:
    assert isinstance(outcome_error, DeadlineExceeded), repr(outcome_error)
    assert outcome_error.flag == "UT"
    return outcome_error


# --------------------------------------------------------------------------- item 1: trickling


@pytest.mark.parametrize("what", ["trickle-headers", "trickle-body"])
def test_route_timeout_bounds_a_trickling_upstream(
    chaos_mesh: Callable[..., Mesh], connect: Callable[..., Caller], base_path: str, what: str
) -> None:
    """Headers or body one byte every 0.1 s: the route timeout of 0.3 s ends the call (Envoy:
    504 ``UT`` at 0.3 s), however steadily the bytes come; the caller's 2 s timeout is longer."""
    caller = connect(chaos_mesh(ROUTE_TIMEOUT), timeout=2.0)
    query = TRICKLED_HEAD if what == "trickle-headers" else TRICKLE
    outcome = caller.call("GET", f"{URL}/{what}{base_path}?{query}")
    _deadline_error(outcome.error)
    assert 0.25 <= outcome.elapsed < 1.2


@pytest.mark.parametrize("what", ["trickle-headers", "trickle-body"])
def test_caller_timeout_bounds_a_trickling_upstream(
    chaos_mesh: Callable[..., Mesh], connect: Callable[..., Caller], base_path: str, what: str
) -> None:
    """No route timeout: the caller's own httpx timeout (0.3 s) bounds the whole exchange, not
    each read, and the call raises httpx's own ``ReadTimeout``, as if the server had been slow."""
    caller = connect(chaos_mesh(), timeout=0.3)
    query = TRICKLED_HEAD if what == "trickle-headers" else TRICKLE
    outcome = caller.call("GET", f"{URL}/{what}{base_path}?{query}")
    assert isinstance(outcome.error, caller.read_timeout), repr(outcome.error)
    assert not isinstance(outcome.error, MeshRequestError)
    assert 0.25 <= outcome.elapsed < 1.2


def test_route_timeout_bounds_a_body_the_caller_streams(
    chaos_mesh: Callable[..., Mesh], connect: Callable[..., Caller], base_path: str
) -> None:
    """``client.stream``: the response comes back at once, and the rest of the deadline bounds
    the caller's reads of the trickled body: they end with ``DeadlineExceeded`` 0.3 s after the
    call began, a few bytes read. The call is recorded as Envoy records it: the status as sent,
    flag ``UT``, details ``upstream_response_timeout``."""
    mesh = chaos_mesh(ROUTE_TIMEOUT, telemetry=True)
    finished = Finished()
    mesh.add_listener(finished)
    caller = connect(mesh, timeout=2.0)
    outcome = caller.stream("GET", f"{URL}/trickle-body{base_path}?{TRICKLE}")
    assert outcome.status == 200
    _deadline_error(outcome.error)
    assert 0 < len(outcome.body) < 10
    [event] = finished.events
    assert (event.status, event.flags, event.response_code_details) == (
        200,
        "UT",
        "upstream_response_timeout",
    )
    assert outcome.response is not None
    assert outcome.response.extensions["mesh"].flags == "UT"
    assert 0.25 <= outcome.elapsed < 1.2


PER_TRY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: chaos}
spec:
  hosts: [chaos]
  http:
  - route: [{destination: {host: chaos}}]
    timeout: 5s
    retries: {attempts: 2, perTryTimeout: 0.15s, retryOn: 5xx, backoff: 1ms}
"""


def test_per_try_timeout_bounds_each_try_of_a_trickling_upstream(
    chaos_mesh: Callable[..., Mesh],
    connect: Callable[..., Caller],
    base_path: str,
    misbehaving: Misbehaving,
) -> None:
    """Trickled headers: each try ends at its 0.15 s per-try timeout and, ``5xx`` covering
    per-try timeouts, is retried: three tries, then ``DeadlineExceeded`` after about 0.45 s."""
    caller = connect(chaos_mesh(PER_TRY))
    path = f"/trickle-headers{base_path}"
    outcome = caller.call("GET", f"{URL}{path}?{TRICKLED_HEAD}")
    _deadline_error(outcome.error)
    assert 0.4 <= outcome.elapsed < 1.5
    assert misbehaving.hits_reaching(path, 3) == 3


def test_per_try_timeout_leaves_a_started_body_to_the_route_timeout(
    chaos_mesh: Callable[..., Mesh], connect: Callable[..., Caller], base_path: str
) -> None:
    """As in Envoy, a per-try timeout bounds a try until its response begins: a body that takes
    0.4 s after headers that came at once (a pause of 0.1 s before each byte) is read whole, the
    route timeout (5 s) bounding it, not the per-try timeout (0.15 s)."""
    caller = connect(chaos_mesh(PER_TRY))
    outcome = caller.call("GET", f"{URL}/trickle-body{base_path}?every=0.1&size=4")
    assert outcome.error is None, repr(outcome.error)
    assert (outcome.status, outcome.body) == (200, b"x" * 4)


def test_route_timeout_bounds_connecting_to_an_upstream_that_never_accepts(
    chaos_mesh: Callable[..., Mesh],
    connect: Callable[..., Caller],
    base_path: str,
    unaccepting: Misbehaving,
) -> None:
    """An upstream whose listener never accepts: connecting is bounded by the deadline too."""
    caller = connect(chaos_mesh(ROUTE_TIMEOUT, address=unaccepting.address), timeout=2.0)
    outcome = caller.call("GET", f"{URL}/ok{base_path}")
    _deadline_error(outcome.error)
    assert outcome.elapsed < 1.2


# --------------------------------------------------------------------------- item 2: no time left

RETRY_AFTER = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: chaos}
spec:
  hosts: [chaos]
  http:
  - route: [{destination: {host: chaos}}]
    timeout: 0.3s
"""


class OversleepingClock(SystemClock):
    """The real clock, on a (very) loaded machine: every wait ends 0.2 s after it was due."""

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds + 0.2)

    async def asleep(self, seconds: float) -> None:
        await super().asleep(seconds + 0.2)


def test_a_retry_due_after_the_deadline_is_never_sent(
    chaos_mesh: Callable[..., Mesh],
    connect: Callable[..., Caller],
    base_path: str,
    misbehaving: Misbehaving,
) -> None:
    """A 503 asks to come back in 0.15 s, well before the 0.3 s deadline, and the wait ends
    late, past the deadline. With no time left the retry must not be sent with "no timeout" (which
    aiohttp made of a timeout of 0.0, and waited 3 s for the answer): the call ends at once with
    ``DeadlineExceeded``, the retry never sent."""
    caller = connect(chaos_mesh(RETRY_AFTER, clock=OversleepingClock()))
    path = f"/delay{base_path}"
    outcome = caller.call("GET", f"{URL}{path}?s=3&fail=1&header=retry-after:0.15")
    _deadline_error(outcome.error)
    assert outcome.elapsed < 1.0
    assert misbehaving.hits(path) == 1, "the retry was sent after the deadline"


# --------------------------------------------------------------------------- item 3: pool waits

POOL = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: chaos}
spec:
  hosts: [chaos]
  http:
  - route: [{destination: {host: chaos}}]
    timeout: 0.35s
    retries: {attempts: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: chaos}
spec:
  host: chaos
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 10}
"""


def test_time_waiting_for_a_pool_slot_counts_against_the_route_timeout(
    chaos_mesh: Callable[..., Mesh], connect: Callable[..., Caller], base_path: str
) -> None:
    """One connection, two calls at once to an upstream that takes 0.2 s, route timeout
    0.35 s: the first answers; the second waits 0.2 s for the slot, so 0.15 s are left for an
    answer that takes 0.2 s: ``DeadlineExceeded`` at 0.35 s (not a 200 at 0.4 s)."""
    caller = connect(chaos_mesh(POOL))
    outcomes = caller.concurrently(2, "GET", f"{URL}/delay{base_path}?s=0.2")
    outcomes.sort(key=lambda o: o.elapsed)
    first, second = outcomes
    assert first.error is None, repr(first.error)
    assert first.status == 200
    _deadline_error(second.error)
    assert second.elapsed < 1.0
