"""The fleet's rules behind one interface: a rules file on one machine, or etcd for many.

``meshctl --store URL apply|delete|get|status`` and ``meshctl bookinfo`` work on a ``RuleStore``:

* ``FileRuleStore`` (``file://path``): the rules file services include (``spec.store:
  file://...`` or ``spec.include``), replaced whole and atomically (``os.replace``) at each
  change; its revision is the digest of what it holds.
* ``EtcdRuleStore`` (``etcd://...``): one key per resource (``meshlib.store.layout``); a change
  is one etcd transaction that writes the changed resources, deletes the removed ones and
  rewrites ``rules-revision``, on the condition that no other change landed since the rules were
  read (otherwise it reads them again and retries). Services see the whole change at one
  revision and swap it in at once.

Every change is checked whole before anything is written (``plan``): the files given must load
and validate together (``ConfigError`` naming ``file:line: path: message``, as ``meshctl
validate`` prints them) and hold no ``Service`` document, and the rule set that results must
load too. A refused change writes nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from meshlib import control
from meshlib.config.digest import config_digest
from meshlib.config.load import load_texts
from meshlib.config.source import parse_yaml
from meshlib.errors import StoreError
from meshlib.store.etcd import EtcdClient
from meshlib.store.layout import Layout
from meshlib.store.state import decode_endpoint
from meshlib.store.url import StoreURL

Key = control.Key
#: A change: the rules now → the rules after it, and what happens to each resource.
Plan = Callable[[list[dict[str, Any]]], tuple[list[dict[str, Any]], list[tuple[Key, str]]]]
#: How often a transaction that lost a race with another change is tried again.
TXN_TRIES = 5


@dataclass(frozen=True, slots=True)
class Rules:
    """The rules a store holds, and the revision they are at."""

    documents: tuple[dict[str, Any], ...]
    revision: str  # etcd: the revision number; file: the digest of the rules


@dataclass(frozen=True, slots=True)
class Written:
    """What a change did: each resource's fate (``created``, ``configured``, ``unchanged``,
    ``deleted``, ``not found``) and the revision the store is at after it."""

    changes: tuple[tuple[Key, str], ...]
    revision: str
    wrote: bool


@dataclass(frozen=True, slots=True)
class Instance:
    """A registered service instance and what it reports (``meshctl status``)."""

    namespace: str
    service: str
    address: str
    version: str | None
    labels: dict[str, str]
    rules_revision: int | None  # None: it has not reported
    stale: bool | None
    hostname: str | None
    pid: int | None


class RuleStore(Protocol):
    """Where a fleet's rules are kept."""

    url: str

    def read(self) -> Rules: ...

    def normalize(self, document: dict[str, Any]) -> dict[str, Any]:
        """A resource as this store keeps it."""
        ...

    def change(self, plan: Plan) -> Written:
        """Read the rules, ``plan`` the new set from them (``ConfigError``: nothing written),
        write it whole."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- planning (pure)


def plan_apply(
    current: Sequence[dict[str, Any]], applied: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[Key, str]]]:
    """``current`` with ``applied`` created or replaced (``kubectl apply``), checked whole."""
    result, changes = control.merge(current, applied)
    check(result)
    return result, changes


def plan_delete(
    current: Sequence[dict[str, Any]], named: Sequence[Key]
) -> tuple[list[dict[str, Any]], list[tuple[Key, str]]]:
    result, changes = control.remove(current, named)
    check(result)
    return result, changes


def check(documents: Sequence[dict[str, Any]]) -> None:
    """The rule set ``documents`` loads whole (``ConfigError`` otherwise)."""
    load_texts([("<rules>", control.render(documents))])


def _namespaced(document: dict[str, Any]) -> dict[str, Any]:
    """A resource with its namespace written out (the default one when it has none), as
    ``kubectl apply`` stores it in a cluster: its key and its document say the same."""
    _, namespace, _ = control.key_of(document)
    metadata = document.get("metadata") or {}
    if metadata.get("namespace") == namespace:
        return document
    return {**document, "metadata": {**metadata, "namespace": namespace}}


def apply_files(store: RuleStore, names: Sequence[str]) -> Written:
    """``meshctl apply -f``: the files' resources created or replaced in ``store``."""
    return apply_sources(store, [control.Source.read(name) for name in names])


def apply_sources(store: RuleStore, sources: Sequence[control.Source]) -> Written:
    """The resources of ``sources`` (files already read) created or replaced in ``store``."""
    applied = [store.normalize(d) for d in control.resources_of(sources)]
    return _change(store, lambda current: plan_apply(current, applied))


def delete_files(store: RuleStore, names: Sequence[str]) -> Written:
    """``meshctl delete -f``: the resources the files name removed from ``store``."""
    return delete_sources(store, [control.Source.read(name) for name in names])


def delete_sources(store: RuleStore, sources: Sequence[control.Source]) -> Written:
    """The resources ``sources`` name (files already read) removed from ``store``."""
    named = [control.key_of(d) for d in control.resources_of(sources)]
    return _change(store, lambda current: plan_delete(current, named))


def replace_all(store: RuleStore, names: Sequence[str]) -> Written:
    """The store's rules replaced by the resources of ``names`` (``meshctl bookinfo reset``)."""
    sources = [control.Source.read(name) for name in names]
    applied = [store.normalize(d) for d in control.resources_of(sources)] if sources else []
    check(applied)

    def plan(current: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[Key, str]]]:
        return applied, []

    return _change(store, plan)


def _change(store: RuleStore, plan: Plan) -> Written:
    return store.change(plan)


# --------------------------------------------------------------------------- file


class FileRuleStore:
    """The rules file of one machine (``control.write_rules`` replaces it atomically)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"file://{path}"

    def read(self) -> Rules:
        documents = control.read_rules(self.path)
        return Rules(tuple(documents), _digest(documents))

    def normalize(self, document: dict[str, Any]) -> dict[str, Any]:
        return document  # a service's namespace is the default of the rules it includes

    def change(self, plan: Plan) -> Written:
        current = control.read_rules(self.path)
        result, changes = plan(list(current))
        if result == current:
            return Written(tuple(changes), _digest(current), False)
        control.write_rules(self.path, result)
        return Written(tuple(changes), _digest(result), True)

    def close(self) -> None:
        pass


def _digest(documents: Sequence[dict[str, Any]]) -> str:
    if not documents:
        return "none"
    return config_digest(load_texts([("<rules>", control.render(documents))]))[:12]


# --------------------------------------------------------------------------- etcd


class EtcdRuleStore:
    """The rules in etcd, one key per resource (see the module)."""

    def __init__(self, url: StoreURL, *, timeout: float = 3.0) -> None:
        self.url = str(url)
        self.layout = Layout(url.prefix)
        self.client = EtcdClient(url.endpoints, timeout=timeout)

    def normalize(self, document: dict[str, Any]) -> dict[str, Any]:
        return _namespaced(document)

    def _key(self, document: dict[str, Any]) -> str:
        kind, namespace, name = control.key_of(document)
        return self.layout.rule(kind, namespace, name)

    def _read(self) -> tuple[dict[str, tuple[dict[str, Any], int]], int, int]:
        """Each rule key's document and mod revision, the marker's mod revision, and the
        revision read at."""
        start, end = self.layout.rules_range()
        kvs, revision = self.client.range(start, end)
        marker = self.client.get(self.layout.revision)
        found: dict[str, tuple[dict[str, Any], int]] = {}
        for event in kvs:
            documents, problems = parse_yaml(event.value.decode("utf-8", "replace"), event.key)
            if problems or len(documents) != 1 or not isinstance(documents[0].data, dict):
                raise StoreError(f"{event.key} does not hold one YAML resource")
            found[event.key] = (documents[0].data, event.revision)
        return found, marker.revision if marker is not None else 0, revision

    def read(self) -> Rules:
        found, marker, _ = self._read()
        revision = max([marker, *(rev for _, rev in found.values())])
        return Rules(tuple(doc for doc, _ in found.values()), str(revision))

    def change(self, plan: Plan) -> Written:
        """One transaction: the rules become what ``plan`` makes of them, on the condition
        that ``rules-revision`` is as read (no other change landed meanwhile; otherwise read
        and plan again, up to ``TXN_TRIES`` times). etcd bounds the operations of one
        transaction (``--max-txn-ops``, 128 by default): a larger change is refused by etcd."""
        for _ in range(TXN_TRIES):
            found, marker, _ = self._read()
            result, changes = plan([document for document, _ in found.values()])
            wanted = {self._key(d): d for d in map(_namespaced, result)}
            operations = [
                EtcdClient.op_put(key, _yaml(document))
                for key, document in wanted.items()
                if key not in found or found[key][0] != document
            ]
            operations += [EtcdClient.op_delete(key) for key in found if key not in wanted]
            if not operations:
                revision = max([marker, *(rev for _, rev in found.values())])
                return Written(tuple(changes), str(revision), False)
            stamp = json.dumps({"at": time.time(), "by": "meshctl"}).encode()
            operations.append(EtcdClient.op_put(self.layout.revision, stamp))
            ok, revision = self.client.txn(
                [EtcdClient.compare_mod(self.layout.revision, marker)], operations
            )
            if ok:
                return Written(tuple(changes), str(revision), True)
        raise StoreError(
            f"the rules in {self.url} kept changing while this change was written "
            f"({TXN_TRIES} tries): try again"
        )

    def instances(self) -> tuple[list[Instance], int]:
        """Every registered instance with what it reports, and the rules revision now."""
        start, end = self.layout.registry_range()
        registered, _ = self.client.range(start, end)
        start, end = self.layout.status_range()
        reports, _ = self.client.range(start, end)
        by_key: dict[tuple[str, ...], dict[str, Any]] = {}
        for event in reports:
            key = self.layout.parse(event.key)
            if key is None:
                continue
            try:
                data = json.loads(event.value)
            except ValueError:
                continue
            if isinstance(data, dict):
                by_key[key.parts] = data
        out = []
        for event in registered:
            key = self.layout.parse(event.key)
            if key is None or key.kind != "endpoint":
                continue
            namespace, service, address = key.parts
            try:
                _, info = decode_endpoint(event.value, namespace, service, address, event.revision)
            except ValueError:
                continue
            report = by_key.get(key.parts, {})
            revision = report.get("rules_revision")
            pid = report.get("pid")
            out.append(
                Instance(
                    namespace,
                    service,
                    address,
                    info.version,
                    dict(info.labels),
                    revision if isinstance(revision, int) else None,
                    report.get("stale") if isinstance(report.get("stale"), bool) else None,
                    report.get("hostname") if isinstance(report.get("hostname"), str) else None,
                    pid if isinstance(pid, int) else None,
                )
            )
        return out, int(self.read().revision)

    def close(self) -> None:
        self.client.close()


def _yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def open_rule_store(text: str, *, base_dir: str | None = None) -> RuleStore:
    """The rule store a URL names (``ValueError`` for a bad URL); a file store's relative path
    is relative to ``base_dir`` (default: the current directory)."""
    url = StoreURL.parse(text)
    if url.scheme == "file":
        return FileRuleStore(url.resolve(base_dir or os.getcwd()).path)
    return EtcdRuleStore(url)


__all__ = [
    "TXN_TRIES",
    "EtcdRuleStore",
    "FileRuleStore",
    "Instance",
    "RuleStore",
    "Rules",
    "Written",
    "apply_files",
    "apply_sources",
    "check",
    "delete_files",
    "delete_sources",
    "open_rule_store",
    "plan_apply",
    "plan_delete",
    "replace_all",
]
