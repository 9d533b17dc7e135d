"""``MeshTransport`` / ``AsyncMeshTransport``: the request pipeline of DESIGN.md §2.

```
context → route → fault → retry ┬ breaker → pool → balance → attempt ┐
                                └────────── retry decision ◄─────────┘
```

The two transports are thin I/O shells around one pure core (``Call``): routing, fault draws,
endpoint choice, outcome classification and the retry decision are shared; the shells differ only
in ``await``, sleeping and closing. Users get stock ``httpx.Client`` / ``httpx.AsyncClient``
objects with one of these as their transport (see ``Mesh.client``).

What a caller sees, as under Envoy:

* local replies are responses: no route → 404 ``NR``; subset not defined → 503 ``NC``; no
  endpoint → 503 ``UH``; connection-pool overflow → 503 ``UO``; injected abort → its status ``FI``;
  ``directResponse`` and ``redirect`` as configured. Each carries ``x-mesh-response-flags``.
* an open breaker raises ``CircuitOpenError`` (``UO``), never retried; the route timeout running out
  raises ``DeadlineExceeded`` (``UT``); an upstream that cannot be reached after the retries raises
  ``MeshRequestError`` (``UF``, ``URX`` when retries were spent), the httpx error as its cause.
* every response carries ``response.extensions["mesh"]``: a ``MeshInfo`` with the decision, the
  endpoint, the number of attempts and the response flags; ``x-mesh-response-flags`` is the
  mesh's alone (an upstream's copy is removed).
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
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from meshlib import context
from meshlib.balancing import hash_key
from meshlib.clients.httpx.headers import entries, with_entries
from meshlib.config.compile import matched_uri, regex_substitute
from meshlib.deadline import Deadline
from meshlib.deadline import enter as _enter_deadline
from meshlib.deadline import leave as _leave_deadline
from meshlib.discovery import Endpoint
from meshlib.errors import (
    CircuitOpenError,
    DeadlineExceeded,
    MeshRequestError,
    NoHealthyUpstream,
    NoRouteError,
    UpstreamTLSError,
)
from meshlib.pipeline.headers import number
from meshlib.policies.fault import FaultAction, abort_response_parts, decide
from meshlib.policies.retry import Outcome, RetryState, policy_for
from meshlib.routing import CLUSTER_DOMAIN, RouteDecision, RouteRequest
from meshlib.telemetry import (
    AttemptEnded,
    AttemptStarted,
    BudgetExhausted,
    FaultInjected,
    RequestFinished,
    RequestInfo,
    RetryScheduled,
)
from meshlib.telemetry.peer import PEER_KEYS, PEER_METADATA, decode, stamp_of

if TYPE_CHECKING:
    from meshlib.mesh import Cluster, Mesh
    from meshlib.security.outbound import Origination, Outbound, SecureTransports

log = logging.getLogger("meshlib.clients.httpx.transport")

FLAGS_HEADER = "x-mesh-response-flags"
TIMEOUT_OVERRIDE_HEADER = "x-envoy-upstream-rq-timeout-ms"
RETRY_AFTER_CAP = 30.0
#: Envoy's response code details for a response whose upstream connection ended in its body.
LATE_RESET_DETAILS = "upstream_reset_after_response_started{connection_termination}"


@dataclass(frozen=True, slots=True)
class MeshInfo:
    """What the mesh did with a request (``response.extensions["mesh"]``)."""

    decision: RouteDecision
    endpoint: str | None
    attempts: int
    flags: str
    local_reply: bool = False  # the mesh answered without a response from upstream
    #: the TLS the answering attempt was sent with (``SIMPLE``, ``MUTUAL``, ``ISTIO_MUTUAL``);
    #: None: plain text (or the app's own ``https://``)
    tls: str | None = None
    #: the upstream's verified identity: its SPIFFE ID under ISTIO_MUTUAL (a matched SAN under
    #: SIMPLE/MUTUAL with ``subjectAltNames``), else None
    peer_identity: str | None = None

    @property
    def mtls(self) -> bool:
        """Whether the answering attempt was sent with mutual TLS."""
        return self.tls in ("MUTUAL", "ISTIO_MUTUAL")

    @property
    def route(self) -> str:
        vs = self.decision.virtual_service or "-"
        name = self.decision.route_name or (
            f"http[{self.decision.route_index}]" if self.decision.route_index is not None else "-"
        )
        return f"{vs}:{name}"


# --------------------------------------------------------------------------- the pure core


def header_map(headers: httpx.Headers) -> dict[str, str]:
    """Request headers as a plain dict with lowercase names, values of repeated headers joined
    with ", " as httpx and Envoy join them. One pass, so that each later lookup — every header
    match of every route, the timeout override — costs a dict probe, not a scan of the list."""
    raw = entries(headers)
    if raw is None:  # pragma: no cover - another httpx layout: take the public way
        return dict(headers.items())
    if getattr(headers, "_encoding", None) in _ASCII_SUPERSETS:
        try:  # all ASCII, as headers nearly always are: every such encoding reads the same
            found = {key.decode("ascii"): value.decode("ascii") for _, key, value in raw}
        except UnicodeDecodeError:
            found = _decoded(raw, headers.encoding)
    else:
        found = _decoded(raw, headers.encoding)
    if len(found) != len(raw):
        return dict(headers.items())
    return found


#: Encodings httpx picks for header values (None: not picked yet) that read ASCII as ASCII.
_ASCII_SUPERSETS = frozenset({None, "ascii", "utf-8", "iso-8859-1"})


def _decoded(raw: list[tuple[bytes, bytes, bytes]], encoding: str) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode(encoding) for _, key, value in raw}


def view_of(request: httpx.Request, headers: dict[str, str]) -> RouteRequest:
    """The router's view of an httpx request.

    Filled in directly rather than through ``RouteRequest.__init__``: httpx has already
    normalised what that would (the method is upper case, the host lower case), and a request
    from an httpx client always carries its ``host`` header, the authority the router sees."""
    url = request.url
    try:  # httpx keeps the parsed URL as a named tuple: read it once, not through 5 properties
        scheme, _, host, port, path, query, _ = url._uri_reference
    except (AttributeError, ValueError):  # pragma: no cover - another httpx layout
        scheme, host, port, path = url.scheme, url.host, url.port, url.path
        query = url.query.decode("ascii", "replace")
    else:
        if host.startswith("xn--"):  # IDNA: the router sees the host as written
            host = url.host
        elif ":" in host:  # an IPv6 literal: httpx keeps its hex digits as written
            host = host.lower()
        if "%" in path:  # the router sees the path decoded, as httpx's URL.path gives it
            path = url.path
    view = _new_view(RouteRequest)
    view.method = request.method
    view.scheme = scheme
    view.host = host
    view.port = port if port is not None else (443 if scheme == "https" else 80)
    view.path = path or "/"
    view.query = query or ""
    view.headers = headers
    authority = headers.get("host")
    if authority is None:
        authority = host if port is None else f"{host}:{port}"
    view.authority = authority
    view._params = None
    return view


_new_view = object.__new__
_current_context = context._current.get


class Call:
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
    #: the call's deadline as the inner transports see it (``meshlib.deadline``), made at the
    #: first attempt; None: nothing bounds the call
    bound: Deadline | None = None
    #: the timeouts dict this call put in its last attempt's extensions (None: the caller's own)
    attempt_timeouts: dict[str, float | None] | None = None
    #: whether the response's body is still to be read: the call is recorded when it ends
    body_pending: bool = False
    #: how the body ended, when not whole: the caller's exception, and Envoy's details
    body_error: BaseException | None = None
    details: str = ""

    def __init__(self, mesh: Mesh, request: httpx.Request) -> None:
        self.mesh = mesh
        self.request = request
        self.original_headers = request.headers
        inbound = _current_context()
        if inbound is not None and inbound.headers:
            _carry(request, inbound.headers)
        headers = header_map(request.headers)
        self.view = view = view_of(request, headers)
        self.decision = decision = mesh._snapshot.table.route(view, mesh.rng)
        self.flags: list[str] = []
        self.tried: list[Endpoint] = []
        self.original_url = self.url = request.url
        self.extensions = extensions = request.extensions
        self.telemetry = mesh.telemetry
        self.started = now = mesh.now()
        timeout = decision.timeout
        if headers.get(TIMEOUT_OVERRIDE_HEADER) is not None:
            override = number(headers[TIMEOUT_OVERRIDE_HEADER])
            if override is not None:
                timeout = override / 1000 or None
        self.deadline = deadline = now + timeout if timeout else None
        user = extensions.get("timeout")
        user = user.get("read") if user else None
        self.user_deadline = user_deadline = now + user if user else None
        #: the call's deadline: the route's or the caller's, whichever ends first
        if deadline is None or (user_deadline is not None and user_deadline < deadline):
            self.ends = user_deadline
        else:
            self.ends = deadline

    @property
    def replayable(self) -> bool:
        """Whether the request body can be sent again (a retry, a mirror): it is in memory."""
        return isinstance(self.request.stream, httpx.ByteStream)

    # ------------------------------------------------------------------ before the upstream

    def local_reply(self) -> httpx.Response | None:
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
                    else (_b64(direct.body.bytes or ""))
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

    def abort_reply(self, action: FaultAction) -> httpx.Response:
        status, headers, body = abort_response_parts(action)
        self.flags.append("FI")
        response = httpx.Response(status, headers=list(headers), content=body)
        return self.finish(response)

    def delay_budget(self, delay: float) -> tuple[float, bool]:
        """How long the injected delay may sleep, and whether the caller's own timeout ends it."""
        if self.user_deadline is not None:
            left = self.user_deadline - self.mesh.now()
            if delay >= left:
                return max(left, 0.0), True
        return delay, False

    def user_timeout(self) -> httpx.ReadTimeout:
        return httpx.ReadTimeout("timed out waiting for the mesh call", request=self.request)

    # ------------------------------------------------------------------ attempts

    def prepare_attempt(self) -> httpx.Response | None:
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
                self.request.headers,
                self.view.query,
                self.mesh.source_address,
            )
        endpoint = cluster.balancer.choose(endpoints, key, self.tried)
        if endpoint is None:
            return self.reply(503, b"no healthy upstream", "UH")
        self.endpoint = endpoint
        return None

    def attempt_request(self, timeout: float | None) -> httpx.Request:
        """Point the request at this attempt's endpoint, with rewrites, headers and timeouts.

        The caller's request object is reused, not copied per attempt: rewrites and header
        operations are applied to it once, the endpoint and the timeouts on every attempt, and
        ``finish``/``error`` put the caller's URL back before the result is handed over."""
        request = self.request
        if self.attempts == 0:
            self._edit_request()
            target = self.decision.destination
            if (
                target is not None
                and not self.decision.passthrough
                and target.host.endswith(MESH_SUFFIX)
            ):
                stamp_metadata(request, self.mesh)
        endpoint = self.endpoint
        request.url = with_endpoint(self.url, endpoint) if endpoint is not None else self.url
        if timeout is not None:
            extensions = dict(self.extensions)
            base = extensions.get("timeout") or {}
            connect, read, write, pool = (
                base.get("connect"),
                base.get("read"),
                base.get("write"),
                base.get("pool"),
            )
            extensions["timeout"] = self.attempt_timeouts = {
                "connect": timeout if connect is None else min(connect, timeout),
                "read": timeout if read is None else min(read, timeout),
                "write": timeout if write is None else min(write, timeout),
                "pool": timeout if pool is None else min(pool, timeout),
            }
            request.extensions = extensions
        self.attempts += 1
        if endpoint is not None:
            self.tried.append(endpoint)
        return request

    def _edit_request(self) -> None:
        """The route's request edits, once per call: rewrite, header operations, keep-alive."""
        request = self.request
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
        close = self.cluster is not None and not self.cluster.keepalive
        override = TIMEOUT_OVERRIDE_HEADER in self.view.headers
        if rewrite is None and not operations and not close and not override:
            return
        # the edits go to a copy: the caller's headers stay as sent (``restore`` puts them back)
        headers = request.headers = request.headers.copy()
        if rewrite is not None:
            self.url = _rewrite(self.url, self.view, decision)
            if rewrite.authority:
                headers["host"] = rewrite.authority
        for operation in operations:
            _apply_header_ops(headers, operation)
        if close:
            headers["connection"] = "close"
        if override:  # meant for the mesh, not the upstream: Envoy removes it too
            del headers[TIMEOUT_OVERRIDE_HEADER]

    def restore(self) -> None:
        """Give the caller back its request as it sent it (URL, headers and extensions)."""
        request = self.request
        request.url = self.original_url
        request.headers = self.original_headers
        request.extensions = self.extensions

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
        """The timeout to hand the inner transport for a try that must end at ``ends``: what is
        left of it (None: no bound, or the caller's own timeouts, left as they are). A try with
        nothing left is not made: ``expired()`` is raised. ``waited``: the try may have waited
        for a connection-pool slot."""
        if ends is None:
            return None
        if (
            self.deadline is None
            and not self.attempts
            and not waited
            and not self.fault
            and not self.decision.retry.per_try_timeout
            and self._read_bounds_all()
        ):
            # the common case, no clock read: no route deadline nor per-try timeout, and a first
            # try that nothing has delayed, which the caller's own timeouts bound as tightly as
            # the deadline would (none of them is longer than the read one)
            return None
        left = ends - self.mesh.now()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> Exception:
        """The error for a try due at or after the deadline: it is not made (Envoy answers
        504 ``UT`` when its timer fires)."""
        return self.error(
            httpx.ReadTimeout("the deadline passed before the try", request=self.request), None
        )

    def attempt_bound(self, ends: float | None) -> Deadline | None:
        """The deadline the inner transport works to for a try that must end at ``ends``."""
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
        begun). The reads of the body the inner transport makes wait at most what is left."""
        timeouts = self.attempt_timeouts
        if timeouts is not None and self.decision.retry.per_try_timeout:
            ends = self.ends
            timeouts["read"] = None if ends is None else max(ends - self.mesh.now(), 1e-3)

    def settle(self, response: httpx.Response, ticket: Any, token: Any) -> float | None:
        """An attempt's response: tell telemetry, the breaker and outlier detection. Returns the
        delay before the next attempt, or None: this response is the call's answer."""
        status = response.status_code
        retry = self.decision.retry
        policy = retry.compiled or policy_for(retry)  # the attribute read inlined: hot path
        retryable = policy.may_retry_response(status, response.headers)
        if retryable:
            outcome = Outcome.of_response(
                status, response.headers, wall=self.mesh.clock.wall, retry_after_cap=RETRY_AFTER_CAP
            )
        else:
            outcome = _STATUS_OUTCOMES.get(status) or _status_outcome(status)
        if token is not None:
            self.attempt_ended(token, outcome)
        if ticket is not NO_TICKET:
            ticket.record(status, None)
        cluster = self.cluster
        endpoint = self.endpoint
        if cluster is not None and endpoint is not None:
            detector = cluster.balancer.detector
            if detector is not None:
                detector.record(endpoint, status)
        return self.retry_delay(outcome) if retryable else None

    def _read_bounds_all(self) -> bool:
        """Whether the caller's connect, write and pool timeouts are set and no longer than its
        read timeout (httpx's default ``Timeout(5.0)``: all four the same)."""
        own = self.extensions.get("timeout") or {}
        read = own.get("read")
        if read is None:
            return False
        for name in ("connect", "write", "pool"):
            value = own.get(name)
            if value is None or value > read:
                return False
        return True

    def outcome_of_error(self, exc: Exception) -> Outcome:
        per_try = isinstance(exc, httpx.TimeoutException) and not isinstance(
            exc, httpx.ConnectTimeout
        )
        return Outcome.of_error(exc, per_try_timeout=per_try)

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
                method=self.request.method,
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
        self.restore()
        if self.retry is not None:
            self.retry.finish()

    def timed_out(self) -> bool:
        now = self.mesh.now()
        return self.deadline is not None and now >= self.deadline - 1e-9

    def user_timed_out(self) -> bool:
        now = self.mesh.now()
        return self.user_deadline is not None and now >= self.user_deadline - 1e-9

    # ------------------------------------------------------------------ endings

    def reply(self, status: int, body: bytes, flag: str) -> httpx.Response:
        if flag:
            self.flags.append(flag)
        headers = [("content-type", "text/plain")] if body else []
        if flag == "UO":
            headers.append(("x-envoy-overloaded", "true"))
        return self.finish(httpx.Response(status, headers=headers, content=body), local=True)

    def redirect(self) -> httpx.Response:
        redirect = self.decision.redirect
        assert redirect is not None
        url = self.request.url
        scheme = redirect.scheme or url.scheme
        host = url.host
        port: int | None = url.port
        if redirect.authority:  # Envoy's host_redirect replaces the whole authority, port too
            name, _, number = redirect.authority.rpartition(":")
            host, port = (name, int(number)) if number.isdigit() else (redirect.authority, None)
        if redirect.port is not None:
            port = redirect.port
        elif redirect.derive_port == "FROM_REQUEST_PORT":
            port = url.port
        elif redirect.derive_port == "FROM_PROTOCOL_DEFAULT":
            port = None
        path = url.path
        if redirect.uri is not None:
            path = redirect.uri
        elif redirect.prefix_rewrite is not None:
            path = _replace_prefix(path, self.decision, self.view, redirect.prefix_rewrite)
        query = url.query or None  # no query: no stray "?"
        location = httpx.URL(scheme=scheme, host=host, port=port, path=path, query=query)
        status = redirect.redirect_code or 301
        return self.finish(httpx.Response(status, headers={"location": str(location)}))

    # ------------------------------------------------------------------ telemetry

    def request_info(self) -> RequestInfo:
        info = self.info
        if info is None:
            request_id = self.view.headers.get(context.REQUEST_ID)
            info = self.info = RequestInfo(
                self.request.method, self.original_url, self.decision, request_id, self.started
            )
        return info

    def attempt_started(self, attempt: httpx.Request) -> tuple[Any, float] | None:
        """Tell telemetry an attempt goes out (a tracer may add its headers to it)."""
        if not self.telemetry.active:
            return None
        event = AttemptStarted(self.request_info(), self.attempts, self.endpoint)
        return self.telemetry.attempt_started(event, attempt), self.mesh.now()

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

    def finished(self, response: httpx.Response | None, error: BaseException | None) -> None:
        """Tell the listeners the request is over (metrics, access log)."""
        if not self.telemetry.listening:
            return
        if response is None:
            self.recorded(None, None, error)
        else:
            self.recorded(response.status_code, response.headers, error)

    def recorded(
        self, status: int | None, headers: httpx.Headers | None, error: BaseException | None
    ) -> None:
        """Tell the listeners the request is over: the response's status and headers (None:
        no response), and the exception the caller got (None: none)."""
        if not self.telemetry.listening:
            return
        if status is None and isinstance(error, MeshRequestError):
            # the status of Envoy's local reply for the same failure
            status = 504 if isinstance(error, DeadlineExceeded) else 503
        sent = self.request.headers.get("content-length")
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

    def body_expired(self, found: Exception | None, extensions: dict[str, Any]) -> Exception:
        """The error for a read of the body that the call's deadline ended (``found``: the
        timeout the inner transport raised, if it did): the route's ``DeadlineExceeded``
        (``UT``, Envoy's ``upstream_response_timeout`` after the response started) or, when the
        caller's own timeout ran out, httpx's ``ReadTimeout``."""
        cause = found or httpx.ReadTimeout(
            "the deadline passed while the body was read", request=self.request
        )
        error = self.error(cause, None)
        if isinstance(error, DeadlineExceeded):
            self.details = "upstream_response_timeout"
            self._reflag(extensions)
        self.body_error = error
        return error

    def body_broken(self, exc: BaseException, extensions: dict[str, Any]) -> None:
        """The upstream's connection broke in the middle of the body (the caller gets the
        exception as it came): recorded as Envoy records it, the status as received with flag
        ``UC`` (upstream connection termination) and details
        ``upstream_reset_after_response_started{connection_termination}``; outlier detection
        counts it as a reset."""
        if "UC" not in self.flags:
            self.flags.append("UC")
        self.details = LATE_RESET_DETAILS
        self.body_error = exc
        self._reflag(extensions)
        self.record(_RESET)

    def _reflag(self, extensions: dict[str, Any]) -> None:
        """Put the call's flags as they are now on the response's ``MeshInfo``."""
        info = extensions.get("mesh")
        if isinstance(info, MeshInfo):
            extensions["mesh"] = dataclasses.replace(info, flags=",".join(self.flags))

    def finish(self, response: httpx.Response, local: bool = False) -> httpx.Response:
        """Stamp the response with what the mesh did (``done`` gives the caller back its request
        as sent, before the response is handed over)."""
        decision = self.decision
        if decision.headers is not None and decision.headers.response is not None:
            _apply_header_ops(response.headers, decision.headers.response)
        target = decision.destination
        if target is not None and target.headers is not None and target.headers.response:
            _apply_header_ops(response.headers, target.headers.response)
        if self.retry is not None and self.retry.flag and self.retry.flag not in self.flags:
            self.flags.append(self.retry.flag)
        flags = ",".join(self.flags) if self.flags else ""
        if not local:
            self.peer_metadata = _take_upstream_headers(response)
        if flags:
            response.headers[FLAGS_HEADER] = flags
        endpoint = self.endpoint
        tls = self.tls
        if endpoint is not None and not flags and not local and self.attempts == 1 and not tls:
            info = _plain_info(decision, endpoint)
        else:
            address = endpoint.address if endpoint is not None else None
            if tls is None:
                info = MeshInfo(decision, address, self.attempts, flags, local)
            else:
                info = MeshInfo(decision, address, self.attempts, flags, local, tls[0], tls[1])
        response.extensions["mesh"] = info
        return response

    def error(self, exc: Exception, outcome: Outcome | None) -> Exception:
        """The exception for a call that ends without a response (``done`` restores the request
        before it is raised)."""
        target = self.decision.destination
        destination = target.name if target is not None else self.decision.host
        route = MeshInfo(self.decision, None, self.attempts, "").route
        if self.user_timed_out() and not self.timed_out():
            return self.user_timeout()
        timeout = isinstance(exc, httpx.TimeoutException) and not isinstance(
            exc, httpx.ConnectTimeout
        )
        if timeout or self.timed_out():
            self.flags.append("UT")
            return DeadlineExceeded(
                f"upstream request timeout after {self.attempts} attempt(s)",
                request=self.request,
                route=route,
                destination=destination,
            )
        kind = outcome.error if outcome is not None else None
        if isinstance(exc, UpstreamTLSError):
            self.flags.append("UF")
            return UpstreamTLSError(
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
        return MeshRequestError(
            message, request=self.request, route=route, destination=destination, flag=flags
        )

    def refused(self, exc: CircuitOpenError) -> CircuitOpenError:
        """The error for an attempt the breaker refused (``exc``): the call fails at once."""
        self.flags.append("UO")
        target = self.decision.destination
        return CircuitOpenError(
            "circuit breaker open: failing fast",
            request=self.request,
            route=MeshInfo(self.decision, None, self.attempts, "").route,
            destination=target.name if target is not None else None,
        )

    def overflow(self) -> httpx.Response:
        """Envoy's answer to a connection-pool overflow: 503, flag UO, never retried."""
        return self.reply(
            503,
            b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "UO",
        )


#: The MeshInfo of plain calls (one attempt, no flags), by decision and endpoint: immutable,
#: so every such call through the same route to the same endpoint shares one.
_PLAIN_INFOS: dict[tuple[int, int], tuple[RouteDecision, Endpoint, MeshInfo]] = {}


def _plain_info(decision: RouteDecision, endpoint: Endpoint) -> MeshInfo:
    key = (id(decision), id(endpoint))
    found = _PLAIN_INFOS.get(key)
    if found is not None and found[0] is decision and found[1] is endpoint:
        return found[2]
    info = MeshInfo(decision, endpoint.address, 1, "", False)
    if len(_PLAIN_INFOS) >= 4096:
        _PLAIN_INFOS.clear()
    _PLAIN_INFOS[key] = (decision, endpoint, info)
    return info


class FreeLease:
    """The pool slot of a destination without pool limits: nothing to hold or give back."""

    __slots__ = ()

    def release(self) -> None:
        pass


FREE_LEASE = FreeLease()


class _NoTicket:
    """The breaker ticket of a destination without a breaker: settles nothing."""

    __slots__ = ()

    def record(self, status: int | None, error_kind: str | None) -> bool:
        return False

    def abandon(self) -> None:
        pass


NO_TICKET = _NoTicket()

_STATUS_OUTCOMES: dict[int, Outcome] = {}
#: The outcome outlier detection is told of a connection that broke in a response's body.
_RESET = Outcome(error="reset")


def _status_outcome(status: int) -> Outcome:
    """The shared outcome of a response no retry condition looks further into."""
    found = _STATUS_OUTCOMES.get(status)
    if found is None:
        found = _STATUS_OUTCOMES.setdefault(status, Outcome(status=status))
    return found


def with_endpoint(url: httpx.URL, endpoint: Endpoint) -> httpx.URL:
    """``url`` sent to ``endpoint``: host and port replaced without parsing the URL again (httpx
    keeps a parsed URL as a named tuple; replacing two fields of it is all this takes)."""
    try:
        scheme, userinfo, _, _, path, query, fragment = ref = url._uri_reference
    except (AttributeError, ValueError):  # pragma: no cover - another httpx layout
        return url.copy_with(host=endpoint.host, port=endpoint.port)
    result = _new_url(httpx.URL)
    result._uri_reference = _new_tuple(
        type(ref), (scheme, userinfo, endpoint.host, endpoint.port, path, query, fragment)
    )
    return result


_new_url = object.__new__
_new_tuple = tuple.__new__


_LOCAL_ERRORS: dict[str, type[MeshRequestError]] = {
    "NR": NoRouteError,
    "UH": NoHealthyUpstream,
    "NC": NoHealthyUpstream,
    "UO": CircuitOpenError,
}


def raise_for_mesh(response: httpx.Response) -> httpx.Response:
    """Raise the matching exception if the mesh answered this call itself: no route
    (``NoRouteError``), no endpoint (``NoHealthyUpstream``), pool overflow
    (``CircuitOpenError``). Returns the response otherwise, for chaining."""
    info = response.extensions.get("mesh")
    if not isinstance(info, MeshInfo) or not info.local_reply:
        return response
    for flag in info.flags.split(","):
        error = _LOCAL_ERRORS.get(flag)
        if error is not None:
            target = info.decision.destination
            raise error(
                f"the mesh answered {response.status_code} itself",
                request=response.request,
                route=info.route,
                destination=target.name if target is not None else info.decision.host,
                flag=flag,
            )
    return response


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _apply_header_ops(headers: httpx.Headers, ops: Any) -> None:
    for name in ops.remove or ():
        if name in headers:
            del headers[name]
    for name, value in (ops.set or {}).items():
        _set_header(headers, name, value)
    for name, value in (ops.add or {}).items():
        if name in headers:
            _set_header(headers, name, f"{headers[name]},{value}")
        else:
            _set_header(headers, name, value)


def _set_header(headers: httpx.Headers, name: str, value: str) -> None:
    """Set a configured header, its value as Envoy sends it: the UTF-8 bytes of a value that
    is not ASCII (which ``httpx.Headers`` would encode as ASCII once it has seen only ASCII)."""
    if value.isascii():
        headers[name] = value
        return
    raw = entries(headers)
    if raw is None:  # pragma: no cover - another httpx layout
        headers[name] = value
        return
    key = name.lower().encode("ascii")  # a token: checked when the config was loaded
    raw[:] = [entry for entry in raw if entry[1] != key]
    raw.append((name.encode("ascii"), key, value.encode("utf-8")))


def _rewrite(url: httpx.URL, view: RouteRequest, decision: RouteDecision) -> httpx.URL:
    rewrite = decision.rewrite
    assert rewrite is not None
    path = url.path
    if rewrite.uri is not None:
        path = _replace_prefix(path, decision, view, rewrite.uri)
    elif rewrite.uri_regex_rewrite is not None:
        path = regex_substitute(
            rewrite.uri_regex_rewrite.match, rewrite.uri_regex_rewrite.rewrite, path
        )
    return url.copy_with(path=path)


def _replace_prefix(path: str, decision: RouteDecision, view: RouteRequest, new: str) -> str:
    """Envoy's prefix_rewrite: replace the matched prefix (or the whole path for an exact match)."""
    matched = matched_uri(decision, view)
    if matched is None:
        return new
    if path.lower().startswith(matched.lower()):
        return new + path[len(matched) :]
    return new


# --------------------------------------------------------------------------- streams that release


class _Body(httpx.SyncByteStream):
    """An upstream's response body as the caller reads it, through the mesh.

    Each read is bounded by the call's deadline (``meshlib.deadline``: the inner transport's
    reads wait at most what is left, and none begins after it); a read it ends raises
    ``DeadlineExceeded`` (``UT``), or httpx's ``ReadTimeout`` when it was the caller's timeout.
    A connection that breaks in the middle is recorded as the call's failure (``UC``), the
    caller getting the httpx error as it came. Closing it gives back the attempt's pool slot and
    in-flight count (``release``) and records the call (metrics, access log)."""

    __slots__ = ("_call", "_extensions", "_headers", "_release", "_status", "_stream")

    def __init__(self, call: Call, response: httpx.Response, release: Any) -> None:
        self._call: Call | None = call
        self._stream: Any = response.stream
        self._release = release
        # what recording the call needs of the response (not the response: no cycle)
        self._status = response.status_code
        self._headers = response.headers
        self._extensions = response.extensions
        call.body_pending = True

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        assert call is not None
        deadline = call.bound
        chunks = iter(self._stream)
        while True:
            if deadline is not None and deadline.at - deadline.now() <= 0:
                raise call.body_expired(None, self._extensions)
            token = _enter_deadline(deadline)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except httpx.TimeoutException as exc:
                raise call.body_expired(exc, self._extensions) from exc
            except httpx.TransportError as exc:
                call.body_broken(exc, self._extensions)
                raise
            finally:
                _leave_deadline(token)
            yield chunk

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            _ended(self)


class _AsyncBody(httpx.AsyncByteStream):
    """``_Body`` for async clients."""

    __slots__ = ("_call", "_extensions", "_headers", "_release", "_status", "_stream")

    def __init__(self, call: Call, response: httpx.Response, release: Any) -> None:
        self._call: Call | None = call
        self._stream: Any = response.stream
        self._release = release
        self._status = response.status_code
        self._headers = response.headers
        self._extensions = response.extensions
        call.body_pending = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call = self._call
        assert call is not None
        deadline = call.bound
        chunks = self._stream.__aiter__()
        while True:
            if deadline is not None and deadline.at - deadline.now() <= 0:
                raise call.body_expired(None, self._extensions)
            token = _enter_deadline(deadline)
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except httpx.TimeoutException as exc:
                raise call.body_expired(exc, self._extensions) from exc
            except httpx.TransportError as exc:
                call.body_broken(exc, self._extensions)
                raise
            finally:
                _leave_deadline(token)
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            _ended(self)


def _ended(body: _Body | _AsyncBody) -> None:
    """A body was closed: give back what its attempt held, and record the call (once)."""
    release, body._release = body._release, None
    call, body._call = body._call, None
    try:
        if release is not None:
            release()
    finally:
        if call is not None and call.telemetry.listening:
            call.recorded(body._status, body._headers, call.body_error)


# --------------------------------------------------------------------------- the I/O shells


class MeshTransport(httpx.BaseTransport):
    """The mesh as a sync httpx transport: ``httpx.Client(transport=MeshTransport(mesh))``."""

    def __init__(self, mesh: Mesh, inner: httpx.BaseTransport | None = None) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else mesh.sync_inner()
        self._secure: SecureTransports | None = None  # the TLS destinations' pools

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = Call(self.mesh, request)
        try:
            response = self._handle(call)
        except BaseException as exc:
            call.finished(None, exc)
            raise
        finally:
            call.done()
        if call.telemetry.listening and not call.body_pending:
            call.finished(response, None)
        return response

    def _handle(self, call: Call) -> httpx.Response:
        if not call.decision.plain:
            reply = call.local_reply()
            if reply is not None:
                return reply
            action = call.draw_fault()
            if action is not None:
                if action.delay is not None:
                    sleep, cut = call.delay_budget(action.delay)
                    self.mesh.clock.sleep(sleep)
                    if cut:
                        raise call.user_timeout()
                if action.aborts:
                    return call.abort_reply(action)
            if call.decision.mirrors:
                self.mesh.mirror(call, self)
        while True:
            reply = call.prepare_attempt()
            if reply is not None:
                return reply
            cluster = call.cluster
            assert cluster is not None
            ends = call.attempt_deadline()
            waited = cluster.pool_limited
            if waited:
                try:
                    lease = cluster.acquire(ends)
                except DeadlineExceeded:
                    raise call.error(httpx.PoolTimeout("pending too long"), None) from None
                if lease is None:
                    return call.overflow()
            else:
                lease = FREE_LEASE
            try:
                timeout = call.attempt_timeout(ends, waited)
            except BaseException:
                lease.release()
                raise
            ticket: Any
            if cluster.breaker is None:
                ticket = NO_TICKET
            else:
                try:
                    ticket = cluster.breaker.permit()
                except CircuitOpenError as exc:
                    lease.release()
                    raise call.refused(exc) from exc
            attempt = call.attempt_request(timeout)
            endpoint = call.endpoint
            counted = cluster.begin(endpoint) if cluster.counts else 0
            token = call.attempt_started(attempt) if call.telemetry.active else None
            scope = _enter_deadline(call.attempt_bound(ends))
            try:
                if cluster.outbound is None:
                    response = self.inner.handle_request(attempt)
                else:
                    response = self._send_secure(call, cluster.outbound, attempt)
            except httpx.TransportError as exc:
                _leave_deadline(scope)
                cluster.end(endpoint, lease, counted)
                outcome = call.outcome_of_error(exc)
                call.attempt_ended(token, outcome)
                ticket.record(None, outcome.error)
                call.record(outcome)
                delay = call.retry_delay(outcome)
                if delay is None:
                    raise call.error(exc, outcome) from exc
                call.retry_scheduled(delay)
                self.mesh.clock.sleep(delay)
                continue
            except BaseException:
                _leave_deadline(scope)
                cluster.end(endpoint, lease, counted)
                ticket.abandon()
                raise
            _leave_deadline(scope)
            delay = call.settle(response, ticket, token)
            if delay is None:
                response = call.finish(response)
                held = lease is not FREE_LEASE or counted
                if response.is_closed:
                    if held:
                        cluster.end(endpoint, lease, counted)
                elif held or call.bound is not None or call.telemetry.listening:
                    call.body_started()
                    release = _releaser(cluster, endpoint, lease, counted) if held else None
                    response.stream = _Body(call, response, release)
                return response
            response.close()
            cluster.end(endpoint, lease, counted)
            call.retry_scheduled(delay)
            self.mesh.clock.sleep(delay)

    def _send_secure(
        self, call: Call, outbound: Outbound, attempt: httpx.Request
    ) -> httpx.Response:
        """Send an attempt to a destination that may take TLS: through the pool of its TLS
        settings (see ``meshlib.security.outbound``), or the plain inner transport."""
        origination = secure_attempt(call, outbound, attempt)
        if origination is None:
            return self.inner.handle_request(attempt)
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        response = secure.sync(outbound.target.name, origination).handle_request(attempt)
        call.tls = (origination.mode, _peer_of(response))
        return response

    def mirror_inner(
        self, call: Call, cluster: Cluster, endpoint: Endpoint | None, request: httpx.Request
    ) -> httpx.BaseTransport | None:
        """The transport a mirrored copy goes through (with the TLS its destination takes), or
        None: it is not sent (TLS that cannot be originated for it)."""
        outbound = cluster.outbound
        if outbound is None:
            return self.inner
        try:
            origination = origination_for(outbound, endpoint, call.view, request)
        except UpstreamTLSError:
            return None
        if origination is None:
            return self.inner
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        return secure.sync(outbound.target.name, origination)

    def close(self) -> None:
        self.inner.close()
        if self._secure is not None:
            self._secure.close()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """The mesh as an async httpx transport: ``httpx.AsyncClient(transport=...)``."""

    def __init__(self, mesh: Mesh, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else mesh.async_inner()
        self._secure: SecureTransports | None = None  # the TLS destinations' pools (httpx)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = Call(self.mesh, request)
        try:
            response = await self._handle(call)
        except BaseException as exc:
            call.finished(None, exc)
            raise
        finally:
            call.done()
        if call.telemetry.listening and not call.body_pending:
            call.finished(response, None)
        return response

    async def _handle(self, call: Call) -> httpx.Response:
        if not call.decision.plain:
            reply = call.local_reply()
            if reply is not None:
                return reply
            action = call.draw_fault()
            if action is not None:
                if action.delay is not None:
                    sleep, cut = call.delay_budget(action.delay)
                    await self.mesh.clock.asleep(sleep)
                    if cut:
                        raise call.user_timeout()
                if action.aborts:
                    return call.abort_reply(action)
            if call.decision.mirrors:
                self.mesh.amirror(call, self)
        while True:
            reply = call.prepare_attempt()
            if reply is not None:
                return reply
            cluster = call.cluster
            assert cluster is not None
            ends = call.attempt_deadline()
            waited = cluster.pool_limited
            if waited:
                try:
                    lease = await cluster.aacquire(ends)
                except DeadlineExceeded:
                    raise call.error(httpx.PoolTimeout("pending too long"), None) from None
                if lease is None:
                    return call.overflow()
            else:
                lease = FREE_LEASE
            try:
                timeout = call.attempt_timeout(ends, waited)
            except BaseException:
                lease.release()
                raise
            ticket: Any
            if cluster.breaker is None:
                ticket = NO_TICKET
            else:
                try:
                    ticket = cluster.breaker.permit()
                except CircuitOpenError as exc:
                    lease.release()
                    raise call.refused(exc) from exc
            attempt = call.attempt_request(timeout)
            endpoint = call.endpoint
            counted = cluster.begin(endpoint) if cluster.counts else 0
            token = call.attempt_started(attempt) if call.telemetry.active else None
            scope = _enter_deadline(call.attempt_bound(ends))
            try:
                if cluster.outbound is None:
                    response = await self.inner.handle_async_request(attempt)
                else:
                    response = await self._send_secure(call, cluster.outbound, attempt)
            except httpx.TransportError as exc:
                _leave_deadline(scope)
                cluster.end(endpoint, lease, counted)
                outcome = call.outcome_of_error(exc)
                call.attempt_ended(token, outcome)
                ticket.record(None, outcome.error)
                call.record(outcome)
                delay = call.retry_delay(outcome)
                if delay is None:
                    raise call.error(exc, outcome) from exc
                call.retry_scheduled(delay)
                await self.mesh.clock.asleep(delay)
                continue
            except BaseException:
                _leave_deadline(scope)
                cluster.end(endpoint, lease, counted)
                ticket.abandon()
                raise
            _leave_deadline(scope)
            delay = call.settle(response, ticket, token)
            if delay is None:
                response = call.finish(response)
                held = lease is not FREE_LEASE or counted
                if response.is_closed:
                    if held:
                        cluster.end(endpoint, lease, counted)
                elif held or call.bound is not None or call.telemetry.listening:
                    call.body_started()
                    release = _releaser(cluster, endpoint, lease, counted) if held else None
                    response.stream = _AsyncBody(call, response, release)
                return response
            await response.aclose()
            cluster.end(endpoint, lease, counted)
            call.retry_scheduled(delay)
            await self.mesh.clock.asleep(delay)

    async def _send_secure(
        self, call: Call, outbound: Outbound, attempt: httpx.Request
    ) -> httpx.Response:
        """As ``MeshTransport._send_secure``. TLS goes through httpx's own async transport on
        httpcore (whatever the inner transport is): its network backend checks the peer
        before a byte of the request is sent, which aiohttp offers no public way to do."""
        origination = secure_attempt(call, outbound, attempt)
        if origination is None:
            return await self.inner.handle_async_request(attempt)
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        transport = secure.async_(outbound.target.name, origination)
        response = await transport.handle_async_request(attempt)
        call.tls = (origination.mode, _peer_of(response))
        return response

    def mirror_inner(
        self, call: Call, cluster: Cluster, endpoint: Endpoint | None, request: httpx.Request
    ) -> httpx.AsyncBaseTransport | None:
        """As ``MeshTransport.mirror_inner``."""
        outbound = cluster.outbound
        if outbound is None:
            return self.inner
        try:
            origination = origination_for(outbound, endpoint, call.view, request)
        except UpstreamTLSError:
            return None
        if origination is None:
            return self.inner
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        return secure.async_(outbound.target.name, origination)

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self._secure is not None:
            await self._secure.aclose()


def secure_attempt(call: Call, outbound: Outbound, attempt: httpx.Request) -> Origination | None:
    """The TLS of this attempt (None: plain text), its URL made ``https`` for the pool."""
    call.tls = None
    return origination_for(outbound, call.endpoint, call.view, attempt)


def origination_for(
    outbound: Outbound, endpoint: Endpoint | None, view: RouteRequest, request: httpx.Request
) -> Origination | None:
    """The TLS ``request`` (a call as the router saw it in ``view``, sent to ``endpoint``) goes
    with; None: plain text. With TLS, the request's URL is made ``https`` for the pool.

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
    request.url = _as_https(request.url)
    return origination


def _as_https(url: httpx.URL) -> httpx.URL:
    """``url`` with scheme ``https`` and its port kept (80 when it had none): ``with_endpoint``'s
    way, without parsing the URL again (``copy_with`` would, at a cost per call)."""
    try:
        _, userinfo, host, port, path, query, fragment = ref = url._uri_reference
    except (AttributeError, ValueError):  # pragma: no cover - another httpx layout
        return url.copy_with(scheme="https", port=url.port or 80)
    result = _new_url(httpx.URL)
    result._uri_reference = _new_tuple(
        type(ref), ("https", userinfo, host, port or 80, path, query, fragment)
    )
    return result


#: ``get_extra_info`` key of a connection verified by ``meshlib.security.outbound``: the peer's
#: verified identity (its SPIFFE ID under ISTIO_MUTUAL), or None.
PEER_IDENTITY = "meshlib.peer_identity"


def _peer_of(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    peer = stream.get_extra_info(PEER_IDENTITY)
    return peer if isinstance(peer, str) else None


def _carry(request: httpx.Request, carried: Mapping[str, str]) -> None:
    """Add the inbound request's context headers the caller did not set itself (on a copy of
    the caller's headers: ``Call.restore`` puts the caller's own back)."""
    headers = request.headers
    missing = [name for name in carried if name not in headers]
    if missing:
        headers = request.headers = headers.copy()
        for name in missing:
            headers[name] = carried[name]


MESH_SUFFIX = "." + CLUSTER_DOMAIN


def stamp_metadata(request: httpx.Request, mesh: Mesh) -> None:
    """Put this workload's metadata exchange headers on the request (in place of any the caller
    set: a peer speaks for itself only), on a copy of its headers (``Call.restore`` puts the
    caller's own back)."""
    stamp = stamp_of(mesh)
    headers = request.headers
    raw = entries(headers)
    if raw is None:  # pragma: no cover - another httpx layout
        headers = request.headers = headers.copy()
        for name, _, value in stamp.entries:
            headers[name.decode()] = value.decode()
        return
    items = [entry for entry in raw if entry[1] not in PEER_KEYS]
    items += stamp.entries
    request.headers = with_entries(items, headers)


def _take_upstream_headers(response: httpx.Response) -> str | None:
    """Remove from an upstream's response the headers only the mesh may set: its
    ``x-envoy-peer-metadata`` and id (as Istio's sidecar removes them before the app sees the
    response), and any ``x-mesh-response-flags`` (the mesh's own record of what it did: an
    upstream's copy would pass for the mesh's). Returns the peer metadata, None when not sent."""
    headers = response.headers
    raw = entries(headers)
    if raw is None:  # pragma: no cover - another httpx layout
        value: str | None = headers.get(PEER_METADATA)
        for name in ("x-envoy-peer-metadata-id", PEER_METADATA, FLAGS_HEADER):
            if name in headers:
                del headers[name]
        return value
    for entry in raw:
        if entry[1] in _UPSTREAM_TAKEN:
            break
    else:
        return None
    found = None
    kept = []
    for entry in raw:
        if entry[1] in _UPSTREAM_TAKEN:
            if entry[1] == _PEER_METADATA_KEY:
                found = entry[2].decode("latin-1")
        else:
            kept.append(entry)
    raw[:] = kept
    return found


_PEER_METADATA_KEY = PEER_METADATA.encode()
#: The response headers of an upstream the mesh removes (see ``_take_upstream_headers``).
_UPSTREAM_TAKEN = PEER_KEYS | {FLAGS_HEADER.encode()}


def _releaser(cluster: Cluster, endpoint: Endpoint | None, lease: Any, counted: int) -> Any:
    return lambda: cluster.end(endpoint, lease, counted)
