"""Config files → validated resources, every problem named by file, line and field path.

A load is all-or-nothing: ``load_config`` either returns a whole ``MeshConfig`` or raises one
``ConfigError`` listing every error it found (warnings ride along on the returned config).
"""

from __future__ import annotations

import difflib
import glob
import os
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from meshlib.config import model as m
from meshlib.config import security as _security  # noqa: F401 - its kinds join m.SPEC_MODELS
from meshlib.config import validation
from meshlib.config.source import Document, Path, format_path, last_key, parse_yaml
from meshlib.errors import ConfigError, Problem, Severity

ISTIO_NETWORKING = "networking.istio.io"
ISTIO_VERSIONS = ("v1alpha3", "v1beta1", "v1")
MESHLIB_API = "meshlib.dev/v1"

#: Istio kinds that meshlib loads and keeps, but that have no meaning inside one process.
NOT_APPLICABLE: dict[str, frozenset[str]] = {
    ISTIO_NETWORKING: frozenset(
        {"Gateway", "Sidecar", "WorkloadEntry", "WorkloadGroup", "EnvoyFilter", "ProxyConfig"}
    ),
    "telemetry.istio.io": frozenset({"Telemetry"}),
    "extensions.istio.io": frozenset({"WasmPlugin"}),
}
ROUTING_KINDS = frozenset({"VirtualService", "DestinationRule", "ServiceEntry"})
ISTIO_SECURITY = "security.istio.io"
SECURITY_VERSIONS = ("v1beta1", "v1")
#: Istio's security kinds: validated and kept (``meshlib.config.security``); a spec is optional.
SECURITY_KINDS = frozenset({"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"})
DEFAULT_NAMESPACE = "default"
#: Istio's defaults: the trust domain of workload identities, and the namespace whose policies
#: (PeerAuthentication, AuthorizationPolicy, RequestAuthentication) apply mesh-wide.
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_ROOT_NAMESPACE = "istio-system"


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
    #: The workload's service account (default: the service's name), its trust domain, and
    #: where its certificate comes from (``identity``, paths made absolute; None: no identity).
    service_account: str = "unknown"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    identity: m.IdentitySettings | None = None
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    #: ``spec.inbound`` and ``spec.admin`` (meshlib.server: the trust boundary, the admin token).
    inbound: m.InboundSettings | None = None
    admin: m.AdminSettings | None = None
    #: ``spec.store``: ``etcd://...`` as written, or ``file://<absolute path>`` (meshlib.store)
    store: str | None = None

    @property
    def spiffe_id(self) -> str:
        """``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


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
        documents, problems = parse_yaml(text, name, _misfits)
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
        elif group == ISTIO_SECURITY:
            if kind not in SECURITY_KINDS:
                known = sorted(SECURITY_KINDS)
                self.error(
                    doc, ("kind",), f"unknown kind {kind!r} of {group}{_suggest(kind, known)}"
                )
                return
            if version not in SECURITY_VERSIONS:
                self.error(
                    doc,
                    ("apiVersion",),
                    f"unknown version {version!r} of {group} (use one of "
                    f"{', '.join(SECURITY_VERSIONS)})",
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

        security = group == ISTIO_SECURITY  # a security kind: its spec is optional
        applicable = api_version == MESHLIB_API or kind in ROUTING_KINDS or security
        allowed_top = {"apiVersion", "kind", "metadata", "spec", "status"}
        for key in data:
            if key not in allowed_top:
                self.error(doc, (key,), _unknown_top_field(key, allowed_top, kind))
        metadata = self.validate(doc, ("metadata",), m.Metadata, data.get("metadata"))
        spec_data = data.get("spec")
        if applicable and spec_data is None:
            spec_data = {} if kind == "Service" or security else None
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
            rules = store_file(spec.store, base_dir)
            if rules is not None and os.path.exists(rules):
                where = Problem(doc.file, doc.line_of(("spec", "store")), "spec.store", "")
                self.load_file(rules, included_from=where)
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
                inner = tuple(part for part in err["loc"] if part != "[key]")
                loc = (*base, *inner)
                if err["type"] == "extra_forbidden":
                    message = _unknown_field(doc, base, model, inner)
                else:
                    message = _message(err, loc)
                self.problems.append(Problem(doc.file, doc.line_of(loc), format_path(loc), message))
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
    here = os.path.dirname(doc.file) or "."

    def beside(path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(here, path)

    registry_file = beside(source.path) if source is not None else None
    identity = spec.identity
    if identity is not None:
        identity = identity.model_copy(
            update={
                name: beside(value)
                for name in ("ca", "certificate", "private_key", "ca_certificates")
                if (value := getattr(identity, name)) is not None
            }
        )
    telemetry = spec.telemetry
    tracing = telemetry.tracing if telemetry is not None else None
    if telemetry is not None and tracing is not None and tracing.file is not None:
        tracing = tracing.model_copy(update={"file": beside(tracing.file)})
        telemetry = telemetry.model_copy(update={"tracing": tracing})
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
        telemetry=telemetry,
        service_account=spec.service_account or metadata.name,
        trust_domain=(identity.trust_domain if identity else None) or DEFAULT_TRUST_DOMAIN,
        identity=identity,
        root_namespace=spec.root_namespace or DEFAULT_ROOT_NAMESPACE,
        inbound=spec.inbound,
        admin=spec.admin,
        store=(
            f"file://{store_file(spec.store, here)}" if store_file(spec.store, here) else spec.store
        ),
    )


def store_file(store: str | None, base_dir: str) -> str | None:
    """The rules file of a ``file://`` store (relative to ``base_dir``), None for any other."""
    if store is None or not store.startswith("file://"):
        return None
    path = store.removeprefix("file://")
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


# --------------------------------------------------------------------------- messages


def _misfits(data: Any) -> int:
    """How many problems a parsed document has against its kind's schema: the judge that tells
    which mend of a YAML syntax error the author meant."""
    if not isinstance(data, dict):
        return 1
    top = {"apiVersion", "kind", "metadata", "spec", "status"}
    count = sum(1 for key in data if key not in top)
    model = m.SPEC_MODELS.get(str(data.get("kind")))
    spec = data.get("spec")
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        count += sum(1 for key in metadata if key in top)
    if model is not None and spec is None and model is not m.Service:
        count += data.get("kind") not in SECURITY_KINDS  # a security kind's spec is optional
    if model is not None and spec is not None:
        try:
            model.model_validate(spec)
        except ValidationError as exc:
            count += exc.error_count()
    return count


def _suggest(word: str, choices: Sequence[str]) -> str:
    others = [choice for choice in choices if choice != word]
    close = difflib.get_close_matches(word, others, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_top_field(key: str, allowed: set[str], kind: str) -> str:
    """An unknown top-level field: a typo of one, or a field of ``spec`` or ``metadata`` that
    lost its indentation."""
    close = _suggest(key, sorted(allowed))
    if close:
        return f"unknown field{close}"
    spec = m.SPEC_MODELS.get(kind)
    for parent, model in (("spec", spec), ("metadata", m.Metadata)):
        if model is not None and key in _fields(model):
            return f"unknown field at the top level: did you mean it under {parent!r}?"
    return "unknown field"


def _unknown_field(doc: Document, base: Path, model: type[Any], loc: Path) -> str:
    """What to say about an unknown field at ``loc`` (relative to ``model``, read at ``base``):
    a field of the same level it is a typo of, or the nearby level (a field's own fields, or
    the level above) where a field of that name exists: such a field lost or gained
    indentation."""
    key, where = str(loc[-1]), loc[:-1]
    level = last_key((*base, *where))
    here = _models(_walk(model, where))
    names = sorted({name for found in here for name in _fields(found)})
    # one level down: the fields of this level's fields
    under = [
        name
        for found in here
        for name, annotation in _fields(found).items()
        if any(key in _fields(child) for child in _models(_descend([annotation])))
    ]
    if under:
        choices = " or ".join(repr(name) for name in dict.fromkeys(under))
        message = f"unknown field at the level of {level}: did you mean it under {choices}?"
        value = _value_at(doc.data, (*base, *where))
        empty = [n for n in under if isinstance(value, dict) and n in value and value[n] is None]
        if empty:
            line = doc.line_of((*base, *where, empty[0]))
            message += f" ({empty[0]!r} on line {line} is empty: its fields go under it)"
        return message
    # one level up: the level holding this one
    if where:
        up = where
        while up and isinstance(up[-1], int):
            up = up[:-1]
        above = up[:-1]
        if any(key in _fields(found) for found in _models(_walk(model, above))):
            return (
                f"unknown field in {level}: did you mean it one level up, in "
                f"{last_key((*base, *above))} (beside {last_key((*base, *up))!r})?"
            )
    close = _suggest(key, names)
    return f"unknown field{close}"


def _value_at(data: Any, path: Path) -> Any:
    for part in path:
        fits = isinstance(data, dict) and part in data
        if not fits and not (isinstance(part, int) and isinstance(data, list) and part < len(data)):
            return None
        data = data[part]
    return data


def _fields(model: type[Any]) -> dict[str, Any]:
    """A model's YAML field names (Istio's camelCase) and their types."""
    return {info.alias or name: info.annotation for name, info in model.model_fields.items()}


def _flat(annotation: Any) -> list[Any]:
    """The types an annotation allows: unions and ``Annotated`` unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _flat(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in get_args(annotation) for t in _flat(arg)]
    return [annotation]


def _models(found: list[Any]) -> list[type[BaseModel]]:
    return [t for t in found if isinstance(t, type) and issubclass(t, BaseModel)]


def _descend(found: list[Any]) -> list[Any]:
    """The types under lists and map values: the level a field's own fields are at."""
    out: list[Any] = []
    for annotation in found:
        for flat in _flat(annotation):
            origin = get_origin(flat)
            if origin in (list, tuple, set, frozenset):
                out += _descend([get_args(flat)[0]])
            elif origin is dict:
                out += _descend([get_args(flat)[1]])
            else:
                out.append(flat)
    return out


def _walk(model: type[Any], path: Path) -> list[Any]:
    """The types at ``path`` under ``model`` (a list index or a map key steps into the list
    or the map)."""
    found: list[Any] = [model]
    for part in path:
        step: list[Any] = []
        for annotation in found:
            for flat in _flat(annotation):
                origin = get_origin(flat)
                if isinstance(part, int) and origin in (list, tuple):
                    step += _flat(get_args(flat)[0])
                elif isinstance(part, str) and origin is dict:
                    step += _flat(get_args(flat)[1])
                elif isinstance(part, str) and _models([flat]):
                    field = _fields(flat).get(part)
                    if field is not None:
                        step += _flat(field)
        found = step
    return found


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
