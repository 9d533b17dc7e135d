"""``Mesh``: one service's mesh — its config, routing table, registry and runtime state.

Everything lives on a ``Mesh``; nothing is global. The default mesh behind ``meshlib.client`` is
one explicit, replaceable instance. A config swap (``reload``/``apply``) replaces one reference:
requests in flight finish under the config they started with, and a bad config is refused whole
while the last good one keeps running. Runtime state — breakers, outlier detection, in-flight
counts — is kept per destination across reloads, as long as that destination's policy is the same.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx

from meshlib.balancing import Balancer, LeastRequest
from meshlib.clients.httpx.client import MeshAsyncClient, MeshClient
from meshlib.clients.httpx.inner import async_transport_name, new_async_transport
from meshlib.clients.httpx.transport import AsyncMeshTransport, MeshTransport
from meshlib.clock import SYSTEM_CLOCK, Clock, SystemClock
from meshlib.config import model as m
from meshlib.config.compile import compile_table, fqdn
from meshlib.config.digest import config_digest
from meshlib.config.load import MeshConfig, ServiceInfo, load_config, load_texts
from meshlib.discovery import Endpoint, Registry, RegistryChain
from meshlib.discovery.file import FileRegistry
from meshlib.discovery.static import StaticRegistry
from meshlib.errors import ConfigError, Problem, StoreError
from meshlib.mirror import Mirrors
from meshlib.pipeline.info import FREE_LEASE, NO_TICKET, FreeLease
from meshlib.policies.breaker import UNLIMITED, Breaker, BreakerSettings, Lease, PoolLimits
from meshlib.policies.retry import Outcome, RetryBudget, RetryPolicy, policy_for
from meshlib.routing import RetryDecision, RouteDecision, RouteRequest, RouteTable, Target
from meshlib.telemetry import (
    BreakerCreated,
    BreakerTransition,
    ConfigReloaded,
    EndpointEjected,
    EndpointReturned,
    MeshListener,
    StoreHealthChanged,
    Telemetry,
)
from meshlib.telemetry.setup import build as build_telemetry

if TYPE_CHECKING:
    import aiohttp
    import requests

    from meshlib.clients.aiohttp import MeshMiddleware
    from meshlib.config.watch import ConfigWatcher
    from meshlib.security.outbound import Outbound
    from meshlib.security.workload import WorkloadIdentity
    from meshlib.store.link import StoreLink
    from meshlib.store.registration import Registration

log = logging.getLogger("meshlib")

_LOCAL_ORIGIN = frozenset({"connect-failure", "reset", "refused-stream", "per-try-timeout"})


_INFLIGHT = 1
_BUDGET = 2


class Cluster:
    """Runtime state for one destination (host + subset), as an Envoy cluster has it: endpoint
    choice and outlier detection, connection-pool limits, retry budget and breaker."""

    __slots__ = (
        "_all",
        "_subset",
        "balancer",
        "breaker",
        "budget",
        "budget_counts",
        "consistent_hash",
        "counts",
        "keepalive",
        "least_request",
        "name",
        "outbound",
        "policy",
        "pool",
        "pool_limited",
        "registry",
        "target",
    )

    def __init__(
        self,
        target: Target,
        policy: m.TrafficPolicy | None,
        registry: Registry,
        rng: random.Random,
        clock: Clock,
        breaker: Breaker | None,
        telemetry: Telemetry,
    ) -> None:
        self.name = target.name
        self.target = target
        self.policy = policy
        self.registry = registry
        self.balancer = Balancer.from_policy(
            policy,
            rng,
            clock,
            on_eject=lambda endpoint, count: (
                telemetry.emit(EndpointEjected(self.name, endpoint, count))
                if telemetry.active
                else None
            ),
            on_return=lambda endpoint: (
                telemetry.emit(EndpointReturned(self.name, endpoint)) if telemetry.active else None
            ),
        )
        pool_settings = policy.connection_pool if policy is not None else None
        self.pool = PoolLimits(pool_settings, destination=target.name, clock=clock)
        http = pool_settings.http if pool_settings is not None else None
        self.budget = RetryBudget.from_config(
            policy.retry_budget if policy is not None else None,
            # 0 is unset, as for every pool threshold (pilot applies maxRetries only when > 0)
            max_retries=(http.max_retries or None) if http is not None else None,
        )
        lb = policy.load_balancer if policy is not None else None
        self.consistent_hash = lb.consistent_hash if lb is not None else None
        self.keepalive = self.pool.keepalive_allowed
        self.breaker = breaker
        pool = self.pool
        #: Bookkeeping only where a configured policy reads it: pool slots when a limit is set,
        #: the budget's count of active requests when a percentage budget is set, in-flight
        #: counts when least-request picks among several endpoints.
        self.pool_limited = (
            pool.max_connections,
            pool.max_pending_requests,
            pool.max_requests,
        ) != (
            UNLIMITED,
            UNLIMITED,
            UNLIMITED,
        )
        self.budget_counts = self.budget.uses_budget
        self.least_request = isinstance(self.balancer.picker, LeastRequest)
        #: Whether ``begin`` may count anything (in-flight requests, the retry budget).
        self.counts = self.least_request or self.budget_counts
        self._all: tuple[Endpoint, ...] | None = None
        self._subset: tuple[Endpoint, ...] = ()
        #: TLS origination (``meshlib.security.outbound.Outbound``), None: always plain text
        self.outbound: Outbound | None = None

    def endpoints(self) -> tuple[Endpoint, ...]:
        """The destination's endpoints now: the registry's, filtered by the subset's labels."""
        found = self.registry.endpoints(self.target.host)
        if found is not self._all:
            labels = self.target.subset_labels
            subset = found if not labels else tuple(e for e in found if e.selected_by(labels))
            self._all, self._subset = found, subset
            if self.balancer.detector is not None:
                self.balancer.detector.prune(subset)
        return self._subset

    def use_registry(self, registry: Registry) -> None:
        """Read endpoints from ``registry`` from now on (after a config swap)."""
        self.registry = registry
        self._all = None

    def has_endpoints(self) -> bool:
        return bool(self.endpoints())

    def choose(self, key: int | None, tried: Sequence[Endpoint]) -> Endpoint | None:
        return self.balancer.choose(self.endpoints(), key, tried)

    def permit(self) -> Any:
        """A breaker ticket for one attempt; raises ``CircuitOpenError`` when open."""
        breaker = self.breaker
        return breaker.permit() if breaker is not None else NO_TICKET

    def acquire(self, deadline: float | None) -> Lease | FreeLease | None:
        """A pool slot, waited for until ``deadline`` (absolute, on the mesh clock)."""
        return self.pool.acquire(deadline=deadline) if self.pool_limited else FREE_LEASE

    async def aacquire(self, deadline: float | None) -> Lease | FreeLease | None:
        return await self.pool.aacquire(deadline=deadline) if self.pool_limited else FREE_LEASE

    def begin(self, endpoint: Endpoint | None) -> int:
        """An attempt starts. Returns what was counted (for ``end``): 0 when nothing was, so
        that nothing needs releasing when its response closes."""
        counted = 0
        if endpoint is not None and self.least_request and len(self._subset) > 1:
            self.balancer.inflight.begin(endpoint)
            counted |= _INFLIGHT
        if self.budget_counts:
            self.budget.request_started()
            counted |= _BUDGET
        return counted

    def end(self, endpoint: Endpoint | None, lease: Lease | FreeLease, counted: int) -> None:
        """An attempt is over (its response closed): free its slot and what ``begin`` counted."""
        if counted & _INFLIGHT and endpoint is not None:
            self.balancer.inflight.end(endpoint)
        if counted & _BUDGET:
            self.budget.request_finished()
        lease.release()

    def report(self, endpoint: Endpoint, outcome: Outcome) -> None:
        self.balancer.report(endpoint, outcome.status, outcome.error in _LOCAL_ORIGIN)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Everything a config swap replaces, in one reference."""

    config: MeshConfig
    table: RouteTable
    registry: Registry
    static: StaticRegistry
    dns_hosts: frozenset[str]  # ServiceEntry hosts without endpoints: sent to the named host


class Mesh:
    """A service's mesh: a compiled config and the runtime state of its destinations.

    ``seed`` makes weighted choices, fault draws and jitter reproducible; ``clock`` is the time
    source (``meshlib.testing.FakeClock`` in tests); ``transport`` and ``async_transport`` are
    the inner httpx transports the mesh sends through (``HTTPTransport`` by default; an
    ``httpx.MockTransport`` or ``ASGITransport`` work too); ``async_transport`` may also name
    one, ``"aiohttp"`` or ``"httpx"``, and without it ``$MESHLIB_ASYNC_TRANSPORT`` chooses, else
    aiohttp when installed, else ``AsyncHTTPTransport`` (``meshlib.clients.httpx.inner``);
    ``extra_endpoints`` adds static endpoints by service short name.
    """

    def __init__(
        self,
        config: MeshConfig,
        *,
        seed: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | str | None = None,
        extra_endpoints: Mapping[str, Sequence[Endpoint]] | None = None,
        files: Sequence[str] = (),
        telemetry: Telemetry | None = None,
    ) -> None:
        self.clock = clock
        #: ``clock.now`` as the data plane reads it: ``time.monotonic`` itself for the system
        #: clock (no Python frame per read).
        self.now: Callable[[], float] = time.monotonic if type(clock) is SystemClock else clock.now
        self.telemetry = (
            telemetry if telemetry is not None else build_telemetry(config.service, clock)
        )
        self.rng = random.Random(seed)
        #: What ``consistentHash.useSourceIp`` hashes: in-process the source is this service
        #: instance, so (as for a pod behind a sidecar) all its calls stick to one endpoint.
        self.source_address = f"{socket.gethostname()}:{os.getpid()}"
        self._transport = transport
        if isinstance(async_transport, str):
            async_transport_name(async_transport)  # an unknown name, or aiohttp missing: now
        self._async_transport = async_transport
        self._extra = {name: tuple(eps) for name, eps in (extra_endpoints or {}).items()}
        self._files = list(files)
        self._lock = threading.Lock()
        #: the shadow requests of the routes' ``mirror``/``mirrors`` (``meshlib.mirror``)
        self.mirrors = Mirrors(self.now, self.telemetry)
        self._clusters: dict[tuple[str, int], Cluster] = {}
        self._by_target: dict[int, tuple[Target, int | None, Cluster]] = {}
        self._breakers: dict[str, tuple[BreakerSettings, Breaker]] = {}
        self._file_registry: FileRegistry | None = None
        self._next_store: StoreLink | None = None
        self.watcher: ConfigWatcher | None = None  # set by watch()
        self._identity: tuple[object, WorkloadIdentity | None] = (None, None)
        #: the fleet's store (``spec.store: etcd://...``), None without one; the config of the
        #: service's own files, before the store's rules are merged in
        self.store: StoreLink | None = None
        self._base = config
        self._swap = threading.RLock()
        try:
            self._snapshot = self._build(config)
        except BaseException:
            self._drop_next_store()
            raise
        self._start_store()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_files(
        cls, paths: Sequence[str | os.PathLike[str]], *, seed: int | None = None, **options: Any
    ) -> Mesh:
        """Load, validate and compile config files; raises ``ConfigError`` naming every problem."""
        names = [os.fspath(p) for p in paths]
        return cls(load_config(names), seed=seed, files=names, **options)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, seed: int | None = None, **options: Any
    ) -> Mesh:
        return cls.from_files([path], seed=seed, **options)

    @classmethod
    def from_yaml(
        cls, text: str, *, name: str = "<string>", seed: int | None = None, **options: Any
    ) -> Mesh:
        """Build from YAML text (handy in tests and notebooks)."""
        return cls(load_texts([(name, text)]), seed=seed, **options)

    def _build(self, config: MeshConfig) -> _Snapshot:
        store = self._store_for(config)
        if store is not None:
            config = store.merged(config)
        static = StaticRegistry.from_config(config)
        if self._extra:
            namespace = config.service.namespace
            merged = {h: static.endpoints(h) for h in static.hosts()}
            for name, endpoints in self._extra.items():
                merged.setdefault(fqdn(name, namespace), endpoints)
            static = StaticRegistry(merged)
        sources: list[Registry] = []
        path = config.service.registry_file
        if path is not None:
            current = self._file_registry
            if current is None or current.path != path:
                current = FileRegistry(
                    path,
                    config.service.namespace,
                    refresh=config.service.registry_refresh,
                    clock=self.clock,
                )
            self._file_registry = current
            sources.append(current)
        sources.append(static)
        hosts = static.hosts()
        if path is not None and self._file_registry is not None:
            hosts += self._file_registry.hosts()
        if store is not None:
            sources.insert(0, store.registry)
            hosts += store.hosts()
        table = compile_table(config, extra_hosts=hosts)
        registry: Registry = sources[0] if len(sources) == 1 else RegistryChain(*sources)
        return _Snapshot(config, table, registry, static, _dns_hosts(config))

    # ------------------------------------------------------------------ state

    @property
    def config(self) -> MeshConfig:
        return self._snapshot.config

    @property
    def table(self) -> RouteTable:
        return self._snapshot.table

    @property
    def registry(self) -> Registry:
        return self._snapshot.registry

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return self._snapshot.config.warnings

    @property
    def identity(self) -> WorkloadIdentity | None:
        """This workload's certificate and TLS contexts (``spec.identity`` of the Service
        document), made on first use and again when a reload changes who the service is or
        where its certificate comes from; None when the config gives the service no identity.
        Raises ``IdentityError`` (naming the file) when the CA or the certificate files cannot
        be used."""
        service = self._snapshot.config.service
        settings = service.identity
        key = (settings, service.spiffe_id)
        made_for, identity = self._identity
        if made_for == key:
            return identity
        with self._lock:
            made_for, identity = self._identity
            if made_for != key:
                identity = None if settings is None else _workload_identity(service, self.clock)
                self._identity = (key, identity)
        return identity

    # ------------------------------------------------------------------ reload

    def apply(self, config: MeshConfig) -> None:
        """Swap in a validated config: one reference assignment; nothing half-applies. With a
        store, its rules are merged into ``config`` (the service's own files)."""
        with self._swap:
            try:
                snapshot = self._build(config)
            except BaseException:
                self._drop_next_store()
                raise
            with self._lock:
                self._base = config
                self._snapshot = snapshot
                for cluster in self._clusters.values():
                    cluster.use_registry(snapshot.registry)  # unchanged destinations keep state
                    cluster.outbound = self._outbound(
                        cluster.target, cluster.policy, snapshot.config
                    )
            self._start_store()

    # ------------------------------------------------------------------ the fleet's store

    def _store_for(self, config: MeshConfig) -> StoreLink | None:
        """The link to ``config``'s etcd store: the current one when the URL is the same, a new
        one (listed once, now) otherwise; None without an etcd store."""
        url = config.service.store
        current = self.store
        if url is None or not url.startswith("etcd:"):
            return None
        if current is not None and current.source == url:
            return current
        from meshlib.store.link import StoreLink  # noqa: PLC0415 - only a mesh with a store

        link = StoreLink.open(url, clock=self.clock)
        link.connect()
        self._next_store = link
        return link

    def _drop_next_store(self) -> None:
        link, self._next_store = self._next_store, None
        if link is not None:
            link.close()

    def _start_store(self) -> None:
        """After a swap: close a store the config no longer names, start a new one's watch,
        and mark the rules revision the mesh now runs."""
        link = self._next_store
        if link is not None:
            self._next_store = None
            old, self.store = self.store, link
            if old is not None:
                old.close()
            link.digest = lambda: config_digest(self.config)
            link.start(self._store_changed, self._store_health)
            self._store_health(link.stale)
        elif self.store is not None and self._base.service.store != self.store.source:
            old, self.store = self.store, None
            old.close()
        if self.store is not None:
            self.store.applied()

    def _store_changed(self) -> None:
        """The store's rules or hosts changed (the watch thread): the same files, new rules."""
        self.apply(self._base)
        self.telemetry.emit(ConfigReloaded(True, None))

    def _store_health(self, stale: bool) -> None:
        store = self.store
        if store is not None:
            self.telemetry.emit(StoreHealthChanged(str(store.url), stale))

    def register(
        self, address: str, labels: Mapping[str, str] | None = None, ttl: int = 10
    ) -> Registration:
        """Register this service's endpoint ``address`` (``host:port``) in the store, with its
        version and labels (the config's, plus ``labels``), on a lease of ``ttl`` seconds
        renewed in the background. Returns the ``Registration``: a context manager whose
        ``close()`` revokes the lease. Needs ``spec.store: etcd://...`` (``StoreError``
        otherwise); a store that does not answer yet is retried in the background."""
        store = self.store
        if store is None:
            raise StoreError(
                "registering needs an etcd store: set spec.store: etcd://host:port/prefix "
                "in the Service document"
            )
        return store.register(self.config.service, address, labels, ttl)

    @property
    def files(self) -> tuple[str, ...]:
        """The config files this mesh was built from (and reloads), as given."""
        return tuple(self._files)

    def reload(
        self,
        paths: Sequence[str | os.PathLike[str]] | None = None,
        *,
        verify: Callable[[], bool] | None = None,
    ) -> bool:
        """Re-read the config files (or ``paths``). A bad config raises ``ConfigError`` and the
        last good config keeps running. ``verify``, when given, is asked once the files are
        read and before the new config goes into force: False (the files changed while they
        were read, say) applies nothing, and ``reload`` returns False. True: applied."""
        names = [os.fspath(p) for p in paths] if paths is not None else self._files
        if not names:
            raise ConfigError([Problem("<mesh>", 0, "", "this mesh was not built from files")])
        try:
            config = load_config(names)
        except ConfigError as exc:
            log.warning("config not applied, the last good one stays in force:\n%s", exc)
            self.telemetry.emit(ConfigReloaded(False, exc))
            raise
        if verify is not None and not verify():
            return False
        self.apply(config)
        self._files = names
        self.telemetry.emit(ConfigReloaded(True, None))
        return True

    def watch(self, interval: float = 0.5, *, settle: float | None = None) -> ConfigWatcher:
        """Reload whenever a config file (main or included) changes, checked every ``interval``
        seconds by a daemon thread (``meshlib.config.watch``): a change is applied once the
        files stayed the same for ``settle`` seconds (default: ``interval``), a file that became
        empty is not applied, and a bad file keeps the last good config and is logged. Returns
        the running watcher; a second call returns the same one."""
        if not self._files:
            raise ConfigError([Problem("<mesh>", 0, "", "this mesh was not built from files")])
        with self._lock:
            if self.watcher is None:
                from meshlib.config.watch import ConfigWatcher  # noqa: PLC0415 - watch needs Mesh

                self.watcher = ConfigWatcher(self, interval=interval, settle=settle)
        return self.watcher.start()

    # ------------------------------------------------------------------ decisions

    def resolves_by_dns(self, host: str) -> bool:
        """Whether calls to ``host`` go to the host name itself: a ServiceEntry without
        endpoints (``resolution: DNS``/``NONE``), as Envoy resolves it by DNS."""
        names = self._snapshot.dns_hosts
        if not names:
            return False
        if host in names:
            return True
        return any(n.startswith("*") and host.endswith(n[1:]) for n in names)

    def route(self, request: RouteRequest) -> RouteDecision:
        """The routing decision for one request (the data plane's entry point)."""
        return self._snapshot.table.route(request, self.rng)

    def explain(
        self, method: str, url: str, headers: Mapping[str, str] | None = None
    ) -> RouteDecision:
        """What the mesh will do with a request: route, destination, fault, timeout, retries,
        traffic policy, and why each earlier route did not match (``decision.skipped``)."""
        return self._snapshot.table.explain(RouteRequest.from_url(method, url, headers), self.rng)

    # ------------------------------------------------------------------ runtime state

    def cluster(self, target: Target, port: int | None = None) -> Cluster:
        """The runtime state of ``target`` (created on first use)."""
        known = self._by_target.get(id(target))
        if known is not None and known[0] is target and known[1] == port:
            return known[2]
        key = (target.name, (port or 0) if target.port_policies else 0)
        found = self._clusters.get(key)
        if found is not None and _same_cluster(found.target, target):
            self._remember(target, port, found)
            return found
        with self._lock:
            found = self._clusters.get(key)
            if found is None or not _same_cluster(found.target, target):
                policy = target.policy_for(port)
                found = Cluster(
                    target,
                    policy,
                    self._snapshot.registry,
                    self.rng,
                    self.clock,
                    self._breaker(target),
                    self.telemetry,
                )
                found.outbound = self._outbound(target, policy, self._snapshot.config)
                self._clusters[key] = found
                self._by_target.clear()  # a cluster replaced: what pointed at the old one goes
            self._remember(target, port, found)
            return found

    def _outbound(
        self, target: Target, policy: m.TrafficPolicy | None, config: MeshConfig
    ) -> Outbound | None:
        """The TLS origination of a destination, or None when its calls are always plain text:
        its DestinationRule's ``tls`` is DISABLE, or it has none and this workload has no
        identity (auto mTLS needs one)."""
        settings = policy.tls if policy is not None else None
        if settings is None and config.service.identity is None:
            return None
        if settings is not None and (settings.mode or "DISABLE") == "DISABLE":
            return None
        from meshlib.security.outbound import Outbound  # noqa: PLC0415 - loads cryptography

        return Outbound(target, settings, config, lambda: self.identity)

    def _remember(self, target: Target, port: int | None, cluster: Cluster) -> None:
        """Keep ``target``'s cluster by identity: the router hands out the same target object
        for every request of a route, so the next call finds its cluster with one probe."""
        by_target = self._by_target
        if len(by_target) >= 4096:
            by_target.clear()
        by_target[id(target)] = (target, port, cluster)

    def _breaker(self, target: Target) -> Breaker | None:
        """The breaker for ``target``: from ``spec.circuitBreakers``; kept across reloads while
        its settings stay the same."""
        config = self._snapshot.config.service.circuit_breakers
        if config is None:
            return None
        settings = breaker_settings(config, target, self._snapshot.config.service.namespace)
        if settings is None:
            return None
        known = self._breakers.get(target.name)
        if known is not None and known[0] == settings:
            return known[1]
        telemetry = self.telemetry
        breaker = Breaker(
            target.name,
            settings,
            clock=self.clock,
            on_transition=lambda old, new: telemetry.emit(BreakerTransition(target.name, old, new)),
        )
        self._breakers[target.name] = (settings, breaker)
        telemetry.emit(BreakerCreated(target.name, breaker.state))
        return breaker

    def breakers(self) -> dict[str, Breaker]:
        """Every breaker made so far, by destination name."""
        return {name: breaker for name, (_, breaker) in self._breakers.items()}

    def clusters(self) -> list[Cluster]:
        """The runtime state of every destination called so far (for the admin endpoint)."""
        with self._lock:
            return list(self._clusters.values())

    # ------------------------------------------------------------------ telemetry

    def add_listener(self, listener: MeshListener) -> None:
        """Send this mesh's events to ``listener`` too (its ``on_event(event)``; see
        ``meshlib.telemetry``). It runs inline on the request path: keep it quick."""
        self.telemetry.add_listener(listener)

    def remove_listener(self, listener: MeshListener) -> None:
        self.telemetry.remove_listener(listener)

    def retry_policy(self, decision: RetryDecision) -> RetryPolicy:
        """The compiled retry policy of a decision's retry settings (``policy_for``)."""
        return policy_for(decision)

    # ------------------------------------------------------------------ clients

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` whose transport is this mesh (a ``MeshClient``: httpx's own
        client with cheaper per-request bookkeeping, see ``meshlib.clients.httpx.client``)."""
        return MeshClient(transport=MeshTransport(self), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose transport is this mesh (a ``MeshAsyncClient``)."""
        return MeshAsyncClient(transport=AsyncMeshTransport(self), **kwargs)

    def requests_session(self) -> requests.Session:
        """A ``requests.Session`` whose requests go through this mesh: a
        ``meshlib.clients.requests.MeshAdapter`` mounted for ``http://`` and ``https://``
        (the ``meshlib[requests]`` extra)."""
        from meshlib.clients.requests import session  # noqa: PLC0415 - optional extra

        return session(self)

    def aiohttp_middleware(self) -> MeshMiddleware:
        """This mesh as an aiohttp client middleware:
        ``aiohttp.ClientSession(middlewares=[mesh.aiohttp_middleware()])`` (``meshlib[aiohttp]``;
        see ``meshlib.clients.aiohttp``)."""
        from meshlib.clients.aiohttp import MeshMiddleware  # noqa: PLC0415 - optional extra

        return MeshMiddleware(self)

    def aiohttp_session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """An ``aiohttp.ClientSession`` whose requests go through this mesh (its middleware
        first, before any in ``middlewares``); other arguments are the session's own. Made
        inside the running event loop, as aiohttp's sessions are."""
        from meshlib.clients.aiohttp import session  # noqa: PLC0415 - optional extra

        return session(self, **kwargs)

    def sync_inner(self) -> httpx.BaseTransport:
        if self._transport is not None:
            return self._transport
        from meshlib.clients.httpx.httpcore import HTTPCoreTransport  # noqa: PLC0415 - httpcore

        return HTTPCoreTransport()

    def async_inner(self) -> httpx.AsyncBaseTransport:
        chosen = self._async_transport
        if isinstance(chosen, httpx.AsyncBaseTransport):
            return chosen
        if chosen is None and isinstance(self._transport, httpx.AsyncBaseTransport):
            return self._transport
        return new_async_transport(chosen)

    def close(self) -> None:
        """Stop what the mesh runs in the background: mirror threads, the metrics scrape
        server, telemetry exporters."""
        self.mirrors.close()
        if self.watcher is not None:
            self.watcher.stop()
        if self.store is not None:
            self.store.close()
        self.telemetry.close()


def _workload_identity(service: ServiceInfo, clock: Clock) -> WorkloadIdentity:
    # meshlib.security loads cryptography: only for a service that has an identity
    from meshlib.security.ca import DEFAULT_WORKLOAD_LIFETIME  # noqa: PLC0415
    from meshlib.security.workload import WorkloadIdentity  # noqa: PLC0415

    settings = service.identity
    assert settings is not None
    if settings.ca is not None:
        seconds = settings.certificate_lifetime
        lifetime = DEFAULT_WORKLOAD_LIFETIME if seconds is None else timedelta(seconds=seconds)
        return WorkloadIdentity.from_ca(
            settings.ca, service.spiffe_id, clock=clock, lifetime=lifetime
        )
    certificate, key, bundle = settings.certificate, settings.private_key, settings.ca_certificates
    assert certificate is not None
    assert key is not None
    assert bundle is not None  # IdentitySettings: all three, or ca
    return WorkloadIdentity.from_files(certificate, key, bundle, clock=clock)


def _dns_hosts(config: MeshConfig) -> frozenset[str]:
    names: set[str] = set()
    for resource in config.of_kind("ServiceEntry"):
        spec = resource.spec
        assert isinstance(spec, m.ServiceEntry)
        if not spec.endpoints and spec.resolution != "STATIC":
            names.update(fqdn(h, resource.namespace) for h in spec.hosts)
    return frozenset(names)


def _same_cluster(known: Target, target: Target) -> bool:
    """Whether ``target`` is the destination ``known`` was made for. Routes to one destination
    have targets of their own (weights and headers differ), but one cluster: one pool, one
    outlier detector, one balancer."""
    return known is target or (
        known.host == target.host
        and known.subset == target.subset
        and known.port == target.port
        and known.subset_defined == target.subset_defined
        and known.subset_labels == target.subset_labels
        and known.traffic_policy == target.traffic_policy
        and known.port_policies == target.port_policies
    )


def breaker_settings(
    config: m.CircuitBreakers, target: Target, namespace: str
) -> BreakerSettings | None:
    """Defaults from ``spec.circuitBreakers``, then the entry for the destination (``host|subset``
    before ``host``; host as short name or FQDN)."""
    layers: list[m.BreakerPolicy] = [config]
    for key, policy in (config.destinations or {}).items():
        host, _, subset = key.partition("|")
        if fqdn(host, namespace) != target.host:
            continue
        if not subset:
            layers.insert(1, policy)
        elif subset == target.subset:
            layers.append(policy)
    values: dict[str, Any] = {}
    enabled = True
    for layer in layers:
        if layer.enabled is not None:
            enabled = layer.enabled
        if layer.failure_threshold is not None:
            values["failure_threshold"] = layer.failure_threshold
        if layer.reset_timeout is not None:
            values["reset_timeout"] = layer.reset_timeout
        if layer.success_threshold is not None:
            values["success_threshold"] = layer.success_threshold
        if layer.count is not None:
            values["count"] = frozenset(layer.count)
    if config.redis:
        values["redis"] = config.redis
    if not enabled:
        return None
    return BreakerSettings(**values)
