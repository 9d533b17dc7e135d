"""Endpoints written in the config: the Service document's ``registry.static`` map and
ServiceEntry ``endpoints``."""

from __future__ import annotations

from collections.abc import Mapping

from meshlib.config import model as m
from meshlib.config.compile import fqdn
from meshlib.config.load import MeshConfig
from meshlib.discovery import Endpoint


class StaticRegistry:
    """An immutable host → endpoints map."""

    __slots__ = ("_endpoints",)

    def __init__(self, endpoints: Mapping[str, tuple[Endpoint, ...]]) -> None:
        self._endpoints = dict(endpoints)

    def endpoints(self, host: str) -> tuple[Endpoint, ...]:
        return self._endpoints.get(host, ())

    def hosts(self) -> list[str]:
        return list(self._endpoints)

    @classmethod
    def from_config(cls, config: MeshConfig) -> StaticRegistry:
        """``registry.static`` (short names live in this service's namespace) and the endpoints of
        every ServiceEntry (``ports`` maps a service port name to the endpoint's port)."""
        namespace = config.service.namespace
        table: dict[str, tuple[Endpoint, ...]] = {}
        for name, endpoints in config.service.registry.items():
            table[fqdn(name, namespace)] = tuple(
                Endpoint.parse(e.address, e.labels, e.weight) for e in endpoints
            )
        for resource in config.of_kind("ServiceEntry"):
            spec = resource.spec
            assert isinstance(spec, m.ServiceEntry)
            found = tuple(
                e
                for e in (
                    _entry_endpoint(spec, w, resource.namespace, config.service.trust_domain)
                    for w in spec.endpoints or ()
                )
                if e
            )
            if not found:
                continue
            for host in spec.hosts:
                table.setdefault(fqdn(host, resource.namespace), found)
        return cls(table)


def _entry_endpoint(
    entry: m.ServiceEntry, workload: m.WorkloadEntry, namespace: str, trust_domain: str
) -> Endpoint | None:
    """A WorkloadEntry → Endpoint; its port is ``ports[name]`` of the entry's first port, else
    the port's ``targetPort``, else the port number. Its ``serviceAccount`` (in the entry's
    namespace) is the endpoint's identity."""
    if not workload.address:
        return None
    identity = (
        f"spiffe://{trust_domain}/ns/{namespace}/sa/{workload.service_account}"
        if workload.service_account
        else None
    )
    address = workload.address
    host, sep, port_text = address.rpartition(":")
    if sep and port_text.isdigit() and "]" not in port_text:
        return Endpoint(
            host.strip("[]"),
            int(port_text),
            dict(workload.labels or {}),
            workload.weight or 1,
            identity,
        )
    port = 80
    if entry.ports:
        first = entry.ports[0]
        port = first.target_port or first.number
        if workload.ports and first.name and first.name in workload.ports:
            port = workload.ports[first.name]
    return Endpoint(
        address.strip("[]"), port, dict(workload.labels or {}), workload.weight or 1, identity
    )
