"""Workload metadata exchange: who is at the other end of a request, as Istio's sidecars say it.

Istio's sidecars tell each other who they are in two HTTP headers, on the request (the caller's
metadata) and on the response (the upstream's):

* ``x-envoy-peer-metadata-id``: the peer's node id, ``sidecar~<ip>~<pod>.<namespace>~<namespace>
  .svc.cluster.local``;
* ``x-envoy-peer-metadata``: its node metadata, a ``google.protobuf.Struct`` in protobuf's binary
  encoding, base64 (standard alphabet, padded). The keys meshlib writes and reads are Istio's:
  ``NAME``, ``NAMESPACE``, ``WORKLOAD_NAME``, ``SERVICE_ACCOUNT``, ``CLUSTER_ID`` (strings) and
  ``LABELS`` (a Struct of strings: ``app``, ``version``, ``service.istio.io/canonical-name``,
  ``service.istio.io/canonical-revision``).

meshlib sends and reads exactly these headers in exactly this encoding, so an Envoy sidecar on
the other side reads meshlib's metadata and meshlib reads the sidecar's. Only the part of
protobuf a Struct of strings needs is written here (no protobuf dependency); a value of another
kind (number, bool, list) is skipped when read.

Reading is for hostile input: a header longer than ``MAX_HEADER`` characters, not base64, not a
well-formed Struct, nested deeper than ``LABELS`` or with a value that is not UTF-8 gives None,
never an exception. Decoded values are remembered by header value (``decode``), so that a caller
sending the same metadata on every request costs one dict look-up.

The metadata of this workload (``stamp_of``) is built once per config: its name is the Service
document's name, its labels ``app``/``version`` are ``spec.labels`` (else the name and
``spec.version``), its workload name ``<name>-<version>`` (Kubernetes' Deployment naming).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from meshlib.config.load import ServiceInfo
from meshlib.routing import CLUSTER_DOMAIN

if TYPE_CHECKING:
    from meshlib.config.load import MeshConfig
    from meshlib.mesh import Mesh

log = logging.getLogger("meshlib.telemetry")

#: Istio's metadata exchange headers.
PEER_METADATA: Final = "x-envoy-peer-metadata"
PEER_METADATA_ID: Final = "x-envoy-peer-metadata-id"
PEER_HEADERS: Final = frozenset((PEER_METADATA, PEER_METADATA_ID))
PEER_KEYS: Final = frozenset(n.encode("ascii") for n in PEER_HEADERS)
#: Longest ``x-envoy-peer-metadata`` value read (Istio's own are about 1–2 KiB).
MAX_HEADER: Final = 8192

UNKNOWN: Final = "unknown"
_CANONICAL_NAME = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION = (
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
)


@dataclass(frozen=True, slots=True)
class PeerMetadata:
    """A workload as the metadata exchange describes it ("" where the metadata says nothing)."""

    workload: str = ""
    namespace: str = ""
    app: str = ""
    version: str = ""
    service_account: str = ""
    canonical_service: str = ""
    canonical_revision: str = ""
    cluster: str = ""
    instance: str = ""

    @classmethod
    def of_service(cls, service: ServiceInfo) -> PeerMetadata:
        """This service: its ``app`` is its name unless an ``app`` label says otherwise; its
        workload ``<name>-<version>`` unless a ``workload`` label names it."""
        labels = service.labels
        name = service.name
        version = service.version or labels.get("version") or UNKNOWN
        app = labels.get("app") or name
        workload = labels.get("workload") or (
            f"{name}-{version}" if UNKNOWN not in (version, name) else name
        )
        return cls(
            workload=workload,
            namespace=service.namespace,
            app=app,
            version=version,
            service_account=service.service_account,
            canonical_service=first_label(labels, _CANONICAL_NAME) or app,
            canonical_revision=first_label(labels, _CANONICAL_REVISION)
            or service.version
            or "latest",
            cluster=labels.get("topology.istio.io/cluster") or "",
            instance=workload,
        )

    @classmethod
    def of_struct(cls, fields: Mapping[str, str | dict[str, str]]) -> PeerMetadata:
        """From the fields of Istio's node metadata Struct."""
        labels = fields.get("LABELS")
        labels = labels if isinstance(labels, dict) else {}

        def text(key: str) -> str:
            value = fields.get(key)
            return value if isinstance(value, str) else ""

        app = labels.get("app", "")
        version = labels.get("version", "")
        return cls(
            workload=text("WORKLOAD_NAME"),
            namespace=text("NAMESPACE"),
            app=app,
            version=version,
            service_account=text("SERVICE_ACCOUNT"),
            canonical_service=labels.get("service.istio.io/canonical-name", ""),
            canonical_revision=labels.get("service.istio.io/canonical-revision", ""),
            cluster=text("CLUSTER_ID"),
            instance=text("NAME"),
        )

    def struct(self) -> dict[str, str | dict[str, str]]:
        """Istio's node metadata fields of this workload (empty values left out)."""
        labels = {
            "app": self.app,
            "version": self.version,
            "service.istio.io/canonical-name": self.canonical_service,
            "service.istio.io/canonical-revision": self.canonical_revision,
        }
        fields: dict[str, str | dict[str, str]] = {
            "NAME": self.instance,
            "NAMESPACE": self.namespace,
            "WORKLOAD_NAME": self.workload,
            "SERVICE_ACCOUNT": self.service_account,
            "CLUSTER_ID": self.cluster,
        }
        fields = {k: v for k, v in fields.items() if v}
        labels = {k: v for k, v in labels.items() if v and v != UNKNOWN}
        if labels:
            fields["LABELS"] = labels
        return fields


def first_label(labels: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return None


# --------------------------------------------------------------------------- encoding


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_struct(fields: Mapping[str, str | Mapping[str, str]]) -> bytes:
    """A ``google.protobuf.Struct`` of strings and Structs of strings, in protobuf's binary
    encoding (map entries in key order, as protobuf's deterministic serialisation writes them)."""
    out = bytearray()
    for key in sorted(fields):
        value = fields[key]
        if isinstance(value, str):
            encoded = _field(3, value.encode("utf-8"))  # Value.string_value
        else:
            encoded = _field(5, encode_struct(value))  # Value.struct_value
        out += _field(1, _field(1, key.encode("utf-8")) + _field(2, encoded))
    return bytes(out)


def encode(metadata: PeerMetadata) -> str:
    """The ``x-envoy-peer-metadata`` value of ``metadata``."""
    return base64.b64encode(encode_struct(metadata.struct())).decode("ascii")


def node_id(metadata: PeerMetadata) -> str:
    """The ``x-envoy-peer-metadata-id`` value: Istio's sidecar node id."""
    namespace = metadata.namespace or "default"
    return f"sidecar~0.0.0.0~{metadata.instance}.{namespace}~{namespace}.{CLUSTER_DOMAIN}"


# --------------------------------------------------------------------------- decoding


class _MalformedError(Exception):
    pass


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _MalformedError
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, bytes | None]]:
    """The fields of one message: ``(number, payload)``, payload None for a non-length one."""
    found: list[tuple[int, bytes | None]] = []
    at = 0
    end = len(data)
    while at < end:
        tag, at = _read_varint(data, at)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _MalformedError
        if wire == 0:
            _, at = _read_varint(data, at)
            found.append((number, None))
        elif wire == 1:
            at += 8
            found.append((number, None))
        elif wire == 5:
            at += 4
            found.append((number, None))
        elif wire == 2:
            size, at = _read_varint(data, at)
            if at + size > end:
                raise _MalformedError
            found.append((number, data[at : at + size]))
            at += size
        else:
            raise _MalformedError
        if at > end:
            raise _MalformedError
    return found


def decode_struct(data: bytes, depth: int = 0) -> dict[str, str | dict[str, str]]:
    """A Struct's string fields and (one level down) Structs of strings; values of other kinds
    are skipped. Raises ``ValueError`` when ``data`` is not a well-formed Struct."""
    try:
        return _decode_struct(data, depth)
    except (_MalformedError, UnicodeDecodeError) as exc:
        raise ValueError("not a well-formed google.protobuf.Struct") from exc


def _decode_struct(data: bytes, depth: int) -> dict[str, str | dict[str, str]]:
    out: dict[str, str | dict[str, str]] = {}
    for number, entry in _fields(data):
        if number != 1 or entry is None:
            continue
        key: str | None = None
        value: str | dict[str, str] | None = None
        for part, payload in _fields(entry):
            if payload is None:
                continue
            if part == 1:
                key = payload.decode("utf-8")
            elif part == 2:
                value = _decode_value(payload, depth)
        if key is not None and value is not None:
            out[key] = value
    return out


def _decode_value(data: bytes, depth: int) -> str | dict[str, str] | None:
    value: str | dict[str, str] | None = None
    for kind, payload in _fields(data):
        if payload is None:
            continue
        if kind == 3:
            value = payload.decode("utf-8")
        elif kind == 5 and depth == 0:
            inner = _decode_struct(payload, depth + 1)
            value = {k: v for k, v in inner.items() if isinstance(v, str)}
    return value


def parse(value: str) -> PeerMetadata | None:
    """The metadata of an ``x-envoy-peer-metadata`` value, or None when it is not one (too long,
    not base64, not a Struct, nothing in it)."""
    if not value or len(value) > MAX_HEADER or not value.isascii():
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        fields = decode_struct(raw)
    except (binascii.Error, ValueError):
        return None
    metadata = PeerMetadata.of_struct(fields)
    if metadata == _EMPTY:
        return None
    return metadata


_EMPTY: Final = PeerMetadata()
_DECODED: dict[str, PeerMetadata | None] = {}
_DECODED_LIMIT: Final = 1024


def decode(value: str) -> PeerMetadata | None:
    """``parse``, remembered by value (the same object for the same header value)."""
    known = _DECODED.get(value, _EMPTY)
    if known is not _EMPTY:
        return known
    found = parse(value)
    if len(_DECODED) >= _DECODED_LIMIT:
        _DECODED.clear()
    _DECODED[value] = found
    return found


# --------------------------------------------------------------------------- binding


_refused = 0
_refused_lock = threading.Lock()
_logged: set[tuple[str, str, str]] = set()


def refused_claims() -> int:
    """How many requests carried metadata that claimed another identity than their certificate
    (and whose metadata was therefore ignored)."""
    return _refused


def principal_parts(principal: str) -> tuple[str, str] | None:
    """``(namespace, service account)`` of an Istio principal (``<td>/ns/<ns>/sa/<sa>``)."""
    parts = principal.split("/")
    if len(parts) >= 5 and parts[-4] == "ns" and parts[-2] == "sa":
        return parts[-3], parts[-1]
    return None


def bind(metadata: PeerMetadata | None, principal: str | None) -> PeerMetadata | None:
    """The caller's metadata as far as its verified identity allows: without one, as sent; with
    one, as sent unless it claims another namespace or service account than the certificate's
    (then None: counted, logged once per claim)."""
    if metadata is None or principal is None:
        return metadata
    parts = principal_parts(principal)
    if parts is None:
        return metadata
    namespace, account = parts
    claimed_ns, claimed_sa = metadata.namespace, metadata.service_account
    if (not claimed_ns or claimed_ns == namespace) and (not claimed_sa or claimed_sa == account):
        return metadata
    global _refused  # noqa: PLW0603 - one process-wide tally
    with _refused_lock:
        _refused += 1
        key = (principal, claimed_ns, claimed_sa)
        first = key not in _logged and len(_logged) < 1024
        if first:
            _logged.add(key)
    if first:
        log.warning(
            "inbound peer %s sent metadata claiming namespace %r and service account %r: "
            "ignored (a peer cannot claim another's name)",
            principal,
            claimed_ns,
            claimed_sa,
        )
    return None


# --------------------------------------------------------------------------- this workload


@dataclass(frozen=True, slots=True)
class Stamp:
    """This workload's metadata headers, ready to send."""

    metadata: PeerMetadata
    id_value: str
    value: str
    #: as httpx keeps headers: (name, lowercase name, value), bytes
    entries: tuple[tuple[bytes, bytes, bytes], ...]
    #: as ASGI sends them
    pairs: tuple[tuple[bytes, bytes], ...]


def stamp_for(service: ServiceInfo) -> Stamp:
    metadata = PeerMetadata.of_service(service)
    id_value, value = node_id(metadata), encode(metadata)
    # a name or label outside ASCII cannot go in a header as it is: it is left out
    id_bytes = id_value.encode("ascii", "replace")
    value_bytes = value.encode("ascii")
    return Stamp(
        metadata,
        id_value,
        value,
        (
            (PEER_METADATA_ID.encode(), PEER_METADATA_ID.encode(), id_bytes),
            (PEER_METADATA.encode(), PEER_METADATA.encode(), value_bytes),
        ),
        ((PEER_METADATA_ID.encode(), id_bytes), (PEER_METADATA.encode(), value_bytes)),
    )


_STAMPS: weakref.WeakKeyDictionary[Mesh, tuple[MeshConfig, Stamp]] = weakref.WeakKeyDictionary()


def stamp_of(mesh: Mesh) -> Stamp:
    """This workload's metadata headers for ``mesh``'s config in force (built once per config)."""
    global _last  # noqa: PLW0603 - a one-entry cache in front of the per-mesh one
    config = mesh.config
    last = _last
    if last[0] is config:
        return last[1]
    known = _STAMPS.get(mesh)
    if known is not None and known[0] is config:
        stamp = known[1]
    else:
        stamp = stamp_for(config.service)
        _STAMPS[mesh] = (config, stamp)
    _last = (config, stamp)
    return stamp


_last: tuple[object, Stamp] = (None, stamp_for(ServiceInfo()))

_TEXTS: dict[int, tuple[object, list[tuple[str, str]]]] = {}


def stamp_text(entries: Sequence[tuple[bytes, bytes, bytes]]) -> list[tuple[str, str]]:
    """A stamp's ``entries`` as ``(name, value)`` text, for a client whose headers are text;
    decoded once per stamp (a mesh keeps one per config)."""
    found = _TEXTS.get(id(entries))
    if found is not None and found[0] is entries:
        return found[1]
    pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, _, value in entries]
    if len(_TEXTS) >= 64:
        _TEXTS.clear()
    _TEXTS[id(entries)] = (entries, pairs)
    return pairs


__all__ = [
    "MAX_HEADER",
    "PEER_HEADERS",
    "PEER_KEYS",
    "PEER_METADATA",
    "PEER_METADATA_ID",
    "PeerMetadata",
    "Stamp",
    "bind",
    "decode",
    "decode_struct",
    "encode",
    "encode_struct",
    "node_id",
    "parse",
    "principal_parts",
    "refused_claims",
    "stamp_for",
    "stamp_of",
    "stamp_text",
]
