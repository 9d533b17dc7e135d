"""Resilience policies: the pure decisions of the request pipeline.

* ``fault``: whether one request is delayed and/or aborted, and the synthetic abort response.
* ``retry``: which outcomes are retried (Envoy's ``retry_on``), backoff, ``Retry-After``,
  retry budgets, per-request retry bookkeeping and per-try timeouts.
* ``breaker``: circuit breakers and connection-pool limits.

Nothing here does I/O or sleeps: time comes from an injected ``meshlib.clock.Clock`` and chance
from an injected ``random.Random`` (or a stable per-request-id draw).
"""
