"""The fleet as one service sees it: the pure core of the store's watch.

``FleetState`` holds what the watched key range says (``meshlib.store.layout``): each host's
endpoints, the rules, and the revision both were read at. The I/O shell (``meshlib.store.feed``)
feeds it the result of a list (``reset``) and then each watch response (``apply``); it answers
what changed, so that the shell rebuilds only what must be rebuilt:

* an endpoint put or deleted changes that host's tuple of endpoints and nothing else: the work
  of a change is the size of the change, not of the fleet;
* a new host, or the last endpoint of a host gone, changes which hosts the mesh knows (the
  route table is compiled again);
* a rule changed means a new config (validated, merged with the file's own resources, swapped
  in whole).

Revisions make a resumed watch exact: an event at or below the revision already applied is a
replay and is ignored; the shell resumes a broken watch at ``revision + 1``, so that nothing is
missed. After a compaction the shell lists again, and ``reset`` turns the difference between
what it had and what the list says into one change.

Values that do not decode (an endpoint that is not JSON, an address without a port) are left
out, each reported once in ``Change.problems``; the rest of the change applies.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from meshlib.config.compile import fqdn
from meshlib.discovery import Endpoint
from meshlib.store.layout import Key, Layout

EventType = Literal["put", "delete"]


@dataclass(frozen=True, slots=True)
class Event:
    """One key's change at one store revision (a listed key is a ``put``)."""

    type: EventType
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Registered:
    """One registered endpoint, as its registration wrote it."""

    namespace: str
    service: str
    address: str
    version: str | None
    labels: Mapping[str, str]
    revision: int  # when it was written


@dataclass(frozen=True, slots=True)
class RuleText:
    """One rule resource as stored: its key's parts, YAML text and mod revision."""

    kind: str
    namespace: str
    name: str
    key: str
    text: str
    revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """What one list or watch response changed."""

    revision: int
    #: hosts whose endpoints changed
    hosts: frozenset[str] = frozenset()
    #: a host appeared or disappeared: the set of known hosts changed
    host_set: bool = False
    #: a rule, or the rules revision, changed
    rules: bool = False
    #: values that were left out, as ``key: reason``
    problems: tuple[str, ...] = ()
    #: events at or below the applied revision, ignored
    replayed: int = 0

    @property
    def empty(self) -> bool:
        return not (self.hosts or self.host_set or self.rules)


@dataclass
class _Host:
    by_key: dict[str, Endpoint] = field(default_factory=dict)


class FleetState:
    """The watched key range, applied event by event. One writer (the feed), many readers:
    ``endpoints`` is a dict look-up of an immutable tuple, safe from any thread."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.revision = 0
        self.rules_revision = 0
        self._hosts: dict[str, _Host] = {}
        self._tuples: dict[str, tuple[Endpoint, ...]] = {}
        self._known: frozenset[str] = frozenset()
        self._registered: dict[str, Registered] = {}
        self._key_host: dict[str, str] = {}
        self._rules: dict[str, RuleText] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def endpoints(self, host: str) -> tuple[Endpoint, ...]:
        return self._tuples.get(host, ())

    def hosts(self) -> frozenset[str]:
        return self._known

    def rules(self) -> list[RuleText]:
        """The rule resources, in key order."""
        with self._lock:
            return [self._rules[k] for k in sorted(self._rules)]

    def registered(self) -> list[Registered]:
        with self._lock:
            return [self._registered[k] for k in sorted(self._registered)]

    def endpoint_count(self) -> int:
        return len(self._registered)

    # ------------------------------------------------------------------ writing

    def apply(self, events: Sequence[Event]) -> Change:
        """Apply one watch response's events (one or more whole revisions)."""
        with self._lock:
            tracker = _Tracker(self.revision)
            for event in events:
                if event.revision <= self.revision:
                    tracker.replayed += 1
                    continue
                self._apply(event, tracker)
                tracker.revision = max(tracker.revision, event.revision)
            self.revision = tracker.revision
            return tracker.change(self)

    def reset(self, kvs: Iterable[Event], revision: int) -> Change:
        """Replace everything with a list's result, read at ``revision``: what differs from
        the state before is the change (after a compaction, nothing is lost or applied twice)."""
        with self._lock:
            listed = {e.key: e for e in kvs if e.type == "put"}
            tracker = _Tracker(revision)
            before = self.rules_revision
            for key in [k for k in (*self._key_host, *self._rules) if k not in listed]:
                self._apply(Event("delete", key, b"", revision), tracker, listing=True)
            self.rules_revision = 0
            for event in listed.values():
                self._apply(event, tracker, listing=True)
            tracker.rules = tracker.rules or self.rules_revision != before
            self.revision = revision
            return tracker.change(self)

    def _apply(self, event: Event, tracker: _Tracker, *, listing: bool = False) -> None:
        key = self.layout.parse(event.key)
        if key is None:
            return
        if key.kind == "endpoint":
            self._endpoint(event, key, tracker, listing)
        elif key.kind == "rule":
            self._rule(event, key, tracker, listing)
        elif (
            key.kind == "revision" and event.type == "put" and event.revision > self.rules_revision
        ):
            self.rules_revision = event.revision
            tracker.rules = tracker.rules or not listing

    def _rule(self, event: Event, key: Key, tracker: _Tracker, listing: bool) -> None:
        kind, namespace, name = key.parts
        known = self._rules.get(event.key)
        if event.type == "delete":
            if known is not None:
                del self._rules[event.key]
                tracker.rules = True
                if not listing:
                    self.rules_revision = max(self.rules_revision, event.revision)
            return
        try:
            text = event.value.decode("utf-8")
        except UnicodeDecodeError:
            tracker.problems.append(f"{event.key}: not UTF-8 text")
            return
        self.rules_revision = max(self.rules_revision, event.revision)
        if known is not None and known.text == text and known.revision == event.revision:
            return
        self._rules[event.key] = RuleText(kind, namespace, name, event.key, text, event.revision)
        tracker.rules = True

    def _endpoint(self, event: Event, key: Key, tracker: _Tracker, listing: bool) -> None:
        namespace, service, address = key.parts
        host = fqdn(service, namespace)
        before = self._key_host.get(event.key)
        if event.type == "delete":
            if before is not None:
                self._drop(event.key, before, tracker)
            return
        try:
            endpoint, registered = decode_endpoint(
                event.value, namespace, service, address, event.revision
            )
        except ValueError as exc:
            tracker.problems.append(f"{event.key}: {exc}")
            if before is not None:
                self._drop(event.key, before, tracker)
            return
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = _Host()
            tracker.host_set = True
        old = entry.by_key.get(event.key)
        self._registered[event.key] = registered
        self._key_host[event.key] = host
        if old is not None and _same(old, endpoint):
            return
        entry.by_key[event.key] = endpoint
        self._tuples[host] = tuple(entry.by_key[k] for k in sorted(entry.by_key))
        tracker.hosts.add(host)

    def _drop(self, key: str, host: str, tracker: _Tracker) -> None:
        del self._key_host[key]
        self._registered.pop(key, None)
        entry = self._hosts[host]
        entry.by_key.pop(key, None)
        tracker.hosts.add(host)
        if entry.by_key:
            self._tuples[host] = tuple(entry.by_key[k] for k in sorted(entry.by_key))
        else:
            del self._hosts[host]
            self._tuples.pop(host, None)
            tracker.host_set = True


class _Tracker:
    __slots__ = ("host_set", "hosts", "problems", "replayed", "revision", "rules")

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.hosts: set[str] = set()
        self.host_set = False
        self.rules = False
        self.problems: list[str] = []
        self.replayed = 0

    def change(self, state: FleetState) -> Change:
        if self.host_set:  # hosts came or went: is the set different in the end?
            known = frozenset(state._hosts)
            self.host_set = known != state._known
            state._known = known
        return Change(
            self.revision,
            frozenset(self.hosts),
            self.host_set,
            self.rules,
            tuple(self.problems),
            self.replayed,
        )


def _same(a: Endpoint, b: Endpoint) -> bool:
    return a == b and dict(a.labels) == dict(b.labels)


def decode_endpoint(
    value: bytes, namespace: str, service: str, address: str, revision: int
) -> tuple[Endpoint, Registered]:
    """A registry value (JSON ``{"address", "labels", "weight", "version"}``) → the endpoint
    and what the registration says. The key's address wins: the value must agree with it."""
    try:
        data: Any = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object")
    written = data.get("address", address)
    if written != address:
        raise ValueError(f"address {written!r} differs from the key's {address!r}")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError("labels must map strings to strings")
    weight = data.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
        raise ValueError("weight must be an integer >= 1")
    version = data.get("version")
    if version is not None and not isinstance(version, str):
        raise ValueError("version must be a string")
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r}: port must be 1-65535")
    endpoint = Endpoint(host.strip("[]"), int(port), dict(labels), weight)
    return endpoint, Registered(namespace, service, address, version, dict(labels), revision)


def encode_endpoint(
    address: str, labels: Mapping[str, str], version: str | None, weight: int = 1
) -> bytes:
    """The registry value of one endpoint (``decode_endpoint`` reads it)."""
    data: dict[str, Any] = {"address": address, "labels": dict(labels), "weight": weight}
    if version is not None:
        data["version"] = version
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


__all__ = [
    "Change",
    "Event",
    "EventType",
    "FleetState",
    "Registered",
    "RuleText",
    "decode_endpoint",
    "encode_endpoint",
]
