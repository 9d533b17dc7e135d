"""Discovery: static endpoints, ServiceEntry endpoints, and the watched registry file."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import httpx
import pytest

from meshlib import ConfigError, Mesh
from meshlib.config.load import load_texts
from meshlib.discovery import Endpoint, RegistryChain
from meshlib.discovery.file import FileRegistry
from meshlib.discovery.static import StaticRegistry
from meshlib.testing import FakeClock

FQDN = "reviews.default.svc.cluster.local"


def test_static_registry_from_the_service_document() -> None:
    config = load_texts(
        [
            (
                "mesh.yaml",
                """
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage, namespace: shop}
spec:
  registry:
    static:
      reviews:
        - {address: "127.0.0.1:9081", labels: {version: v1}}
        - {address: "127.0.0.1:9082", labels: {version: v2}, weight: 3}
""",
            )
        ]
    )
    registry = StaticRegistry.from_config(config)
    found = registry.endpoints("reviews.shop.svc.cluster.local")
    assert [(e.address, e.labels, e.weight) for e in found] == [
        ("127.0.0.1:9081", {"version": "v1"}, 1),
        ("127.0.0.1:9082", {"version": "v2"}, 3),
    ]
    assert registry.endpoints("reviews.default.svc.cluster.local") == ()


def test_service_entry_endpoints_map_port_names() -> None:
    config = load_texts(
        [
            (
                "se.yaml",
                """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments}
spec:
  hosts: [payments.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: https, protocol: HTTPS}]
  endpoints:
  - {address: 10.0.0.1, ports: {https: 8443}, labels: {zone: a}}
  - {address: 10.0.0.2}
  - {address: 10.0.0.3, ports: {https: 9000}, weight: 5}
""",
            )
        ]
    )
    found = StaticRegistry.from_config(config).endpoints("payments.example.com")
    assert [(e.host, e.port, e.weight) for e in found] == [
        ("10.0.0.1", 8443, 1),
        ("10.0.0.2", 443, 1),
        ("10.0.0.3", 9000, 5),
    ]
    assert found[0].labels == {"zone": "a"}


def test_subset_selection_by_labels() -> None:
    endpoint = Endpoint("h", 1, {"version": "v2", "zone": "a"})
    assert endpoint.selected_by({"version": "v2"})
    assert endpoint.selected_by({})
    assert not endpoint.selected_by({"version": "v1"})
    assert not endpoint.selected_by({"version": "v2", "tier": "gold"})


def write(path: Path, text: str) -> None:
    """Write and move the mtime on, so a reader polling the file sees a change."""
    path.write_text(textwrap.dedent(text))
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_file_registry_applies_a_change_once_it_settled(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "endpoints.yaml"
    write(path, "reviews: [{address: '127.0.0.1:1', labels: {version: v1}}]\n")
    registry = FileRegistry(str(path), refresh=2.0, clock=clock)
    assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:1"]
    write(path, "reviews: [{address: '127.0.0.1:2'}, {address: '127.0.0.1:3'}]\n")
    assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:1"]  # not yet looked
    clock.advance(2.0)
    assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:1"]  # seen once
    clock.advance(2.0)
    assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:2", "127.0.0.1:3"]


def test_file_registry_does_not_apply_a_file_being_written_or_emptied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    path = tmp_path / "endpoints.yaml"
    write(path, "reviews: [{address: '127.0.0.1:1'}]\nratings: [{address: '127.0.0.1:9'}]\n")
    registry = FileRegistry(str(path), refresh=1.0, clock=clock)
    whole = "reviews: [{address: '127.0.0.1:2'}]\nratings: [{address: '127.0.0.1:9'}]\n"
    for end in (0, 10, len(whole) // 2 + 2):  # a writer half-way at every look
        write(path, whole[:end])
        clock.advance(1.0)
        assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:1"]
    for _ in range(3):  # left empty: never applied
        write(path, "# rewritten soon\n")
        clock.advance(1.0)
        registry.endpoints(FQDN)
        clock.advance(1.0)
        assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:1"]
    assert "became empty" in caplog.text
    write(path, whole)
    clock.advance(1.0)
    registry.endpoints(FQDN)
    clock.advance(1.0)
    assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:2"]


def test_bad_registry_file_keeps_the_last_good_endpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    path = tmp_path / "endpoints.yaml"
    write(path, "reviews: [{address: '127.0.0.1:1'}]\n")
    registry = FileRegistry(str(path), refresh=1.0, clock=clock)
    write(path, "reviews:\n  - {address: 'no-port-here', weight: 0}\n")
    for _ in range(5):
        clock.advance(1.0)
        assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:1"]
    assert registry.last_error is not None
    assert f"{path}:2: reviews[0].address:" in str(registry.last_error)
    assert caplog.text.count("keeping the last good one") == 1  # once, not at every look
    write(path, "reviews: [{address: '127.0.0.1:4'}]\n")
    clock.advance(1.0)
    registry.endpoints(FQDN)
    clock.advance(1.0)
    assert [e.address for e in registry.endpoints(FQDN)] == ["127.0.0.1:4"]
    assert registry.last_error is None


def test_bad_registry_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text("reviews: [{address: '127.0.0.1:1'}\n")  # unclosed flow sequence
    with pytest.raises(ConfigError, match="invalid YAML"):
        FileRegistry(str(path))


def test_registry_chain_asks_in_order() -> None:
    first = StaticRegistry({FQDN: (Endpoint("a", 1),)})
    second = StaticRegistry({FQDN: (Endpoint("b", 1),), "x": (Endpoint("x", 1),)})
    chain = RegistryChain(first, second)
    assert chain.endpoints(FQDN)[0].host == "a"
    assert chain.endpoints("x")[0].host == "x"
    assert chain.endpoints("nowhere") == ()


def test_mesh_follows_the_registry_file_without_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    endpoints = tmp_path / "endpoints.yaml"
    write(endpoints, "reviews: [{address: '127.0.0.1:1001', labels: {version: v1}}]\n")
    config = tmp_path / "mesh.yaml"
    config.write_text(
        textwrap.dedent(
            """
            apiVersion: meshlib.dev/v1
            kind: Service
            metadata: {name: productpage}
            spec:
              registry:
                file: {path: endpoints.yaml, refreshInterval: 1s}
            """
        )
    )
    seen: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}:{request.url.port}")
        return httpx.Response(200)

    mesh = Mesh.from_file(config, clock=clock, transport=httpx.MockTransport(upstream))
    with mesh.client() as client:
        assert client.get("http://reviews:9080/r").status_code == 200
        write(endpoints, "reviews: [{address: '127.0.0.1:1002', labels: {version: v2}}]\n")
        clock.advance(1.0)
        mesh.registry.endpoints("reviews.default.svc.cluster.local")  # the change is seen
        clock.advance(1.0)
        assert client.get("http://reviews:9080/r").status_code == 200
    assert seen == ["127.0.0.1:1001", "127.0.0.1:1002"]
