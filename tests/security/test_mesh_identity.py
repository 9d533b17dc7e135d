"""The Service document's identity: who the workload is, and where its certificate comes from."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from meshlib import ConfigError, Mesh
from meshlib.config.load import load_config
from meshlib.errors import IdentityError
from meshlib.security.ca import CertificateAuthority
from meshlib.testing import FakeClock

WriteYaml = Callable[[str, str], Path]


def service(identity: str = "", extra: str = "") -> str:
    return f"""
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {{name: productpage, namespace: shop}}
        spec:
          version: v1
          {extra}
          {identity}
        """


def test_without_identity_the_workload_has_none(write_yaml: WriteYaml) -> None:
    config = load_config([write_yaml("mesh.yaml", service())])
    assert config.service.identity is None
    assert config.service.service_account == "productpage"  # the service's name by default
    assert config.service.spiffe_id == "spiffe://cluster.local/ns/shop/sa/productpage"
    assert config.service.root_namespace == "istio-system"
    assert Mesh(config).identity is None


def test_service_account_trust_domain_and_root_namespace(write_yaml: WriteYaml) -> None:
    text = service(
        "identity: {trustDomain: example.org, ca: ../ca}",
        "serviceAccount: bookinfo-productpage\n          rootNamespace: mesh-root",
    )
    config = load_config([write_yaml("svc/mesh.yaml", text)])
    info = config.service
    assert info.spiffe_id == "spiffe://example.org/ns/shop/sa/bookinfo-productpage"
    assert info.root_namespace == "mesh-root"
    assert info.identity is not None
    # relative paths are relative to the config file, as registry.file is
    assert info.identity.ca == str(Path(config.files[0]).parent / ".." / "ca")


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        (
            "identity: {ca: ca, certificate: c.pem}",
            "spec.identity: set either ca or certificate, privateKey and caCertificates",
        ),
        (
            "identity: {certificate: c.pem, privateKey: k.pem}",
            "spec.identity: name the certificate's source: ca (a CA directory) or all of "
            "certificate, privateKey and caCertificates",
        ),
        (
            "identity: {ca: ca, trustDomain: Cluster.Local}",
            "spec.identity.trustDomain: 'Cluster.Local' is not a trust domain: lowercase "
            "letters, digits, '.', '-' and '_' (e.g. cluster.local)",
        ),
        (
            "identity: {ca: ca, certificateLifetime: 0s}",
            "spec.identity.certificateLifetime: must be at least 1ms",
        ),
        (
            "identity: {certificate: c.pem, privateKey: k.pem, caCertificates: ca.pem, "
            "certificateLifetime: 1h}",
            "spec.identity: certificateLifetime applies to certificates issued from ca",
        ),
    ],
)
def test_bad_identity_settings_name_file_line_and_field(
    write_yaml: WriteYaml, identity: str, message: str
) -> None:
    path = write_yaml("mesh.yaml", service(identity))
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value) == f"{path}:7: {message}"


def test_the_mesh_issues_its_certificate_from_the_ca_and_rotates_it(
    write_yaml: WriteYaml, tmp_path: Path
) -> None:
    clock = FakeClock()
    CertificateAuthority.init(tmp_path / "ca", clock=clock)
    text = service(
        "identity: {ca: ../ca, certificateLifetime: 1h}", "serviceAccount: bookinfo-productpage"
    )
    mesh = Mesh(load_config([write_yaml("svc/mesh.yaml", text)]), clock=clock)
    identity = mesh.identity
    assert identity is not None
    assert mesh.identity is identity  # made once
    assert str(identity.spiffe_id) == "spiffe://cluster.local/ns/shop/sa/bookinfo-productpage"
    first = identity.certificate
    assert first.not_after - first.not_before >= timedelta(hours=1)
    clock.advance(40 * 60)  # past half the lifetime: the next use renews it
    identity.client_context()
    assert identity.certificate.serial_number != first.serial_number


def test_an_unusable_ca_is_an_identity_error_naming_the_file(
    write_yaml: WriteYaml, tmp_path: Path
) -> None:
    mesh = Mesh(load_config([write_yaml("mesh.yaml", service("identity: {ca: no-such-ca}"))]))
    with pytest.raises(IdentityError, match="no-such-ca"):
        _ = mesh.identity
