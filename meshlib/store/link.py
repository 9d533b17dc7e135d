"""One mesh's link to its fleet's store: the endpoints and rules it reads, what it reports.

A ``Mesh`` whose ``Service`` document says ``spec.store: etcd://...`` owns one ``StoreLink``:

* the link lists the store once when the mesh is built (a store that does not answer leaves
  the mesh with its file's own config, stale, until it does), then a ``StoreFeed`` thread
  watches it;
* endpoints are read straight from the ``FleetState`` (``registry``); a change of endpoints
  changes nothing else;
* rules are validated whole as they arrive (``rules_config``) and merged with the file's own
  resources (``merge``): a store resource replaces a file resource of the same kind, namespace
  and name, with a warning. A rule set that does not validate is refused whole and the last
  good one stays in force (logged once, shown in ``status()``);
* whenever the rules or the set of known hosts change, the link asks the mesh to swap in a new
  config (``on_change``); the mesh then marks the rules revision it runs (``applied``), which
  each of its registrations reports under ``status/``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.config.load import MeshConfig, ServiceInfo, load_texts
from meshlib.errors import ConfigError, Problem, StoreError
from meshlib.store.etcd import EtcdClient
from meshlib.store.feed import StoreFeed
from meshlib.store.layout import Layout
from meshlib.store.registration import Registration
from meshlib.store.state import Change, FleetState, RuleText
from meshlib.store.url import StoreURL

log = logging.getLogger("meshlib.store")

#: How a stored rule is named in messages: ``etcd:<key>`` (``etcd:/meshlib/rules/...:12: ...``).
SOURCE_PREFIX = "etcd:"


def rules_config(rules: Sequence[RuleText]) -> MeshConfig | None:
    """The stored rules, validated together as ``meshctl validate`` would (``ConfigError``
    naming ``etcd:<key>:line: path: message``); None when there are none. A ``Service``
    document, or a resource stored under another resource's key, is an error too."""
    if not rules:
        return None
    config = load_texts([(SOURCE_PREFIX + r.key, r.text) for r in rules])
    problems: list[Problem] = []
    for resource in config.resources:
        if resource.kind == "Service":
            problems.append(
                Problem(
                    resource.file,
                    resource.line,
                    "kind",
                    "the store holds Istio resources; the Service document belongs in each "
                    "service's own config",
                )
            )
            continue
        written = resource.file.removeprefix(SOURCE_PREFIX).rsplit("/", 3)[1:]
        if tuple(written) != resource.key:
            problems.append(
                Problem(
                    resource.file,
                    resource.line,
                    "metadata",
                    f"stored under {'/'.join(written)} but it is "
                    f"{resource.kind} {resource.namespace}/{resource.name}",
                )
            )
    if problems:
        raise ConfigError(problems)
    return config


def merge(base: MeshConfig, rules: MeshConfig | None) -> MeshConfig:
    """``base`` (the service's own files) with the store's ``rules`` added: a store resource of
    the same kind, namespace and name replaces the file's, with a warning."""
    if rules is None:
        return base
    by_key = {r.key: r for r in base.resources}
    warnings = list(base.warnings)
    for resource in rules.resources:
        earlier = by_key.pop(resource.key, None)
        if earlier is not None:
            warnings.append(
                Problem(
                    resource.file,
                    resource.document.line_of(("metadata", "name")),
                    "metadata.name",
                    f"{resource.kind} {resource.namespace}/{resource.name} replaces the one "
                    f"at {earlier.file}:{earlier.line}",
                    "warning",
                )
            )
        by_key[resource.key] = resource
    warnings.extend(rules.warnings)
    return replace(
        base,
        resources=tuple(by_key.values()),
        warnings=tuple(warnings),
        files=(*base.files, *rules.files),
    )


class StoreLink:
    """See the module. ``on_change`` is called from the watch thread when the mesh must swap
    in a new config; ``on_health(stale)`` at each stale/fresh transition."""

    def __init__(
        self,
        url: StoreURL,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        idle: float = 10.0,
        timeout: float = 3.0,
    ) -> None:
        if url.scheme != "etcd":
            raise ValueError(f"a store link needs an etcd store, not {url}")
        self.url = url
        self.source = str(url)
        self.layout = Layout(url.prefix)
        self.client = EtcdClient(url.endpoints, timeout=timeout)
        self.state = FleetState(self.layout)
        self.clock = clock
        self.feed = StoreFeed(
            self.client,
            self.layout,
            url=str(url),
            state=self.state,
            on_change=self._changed,
            on_health=self._health_changed,
            clock=clock,
            rng=rng,
            idle=idle,
        )
        self.rules: MeshConfig | None = None
        #: the rules revision of ``rules`` (the last good rule set), and the one the mesh runs
        self.rules_revision = 0
        self.applied_revision = 0
        self.rules_error: ConfigError | None = None
        self._refused_revision = -1
        self.on_change: Callable[[], None] | None = None
        self.on_health: Callable[[bool], None] | None = None
        self._registrations: list[Registration] = []
        self._lock = threading.Lock()
        self.digest: Callable[[], str] | None = None

    @classmethod
    def open(cls, source: str, *, clock: Clock = SYSTEM_CLOCK) -> StoreLink:
        """The link for ``spec.store`` as written (an ``etcd://`` URL)."""
        link = cls(StoreURL.parse(source), clock=clock)
        link.source = source
        return link

    # ------------------------------------------------------------------ life

    def connect(self) -> bool:
        """List the store once, now (no callbacks yet). False when it did not answer: the
        mesh starts with its own config and the watch keeps trying."""
        try:
            self.feed.list_now()
        except StoreError as exc:
            self.feed.lost(str(exc))
        return self.feed.health.synced

    def start(self, on_change: Callable[[], None], on_health: Callable[[bool], None]) -> None:
        self.on_change, self.on_health = on_change, on_health
        self.feed.start()

    def close(self) -> None:
        for registration in list(self._registrations):
            registration.close()
        self.feed.stop(timeout=0)
        self.client.close()  # ends the watch stream the thread reads
        self.feed.stop()

    # ------------------------------------------------------------------ reading

    @property
    def registry(self) -> FleetState:
        return self.state

    def hosts(self) -> frozenset[str]:
        return self.state.hosts()

    def merged(self, base: MeshConfig) -> MeshConfig:
        return merge(base, self.rules)

    def applied(self) -> None:
        """The mesh now runs ``rules``: what the registrations report."""
        self.applied_revision = self.rules_revision
        self._notify()

    @property
    def stale(self) -> bool:
        return self.feed.health.stale

    def status(self) -> dict[str, Any]:
        """What ``GET /_mesh/config`` shows under ``store``."""
        health = self.feed.health.status()
        return {
            "url": str(self.url),
            "stale": health.stale,
            "synced": health.synced,
            "stale_since": health.stale_since,
            "last_error": health.last_error,
            "last_contact": health.last_contact,
            "revision": self.state.revision,
            "rules_revision": self.applied_revision,
            "rules_error": str(self.rules_error) if self.rules_error is not None else None,
            "endpoints": self.state.endpoint_count(),
            "hosts": len(self.state.hosts()),
            "registered": [r.address for r in self._registrations if r.registered],
        }

    def report(self) -> Mapping[str, Any]:
        """What each registration writes under ``status/``."""
        return {
            "rules_revision": self.applied_revision,
            "stale": self.stale,
            "digest": self.digest() if self.digest is not None else None,
        }

    # ------------------------------------------------------------------ registration

    def register(
        self, service: ServiceInfo, address: str, labels: Mapping[str, str] | None, ttl: int
    ) -> Registration:
        registration = Registration(
            self.client,
            self.layout,
            namespace=service.namespace,
            service=service.name,
            address=address,
            labels={**service.labels, **(labels or {})},
            version=service.version,
            ttl=ttl,
            report=self.report,
            on_close=self._forget,
            clock=self.clock,
        )
        with self._lock:
            self._registrations.append(registration)
        return registration.start()

    def _forget(self, registration: Registration) -> None:
        with self._lock:
            if registration in self._registrations:
                self._registrations.remove(registration)

    def _notify(self) -> None:
        for registration in list(self._registrations):
            registration.changed()

    # ------------------------------------------------------------------ the feed's calls

    def _changed(self, change: Change) -> None:
        swap = change.host_set
        if change.rules:
            swap = self._load_rules() or swap
        if swap and self.on_change is not None:
            self.on_change()

    def _load_rules(self) -> bool:
        """Validate the stored rules; True when a new rule set is ready to swap in."""
        revision = self.state.rules_revision
        try:
            config = rules_config(self.state.rules())
        except ConfigError as exc:
            self.rules_error = exc
            if revision != self._refused_revision:
                self._refused_revision = revision
                log.warning(
                    "store %s: rules at revision %d not applied, the last good ones (revision "
                    "%d) stay in force:\n%s",
                    self.url,
                    revision,
                    self.rules_revision,
                    exc,
                )
            return False
        self.rules, self.rules_revision, self.rules_error = config, revision, None
        return True

    def _health_changed(self, stale: bool) -> None:
        if self.on_health is not None:
            self.on_health(stale)
        self._notify()


__all__ = ["SOURCE_PREFIX", "StoreLink", "merge", "rules_config"]
