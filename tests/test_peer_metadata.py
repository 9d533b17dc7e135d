"""Workload metadata exchange: Istio's ``x-envoy-peer-metadata`` encoding, the binding of the
metadata to the caller's verified identity, and the labels each side fills from it."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from meshlib import Mesh
from meshlib.config.load import ServiceInfo
from meshlib.server.inbound import Inbound
from meshlib.server.wsgi import MeshWSGIMiddleware
from meshlib.telemetry import InboundFinished, metrics, peer
from meshlib.telemetry.accesslog import AccessLogger
from meshlib.telemetry.metrics import LABELS, Workload, inbound_labels
from meshlib.telemetry.peer import PeerMetadata

PRODUCTPAGE = PeerMetadata(
    workload="productpage-v1",
    namespace="default",
    app="productpage",
    version="v1",
    service_account="bookinfo-productpage",
    canonical_service="productpage",
    canonical_revision="v1",
    cluster="Kubernetes",
    instance="productpage-v1-6b746f74dc-9stvs",
)

# google.protobuf.Struct {"NAMESPACE": "default", "LABELS": {"app": "ratings"}}, as protobuf's
# own serializer writes it (map entries in key order).
PROTOBUF_BYTES = (
    b"\n\x1e\n\x06LABELS\x12\x14*\x12\n\x10\n\x03app\x12\t\x1a\x07ratings"
    b"\n\x16\n\tNAMESPACE\x12\t\x1a\x07default"
)


# --------------------------------------------------------------------------- encoding


def test_struct_encoding_is_protobufs_own() -> None:
    fields: dict[str, str | dict[str, str]] = {
        "NAMESPACE": "default",
        "LABELS": {"app": "ratings"},
    }
    assert peer.encode_struct(fields) == PROTOBUF_BYTES
    assert peer.decode_struct(PROTOBUF_BYTES) == fields


def test_metadata_round_trips_through_the_header() -> None:
    value = peer.encode(PRODUCTPAGE)
    assert value.isascii()
    assert base64.b64decode(value)  # standard base64, padded
    assert peer.parse(value) == PRODUCTPAGE


def test_header_holds_istios_node_metadata_keys() -> None:
    fields = peer.decode_struct(base64.b64decode(peer.encode(PRODUCTPAGE)))
    assert fields == {
        "NAME": "productpage-v1-6b746f74dc-9stvs",
        "NAMESPACE": "default",
        "WORKLOAD_NAME": "productpage-v1",
        "SERVICE_ACCOUNT": "bookinfo-productpage",
        "CLUSTER_ID": "Kubernetes",
        "LABELS": {
            "app": "productpage",
            "version": "v1",
            "service.istio.io/canonical-name": "productpage",
            "service.istio.io/canonical-revision": "v1",
        },
    }


def test_values_of_other_kinds_are_skipped() -> None:
    # a number (Value.number_value, fixed64) and a bool (varint), a list
    number = b"\n\x10\n\x03NUM\x12\x09\x11" + b"\x00" * 7 + b"@"
    flag = b"\n\x0a\n\x04FLAG\x12\x02\x20\x01"
    listed = b"\n\x0e\n\x04LIST\x12\x06\x32\x04\n\x02\x1a\x00"
    name = b"\n\x13\n\x0dWORKLOAD_NAME\x12\x02\x1a\x00"
    fields = peer.decode_struct(number + flag + listed + name)
    assert fields == {"WORKLOAD_NAME": ""}


def test_this_workloads_metadata_is_built_once_per_config() -> None:
    mesh = Mesh.from_yaml(
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: productpage}\n"
        "spec: {version: v1, serviceAccount: bookinfo-productpage}\n"
    )
    stamp = peer.stamp_of(mesh)
    assert peer.stamp_of(mesh) is stamp
    assert stamp.metadata.workload == "productpage-v1"
    assert stamp.metadata.app == "productpage"
    assert stamp.metadata.version == "v1"
    assert stamp.metadata.service_account == "bookinfo-productpage"
    assert stamp.id_value == ("sidecar~0.0.0.0~productpage-v1.default~default.svc.cluster.local")
    assert peer.parse(stamp.value) == stamp.metadata


def test_labels_of_the_service_document_are_sent() -> None:
    service = ServiceInfo(
        name="reviews", version="v2", labels={"app": "reviews-app", "workload": "reviews-blue"}
    )
    metadata = PeerMetadata.of_service(service)
    assert (metadata.app, metadata.version, metadata.workload) == (
        "reviews-app",
        "v2",
        "reviews-blue",
    )


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not base64!",
        "é" * 10,
        "A" * (peer.MAX_HEADER + 4),
        base64.b64encode(b"\xff\xff\xff").decode(),  # a truncated varint
        base64.b64encode(b"\n\x7f").decode(),  # a length past the end
        base64.b64encode(b"\x0f").decode(),  # wire type 7
        base64.b64encode(b"\n\x05\n\x03\xff\xfe\xfd").decode(),  # a key not UTF-8
        base64.b64encode(b"").decode(),  # an empty Struct: nothing said
    ],
)
def test_malformed_metadata_is_none(value: str) -> None:
    assert peer.parse(value) is None
    assert peer.decode(value) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_metadata_or_none(value: str) -> None:
    found = peer.parse(value)
    assert found is None or isinstance(found, PeerMetadata)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_are_metadata_or_none(data: bytes) -> None:
    found = peer.parse(base64.b64encode(data).decode())
    assert found is None or isinstance(found, PeerMetadata)


_TEXT = st.text(min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_TEXT, st.one_of(_TEXT, st.dictionaries(_TEXT, _TEXT, max_size=4))))
def test_any_struct_of_strings_round_trips(fields: dict[str, Any]) -> None:
    assert peer.decode_struct(peer.encode_struct(fields)) == fields


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.text(max_size=50))
def test_the_inbound_side_never_raises_on_metadata(value: str, principal: str) -> None:
    """Any header value, any principal: a request begins, with metadata or without."""
    mesh = Mesh.from_yaml("apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: ratings}\n")
    served = Inbound(mesh).begin(
        "GET", "/", {peer.PEER_METADATA: value}, mesh=mesh, principal=principal or None
    )
    assert served.peer is None or isinstance(served.peer, PeerMetadata)


# --------------------------------------------------------------------------- binding


PRINCIPAL = "cluster.local/ns/default/sa/bookinfo-productpage"


def test_metadata_matching_the_certificate_is_taken() -> None:
    assert peer.bind(PRODUCTPAGE, PRINCIPAL) is PRODUCTPAGE


def test_metadata_without_a_certificate_is_taken_as_sent() -> None:
    assert peer.bind(PRODUCTPAGE, None) is PRODUCTPAGE


def test_metadata_saying_nothing_of_its_identity_is_taken() -> None:
    quiet = PeerMetadata(workload="productpage-v1", app="productpage")
    assert peer.bind(quiet, PRINCIPAL) is quiet


@pytest.mark.parametrize(
    "principal",
    [
        "cluster.local/ns/default/sa/bookinfo-reviews",  # another service account
        "cluster.local/ns/other/sa/bookinfo-productpage",  # another namespace
    ],
)
def test_metadata_claiming_another_identity_is_ignored_and_logged_once(
    principal: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = peer.refused_claims()
    with caplog.at_level(logging.WARNING, "meshlib.telemetry"):
        assert peer.bind(PRODUCTPAGE, principal) is None
        assert peer.bind(PRODUCTPAGE, principal) is None
    assert peer.refused_claims() == before + 2
    warnings = [r for r in caplog.records if "cannot claim" in r.getMessage()]
    assert len(warnings) == 1
    assert principal in warnings[0].getMessage()


# --------------------------------------------------------------------------- labels


def _inbound(principal: str | None, metadata: PeerMetadata | None) -> dict[str, str]:
    service = ServiceInfo(name="reviews", version="v2", service_account="reviews")
    event = InboundFinished(
        "GET", "/", 200, 0.01, 0, 0, "r", None, None, principal=principal, peer=metadata
    )
    labels = inbound_labels(Workload.of_service(service), service, event)
    return dict(zip(LABELS, labels, strict=True))


def test_inbound_labels_of_a_verified_caller_with_metadata() -> None:
    labels = _inbound(PRINCIPAL, PRODUCTPAGE)
    assert labels["source_workload"] == "productpage-v1"
    assert labels["source_workload_namespace"] == "default"
    assert labels["source_app"] == "productpage"
    assert labels["source_version"] == "v1"
    # Istio's metrics show the certificate's URI SAN, scheme and all (its authorization
    # principals drop the scheme): the Workload dashboard's mTLS panels select "spiffe.*"
    assert labels["source_principal"] == "spiffe://" + PRINCIPAL
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/default/sa/reviews"
    assert labels["source_canonical_service"] == "productpage"
    assert labels["source_canonical_revision"] == "v1"
    assert labels["source_cluster"] == "Kubernetes"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["destination_workload"] == "reviews-v2"


def test_inbound_labels_of_a_verified_caller_without_metadata() -> None:
    labels = _inbound(PRINCIPAL, None)
    assert labels["source_principal"] == "spiffe://" + PRINCIPAL
    assert labels["source_workload_namespace"] == "default"
    assert labels["source_workload"] == "unknown"
    assert labels["connection_security_policy"] == "mutual_tls"


def test_inbound_labels_of_a_plain_text_caller() -> None:
    labels = _inbound(None, PRODUCTPAGE)
    assert labels["source_workload"] == "productpage-v1"
    assert labels["source_principal"] == "unknown"
    assert labels["destination_principal"] == "unknown"  # plain text: no certificate shown
    assert labels["connection_security_policy"] == "none"
    assert _inbound(None, None)["source_workload"] == "unknown"


def test_destination_defaults_to_the_services_short_name() -> None:
    bare = Workload.of_destination({}, "reviews", "default")
    assert (bare.workload, bare.app, bare.version) == ("reviews", "reviews", "unknown")
    subset = Workload.of_destination({"version": "v2"}, "reviews", "default")
    assert (subset.workload, subset.app, subset.version) == ("reviews-v2", "reviews", "v2")
    external = Workload.of_destination({}, "api.example.com", "unknown")
    assert (external.workload, external.app) == ("unknown", "unknown")


def test_destination_metadata_fills_what_labels_do_not() -> None:
    upstream = PeerMetadata(workload="reviews-v3", namespace="default", app="reviews", version="v3")
    found = Workload.of_destination({}, "reviews", "default", upstream)
    assert (found.workload, found.app, found.version) == ("reviews-v3", "reviews", "v3")
    labelled = Workload.of_destination({"version": "v1"}, "reviews", "default", upstream)
    assert labelled.version == "v1"  # the endpoint's labels come first


def test_the_access_log_names_the_caller() -> None:
    logger = AccessLogger(ServiceInfo(name="reviews"), format="%SOURCE_WORKLOAD%")
    event = InboundFinished(
        "GET", "/", 200, 0.01, 0, 0, "r", None, None, principal=PRINCIPAL, peer=PRODUCTPAGE
    )
    fields, _ = logger.inbound(event)
    assert fields["downstream_peer_uri_san"] == "spiffe://" + PRINCIPAL
    assert fields["source_workload"] == "productpage-v1"
    assert fields["source_workload_namespace"] == "default"
    bare, _ = logger.inbound(InboundFinished("GET", "/", 200, 0.01, 0, 0, "r", None, None))
    assert "source_workload" not in bare
    assert "downstream_peer_uri_san" not in bare


def test_the_wsgi_middleware_reads_removes_and_answers_the_metadata() -> None:
    mesh = Mesh.from_yaml(
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: ratings}\n"
        "spec: {version: v1}\n"
    )
    events: list[Any] = []
    mesh.telemetry.add_listener(type("Sink", (), {"on_event": lambda _, e: events.append(e)})())
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    answered: list[tuple[str, str]] = []

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
        answered.extend(headers)
        return lambda data: None

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/ratings/0",
        "wsgi.url_scheme": "http",
        "HTTP_X_ENVOY_PEER_METADATA": peer.encode(PRODUCTPAGE),
        "HTTP_X_ENVOY_PEER_METADATA_ID": "sidecar~0.0.0.0~productpage-v1.default~default",
    }
    body = MeshWSGIMiddleware(app, mesh=mesh)(environ, start_response)
    assert b"".join(body) == b"ok"
    getattr(body, "close", lambda: None)()
    assert "HTTP_X_ENVOY_PEER_METADATA" not in seen
    assert "HTTP_X_ENVOY_PEER_METADATA_ID" not in seen
    sent = dict(answered)
    assert peer.parse(sent["x-envoy-peer-metadata"]) == peer.stamp_of(mesh).metadata
    assert sent["x-envoy-peer-metadata-id"] == peer.stamp_of(mesh).id_value
    [finished] = [e for e in events if isinstance(e, InboundFinished)]
    assert finished.peer == PRODUCTPAGE
    assert finished.principal is None


def test_refused_claims_are_a_prometheus_counter() -> None:
    mesh = Mesh.from_yaml(
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: reviews}\n"
        "spec: {telemetry: {metrics: {}}}\n"
    )
    try:
        peer.bind(PRODUCTPAGE, "cluster.local/ns/default/sa/bookinfo-ratings")
        expected = peer.refused_claims()
        _, body = metrics.scrape(mesh)
    finally:
        mesh.close()
    found = [
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "meshlib_peer_metadata_refused_total"
    ]
    assert found == [expected]
    assert expected >= 1
