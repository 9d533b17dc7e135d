"""A small control plane: a rules file that services include, changed as ``kubectl apply`` changes
a cluster, and a wait until every service runs the change, as ``istioctl proxy-status`` shows.

Services include one rules file in their config (``spec.include``) and watch their files
(``Mesh.watch``); tools change the file with ``apply``, ``delete`` and ``replace_all`` and then
``wait_in_sync`` until each service's admin endpoint (``GET /_mesh/config``) reports the digest of
the config its files now hold.

When the services have a mesh identity, their admin endpoints answer only a verified mesh peer
(and, under a STRICT PeerAuthentication, take no plain text at all): pass ``tls``, a client
context presenting a certificate of the mesh CA, and the admin calls go over mutual TLS.

* ``apply``: each resource of the given files is created, or replaces the one of the same kind,
  namespace and name (``configured``/``unchanged``); the others stay. Each is annotated with the
  file it came from (``meshctl.meshlib.dev/applied-from``), as kubectl annotates what it applied.
* Every change is checked whole before it is written: files that do not load, or hold a
  ``Service`` document, are refused and nothing changes. The file is replaced atomically
  (``os.replace``), so a service never reads half of it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import yaml

from meshlib.config.digest import config_digest
from meshlib.config.load import DEFAULT_NAMESPACE, MeshConfig, load_config, load_texts
from meshlib.config.source import parse_yaml
from meshlib.errors import ConfigError, Problem
from meshlib.server.admin import CONFIG_PATH, TRACES_PATH

ANNOTATION = "meshctl.meshlib.dev/applied-from"
STDIN = "-"

Key = tuple[str, str, str]  # kind, namespace, name


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Source:
    """One input: a file's name (``-`` for standard input) and its text."""

    name: str
    text: str

    @classmethod
    def read(cls, name: str) -> Source:
        if name == STDIN:
            return cls("<stdin>", sys.stdin.read())
        try:
            with open(name, encoding="utf-8") as handle:
                return cls(name, handle.read())
        except OSError as exc:
            raise ConfigError([Problem(name, 0, "", exc.strerror or str(exc))]) from None


def key_of(document: dict[str, Any]) -> Key:
    metadata = document.get("metadata") or {}
    return (
        str(document.get("kind")),
        str(metadata.get("namespace") or DEFAULT_NAMESPACE),
        str(metadata.get("name")),
    )


def describe(key: Key) -> str:
    """``VirtualService default/reviews``."""
    return f"{key[0]} {key[1]}/{key[2]}"


def resources_of(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """The resources of ``sources``, validated together, each annotated with its file.
    Raises ``ConfigError`` (every problem) when they do not load or hold a ``Service``."""
    config = load_texts([(s.name, s.text) for s in sources], names_are_paths=True)
    services = config.of_kind("Service")
    if services:
        first = services[0]
        raise ConfigError(
            [
                Problem(
                    first.file,
                    first.line,
                    "kind",
                    "a rules file holds Istio resources; the Service document belongs in each "
                    "service's own config",
                )
            ]
        )
    out: list[dict[str, Any]] = []
    for source in sources:
        documents, _ = parse_yaml(source.text, source.name)
        for document in documents:
            data = copy.deepcopy(document.data)
            metadata = data.setdefault("metadata", {})
            annotations = metadata.get("annotations") or {}
            metadata["annotations"] = {**annotations, ANNOTATION: os.path.basename(source.name)}
            out.append(data)
    return out


def read_rules(path: str) -> list[dict[str, Any]]:
    """The resources of the rules file (none when it does not exist)."""
    try:
        source = Source.read(path)
    except ConfigError:
        return []
    documents, problems = parse_yaml(source.text, path)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors)
    return [d.data for d in documents]


def merge(
    current: Sequence[dict[str, Any]], applied: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[Key, str]]]:
    """``current`` with ``applied`` applied: a resource of the same key is replaced in place,
    a new one appended. Returns the result and what happened to each applied resource
    (``created``, ``configured`` or ``unchanged``)."""
    result = list(current)
    where = {key_of(d): i for i, d in enumerate(result)}
    changes: list[tuple[Key, str]] = []
    for document in applied:
        key = key_of(document)
        index = where.get(key)
        if index is None:
            where[key] = len(result)
            result.append(document)
            changes.append((key, "created"))
        elif result[index] == document:
            changes.append((key, "unchanged"))
        else:
            result[index] = document
            changes.append((key, "configured"))
    return result, changes


def remove(
    current: Sequence[dict[str, Any]], keys: Sequence[Key]
) -> tuple[list[dict[str, Any]], list[tuple[Key, str]]]:
    """``current`` without the resources of ``keys`` (``deleted``, or ``not found``)."""
    present = {key_of(d) for d in current}
    gone = set(keys)
    changes = [(k, "deleted" if k in present else "not found") for k in keys]
    return [d for d in current if key_of(d) not in gone], changes


def render(documents: Sequence[dict[str, Any]]) -> str:
    """The rules file's text: one YAML document per resource."""
    header = "# Written by meshctl: every change replaces this file whole.\n"
    if not documents:
        return header
    parts = [yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in documents]
    return header + "---\n".join(parts)


def write_rules(path: str, documents: Sequence[dict[str, Any]]) -> MeshConfig:
    """Check the rules whole, then replace the file atomically. Returns the rules as loaded."""
    text = render(documents)
    checked = load_texts([(path, text)])  # raises ConfigError: nothing is written
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".rules-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return checked


# --------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A running service: its name and version, base URL and config file, and where its
    metrics are scraped (when it said)."""

    name: str
    version: str | None
    url: str
    config: str
    metrics: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name


@dataclass(frozen=True, slots=True)
class Sync:
    """Whether a service runs the config its files hold."""

    service: ServiceRef
    expected: str | None  # the digest of its config files now; None when they do not load
    reported: str | None  # what its admin endpoint says; None when it did not answer
    error: str | None = None  # why not, when not
    #: whether it runs the change, when something else than the digests says it (the rules
    #: revision a service reports in an etcd store, which may be later than the change's)
    synced: bool | None = None

    @property
    def in_sync(self) -> bool:
        if self.synced is not None:
            return self.synced
        return self.expected is not None and self.expected == self.reported


def expected_digest(service: ServiceRef) -> str:
    """The digest of the config the service's files hold now."""
    return config_digest(load_config([service.config]))


def admin_url(
    service: ServiceRef, tls: ssl.SSLContext | None = None, path: str = CONFIG_PATH
) -> str:
    """The service's admin endpoint ``path``: its URL, over ``https`` when ``tls`` is given."""
    base = service.url.rstrip("/")
    if tls is not None and base.startswith("http://"):
        base = "https://" + base.removeprefix("http://")
    return base + path


def fetch_status(
    service: ServiceRef, timeout: float = 2.0, tls: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """The service's ``GET /_mesh/config`` (a direct call, not through any mesh), with
    ``$MESHLIB_ADMIN_TOKEN`` as a bearer token when it is set, over mutual TLS with ``tls``
    (a client context with a mesh certificate) when given."""
    token = os.environ.get("MESHLIB_ADMIN_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(
        admin_url(service, tls),
        timeout=timeout,
        headers=headers,
        verify=tls if tls is not None else True,
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def fetch_spans(
    service: ServiceRef,
    trace_id: str | None = None,
    limit: int = 1000,
    timeout: float = 2.0,
    tls: ssl.SSLContext | None = None,
) -> list[dict[str, Any]]:
    """The service's last ``limit`` spans from ``GET /_mesh/traces`` (only those of
    ``trace_id`` when given); the admin token and ``tls`` as for ``fetch_status``."""
    token = os.environ.get("MESHLIB_ADMIN_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    params: dict[str, str | int] = {"limit": limit}
    if trace_id is not None:
        params["trace_id"] = trace_id
    response = httpx.get(
        admin_url(service, tls, TRACES_PATH),
        params=params,
        timeout=timeout,
        headers=headers,
        verify=tls if tls is not None else True,
    )
    response.raise_for_status()
    spans: list[dict[str, Any]] = response.json()["spans"]
    return spans


def check(service: ServiceRef, tls: ssl.SSLContext | None = None) -> Sync:
    try:
        expected = expected_digest(service)
    except ConfigError as exc:
        return Sync(service, None, None, f"its config does not load:\n{exc}")
    try:
        status = fetch_status(service, tls=tls)
    except (httpx.HTTPError, ValueError) as exc:
        return Sync(service, expected, None, f"no answer from {service.url}: {exc}")
    reported = status.get("digest")
    error = None
    if reported != expected:
        watch = status.get("watch") or {}
        if watch.get("last_error"):
            error = f"it refused the change:\n{watch['last_error']}"
        elif not watch.get("running"):
            error = "it does not watch its config files"
        else:
            error = "it has not reloaded yet"
    return Sync(service, expected, reported if isinstance(reported, str) else None, error)


def wait_in_sync(
    services: Sequence[ServiceRef],
    timeout: float = 15.0,
    interval: float = 0.1,
    tls: ssl.SSLContext | None = None,
) -> list[Sync]:
    """Poll until every service runs the config its files hold, or ``timeout`` seconds pass
    (``tls``: see ``fetch_status``). Returns the last look at each."""
    deadline = time.monotonic() + timeout
    pending = list(services)
    done: dict[str, Sync] = {}
    while True:
        still = []
        for service in pending:
            sync = check(service, tls)
            done[service.url] = sync
            if not sync.in_sync:
                still.append(service)
        pending = still
        if not pending or time.monotonic() >= deadline:
            return [done[s.url] for s in services]
        time.sleep(interval)


__all__ = [
    "ANNOTATION",
    "STDIN",
    "Key",
    "ServiceRef",
    "Source",
    "Sync",
    "admin_url",
    "check",
    "describe",
    "expected_digest",
    "fetch_spans",
    "fetch_status",
    "key_of",
    "merge",
    "read_rules",
    "remove",
    "render",
    "resources_of",
    "wait_in_sync",
    "write_rules",
]
