"""YAML text → plain Python documents, each with a map from field path to source line.

PyYAML's own loaders drop positions; meshlib walks the composed node tree instead, so every value
keeps the line it came from. Duplicate keys, which PyYAML silently collapses, are reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshlib.errors import Problem

Path = tuple[str | int, ...]

#: How many problems a parsed document has against its kind's schema (0: none). ``parse_yaml``
#: uses it to tell which of several ways to mend a YAML syntax error the author meant.
Judge = Callable[[Any], int]


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a config file, and where each of its fields was written."""

    file: str
    index: int
    data: Any
    lines: dict[Path, int] = field(repr=False)

    @property
    def line(self) -> int:
        """The line the document starts on."""
        return self.lines.get((), 1)

    def line_of(self, path: Path) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        lines = self.lines
        for end in range(len(path), -1, -1):
            found = lines.get(path[:end])
            if found is not None:
                return found
        return 1


class _Walker:
    """Turns composed YAML nodes into Python values while recording each path's line."""

    def __init__(self, file: str, constructor: yaml.constructor.SafeConstructor) -> None:
        self.file = file
        self.constructor = constructor
        self.lines: dict[Path, int] = {}
        self.problems: list[Problem] = []

    def value(self, node: yaml.Node, path: Path) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines.setdefault((*path, i), item.start_mark.line + 1)
                items.append(self.value(item, (*path, i)))
            return items
        return self.constructor.construct_object(node, deep=True)

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        self.constructor.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.constructor.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                key = str(key) if isinstance(key, (int, float, bool)) else repr(key)
            child = (*path, key)
            if key in out:
                self.problems.append(
                    Problem(
                        self.file, line, format_path(child), "duplicate key (first given above)"
                    )
                )
            self.lines[child] = line
            out[key] = self.value(value_node, child)
        return out


#: libyaml's parser when PyYAML was built with it (it is in PyYAML's wheels): the same nodes and
#: marks as the pure-Python one, about three times faster (a config reload under load). Its
#: error messages say less (not which character was wrong), so a text with a problem is parsed
#: again by the pure-Python parser for the report.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", None)


def parse_yaml(
    text: str, file: str, judge: Judge | None = None
) -> tuple[list[Document], list[Problem]]:
    """Parse multi-document YAML. Returns the documents and any problems (with lines).

    A syntax error is reported at the line that broke the structure, which is often above the
    line where the parser gave up (see ``diagnose``); ``judge`` helps choose between mends."""
    if _FAST_LOADER is not None:
        documents, problems = _parse(text, file, _FAST_LOADER, judge)
        if not problems:
            return documents, problems
    return _parse(text, file, yaml.SafeLoader, judge)


def _parse(
    text: str, file: str, loader_class: Any, judge: Judge | None = None
) -> tuple[list[Document], list[Problem]]:
    fast = loader_class is _FAST_LOADER
    documents: list[Document] = []
    problems: list[Problem] = []
    loader = loader_class(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node guarantees a node
                break
            walker = _Walker(file, loader)
            walker.lines[()] = node.start_mark.line + 1
            try:
                data = walker.value(node, ())
            except yaml.constructor.ConstructorError as exc:
                problems.append(_yaml_problem(exc, file))
                index += 1
                continue
            problems.extend(walker.problems)
            if (
                data is not None
            ):  # an empty document (`---` with nothing) is skipped, as kubectl does
                documents.append(Document(file, index, data, walker.lines))
            index += 1
    except yaml.YAMLError as exc:
        # the fast pass only says that there is a problem: the slow one explains it
        problems.append(_yaml_problem(exc, file) if fast else diagnose(text, exc, file, judge))
        # a document the parser ended early, at the broken line, is not what was written
        first, _ = _document_around(text.split("\n"), problems[-1].line)
        documents = [d for d in documents if d.line - 1 < first]
    finally:
        loader.dispose()
    return documents, problems


def _yaml_problem(exc: yaml.YAMLError, file: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {context + ', ' if context else ''}{problem}"
    return Problem(file, line, "", message)


# --------------------------------------------------------------------------- syntax errors
#
# PyYAML reports where its parser gave up, which is often a line or more below the one that broke
# the structure (a key indented too far or not far enough, a value with ": " in it, a tab). Each
# such mistake is one line to mend: diagnose tries the mends one line at a time (re-indent it to
# an indentation the lines around it use, add a missing ":", quote the value), parses the document
# again after each, and reports the line and the mend that make the document parse, preferring a
# mend whose result also fits the kind's schema (``judge``).

_WINDOW = 12  # how many lines above the parser's line a mistake may be
_AFTER = 40
_DOCUMENT_MARKER = re.compile(r"^(---|\.\.\.)(\s|$)")
_KEY_LINE = re.compile(
    r"^(?P<dash>(?:- +)*)(?P<key>[^\s#:'\"\[\]{}-][^:#]*?|\"[^\"]*\"|'[^']*')\s*:(\s|$)"
)
_BARE_WORD = re.compile(r"^(?P<dash>(?:- +)*)(?P<key>[A-Za-z_][\w.-]*)\s*$")
_VALUE_WITH_COLON = re.compile(
    r"^(?P<head>(?:- +)*[^\s#:'\"][^:#]*?:\s+)(?P<value>[^'\"\s{\[|>&*!].*?)\s*$"
)


@dataclass(frozen=True, slots=True)
class _Mend:
    line: int  # 1-based
    text: str  # the line as mended
    how: str  # "indent", "colon" or "quote"
    column: int = 0  # the new indentation, for "indent"


def diagnose(text: str, exc: yaml.YAMLError, file: str, judge: Judge | None = None) -> Problem:
    """The problem a YAML syntax error is: at the line to mend, with the field path and what to
    do there; PyYAML's own words, with what to check, when no one-line mend makes it parse."""
    fallback = _yaml_problem(exc, file)
    lines = text.split("\n")
    failed = fallback.line
    context = getattr(exc, "context", None) or ""
    opened = getattr(exc, "context_mark", None)
    flow = context.startswith("while parsing a flow")
    if flow and opened is not None and opened.line + 1 < failed:
        # a [ or { left open: the parser notices it lines later
        bracket, close = ("[", "]") if "sequence" in context else ("{", "}")
        return Problem(
            file,
            opened.line + 1,
            _path_at(text, opened.line + 1, opened.column),
            f"invalid YAML: the {bracket!r} on this line is not closed: end it with "
            f"{close!r} (the parser reached line {failed} without finding one)",
        )
    first, last = _document_around(lines, failed)
    # a mend that gets the parser _AFTER lines past where it stopped is as good as one that gets
    # it to the end of a long document: the lines beyond take no part (and cost no time)
    last = min(last, failed + _AFTER)
    mends = [m for m in _mends(lines, failed, first, exc) if first <= m.line <= last]
    best: tuple[tuple[int, ...], _Mend, str] | None = None
    for mend in mends:
        trial = [""] * first + lines[first:last]  # blank lines keep the numbering
        trial[mend.line - 1] = mend.text
        scored = _score(lines, mend, trial, failed, judge)
        if scored is not None and (best is None or scored[0] < best[0]):
            best = (scored[0], mend, scored[1])
    if best is None:
        return Problem(file, failed, _path_at(text, failed), _hint(fallback.message, exc))
    _, mend, parsed = best
    return _explain(file, lines, mend, parsed)


def _document_around(lines: list[str], line: int) -> tuple[int, int]:
    """The 0-based bounds [first, last) of the YAML document holding 1-based ``line``."""
    first = 0
    for i in range(min(line, len(lines)) - 1, -1, -1):
        if _DOCUMENT_MARKER.match(lines[i]):
            first = i
            break
    last = len(lines)
    for i in range(max(line, first + 1), len(lines)):
        if _DOCUMENT_MARKER.match(lines[i]):
            last = i
            break
    return first, last


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _key_indent(line: str) -> int:
    """The column of a line's first key: after the dashes of ``- - key:``."""
    body = line.lstrip(" ")
    found = _KEY_LINE.match(body)
    return _indent(line) + (len(found.group("dash")) if found else 0)


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#") and not _DOCUMENT_MARKER.match(line)


def _mends(lines: list[str], failed: int, first: int, exc: yaml.YAMLError) -> list[_Mend]:
    out: list[_Mend] = []
    start = max(first, failed - 1 - _WINDOW)
    for index in range(min(failed, len(lines)) - 1, start - 1, -1):
        line = lines[index].rstrip("\r")
        if not _content(line):
            continue
        body = line.lstrip(" \t")
        here = _indent(line)
        nearby = {
            _indent(other)
            for other in lines[max(first, index - 2 * _WINDOW) : index + 4]
            if _content(other) and "\t" not in other[: _indent(other)]
        }
        keys = {
            _indent(other) + len(found.group("dash"))
            for other in lines[max(first, index - 2 * _WINDOW) : index + 4]
            if (found := _KEY_LINE.match(other.lstrip(" "))) is not None and found.group("dash")
        }
        above = next((o for o in reversed(lines[first:index]) if _content(o)), None)
        under = {_key_indent(above) + 2} if above is not None else set()
        for column in sorted(nearby | keys | under | {0}):
            if column != here or "\t" in line[:here]:
                out.append(_Mend(index + 1, " " * column + body, "indent", column))
        word = _BARE_WORD.match(body)
        if word is not None:
            out.append(_Mend(index + 1, line.rstrip() + ":", "colon"))
    problem = getattr(exc, "problem", None) or ""
    if problem.startswith("mapping values are not allowed") and failed <= len(lines):
        line = lines[failed - 1].rstrip("\r")
        found = _VALUE_WITH_COLON.match(line.lstrip(" "))
        if found is not None:
            value = found.group("value").replace("\\", "\\\\").replace('"', '\\"')
            quoted = " " * _indent(line) + found.group("head") + f'"{value}"'
            out.append(_Mend(failed, quoted, "quote"))
    return out


def _score(
    lines: list[str], mend: _Mend, trial: list[str], failed: int, judge: Judge | None
) -> tuple[tuple[int, ...], str] | None:
    """How likely the mend is what the author meant (lower is likelier), and the text it was
    judged on; None: the parser still stops at or before the line it stopped at.

    A mend that makes the document parse is judged on the whole of it; one that only gets the
    parser further (the document has a second mistake) on the lines before the next stop."""
    text = "\n".join(trial)
    stopped = _first_error(text)
    partial = 0
    if stopped is not None:
        if stopped <= failed:
            return None
        text = "\n".join(trial[: stopped - 1])
        partial = 1
    documents = _documents(text)
    if documents is None:
        return None
    starts = {line for document in documents for line in document.lines.values()}
    if mend.how == "indent" and mend.line not in starts:
        return None  # the line became part of the value above it: not a mend
    if failed <= len(lines) and _content(lines[failed - 1]) and failed not in starts:
        return None  # the line the parser stopped at is still not a key or an item
    misfits = sum(judge(d.data) for d in documents) if judge is not None else 0
    if mend.how != "indent":
        return (partial, misfits, 0, 0, 0, 0, 0, failed - mend.line, 1), text
    original = lines[mend.line - 1]
    here = _indent(original)
    mended = list(lines)
    mended[mend.line - 1] = mend.text
    # the indentation step the file uses elsewhere, and how far the mended block strays from it
    astray = _astray(mended, documents, mend.line)
    # a line whose indentation no line near it uses is the likelier culprit
    near = lines[max(0, mend.line - 7) : mend.line + 6]
    odd = all(_indent(o) != here for o in near if _content(o) and o is not original)
    tab = "\t" in original[:here]
    above = next((o for o in reversed(lines[: mend.line - 1]) if _content(o)), None)
    aligned = above is not None and _indent(above) == mend.column
    # a key with nothing after its ':' opens a block for the line below it
    # (a list may start at its key's own column: "hosts:" over "- reviews")
    opened = (
        above is not None
        and above.rstrip().endswith(":")
        and not mend.text.lstrip(" ").startswith("-")
    )
    emptied = opened and above is not None and mend.column <= _key_indent(above)
    score = (
        partial,
        misfits,
        1 if emptied else 0,
        astray,
        0 if (odd or tab) else 1,
        abs(mend.column - here),
        0 if aligned else 1,
        failed - mend.line,
        0,
    )
    return score, text


def _first_error(text: str) -> int | None:
    """The line the parser stops at, or None when ``text`` parses (at the C parser's speed)."""
    try:
        for _ in yaml.parse(text, Loader=_FAST_LOADER or yaml.SafeLoader):
            pass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        return mark.line + 1 if mark is not None else 1
    return None


def _documents(text: str) -> list[Document] | None:
    """The documents of ``text`` with their lines, or None when it does not parse."""
    loader = (_FAST_LOADER or yaml.SafeLoader)(text)
    out: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node guarantees a node
                break
            walker = _Walker("", loader)
            data = walker.value(node, ())
            if data is not None:
                out.append(Document("", len(out), data, walker.lines))
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return out


def _key_column(lines: list[str], number: int, key: str | int) -> int | None:
    """The column of ``key`` on 1-based line ``number`` when the line starts with it."""
    line = lines[number - 1].rstrip("\r")
    body = line.lstrip(" ")
    found = _KEY_LINE.match(body)
    if found is None or found.group("key").strip("'\"") != key:
        return None
    return _indent(line) + len(found.group("dash"))


def _astray(lines: list[str], documents: list[Document], number: int) -> int:
    """How far the block of keys holding line ``number`` is from the indentation step the
    document uses between a key and the keys under it (0: where the step puts it)."""
    steps: dict[int, int] = {}
    mine: tuple[int, int] | None = None
    for document in documents:
        for path, line in document.lines.items():
            if len(path) < 2 or not isinstance(path[-1], str) or not isinstance(path[-2], str):
                continue
            parent_line = document.lines.get(path[:-1])
            if parent_line is None or parent_line == line:
                continue
            child = _key_column(lines, line, path[-1])
            parent = _key_column(lines, parent_line, path[-2])
            if child is None or parent is None:
                continue
            if line == number:
                mine = (child, parent)
            else:
                steps[child - parent] = steps.get(child - parent, 0) + 1
    if mine is None or not steps:
        return 0
    step = max(steps, key=lambda k: steps[k])
    return abs(mine[0] - mine[1] - step)


def _explain(file: str, lines: list[str], mend: _Mend, trial: str) -> Problem:
    documents = _documents(trial) or []
    where: dict[int, list[tuple[Path, dict[Path, int]]]] = {}
    for document in documents:
        for path, number in document.lines.items():
            where.setdefault(number, []).append((path, document.lines))
    original = lines[mend.line - 1].rstrip("\r")
    body = original.lstrip(" \t")
    found = _KEY_LINE.match(body) or _BARE_WORD.match(body)
    key = found.group("key").strip("'\"") if found else body.split()[0]
    item = body.startswith("- ")
    path, all_lines = _path_of_line(where.get(mend.line, []), key, item)
    if mend.how == "quote":
        return Problem(
            file,
            mend.line,
            format_path(path),
            f"invalid YAML: the value of {key!r} has ': ' in it, which YAML reads as another key: "
            f"quote the value ({mend.text.strip()})",
        )
    if mend.how == "colon":
        return Problem(
            file,
            mend.line,
            format_path(path),
            f"invalid YAML: {key!r} has no ':' after it: write {key + ':'!r}",
        )
    here = _indent(original)
    what = "this item" if item else repr(key)
    parent = path[:-1]
    siblings = sorted(
        (number, p)
        for p, number in all_lines.items()
        if len(p) == len(path) and p[:-1] == parent and p != path
    )
    above = [s for s in siblings if s[0] < mend.line]
    beside = above[-1] if above else (siblings[0] if siblings else None)
    place = f"under {last_key(parent)!r}" if parent else "at the top level"
    like = ""
    if beside is not None:
        other = beside[1][-1]
        like = f" like {'the item' if isinstance(other, int) else repr(other)} on line {beside[0]}"
    if "\t" in original[:here]:
        message = (
            f"{what} is indented with a tab, and YAML indents with spaces only: indent it "
            f"{mend.column} spaces{like}, {place}"
        )
    else:
        spaces = f"{here} space{'s' if here != 1 else ''}"
        message = (
            f"{what} is indented {spaces}: did you mean it {place}, indented {mend.column}{like}?"
        )
    return Problem(file, mend.line, format_path(path), f"invalid YAML: {message}")


def _path_of_line(
    candidates: list[tuple[Path, dict[Path, int]]], key: str, item: bool
) -> tuple[Path, dict[Path, int]]:
    """Of the paths that start on a line, the one the line is about: the list item for a line
    ``- x: ...``, the key otherwise."""
    best: tuple[Path, dict[Path, int]] = ((), {})
    for candidate, known in candidates:
        last = candidate[-1] if candidate else None
        fits = isinstance(last, int) if item else last == key
        best_last = best[0][-1] if best[0] else None
        best_fits = isinstance(best_last, int) if item else best_last == key
        if (fits, len(candidate)) > (best_fits, len(best[0])):
            best = (candidate, known)
    return best


def _hint(message: str, exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or ""
    if "'\\t'" in problem:
        return message + ": indent with spaces (YAML does not allow tabs)"
    if "cannot start any token" in problem:
        return message + ": quote the value"
    if problem.startswith("mapping values are not allowed"):
        return (
            f"{message}: check the indentation of this line and the ones above it, and quote "
            "a value that has ': ' in it"
        )
    if "expected <block end>" in problem or "expected key" in problem:
        return message + ": check the indentation of this line and the ones above it"
    if "expected ':'" in problem:
        return message + ": a key needs a ':' after it"
    return message


def _path_at(text: str, line: int, column: int | None = None) -> str:
    """The field path at which the parser stopped before ``line`` (or at ``column`` of it):
    where the mistake is."""
    stop = (line - 1, column if column is not None else 1 << 30)
    stack: list[list[Any]] = []  # [kind, key or index, expecting a key]
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            mark = event.start_mark
            if mark is not None and (mark.line, mark.column) > stop:
                break
            if isinstance(event, (yaml.DocumentStartEvent, yaml.DocumentEndEvent)):
                stack = []
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                if stack:
                    stack.pop()
                _after_value(stack)
                continue
            if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
                if stack and stack[-1][0] == "map" and stack[-1][2]:
                    stack[-1][1] = getattr(event, "value", None)
                    stack[-1][2] = False
                else:
                    _before_value(stack)
                    _after_value(stack)
                continue
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                _before_value(stack)
                kind = "map" if isinstance(event, yaml.MappingStartEvent) else "seq"
                stack.append([kind, None if kind == "map" else -1, True])
    except yaml.YAMLError:
        pass
    path: list[str | int] = []
    for kind, where, _ in stack:
        if where is None or (kind == "seq" and where < 0):
            break
        path.append(where if kind == "seq" else str(where))
    return format_path(tuple(path))


def _before_value(stack: list[list[Any]]) -> None:
    if stack and stack[-1][0] == "seq":
        stack[-1][1] += 1


def _after_value(stack: list[list[Any]]) -> None:
    if stack and stack[-1][0] == "map":
        stack[-1][2] = True


def last_key(path: Path) -> str:
    """The last key of ``path`` with its indexes: ``route[1]``, ``destination``."""
    out = ""
    for part in reversed(path):
        if isinstance(part, int):
            out = f"[{part}]{out}"
        else:
            return f"{part}{out}"
    return out or "the top level"


def format_path(path: Path) -> str:
    """``('spec', 'http', 0, 'route', 1, 'weight')`` → ``spec.http[0].route[1].weight``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _plain(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f'["{part}"]')
    return "".join(out)


def _plain(key: str) -> bool:
    return bool(key) and all(c.isalnum() or c in "_-" for c in key)
