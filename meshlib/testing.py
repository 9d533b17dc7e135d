"""Test kit for meshlib users (and meshlib itself): resilience behaviour in milliseconds.

* ``FakeClock``: time that moves only when something sleeps or the test advances it.
* ``Upstreams``: scripted upstream services — per endpoint, host or subset, a queue of replies
  (responses, errors, slow responses) — served in memory through an ``httpx.MockTransport``.
* ``in_memory_mesh``: a ``Mesh`` from YAML whose calls go to those upstreams, on the fake clock.

```python
clock = FakeClock()
upstreams = Upstreams()
upstreams.script("reviews", subset="v2", replies=[Reply(503), Reply(503), Reply(200)])
mesh = in_memory_mesh(CONFIG, upstreams, clock=clock, seed=1)
with mesh.client() as client:
    assert client.get("http://reviews/r", headers={"end-user": "jason"}).status_code == 200
assert len(upstreams.calls("reviews", subset="v2")) == 3
```
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from meshlib.config.load import load_texts
from meshlib.discovery import Endpoint
from meshlib.mesh import Mesh


class FakeClock:
    """A ``Clock`` for tests: ``sleep``/``asleep`` advance it instantly, and record each wait."""

    def __init__(self, start: float = 1000.0, wall: float = 1_767_225_600.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(seconds, 0.0)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted upstream reply.

    ``status``/``headers``/``body``/``json`` make a response; ``error`` (an httpx exception class
    or instance) is raised instead; ``delay`` seconds of fake time pass before the reply — if that
    is longer than the attempt's timeout, the attempt times out (``httpx.ReadTimeout``) after
    the timeout instead.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    json: Any = None
    error: type[BaseException] | BaseException | None = None
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Call:
    """A request an upstream received, and at which endpoint."""

    endpoint: str
    request: httpx.Request

    @property
    def headers(self) -> httpx.Headers:
        return self.request.headers


class Upstreams:
    """Scripted upstream endpoints, served through one ``httpx.MockTransport``.

    Scripts are looked up by endpoint address (``host:port``). ``script(service, subset=...)``
    registers a synthetic endpoint for a service (and subset) — ``in_memory_mesh`` puts those in
    the mesh's registry. When a script runs dry, ``default`` answers.
    """

    def __init__(self, default: Reply | None = None, clock: FakeClock | None = None) -> None:
        self.default = default if default is not None else Reply(200)
        self.clock = clock
        self._scripts: dict[str, deque[Reply]] = {}
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._calls: list[Call] = []
        self._owners: dict[str, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ scripting

    def endpoint(
        self,
        service: str,
        subset: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        index: int = 0,
    ) -> Endpoint:
        """The synthetic endpoint for ``service`` (``version`` label = subset unless ``labels``)."""
        own = dict(labels) if labels is not None else ({"version": subset} if subset else {})
        name = f"{service}-{subset}" if subset else service
        host = f"{name}-{index}.upstream.test" if index else f"{name}.upstream.test"
        endpoint = Endpoint(host, 80, own)
        known = self._endpoints.setdefault(service, [])
        if endpoint not in known:
            known.append(endpoint)
            self._owners[endpoint.address] = (service, subset)
        return endpoint

    def script(
        self,
        service: str,
        replies: Iterable[Reply] = (),
        *,
        subset: str | None = None,
        labels: Mapping[str, str] | None = None,
        index: int = 0,
    ) -> Endpoint:
        """Queue ``replies`` at the endpoint for ``service``/``subset``; returns that endpoint."""
        endpoint = self.endpoint(service, subset, labels=labels, index=index)
        self.script_address(endpoint.address, replies)
        return endpoint

    def script_address(self, address: str, replies: Iterable[Reply]) -> None:
        with self._lock:
            self._scripts.setdefault(address, deque()).extend(replies)

    def registry(self) -> dict[str, tuple[Endpoint, ...]]:
        """Synthetic endpoints by service short name, for a mesh's static registry."""
        return {name: tuple(endpoints) for name, endpoints in self._endpoints.items()}

    # ------------------------------------------------------------------ inspection

    def calls(self, service: str | None = None, *, subset: str | None = None) -> list[Call]:
        """Requests received, optionally only those of ``service`` (and ``subset``)."""
        with self._lock:
            calls = list(self._calls)
        if service is None:
            return calls
        owners = self._owners
        return [
            c
            for c in calls
            if (owner := owners.get(c.endpoint)) is not None
            and owner[0] == service
            and (subset is None or owner[1] == subset)
        ]

    # ------------------------------------------------------------------ serving

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        address = f"{request.url.host}:{request.url.port or 80}"
        # The mesh reuses the caller's request object across attempts, so keep a snapshot of
        # what this upstream received.
        seen = httpx.Request(
            request.method,
            request.url,
            headers=request.headers.copy(),
            content=request.read(),
            extensions=dict(request.extensions),
        )
        with self._lock:
            self._calls.append(Call(address, seen))
            queue = self._scripts.get(address)
            reply = queue.popleft() if queue else self.default
        if reply.delay:
            timeout = (request.extensions.get("timeout") or {}).get("read")
            if timeout is not None and reply.delay > timeout:
                self._wait(timeout)
                raise httpx.ReadTimeout("scripted upstream too slow", request=request)
            self._wait(reply.delay)
        if reply.error is not None:
            error = reply.error
            if isinstance(error, type):
                if issubclass(error, httpx.RequestError):
                    raise error("scripted upstream error", request=request)
                raise error("scripted upstream error")
            raise error
        if reply.json is not None:
            return httpx.Response(reply.status, headers=dict(reply.headers), json=reply.json)
        return httpx.Response(reply.status, headers=dict(reply.headers), content=reply.body)

    def _wait(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)


def in_memory_mesh(
    yaml_text: str,
    upstreams: Upstreams,
    *,
    clock: FakeClock | None = None,
    seed: int | None = 0,
) -> Mesh:
    """A ``Mesh`` from YAML whose upstream calls are served by ``upstreams`` on a fake clock.

    Services named only in ``upstreams`` are added to the static registry (short names, this
    service's namespace), so a config needs no ``registry`` section of its own.
    """
    clock = clock or upstreams.clock or FakeClock()
    upstreams.clock = clock
    config = load_texts([("<in-memory>", yaml_text)])
    return Mesh(
        config,
        seed=seed,
        clock=clock,
        transport=upstreams.transport(),
        extra_endpoints=upstreams.registry(),
    )
