"""Where things live in etcd, under a store's prefix (``/meshlib`` by default)::

    <prefix>/registry/<namespace>/<service>/<host:port>   one endpoint, JSON, on its lease
    <prefix>/rules/<kind>/<namespace>/<name>              one Istio resource, YAML
    <prefix>/rules-revision                               rewritten by every rules change
    <prefix>/status/<namespace>/<service>/<host:port>     what a registered service runs, JSON

A service watches one key range, ``[<prefix>/registry/, <prefix>/rules0)``: the registry, the
rules and the rules revision, and nothing else (``status/`` sorts after it, so the services'
reports never reach the other services). ``meshctl`` writes every rules change, and the
``rules-revision`` key with it, in one transaction: the mod revision of ``rules-revision`` is
the revision of the rule set, the one a service says it runs.

Pure functions only: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REGISTRY = "registry"
RULES = "rules"
STATUS = "status"
REVISION = "rules-revision"

#: A Kubernetes-style name part of a key (namespace, service, kind, name): no ``/``.
_PART = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Layout:
    """The keys of one store prefix."""

    prefix: str

    @property
    def root(self) -> str:
        return self.prefix.rstrip("/") + "/"

    # ------------------------------------------------------------------ ranges

    def watched(self) -> tuple[str, str]:
        """The ``[start, end)`` key range a service lists and watches."""
        return self.root + REGISTRY + "/", self.root + RULES + "0"

    def registry_range(self) -> tuple[str, str]:
        return _prefix_range(self.root + REGISTRY + "/")

    def rules_range(self) -> tuple[str, str]:
        return _prefix_range(self.root + RULES + "/")

    def status_range(self) -> tuple[str, str]:
        return _prefix_range(self.root + STATUS + "/")

    # ------------------------------------------------------------------ keys

    def endpoint(self, namespace: str, service: str, address: str) -> str:
        return f"{self.root}{REGISTRY}/{_part(namespace)}/{_part(service)}/{_address(address)}"

    def status(self, namespace: str, service: str, address: str) -> str:
        return f"{self.root}{STATUS}/{_part(namespace)}/{_part(service)}/{_address(address)}"

    def rule(self, kind: str, namespace: str, name: str) -> str:
        return f"{self.root}{RULES}/{_part(kind)}/{_part(namespace)}/{_part(name)}"

    @property
    def revision(self) -> str:
        return self.root + REVISION

    # ------------------------------------------------------------------ parsing

    def parse(self, key: str) -> Key | None:
        """What ``key`` is, or None for a key of no meaning here."""
        if not key.startswith(self.root):
            return None
        rest = key[len(self.root) :]
        if rest == REVISION:
            return Key("revision", ())
        group, _, tail = rest.partition("/")
        parts = tuple(tail.split("/")) if tail else ()
        if group == REGISTRY and len(parts) == 3 and all(parts):
            return Key("endpoint", parts)
        if group == STATUS and len(parts) == 3 and all(parts):
            return Key("status", parts)
        if group == RULES and len(parts) == 3 and all(parts):
            return Key("rule", parts)
        return None


@dataclass(frozen=True, slots=True)
class Key:
    """A parsed key: ``endpoint``/``status`` (namespace, service, address), ``rule`` (kind,
    namespace, name) or ``revision`` (no parts)."""

    kind: str
    parts: tuple[str, ...]


def _prefix_range(prefix: str) -> tuple[str, str]:
    """etcd's range for every key starting with ``prefix``: the end is the prefix with its last
    byte plus one."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _part(text: str) -> str:
    if not _PART.match(text):
        raise ValueError(
            f"{text!r} cannot be part of a store key: letters, digits, '.', '_' and '-' only, "
            "starting and ending with a letter or digit"
        )
    return text


def _address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in address or " " in address:
        raise ValueError(f"address {address!r} must be host:port, e.g. 10.0.0.5:9080")
    return address


__all__ = ["REGISTRY", "REVISION", "RULES", "STATUS", "Key", "Layout"]
