"""Istio's own CRD test data for its security kinds (istio/istio
``pkg/config/validation/testdata/crds/crd-{authz,peerauth,reqauth}-{valid,invalid}.yaml``), read
unmodified through the ``istio_security_dir`` fixture: every document Istio's schema accepts
loads, and every one it rejects is a ``ConfigError`` that names the file and a line of that
document.

Each document is loaded alone, as Istio's test applies them one by one. It is cut out of its
file with blank lines in place of the file's other lines, so the lines meshlib names are the
file's own. An invalid document's ``_err:`` line (the error Istio expects, not part of the
resource) is blanked the same way; what Istio expected is shown when meshlib disagrees.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshlib import ConfigError
from meshlib.config import security as s
from meshlib.config.lint import lint
from meshlib.config.load import load_texts

KINDS = ("authz", "peerauth", "reqauth")
_SEPARATOR = re.compile(r"---\s*(#.*)?")
_EXPECTED = re.compile(r"_err:\s*(.*)")


@dataclass(frozen=True)
class Document:
    """One document of a multi-document file: its lines (first and last, 1-based), its text
    padded to keep the file's line numbers, and the error Istio expects (``_err``), if any."""

    first: int
    last: int
    text: str
    expected: str | None


def documents(path: Path) -> list[Document]:
    """The documents of ``path`` that hold a resource (not only comments or blank lines)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Document] = []
    start = 0
    for end in [*(i for i, line in enumerate(lines) if _SEPARATOR.fullmatch(line)), len(lines)]:
        own = lines[start:end]
        expected = None
        kept: list[str] = []
        for line in own:
            match = _EXPECTED.fullmatch(line)
            if match:
                expected = _unquote(match.group(1).strip())
            kept.append("" if match else line)
        body = [i for i, line in enumerate(kept) if line.strip() and not line.startswith("#")]
        if body:
            text = "\n" * start + "\n".join(kept) + "\n"
            found.append(Document(start + body[0] + 1, start + body[-1] + 1, text, expected))
        start = end + 1
    return found


def _unquote(text: str) -> str:
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    return text[1:-1] if quoted else text


def _name_of(document: Document) -> str:
    match = re.search(r"^  name: (.+)$", document.text, re.MULTILINE)
    return match.group(1) if match else f"line {document.first}"


@pytest.mark.parametrize("kind", KINDS)
def test_valid_documents_load(istio_security_dir: Path, kind: str) -> None:
    path = istio_security_dir / f"crd-{kind}-valid.yaml"
    docs = documents(path)
    assert docs, f"{path}: no documents"
    failures: list[str] = []
    for document in docs:
        try:
            config = load_texts([(str(path), document.text)])
        except ConfigError as exc:
            failures.append(f"{_name_of(document)} (line {document.first}): {exc}")
            continue
        assert len(config.resources) == 1
    assert not failures, "Istio accepts these, meshlib refused:\n" + "\n".join(failures)


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_documents_are_config_errors(istio_security_dir: Path, kind: str) -> None:
    path = istio_security_dir / f"crd-{kind}-invalid.yaml"
    docs = documents(path)
    assert docs, f"{path}: no documents"
    failures: list[str] = []
    for document in docs:
        name = _name_of(document)
        try:
            load_texts([(str(path), document.text)])
        except ConfigError as exc:
            for problem in exc.problems:
                if problem.file != str(path) or not document.first <= problem.line <= document.last:
                    failures.append(
                        f"{name}: {problem} is not at a line of the document "
                        f"({path}:{document.first}-{document.last})"
                    )
            continue
        failures.append(f"{name} (line {document.first}): loaded; Istio: {document.expected}")
    assert not failures, "Istio rejects these:\n" + "\n".join(failures)


def test_documents_keep_the_file_lines(tmp_path: Path) -> None:
    """The splitting itself: each document's text has its lines where the file has them."""
    path = tmp_path / "two.yaml"
    path.write_text(
        "# a comment\n"
        "_err: first\n"
        "apiVersion: security.istio.io/v1\n"
        "kind: PeerAuthentication\n"
        "---\n"
        "apiVersion: security.istio.io/v1\n"
        "kind: AuthorizationPolicy\n"
        "---\n"
        "# only a comment\n",
        encoding="utf-8",
    )
    first, second = documents(path)
    assert (first.first, first.last, first.expected) == (3, 4, "first")
    assert (second.first, second.last, second.expected) == (6, 7, None)
    assert second.text.splitlines()[6] == "kind: AuthorizationPolicy"
    assert "_err" not in first.text


# --------------------------------------------------------------------------- messages

BAD_POLICIES: list[tuple[str, str, str]] = [
    (
        "custom action",
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata:
          name: ext-authz
        spec:
          action: CUSTOM
          provider:
            name: my-authz
          rules:
          - {}
        """,
        "policy.yaml:6: spec.action: action CUSTOM delegates to an external authorizer, which "
        "meshlib does not support (it has no ext_authz client): use ALLOW, DENY or AUDIT",
    ),
    (
        "bad CIDR",
        """\
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata:
          name: by-ip
        spec:
          rules:
          - from:
            - source:
                ipBlocks: ["10.0.0.0/8", "10.1.0.0/33"]
        """,
        "policy.yaml:9: spec.rules[0].from[0].source.ipBlocks[1]: bad CIDR range (10.1.0.0/33)",
    ),
    (
        "unknown when key",
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata:
          name: by-header
        spec:
          rules:
          - when:
            - key: request.header[x-token]
              values: ["secret"]
        """,
        "policy.yaml:8: spec.rules[0].when[0].key: unknown attribute: request.header[x-token] "
        "(use one of connection.sni, destination.ip, destination.port, remote.ip, "
        "request.auth.audiences, request.auth.presenter, request.auth.principal, source.ip, "
        "source.namespace, source.principal, source.serviceAccount, source.trustDomain, "
        "request.headers[<name>], request.auth.claims[<name>], "
        "experimental.envoy.filters.<filter>[<name>])",
    ),
    (
        "port level mTLS without selector",
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata:
          name: default
          namespace: istio-system
        spec:
          mtls:
            mode: STRICT
          portLevelMtls:
            "8080":
              mode: DISABLE
        """,
        "policy.yaml:9: spec.portLevelMtls: portLevelMtls requires a selector with matchLabels: "
        "a mesh- or namespace-wide peer authentication cannot have port level mTLS",
    ),
    (
        "mTLS mode",
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata:
          name: default
        spec:
          mtls:
            mode: strict
        """,
        "policy.yaml:7: spec.mtls.mode: must be one of 'UNSET', 'DISABLE', 'PERMISSIVE' or "
        "'STRICT', not 'strict'",
    ),
    (
        "jwksUri scheme",
        """\
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata:
          name: jwt
        spec:
          jwtRules:
          - issuer: testing@secure.istio.io
            jwksUri: ftp://example.com/jwks.json
        """,
        "policy.yaml:8: spec.jwtRules[0].jwksUri: URI scheme 'ftp' is not supported: url must "
        "have scheme http:// or https://",
    ),
    (
        "claim header name",
        """\
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata:
          name: jwt
        spec:
          jwtRules:
          - issuer: testing@secure.istio.io
            jwks: '{"keys": []}'
            outputClaimToHeaders:
            - header: "x user"
              claim: sub
        """,
        "policy.yaml:10: spec.jwtRules[0].outputClaimToHeaders[0].header: header name 'x user' "
        "is not a valid header name (letters, digits, '-' and '_')",
    ),
    (
        "unknown version",
        """\
        apiVersion: security.istio.io/v1alpha1
        kind: AuthorizationPolicy
        metadata:
          name: old
        spec: {}
        """,
        "policy.yaml:1: apiVersion: unknown version 'v1alpha1' of security.istio.io (use one of "
        "v1beta1, v1)",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in BAD_POLICIES], ids=[c[0] for c in BAD_POLICIES]
)
def test_bad_policy_messages(text: str, message: str) -> None:
    """``file:line: path: message``, the whole text a user sees."""
    with pytest.raises(ConfigError) as caught:
        load_texts([("policy.yaml", textwrap.dedent(text))])
    assert str(caught.value).splitlines() == [message]


def test_security_kinds_load_with_or_without_spec() -> None:
    """A spec is optional, as in Istio: ``spec: {}`` and no spec are the same empty policy
    (for an AuthorizationPolicy, ALLOW with no rules: allow nothing)."""
    text = textwrap.dedent(
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: allow-nothing, namespace: default}
        spec: {}
        ---
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {name: no-spec, namespace: default}
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default, namespace: istio-system}
        ---
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: jwt, namespace: default}
        """
    )
    config = load_texts([("policies.yaml", text)])
    specs = {r.name: r.spec for r in config.resources}
    assert specs["allow-nothing"] == specs["no-spec"] == s.AuthorizationPolicy()
    assert specs["default"] == s.PeerAuthentication()
    assert specs["jwt"] == s.RequestAuthentication()
    assert config.warnings == ()


def test_lint_names_targets_meshlib_does_not_act_on() -> None:
    """A targetRef to a Gateway (or anything but a Service) selects no workload in-process."""
    text = textwrap.dedent(
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: at-the-gateway, namespace: default}
        spec:
          targetRefs:
          - group: gateway.networking.k8s.io
            kind: Gateway
            name: ingress
          - group: ""
            kind: Service
            name: reviews
          rules:
          - {}
        """
    )
    warnings = [str(p) for p in lint(load_texts([("policy.yaml", text)]))]
    assert warnings == [
        "policy.yaml:7: warning: spec.targetRefs[0].kind: meshlib applies AuthorizationPolicy "
        "targetRefs to Services only: a Gateway has no workload in-process, so this reference "
        "selects nothing"
    ]
