"""Every link between the project's own documents resolves: ``[text](file.md#anchor)`` in
README.md, CHANGELOG.md and docs/ names a file of the repository and, with an anchor, a heading
of that file (the anchor GitHub makes of it); ``[text](#anchor)`` a heading of the same file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")])

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _prose(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as shown (links, ``*`` emphasis and code marks
    dropped), lowercased, with every character but letters, digits, ``_``, ``-`` and spaces
    removed and each space a hyphen."""
    shown = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    shown = re.sub(r"<[^>]+>", "", shown).replace("`", "")
    shown = shown.replace("*", "")
    return re.sub(r"[^\w\- ]", "", shown.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link can point at in the Markdown file ``path``."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")  # GitHub numbers repeats
    return found


def links(path: Path) -> list[str]:
    """The targets of the links in ``path``'s prose (not in code) that stay in the repository."""
    targets = []
    for line in _prose(path.read_text(encoding="utf-8")):
        reference = _REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        targets.extend(_LINK.findall(_INLINE_CODE.sub("", line)))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:...


def broken(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        goal = (path.parent / file_part).resolve() if file_part else path
        if not goal.exists():
            problems.append(f"{target}: no file {file_part}")
            continue
        if anchor and goal.suffix == ".md" and anchor not in anchors(goal):
            where = os.path.relpath(goal, path.parent)
            problems.append(f"{target}: no heading #{anchor} in {where}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_in_the_docs_resolves(document: Path) -> None:
    assert broken(document) == []


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text(
        "# Other\n\n## Importing `meshlib` (the cost)\n\n## Notes\n\n## Notes\n", encoding="utf-8"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "# Page: one *two*\n\n"
        "[ok](other.md#importing-meshlib-the-cost) [ok](other.md#notes-1) [ok](#page-one-two)\n"
        "[gone](other.md#importing-meshlib) [gone](#nowhere) [gone](missing.md)\n"
        "[out](https://example.com/x.md#y) `[code](missing.md)`\n"
        "```\n[in a block](missing.md)\n```\n"
        "[ref]: other.md#notes-2\n",
        encoding="utf-8",
    )
    assert broken(page) == [
        "other.md#importing-meshlib: no heading #importing-meshlib in other.md",
        "#nowhere: no heading #nowhere in page.md",
        "missing.md: no file missing.md",
        "other.md#notes-2: no heading #notes-2 in other.md",
    ]
