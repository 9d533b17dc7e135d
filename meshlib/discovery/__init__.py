"""Service discovery: where the endpoints of each service are.

A ``Registry`` answers ``endpoints(host)`` for a service's FQDN with an immutable tuple of
``Endpoint``; sources are the Service document's static map, ServiceEntry endpoints, and files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service: where it listens and the labels that place it in subsets."""

    host: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    weight: int = 1
    #: the SPIFFE ID the endpoint's workload runs as, when the registry knows it (a ServiceEntry
    #: endpoint's ``serviceAccount``): what mTLS to it accepts (``meshlib.security.outbound``)
    identity: str | None = field(default=None, compare=False)

    @property
    def address(self) -> str:
        """``host:port``, as in the config and in logs."""
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(
        cls, address: str, labels: Mapping[str, str] | None = None, weight: int = 1
    ) -> Endpoint:
        host, _, port = address.rpartition(":")
        return cls(host.strip("[]"), int(port), dict(labels or {}), weight)

    def selected_by(self, labels: Mapping[str, str] | None) -> bool:
        """Subset selection: every subset label is among the endpoint's labels."""
        if not labels:
            return True
        own = self.labels
        for key, value in labels.items():
            if own.get(key) != value:
                return False
        return True


class Registry(Protocol):
    """Where the endpoints of each service are. Implementations must be thread-safe to read."""

    def endpoints(self, host: str) -> tuple[Endpoint, ...]:
        """The endpoints of the service whose FQDN is ``host`` (empty when none are known)."""
        ...


class RegistryChain:
    """Several registries asked in order; the first that knows a host answers for it."""

    __slots__ = ("sources",)

    def __init__(self, *sources: Registry) -> None:
        self.sources = sources

    def endpoints(self, host: str) -> tuple[Endpoint, ...]:
        for source in self.sources:
            found = source.endpoints(host)
            if found:
                return found
        return ()
