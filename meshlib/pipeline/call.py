"""``Call``: one request's way through the mesh — every decision, no I/O, no client library.

```
context → route → fault → retry ┬ breaker → pool → balance → attempt ┐
                                └────────── retry decision ◄─────────┘
```

A client adapter (``meshlib.clients``) drives a ``Call`` around its client's own send, and reads
and edits its client's request and response objects only through its ``Codec``
(``meshlib.pipeline.codec``): the core never sees an HTTP client's types. The adapter's loop does
only the I/O — sleeping, waiting for a pool slot, sending, closing — and hands each result back::

    opening() → reply | delay (sleep, delayed()) | None; then mirrors
    loop: prepare_attempt() → reply | None; attempt_deadline(); Cluster.acquire → lease
          open_attempt(ends, waited, lease) → request to send (timeout, breaker, begin, span)
          send: client error → attempt_failed(exc) → delay to sleep (or raises the call's error)
                anything else → attempt_abandoned(), re-raise
                response → settle(response) → None: finish(response), body follows
                           (end_attempt when it ends) | delay: close, attempt_discarded(delay)

What a caller sees, as under Envoy:

* local replies are responses: no route → 404 ``NR``; subset not defined → 503 ``NC``; no
  endpoint → 503 ``UH``; connection-pool overflow → 503 ``UO``; injected abort → its status ``FI``;
  ``directResponse`` and ``redirect`` as configured. Each carries ``x-mesh-response-flags``.
* an open breaker raises ``CircuitOpenError`` (``UO``), never retried; the route timeout running out
  raises ``DeadlineExceeded`` (``UT``); an upstream that cannot be reached after the retries raises
  ``MeshRequestError`` (``UF``, ``URX`` when retries were spent), the client's error as its
  cause. Each is the client adapter's flavor of meshlib's class: also the client's own error.
* every response carries a ``MeshInfo``: the decision, the endpoint, the number of attempts and
  the response flags; ``x-mesh-response-flags`` is the mesh's alone (an upstream's copy is
  removed).
* one deadline per call on the mesh clock — the route timeout, or the caller's if it ends first —
  and ``min(perTryTimeout, what is left)`` per try bound every wait: the pool slot, connect,
  send, response head (the try's), and the body whoever reads it (the call's), through
  ``meshlib.deadline``. A try with no time left is not made. A body cut short by the deadline
  (``UT``) or by the upstream's connection ending (``UC``) is recorded so when the response is
  closed; the call is recorded (metrics, access log) then, as Envoy logs a stream at its end.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic

from meshlib import context
from meshlib.balancing import hash_key
from meshlib.config.compile import matched_uri, regex_substitute
from meshlib.deadline import Deadline
from meshlib.discovery import Endpoint
from meshlib.errors import (
    CircuitOpenError,
    DeadlineExceeded,
    MeshRequestError,
    NoHealthyUpstream,
    NoRouteError,
    UpstreamTLSError,
)
from meshlib.pipeline.codec import Codec, Req, Resp
from meshlib.pipeline.headers import number
from meshlib.pipeline.info import (
    FREE_LEASE,
    MESH_SUFFIX,
    NO_TICKET,
    TIMEOUT_OVERRIDE_HEADER,
    MeshInfo,
    plain_info,
)
from meshlib.policies.fault import FaultAction, abort_response_parts, decide
from meshlib.policies.retry import Outcome, RetryState, policy_for
from meshlib.routing import RouteDecision, RouteRequest, route_label
from meshlib.telemetry import (
    AttemptEnded,
    AttemptStarted,
    BudgetExhausted,
    FaultInjected,
    RequestFinished,
    RequestInfo,
    RetryScheduled,
)
from meshlib.telemetry.peer import decode, stamp_of

if TYPE_CHECKING:
    from meshlib.config.model import HeaderOperations
    from meshlib.mesh import Cluster, Mesh
    from meshlib.security.outbound import Origination, Outbound

__all__ = ["LATE_RESET_DETAILS", "RETRY_AFTER_CAP", "Call", "origination_for", "raise_for_mesh"]

RETRY_AFTER_CAP = 30.0
#: Envoy's response code details for a response whose upstream connection ended in its body.
LATE_RESET_DETAILS = "upstream_reset_after_response_started{connection_termination}"

_current_context = context._current.get


class Call(Generic[Req, Resp]):
    """One request's way through the mesh: every decision, no I/O."""

    # Not slotted: what most calls never change is a class default, so that starting a call
    # writes only what differs per request.
    attempts: int = 0
    endpoint: Endpoint | None = None
    fault: FaultAction | None = None
    cluster: Cluster | None = None
    retry: RetryState | None = None
    info: RequestInfo | None = None
    tls: tuple[str, str | None] | None = None  # the last attempt's TLS mode and verified peer
    peer_metadata: str | None = None  # the upstream's x-envoy-peer-metadata, as received
    #: the call's deadline as the client's waits see it (``meshlib.deadline``), made at the
    #: first attempt; None: nothing bounds the call
    bound: Deadline | None = None
    #: what the codec made of the last attempt's timeout (None: the caller's own timeouts)
    attempt_timeouts: Any = None
    #: whether the response's body is still to be read: the call is recorded when it ends
    body_pending: bool = False
    #: how the body ended, when not whole: the caller's exception, and Envoy's details
    body_error: BaseException | None = None
    details: str = ""
    #: what the attempt under way holds (``open_attempt``), given back by ``end_attempt``: its
    #: pool lease, what ``Cluster.begin`` counted (``holding``: either is to give back), its
    #: breaker ticket and its telemetry token
    lease: Any = FREE_LEASE
    counted: int = 0
    ticket: Any = NO_TICKET
    token: Any = None
    holding: bool = False
    #: the timeout handed to the client for the attempt under way (None: the caller's own)
    try_timeout: float | None = None
    #: an injected delay the caller's own timeout cuts short (``opening``)
    fault_cut: bool = False

    def __init__(self, mesh: Mesh, request: Req, codec: Codec[Req, Resp]) -> None:
        self.mesh = mesh
        self.request = request
        self.codec = codec
        self.saved = codec.save(request)
        #: the URL as the caller sent it (the codec's URL type, which telemetry reads), and as
        #: the route's rewrite makes it
        self.original_url = self.url = codec.url_of(request)
        inbound = _current_context()
        if inbound is not None and inbound.headers:
            codec.carry(request, inbound.headers)
        self.view = view = codec.view(request)
        headers = view.headers
        self.decision = decision = mesh._snapshot.table.route(view, mesh.rng)
        self.flags: list[str] = []
        self.tried: list[Endpoint] = []
        self.telemetry = mesh.telemetry
        self.started = now = mesh.now()
        timeout = decision.timeout
        if headers.get(TIMEOUT_OVERRIDE_HEADER) is not None:
            override = number(headers[TIMEOUT_OVERRIDE_HEADER])
            if override is not None:
                timeout = override / 1000 or None
        self.deadline = deadline = now + timeout if timeout else None
        user = codec.caller_timeout(request)
        self.user_deadline = user_deadline = now + user if user else None
        #: the call's deadline: the route's or the caller's, whichever ends first
        if deadline is None or (user_deadline is not None and user_deadline < deadline):
            self.ends = user_deadline
        else:
            self.ends = deadline

    @property
    def replayable(self) -> bool:
        """Whether the request body can be sent again (a retry, a mirror): it is in memory."""
        return self.codec.replayable(self.request)

    # ------------------------------------------------------------------ before the upstream

    def local_reply(self) -> Resp | None:
        """A reply the mesh gives without calling upstream, or None to go on."""
        decision = self.decision
        if not decision.matched:
            if decision.virtual_service is None and decision.note:  # REGISTRY_ONLY
                text = f"{decision.host}: {decision.note}"
                return self.reply(502, text.encode(), "NR")
            return self.reply(404, b"", "NR")
        if decision.direct_response is not None:
            direct = decision.direct_response
            body = b""
            if direct.body is not None:
                body = (
                    (direct.body.string or "").encode()
                    if direct.body.string is not None
                    else base64.b64decode(direct.body.bytes or "")
                )
            return self.reply(direct.status, body, "")
        if decision.redirect is not None:
            return self.redirect()
        return None

    def draw_fault(self) -> FaultAction | None:
        fault = self.decision.fault
        if not fault.active:
            return None
        action = decide(fault, self.mesh.rng.random)
        if action.delay is None and not action.aborts:
            return None
        self.fault = action
        if action.delay is not None:
            self.flags.append("DI")
        if self.telemetry.active:
            self.telemetry.emit(
                FaultInjected(
                    self.request_info(), action.delay, action.abort_status, action.abort_grpc_status
                )
            )
        return action

    def opening(self) -> Resp | float | None:
        """Before the upstream (a call whose route is not plain): a reply the mesh gives
        itself (a local reply, an injected abort), or the seconds an injected delay sleeps
        (sleep them, then call ``delayed``), or None: go on to the attempts."""
        reply = self.local_reply()
        if reply is not None:
            return reply
        action = self.draw_fault()
        if action is None:
            return None
        if action.delay is not None:
            sleep, self.fault_cut = self.delay_budget(action.delay)
            return float(sleep)
        return self.abort_reply(action)  # drawn: it delays or aborts

    def delayed(self) -> Resp | None:
        """The injected delay has been slept: the caller's timeout error if it cut the delay
        short (raised), the injected abort's reply, or None: go on to the attempts."""
        if self.fault_cut:
            raise self.user_timeout()
        action = self.fault
        if action is not None and action.aborts:
            return self.abort_reply(action)
        return None

    def abort_reply(self, action: FaultAction) -> Resp:
        status, headers, body = abort_response_parts(action)
        self.flags.append("FI")
        return self.finish(self._local_response(status, list(headers), body))

    def delay_budget(self, delay: float) -> tuple[float, bool]:
        """How long the injected delay may sleep, and whether the caller's own timeout ends it."""
        if self.user_deadline is not None:
            left = self.user_deadline - self.mesh.now()
            if delay >= left:
                return max(left, 0.0), True
        return delay, False

    def user_timeout(self) -> Exception:
        """The client's own timeout error: the caller's timeout ran out."""
        return self.codec.caller_timeout_error(self.request, "timed out waiting for the mesh call")

    # ------------------------------------------------------------------ attempts

    def prepare_attempt(self) -> Resp | None:
        """Choose the endpoint for the next attempt. A response means: reply with it now."""
        target = self.decision.destination
        assert target is not None
        cluster = self.cluster
        if cluster is None:
            cluster = self.cluster = self.mesh.cluster(target, self.view.port)
        if not target.subset_defined:
            return self.reply(503, b"no healthy upstream", "NC")
        endpoints = cluster.endpoints()  # once per attempt: choosing reads the same tuple
        if not endpoints and (self.decision.passthrough or self.mesh.resolves_by_dns(target.host)):
            self.endpoint = None  # sent to the host as the caller named it
            return None
        key = None
        if cluster.consistent_hash is not None:
            key = hash_key(
                cluster.consistent_hash,
                self.codec.request_headers(self.request),
                self.view.query,
                self.mesh.source_address,
            )
        endpoint = cluster.balancer.choose(endpoints, key, self.tried)
        if endpoint is None:
            return self.reply(503, b"no healthy upstream", "UH")
        self.endpoint = endpoint
        return None

    def attempt_request(self, timeout: float | None) -> Req:
        """Point the request at this attempt's endpoint, with rewrites, headers and timeouts.

        The caller's request object is reused, not copied per attempt: rewrites and header
        operations are applied to it once, the endpoint and the timeouts on every attempt, and
        ``done`` puts the caller's request back before the result is handed over."""
        request = self.request
        codec = self.codec
        if self.attempts == 0:
            self._edit_request()
            target = self.decision.destination
            if (
                target is not None
                and not self.decision.passthrough
                and target.host.endswith(MESH_SUFFIX)
            ):
                codec.stamp(request, stamp_of(self.mesh).entries)
        codec.point(request, self.url, self.endpoint)
        if timeout is not None:
            self.attempt_timeouts = codec.bound(request, timeout)
        self.attempts += 1
        if self.endpoint is not None:
            self.tried.append(self.endpoint)
        return request

    def _edit_request(self) -> None:
        """The route's request edits, once per call: rewrite, header operations, keep-alive."""
        decision = self.decision
        cluster = self.cluster
        if (
            decision.plain
            and (cluster is None or cluster.keepalive)
            and TIMEOUT_OVERRIDE_HEADER not in self.view.headers
        ):
            return
        rewrite = decision.rewrite
        target = decision.destination
        operations = [
            ops.request
            for ops in (decision.headers, target.headers if target is not None else None)
            if ops is not None and ops.request is not None
        ]
        close = cluster is not None and not cluster.keepalive
        override = TIMEOUT_OVERRIDE_HEADER in self.view.headers
        if rewrite is None and not operations and not close and not override:
            return
        authority = None
        if rewrite is not None:
            self.url = self.codec.with_path(self.url, _rewritten_path(self.view, decision))
            authority = rewrite.authority or None
        self.codec.edit(
            self.request,
            authority=authority,
            operations=operations,
            close=close,
            remove=TIMEOUT_OVERRIDE_HEADER if override else None,
        )

    def attempt_deadline(self) -> float | None:
        """When the next try must end (absolute, on the mesh clock): its per-try timeout from
        now, bounded by the call's deadline; None when nothing bounds it."""
        per_try = self.decision.retry.per_try_timeout
        ends = self.ends
        if not per_try:
            return ends
        at = self.mesh.now() + per_try
        return at if ends is None or at < ends else ends

    def attempt_timeout(self, ends: float | None, waited: bool) -> float | None:
        """The timeout to hand the client for a try that must end at ``ends``: what is left of
        it (None: no bound, or the caller's own timeouts, left as they are). A try with nothing
        left is not made: ``expired()`` is raised. ``waited``: the try may have waited for a
        connection-pool slot."""
        if ends is None:
            return None
        if (
            self.deadline is None
            and not self.attempts
            and not waited
            and not self.fault
            and not self.decision.retry.per_try_timeout
            and self.codec.caller_bounds_all(self.request)
        ):
            # the common case, no clock read: no route deadline nor per-try timeout, and a first
            # try that nothing has delayed, which the caller's own timeouts bound as tightly as
            # the deadline would (none of them is longer than the read one)
            return None
        left = ends - self.mesh.now()
        if left <= 0:
            raise self.expired()
        return left

    def open_attempt(
        self,
        ends: float | None,
        waited: bool,
        lease: Any,
        vet: Callable[[Call[Req, Resp]], None] | None = None,
    ) -> Req:
        """Everything between the pool slot (``lease``, from ``Cluster.acquire`` for a try
        that must end at ``ends``; ``waited``: the cluster's pool is limited) and the send:
        the try's timeout, the breaker's permit, the request pointed at the endpoint,
        ``Cluster.begin``, telemetry's attempt span. Returns the request to send. Raises
        ``expired()`` (no time left) or ``refused()`` (the breaker), the lease given back;
        ``vet(call)`` may refuse the try as well (an adapter's own limits) before the
        breaker is asked. What the try holds is the call's until ``end_attempt``."""
        try:
            timeout = self.attempt_timeout(ends, waited)
            if vet is not None:
                vet(self)
        except BaseException:
            lease.release()
            raise
        cluster = self.cluster
        assert cluster is not None
        breaker = cluster.breaker
        if breaker is None:
            self.ticket = NO_TICKET
        else:
            ticket = breaker.admit()
            if type(ticket) is str:
                lease.release()
                raise self.refused(ticket)
            self.ticket = ticket
        attempt = self.attempt_request(timeout)
        self.try_timeout = timeout
        self.lease = lease
        counted = self.counted = cluster.begin(self.endpoint) if cluster.counts else 0
        self.holding = lease is not FREE_LEASE or counted != 0
        self.token = self.attempt_started(attempt) if self.telemetry.active else None
        return attempt

    def end_attempt(self) -> None:
        """The try is over for the pool: give back its slot and what ``begin`` counted (once;
        a body's close calls it when the try's response was the call's answer). ``holding``
        says whether there is anything to give back (a limited pool's slot, a count)."""
        if self.holding:
            self.holding = False
            cluster = self.cluster
            assert cluster is not None
            cluster.end(self.endpoint, self.lease, self.counted)

    def attempt_failed(self, exc: BaseException) -> float:
        """The client's send raised ``exc`` (its transport error): the try is ended and
        recorded (telemetry, breaker, outlier detection). Returns the delay before the next
        try (sleep it, then go on); raises ``error(exc, ...)`` from ``exc`` when there is
        none."""
        self.end_attempt()
        outcome = self.outcome_of_error(exc)
        self.attempt_ended(self.token, outcome)
        self.ticket.record(None, outcome.error)
        self.record(outcome)
        delay = self.retry_delay(outcome)
        if delay is None:
            raise self.error(exc, outcome) from exc
        self.retry_scheduled(delay)
        return delay

    def attempt_abandoned(self) -> None:
        """The send ended in something that is not the upstream's doing (cancelled, the
        caller's own total timeout): the try is given back, the breaker told nothing."""
        self.end_attempt()
        self.ticket.abandon()

    def attempt_discarded(self, delay: float) -> None:
        """The try's response (closed by the adapter) is not the answer: the try is given back
        and the retry after ``delay`` told to telemetry."""
        self.end_attempt()
        self.retry_scheduled(delay)

    def expired(self) -> Exception:
        """The error for a try due at or after the deadline: it is not made (Envoy answers
        504 ``UT`` when its timer fires)."""
        return self.error(None, None, timed_out=True)

    def attempt_bound(self, ends: float | None) -> Deadline | None:
        """The deadline the client's waits work to for a try that must end at ``ends``."""
        if ends is None:
            return None
        bound = self.bound
        if bound is None and self.ends is not None:
            bound = self.bound = Deadline(self.ends, self.mesh.now)
        if bound is not None and ends == bound.at:
            return bound
        return Deadline(ends, self.mesh.now)

    def body_started(self) -> None:
        """The answer's headers are in: from here on the call's deadline bounds its body, and a
        per-try timeout no longer applies (as in Envoy, which ignores it once the response has
        begun). The reads of the body wait at most what is left."""
        timeouts = self.attempt_timeouts
        if timeouts is not None and self.decision.retry.per_try_timeout:
            ends = self.ends
            left = None if ends is None else max(ends - self.mesh.now(), 1e-3)
            self.codec.body_bound(timeouts, left)

    def settle(self, response: Resp) -> float | None:
        """The try's response head is in: tell telemetry, the breaker and outlier detection.
        Returns the delay before the next try (close the response, ``attempt_discarded``,
        sleep it), or None: this response is the call's answer (``finish`` it)."""
        codec = self.codec
        status = codec.status(response)
        retry = self.decision.retry
        policy = retry.compiled or policy_for(retry)  # the attribute read inlined: hot path
        headers = codec.response_headers(response)
        retryable = policy.may_retry_response(status, headers)
        if retryable:
            outcome = Outcome.of_response(
                status, headers, wall=self.mesh.clock.wall, retry_after_cap=RETRY_AFTER_CAP
            )
        else:
            outcome = _STATUS_OUTCOMES.get(status) or _status_outcome(status)
        token = self.token
        if token is not None:
            self.attempt_ended(token, outcome)
        ticket = self.ticket
        if ticket is not NO_TICKET:
            ticket.record(status, None)
        cluster = self.cluster
        endpoint = self.endpoint
        if cluster is not None and endpoint is not None:
            detector = cluster.balancer.detector
            if detector is not None:
                detector.record(endpoint, status)
        return self.retry_delay(outcome) if retryable else None

    def outcome_of_error(self, exc: BaseException) -> Outcome:
        """What a try that raised the client's ``exc`` came to."""
        codec = self.codec
        return codec.outcome_of_error(exc, per_try_timeout=codec.is_read_timeout(exc))

    def record(self, outcome: Outcome) -> None:
        """Feed the outlier detector and the balancer with this attempt's outcome."""
        if self.cluster is not None and self.endpoint is not None:
            self.cluster.report(self.endpoint, outcome)

    def retry_delay(self, outcome: Outcome) -> float | None:
        """Seconds to wait before the next attempt, or None: no retry. The retry machinery is
        built only here, when an attempt has failed: the success path never touches it."""
        retry = self.decision.retry
        if retry.attempts <= 0 or not self.replayable:
            return None
        if outcome.error is None and outcome is _STATUS_OUTCOMES.get(outcome.status or 0):
            return None  # a response no retry condition looks at (see settle)
        state = self.retry
        if state is None:
            deadlines = [d for d in (self.deadline, self.user_deadline) if d is not None]
            cluster = self.cluster
            state = self.retry = RetryState(
                self.mesh.retry_policy(retry),
                clock=self.mesh.clock,
                rng=self.mesh.rng,
                deadline=min(deadlines) if deadlines else None,
                budget=cluster.budget if cluster is not None else None,
                method=self.view.method,
                allow_non_idempotent=retry.allow_non_idempotent,
                retry_after_cap=RETRY_AFTER_CAP,
            )
        delay = state.next_delay(outcome, self.attempts)
        if delay is None and state.stopped_by == "overflow" and self.telemetry.active:
            self.telemetry.emit(BudgetExhausted(self.request_info(), self.attempts))
        return delay

    def done(self) -> None:
        """The call is over, however it ended: give back a retry-budget slot still held, and the
        caller its request as sent."""
        self.codec.restore(self.request, self.saved)
        if self.retry is not None:
            self.retry.finish()

    def timed_out(self) -> bool:
        now = self.mesh.now()
        return self.deadline is not None and now >= self.deadline - 1e-9

    def user_timed_out(self) -> bool:
        now = self.mesh.now()
        return self.user_deadline is not None and now >= self.user_deadline - 1e-9

    # ------------------------------------------------------------------ endings

    def reply(self, status: int, body: bytes, flag: str) -> Resp:
        if flag:
            self.flags.append(flag)
        headers = [("content-type", "text/plain")] if body else []
        if flag == "UO":
            headers.append(("x-envoy-overloaded", "true"))
        return self.finish(self._local_response(status, headers, body), local=True)

    def _local_response(self, status: int, headers: list[tuple[str, str]], body: bytes) -> Resp:
        """A response of the mesh's own, with the ``content-length`` of its body (unless its
        status has none); to a HEAD request its headers alone, that length included, as Envoy's
        local replies (``sendLocalReply``: a direct response, a fault's abort, a redirect, NR,
        UH, UO) send them."""
        if status >= 200 and status not in (204, 304):
            for name, _ in headers:
                if name.lower() == "content-length":
                    break
            else:
                headers = [*headers, ("content-length", str(len(body)))]
        if body and self.view.method == "HEAD":
            body = b""
        return self.codec.reply(self.request, status, headers, body)

    def redirect(self) -> Resp:
        redirect = self.decision.redirect
        assert redirect is not None
        view = self.view
        scheme = redirect.scheme or view.scheme
        host = view.host
        written: int | None = view.port if view.port != _DEFAULT_PORTS.get(view.scheme) else None
        port = written
        if redirect.authority:  # Envoy's host_redirect replaces the whole authority, port too
            name, _, digits = redirect.authority.rpartition(":")
            host, port = (name, int(digits)) if digits.isdigit() else (redirect.authority, None)
        if redirect.port is not None:
            port = redirect.port
        elif redirect.derive_port == "FROM_REQUEST_PORT":
            port = written
        elif redirect.derive_port == "FROM_PROTOCOL_DEFAULT":
            port = None
        path = view.path
        if redirect.uri is not None:
            path = redirect.uri
        elif redirect.prefix_rewrite is not None:
            path = _replace_prefix(path, self.decision, view, redirect.prefix_rewrite)
        location = self.codec.location(scheme, host, port, path, view.query or None)
        status = redirect.redirect_code or 301
        response = self._local_response(status, [("location", location)], b"")
        return self.finish(response)

    # ------------------------------------------------------------------ telemetry

    def request_info(self) -> RequestInfo:
        info = self.info
        if info is None:
            request_id = self.view.headers.get(context.REQUEST_ID)
            info = self.info = RequestInfo(
                self.view.method,
                self.original_url,
                self.decision,
                request_id,
                self.started,
            )
        return info

    def attempt_started(self, attempt: Req) -> tuple[Any, float] | None:
        """Tell telemetry an attempt goes out (a tracer may add its headers to it)."""
        if not self.telemetry.active:
            return None
        event = AttemptStarted(self.request_info(), self.attempts, self.endpoint)
        carrier = _Carrier(self.codec, attempt)
        return self.telemetry.attempt_started(event, carrier), self.mesh.now()

    def attempt_ended(self, token: tuple[Any, float] | None, outcome: Outcome) -> None:
        if token is None:
            return
        span, began = token
        event = AttemptEnded(
            self.request_info(),
            self.attempts,
            self.endpoint,
            outcome.status,
            outcome.error,
            self.mesh.now() - began,
        )
        self.telemetry.attempt_ended(span, event, ",".join(self.flags))

    def retry_scheduled(self, delay: float) -> None:
        if self.telemetry.active:
            self.telemetry.emit(RetryScheduled(self.request_info(), self.attempts, delay))

    def finished(self, response: Resp | None, error: BaseException | None) -> None:
        """Tell the listeners the request is over (metrics, access log)."""
        if not self.telemetry.listening:
            return
        if response is None:
            self.recorded(None, None, error)
        else:
            codec = self.codec
            self.recorded(codec.status(response), codec.response_headers(response), error)

    def recorded(
        self, status: int | None, headers: Mapping[str, str] | None, error: BaseException | None
    ) -> None:
        """Tell the listeners the request is over: the response's status and headers (None:
        no response), and the exception the caller got (None: none)."""
        if not self.telemetry.listening:
            return
        if status is None and isinstance(error, MeshRequestError):
            # the status of Envoy's local reply for the same failure
            status = 504 if isinstance(error, DeadlineExceeded) else 503
        sent = self.codec.request_headers(self.request).get("content-length")
        received = headers.get("content-length") if headers is not None else None
        tls, peer_identity = self.tls if self.tls is not None else (None, None)
        self.telemetry.emit(
            RequestFinished(
                self.request_info(),
                status,
                ",".join(self.flags),
                self.attempts,
                self.endpoint,
                self.mesh.now() - self.started,
                number(sent),
                number(received),
                error,
                tls,
                peer_identity,
                peer=decode(self.peer_metadata) if self.peer_metadata is not None else None,
                response_code_details=self.details,
            )
        )

    # ------------------------------------------------------------------ the body

    def body_expired(self, found: BaseException | None, response: Any) -> Exception:
        """The error for a read of the body that the call's deadline ended (``found``: the
        timeout the client raised, if it did): the route's ``DeadlineExceeded`` (``UT``,
        Envoy's ``upstream_response_timeout`` after the response started) or, when the
        caller's own timeout ran out, the client's own timeout error."""
        error = self.error(found, None, timed_out=True)
        if isinstance(error, DeadlineExceeded):
            self.details = "upstream_response_timeout"
            self._reflag(response)
        self.body_error = error
        return error

    def body_broken(self, exc: BaseException, response: Any) -> None:
        """The upstream's connection broke in the middle of the body (the caller gets the
        exception as it came): recorded as Envoy records it, the status as received with flag
        ``UC`` (upstream connection termination) and details
        ``upstream_reset_after_response_started{connection_termination}``; outlier detection
        counts it as a reset."""
        if "UC" not in self.flags:
            self.flags.append("UC")
        self.details = LATE_RESET_DETAILS
        self.body_error = exc
        self._reflag(response)
        self.record(_RESET)

    def _reflag(self, response: Any) -> None:
        """Put the call's flags as they are now on the response's ``MeshInfo`` (``response``:
        the response, or what the codec reads of one whose body is being read)."""
        if response is None:
            return
        info = self.codec.info(response)
        if info is not None:
            self.codec.set_info(response, dataclasses.replace(info, flags=",".join(self.flags)))

    def finish(self, response: Resp, local: bool = False) -> Resp:
        """Stamp the response with what the mesh did (``done`` gives the caller back its request
        as sent, before the response is handed over)."""
        decision = self.decision
        operations: list[HeaderOperations] = []
        if decision.headers is not None and decision.headers.response is not None:
            operations.append(decision.headers.response)
        target = decision.destination
        if target is not None and target.headers is not None and target.headers.response:
            operations.append(target.headers.response)
        if self.retry is not None and self.retry.flag and self.retry.flag not in self.flags:
            self.flags.append(self.retry.flag)
        flags = ",".join(self.flags) if self.flags else ""
        endpoint = self.endpoint
        tls = self.tls
        if endpoint is not None and not flags and not local and self.attempts == 1 and not tls:
            info = plain_info(decision, endpoint)
        else:
            address = endpoint.address if endpoint is not None else None
            if tls is None:
                info = MeshInfo(decision, address, self.attempts, flags, local)
            else:
                info = MeshInfo(decision, address, self.attempts, flags, local, tls[0], tls[1])
        peer = self.codec.finish(response, operations, flags, info, local)
        if not local:
            self.peer_metadata = peer
        return response

    def error(
        self, exc: BaseException | None, outcome: Outcome | None, *, timed_out: bool = False
    ) -> Exception:
        """The exception for a call that ends without a response (``done`` restores the request
        before it is raised). ``exc``: the client's error, if any; ``timed_out``: a wait the
        deadline ended (else the codec says whether ``exc`` is a read timeout)."""
        target = self.decision.destination
        destination = target.name if target is not None else self.decision.host
        route = route_label(self.decision)
        if self.user_timed_out() and not self.timed_out():
            return self.user_timeout()
        codec = self.codec
        timeout = timed_out or (exc is not None and codec.is_read_timeout(exc))
        if timeout or self.timed_out():
            self.flags.append("UT")
            return codec.error(
                DeadlineExceeded,
                f"upstream request timeout after {self.attempts} attempt(s)",
                request=self.request,
                route=route,
                destination=destination,
            )
        kind = outcome.error if outcome is not None else None
        if isinstance(exc, UpstreamTLSError):
            self.flags.append("UF")
            return codec.error(
                UpstreamTLSError,
                f"upstream connect error: {exc.reason}",
                request=self.request,
                route=route,
                destination=destination,
            )
        flag = "UF" if kind == "connect-failure" else "UC"
        stopped = self.retry.flag if self.retry is not None else ""
        flags = f"{flag},{stopped}" if stopped else flag
        self.flags.extend(flags.split(","))
        message = f"upstream {kind or 'failure'}: {exc}"
        return codec.error(
            MeshRequestError,
            message,
            request=self.request,
            route=route,
            destination=destination,
            flag=flags,
        )

    def refused(self, reason: str) -> Exception:
        """The error for an attempt the breaker refused (``reason``: the breaker's words): the
        call fails at once."""
        self.flags.append("UO")
        target = self.decision.destination
        return self.codec.error(
            CircuitOpenError,
            f"{reason}: failing fast",
            request=self.request,
            route=route_label(self.decision),
            destination=target.name if target is not None else None,
        )

    def pool_timeout(self) -> Exception:
        """The error for an attempt that waited for a pool slot until the deadline."""
        return self.error(None, None, timed_out=True)

    def overflow(self) -> Resp:
        """Envoy's answer to a connection-pool overflow: 503, flag UO, never retried."""
        return self.reply(
            503,
            b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "UO",
        )


class _Carrier:
    """An attempt's trace headers as a tracer reads and writes them (``telemetry``)."""

    __slots__ = ("codec", "request")

    def __init__(self, codec: Codec[Any, Any], request: Any) -> None:
        self.codec = codec
        self.request = request

    def trace_headers(self, names: frozenset[str]) -> dict[str, str]:
        return self.codec.trace_headers(self.request, names)

    def put_trace_headers(self, names: frozenset[str], pairs: list[tuple[str, str]]) -> None:
        self.codec.put_trace_headers(self.request, names, pairs)


_DEFAULT_PORTS = {"http": 80, "https": 443}
_STATUS_OUTCOMES: dict[int, Outcome] = {}
#: The outcome outlier detection is told of a connection that broke in a response's body.
_RESET = Outcome(error="reset")


def _status_outcome(status: int) -> Outcome:
    """The shared outcome of a response no retry condition looks further into."""
    found = _STATUS_OUTCOMES.get(status)
    if found is None:
        found = _STATUS_OUTCOMES.setdefault(status, Outcome(status=status))
    return found


def _rewritten_path(view: RouteRequest, decision: RouteDecision) -> str:
    rewrite = decision.rewrite
    assert rewrite is not None
    path = view.path
    if rewrite.uri is not None:
        path = _replace_prefix(path, decision, view, rewrite.uri)
    elif rewrite.uri_regex_rewrite is not None:
        path = regex_substitute(
            rewrite.uri_regex_rewrite.match, rewrite.uri_regex_rewrite.rewrite, path
        )
    return path


def _replace_prefix(path: str, decision: RouteDecision, view: RouteRequest, new: str) -> str:
    """Envoy's prefix_rewrite: replace the matched prefix (or the whole path for an exact match)."""
    matched = matched_uri(decision, view)
    if matched is None:
        return new
    if path.lower().startswith(matched.lower()):
        return new + path[len(matched) :]
    return new


_LOCAL_ERRORS: dict[str, type[MeshRequestError]] = {
    "NR": NoRouteError,
    "UH": NoHealthyUpstream,
    "NC": NoHealthyUpstream,
    "UO": CircuitOpenError,
}


def raise_for_mesh(
    info: MeshInfo | None, status: int, request: Any, codec: Codec[Any, Any]
) -> None:
    """Raise the matching exception (the codec's flavor) if the mesh answered a call itself: no
    route (``NoRouteError``), no endpoint (``NoHealthyUpstream``), pool overflow
    (``CircuitOpenError``)."""
    if info is None or not info.local_reply:
        return
    for flag in info.flags.split(","):
        error = _LOCAL_ERRORS.get(flag)
        if error is not None:
            target = info.decision.destination
            raise codec.error(
                error,
                f"the mesh answered {status} itself",
                request=request,
                route=info.route,
                destination=target.name if target is not None else info.decision.host,
                flag=flag,
            )


def origination_for(
    outbound: Outbound, endpoint: Endpoint | None, view: RouteRequest
) -> Origination | None:
    """The TLS a call (as the router saw it in ``view``, sent to ``endpoint``) goes with; None:
    plain text. With TLS, the client sends the request as ``https`` for the TLS pool.

    An ``https://`` URL is the app's own TLS: auto mTLS leaves it alone, and a DestinationRule
    that would originate TLS on top of it (Envoy would wrap TLS in TLS, which no server reads)
    is refused (``UpstreamTLSError``)."""
    origination = outbound.origination(endpoint, view.port)
    if origination is None:
        return None
    if view.scheme == "https":
        if origination.auto:
            return None
        raise UpstreamTLSError(
            f"{origination.source or 'tls'}: mode {origination.mode} originates TLS, and "
            f"{view.host} is called with https:// (TLS already): call it with http:// "
            "and let the mesh originate TLS, or set tls mode DISABLE"
        )
    return origination
