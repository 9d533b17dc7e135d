"""Config files → validated resources, every problem named by file, line and field path.

A load is all-or-nothing: ``load_config`` either returns a whole ``MeshConfig`` or raises one
``ConfigError`` listing every error it found (warnings ride along on the returned config).
"""

from __future__ import annotations

import difflib
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from meshlib.config import model as m
from meshlib.config import validation
from meshlib.config.source import Document, Path, format_path, parse_yaml
from meshlib.errors import ConfigError, Problem, Severity

ISTIO_NETWORKING = "networking.istio.io"
ISTIO_VERSIONS = ("v1alpha3", "v1beta1", "v1")
MESHLIB_API = "meshlib.dev/v1"

#: Istio kinds that meshlib loads and keeps, but that have no meaning inside one process.
NOT_APPLICABLE: dict[str, frozenset[str]] = {
    ISTIO_NETWORKING: frozenset(
        {"Gateway", "Sidecar", "WorkloadEntry", "WorkloadGroup", "EnvoyFilter", "ProxyConfig"}
    ),
    "security.istio.io": frozenset(
        {"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"}
    ),
    "telemetry.istio.io": frozenset({"Telemetry"}),
    "extensions.istio.io": frozenset({"WasmPlugin"}),
}
ROUTING_KINDS = frozenset({"VirtualService", "DestinationRule", "ServiceEntry"})
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class Resource:
    """One validated resource. ``spec`` is None for kinds not applicable in-process."""

    api_version: str
    kind: str
    name: str
    namespace: str
    spec: m.Model | None
    document: Document = field(repr=False, compare=False)

    @property
    def file(self) -> str:
        return self.document.file

    @property
    def line(self) -> int:
        return self.document.line

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def line_of(self, *path: str | int) -> int:
        return self.document.line_of(("spec", *path))

    def problem(self, path: Path, message: str, severity: Severity = "warning") -> Problem:
        full: Path = ("spec", *path)
        return Problem(self.file, self.document.line_of(full), format_path(full), message, severity)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """This service's identity, from its ``kind: Service`` document (or defaults)."""

    name: str = "unknown"
    namespace: str = DEFAULT_NAMESPACE
    version: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    propagate_headers: tuple[str, ...] = ()
    registry: dict[str, tuple[m.Endpoint, ...]] = field(default_factory=dict)
    registry_file: str | None = None
    registry_refresh: float = 1.0
    outbound_mode: str = "ALLOW_ANY"
    circuit_breakers: m.CircuitBreakers | None = None
    telemetry: m.TelemetrySettings | None = None


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """A whole, validated config: this service, its resources (last definition wins), warnings."""

    service: ServiceInfo
    resources: tuple[Resource, ...]
    warnings: tuple[Problem, ...]
    files: tuple[str, ...]

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r.kind == kind]


def load_config(paths: Sequence[str | os.PathLike[str]]) -> MeshConfig:
    """Load, validate and merge config files. Raises ``ConfigError`` listing every error found."""
    loader = _Loader()
    for path in paths:
        loader.load_file(os.fspath(path), included_from=None)
    return loader.finish()


def load_texts(texts: Iterable[tuple[str, str]], *, names_are_paths: bool = False) -> MeshConfig:
    """Like ``load_config``, from ``(name, yaml_text)`` pairs. Includes resolve relative to the
    current directory, or with ``names_are_paths`` (each text was read from the file it names)
    relative to that file's folder, as ``load_config`` resolves them."""
    loader = _Loader()
    for name, text in texts:
        base_dir = (os.path.dirname(name) or ".") if names_are_paths else os.getcwd()
        loader.load_text(text, name, base_dir=base_dir)
    return loader.finish()


class _Loader:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.resources: list[Resource] = []
        self.service_docs: list[tuple[Document, m.Service, m.Metadata]] = []
        self.seen_files: set[str] = set()
        self.files: list[str] = []

    # ------------------------------------------------------------------ reading

    def load_file(self, path: str, included_from: Problem | None) -> None:
        real = os.path.realpath(path)
        if real in self.seen_files:
            return
        self.seen_files.add(real)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            where = included_from or Problem(path, 0, "", "")
            reason = exc.strerror or str(exc)
            self.problems.append(
                Problem(where.file, where.line, where.path, f"cannot read {path}: {reason}")
            )
            return
        except UnicodeDecodeError as exc:
            self.problems.append(Problem(path, 1, "", f"not UTF-8 text: {exc.reason}"))
            return
        self.load_text(text, path, base_dir=os.path.dirname(path) or ".")

    def load_text(self, text: str, name: str, base_dir: str) -> None:
        self.files.append(name)
        documents, problems = parse_yaml(text, name)
        self.problems.extend(problems)
        for document in documents:
            self.load_document(document, base_dir)

    def load_document(self, doc: Document, base_dir: str) -> None:
        data = doc.data
        if not isinstance(data, dict):
            self.error(doc, (), "a document must be a mapping with apiVersion, kind and metadata")
            return
        api_version, kind = data.get("apiVersion"), data.get("kind")
        if not isinstance(api_version, str) or not api_version:
            self.error(doc, ("apiVersion",), "required: e.g. networking.istio.io/v1")
            return
        if not isinstance(kind, str) or not kind:
            self.error(doc, ("kind",), "required: e.g. VirtualService")
            return
        group, _, version = api_version.rpartition("/")
        if api_version == MESHLIB_API:
            if kind != "Service":
                self.error(doc, ("kind",), f"{MESHLIB_API} has one kind, Service (not {kind!r})")
                return
        elif group == ISTIO_NETWORKING and kind in ROUTING_KINDS:
            if version not in ISTIO_VERSIONS:
                self.error(
                    doc,
                    ("apiVersion",),
                    f"unknown version {version!r} of {group} (use one of "
                    f"{', '.join(ISTIO_VERSIONS)})",
                )
                return
        elif group in NOT_APPLICABLE:
            if kind not in NOT_APPLICABLE[group] and kind not in ROUTING_KINDS:
                known = sorted(
                    NOT_APPLICABLE[group] | (ROUTING_KINDS if group == ISTIO_NETWORKING else set())
                )
                self.error(
                    doc, ("kind",), f"unknown kind {kind!r} of {group}{_suggest(kind, known)}"
                )
                return
            if kind in ROUTING_KINDS:
                self.error(
                    doc, ("apiVersion",), f"{kind} belongs to {ISTIO_NETWORKING}, not {group}"
                )
                return
        else:
            self.error(
                doc,
                ("apiVersion",),
                f"{api_version!r} {kind} is not a mesh resource (expected {MESHLIB_API} Service or "
                f"an Istio resource such as {ISTIO_NETWORKING}/v1 VirtualService)",
            )
            return

        applicable = api_version == MESHLIB_API or kind in ROUTING_KINDS
        allowed_top = {"apiVersion", "kind", "metadata", "spec", "status"}
        for key in data:
            if key not in allowed_top:
                self.error(doc, (key,), f"unknown field{_suggest(key, sorted(allowed_top))}")
        metadata = self.validate(doc, ("metadata",), m.Metadata, data.get("metadata"))
        spec_data = data.get("spec")
        if applicable and spec_data is None:
            spec_data = {} if kind == "Service" else None
            if spec_data is None:
                self.error(doc, ("spec",), "required field is missing")
                return
        spec: m.Model | None = None
        if applicable:
            spec = self.validate(doc, ("spec",), m.SPEC_MODELS[kind], spec_data)
            if spec is None:
                return
        if metadata is None:
            return
        if spec is not None:
            for finding in validation.check(kind, spec, metadata):
                self.problems.append(
                    Problem(
                        doc.file,
                        doc.line_of(finding.path),
                        format_path(finding.path),
                        finding.message,
                        finding.severity,
                    )
                )
        if isinstance(spec, m.Service):
            self.service_docs.append((doc, spec, metadata))
            for i, pattern in enumerate(spec.include or ()):
                self.include(doc, ("spec", "include", i), pattern, base_dir)
        resource = Resource(
            api_version=api_version,
            kind=kind,
            name=metadata.name,
            namespace=metadata.namespace or "",
            spec=spec,
            document=doc,
        )
        self.resources.append(resource)

    def include(self, doc: Document, path: Path, pattern: str, base_dir: str) -> None:
        full = pattern if os.path.isabs(pattern) else os.path.join(base_dir, pattern)
        matches = sorted(glob.glob(full))
        where = Problem(doc.file, doc.line_of(path), format_path(path), "")
        if not matches:
            if glob.has_magic(pattern):
                self.problems.append(
                    Problem(
                        where.file,
                        where.line,
                        where.path,
                        f"{pattern!r} matches no file",
                        "warning",
                    )
                )
            else:
                self.problems.append(
                    Problem(where.file, where.line, where.path, f"included file {full} not found")
                )
            return
        for match in matches:
            self.load_file(match, included_from=where)

    # ------------------------------------------------------------------ validation

    def validate(self, doc: Document, base: Path, model: type[Any], value: Any) -> Any:
        if value is None:
            self.error(doc, base, "required field is missing")
            return None
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                # a dict key's own error ends in "[key]": the key itself is the place
                loc = (*base, *(part for part in err["loc"] if part != "[key]"))
                self.problems.append(
                    Problem(doc.file, doc.line_of(loc), format_path(loc), _message(err, loc))
                )
            return None

    def error(self, doc: Document, path: Path, message: str) -> None:
        self.problems.append(Problem(doc.file, doc.line_of(path), format_path(path), message))

    # ------------------------------------------------------------------ result

    def finish(self) -> MeshConfig:
        errors = [p for p in self.problems if p.severity == "error"]
        warnings = [p for p in self.problems if p.severity == "warning"]
        if len(self.service_docs) > 1:
            first = self.service_docs[0][0]
            for doc, _, _ in self.service_docs[1:]:
                errors.append(
                    Problem(
                        doc.file,
                        doc.line,
                        "kind",
                        f"a second Service document (the first is "
                        f"at {first.file}:{first.line}): a config describes one service",
                    )
                )
        if errors:
            first_seen: dict[str, int] = {}
            for problem in errors:
                first_seen.setdefault(problem.file, len(first_seen))
            errors.sort(key=lambda p: (first_seen[p.file], p.line))  # file order, as documented
            raise ConfigError(errors)
        service = _service_info(self.service_docs[0] if self.service_docs else None)
        by_key: dict[tuple[str, str, str], Resource] = {}
        for loaded in self.resources:
            resource = loaded if loaded.namespace else replace(loaded, namespace=service.namespace)
            earlier = by_key.pop(resource.key, None)
            if earlier is not None:
                warnings.append(
                    Problem(
                        resource.file,
                        resource.document.line_of(("metadata", "name")),
                        "metadata.name",
                        f"{resource.kind} {resource.namespace}/{resource.name} replaces the one "
                        f"at {earlier.file}:{earlier.line}",
                        "warning",
                    )
                )
            by_key[resource.key] = resource
        resources = list(by_key.values())
        return MeshConfig(service, tuple(resources), tuple(warnings), tuple(self.files))


def _service_info(entry: tuple[Document, m.Service, m.Metadata] | None) -> ServiceInfo:
    if entry is None:
        return ServiceInfo()
    doc, spec, metadata = entry
    labels = dict(spec.labels or {})
    labels.setdefault("app", metadata.name)
    if spec.version:
        labels.setdefault("version", spec.version)
    registry = {
        name: tuple(endpoints)
        for name, endpoints in ((spec.registry and spec.registry.static) or {}).items()
    }
    outbound = spec.outbound_traffic_policy
    source = spec.registry.file if spec.registry else None
    registry_file = None
    if source is not None:
        registry_file = source.path
        if not os.path.isabs(registry_file):
            registry_file = os.path.join(os.path.dirname(doc.file) or ".", registry_file)
    return ServiceInfo(
        name=metadata.name,
        namespace=metadata.namespace or DEFAULT_NAMESPACE,
        version=spec.version,
        labels=labels,
        propagate_headers=tuple(h.lower() for h in spec.propagate_headers or ()),
        registry=registry,
        registry_file=registry_file,
        registry_refresh=(source.refresh_interval or 1.0) if source else 1.0,
        outbound_mode=outbound.mode if outbound else "ALLOW_ANY",
        circuit_breakers=spec.circuit_breakers,
        telemetry=spec.telemetry,
    )


# --------------------------------------------------------------------------- messages

_VOCABULARY: list[str] | None = None


def _vocabulary() -> list[str]:
    """Every Istio/meshlib field name meshlib knows, for "did you mean" suggestions."""
    global _VOCABULARY  # noqa: PLW0603 - computed once, read-only afterwards
    if _VOCABULARY is None:
        names: set[str] = set()
        for obj in vars(m).values():
            if isinstance(obj, type) and issubclass(obj, m.Model) and obj is not m.Model:
                for name, info in obj.model_fields.items():
                    names.add(info.alias or name)
        _VOCABULARY = sorted(names)
    return _VOCABULARY


def _suggest(word: str, choices: Sequence[str]) -> str:
    others = [choice for choice in choices if choice != word]
    close = difflib.get_close_matches(word, others, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _message(err: Any, loc: Path) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return f"unknown field{_suggest(str(loc[-1]), _vocabulary())}"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, not {_show(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, not {_show(value)}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"])


def _show(value: Any) -> str:
    text = repr(value)
    if isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    return text if len(text) <= 40 else text[:37] + "..."
