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
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshlib import ConfigError
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
