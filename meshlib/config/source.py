"""YAML text → plain Python documents, each with a map from field path to source line.

PyYAML's own loaders drop positions; meshlib walks the composed node tree instead, so every value
keeps the line it came from. Duplicate keys, which PyYAML silently collapses, are reported.
"""

from __future__ import annotations

import re
import unicodedata
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


#: How deep a document may nest (mappings and lists, aliases and merge keys followed). Istio's
#: resources nest about a dozen levels; a deeper document is refused here, before anything that
#: recurses over it (validation, the config digest, ``repr``) sees it.
MAX_DEPTH = 100
#: How many values (mappings, lists, scalars and keys) a file may read as, aliases and merge
#: keys expanded: ``NODE_ALLOWANCE`` plus ``NODES_PER_CHARACTER`` for each character of its text.
#: Written out, a file reads as at most one value per character, so no file without aliases
#: reaches the bound; an alias stands for a whole mapping or list in a few characters, so a few
#: hundred bytes of aliases of aliases can stand for billions of values (a "billion laughs").
#: Reading is bounded by the file's size: time and memory, as for a file without aliases.
NODES_PER_CHARACTER = 2
NODE_ALLOWANCE = 5_000
#: The integers a value may hold: Istio's fields hold at most 64 bits (and Python cannot turn an
#: integer of more than 4300 digits into text).
_INT_RANGE = (-(2**63), 2**64)
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"
#: The characters YAML does not allow in a file (PyYAML's reader refuses them).
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


class _RefusedError(Exception):
    """A document that cannot be read as a config: too deep, too big once expanded, a loop."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Budget:
    """How many more values the file may read as (``NODES_PER_CHARACTER``)."""

    __slots__ = ("left", "total")

    def __init__(self, text: str) -> None:
        self.total = self.left = NODE_ALLOWANCE + NODES_PER_CHARACTER * len(text)


class _Walker:
    """Turns composed YAML nodes into Python values while recording each path's line.

    Bounded by the file's size whatever its aliases do: every value read (aliases and merge keys
    followed) is paid for from the file's ``_Budget``, nesting stops at ``MAX_DEPTH``, and an
    alias inside the mapping or list it names (a loop) is refused."""

    def __init__(
        self, file: str, constructor: yaml.constructor.SafeConstructor, budget: _Budget
    ) -> None:
        self.file = file
        self.constructor = constructor
        self.budget = budget
        self.lines: dict[Path, int] = {}
        self.problems: list[Problem] = []
        self.open: set[int] = set()  # the mappings and lists being read: an alias to one loops

    def pay(self, node: yaml.Node, path: Path) -> None:
        budget = self.budget
        budget.left -= 1
        if budget.left < 0:
            raise _RefusedError(
                self.problem(
                    node,
                    path,
                    f"this file reads as more than {budget.total} values once its aliases are "
                    f"expanded (at most {NODES_PER_CHARACTER} per character of the file, plus "
                    f"{NODE_ALLOWANCE}): is an alias used where it was not meant?",
                )
            )

    def problem(self, node: yaml.Node, path: Path, message: str) -> Problem:
        return Problem(self.file, node.start_mark.line + 1, format_path(path), message)

    def value(self, node: yaml.Node, path: Path) -> Any:
        self.pay(node, path)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if len(path) >= MAX_DEPTH:
            raise _RefusedError(
                self.problem(
                    node, path, f"nested more than {MAX_DEPTH} levels deep (aliases followed)"
                )
            )
        key = id(node)
        if key in self.open:
            raise _RefusedError(self.problem(node, path, _LOOP))
        self.open.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            items = []
            for i, item in enumerate(node.value):
                self.lines.setdefault((*path, i), item.start_mark.line + 1)
                items.append(self.value(item, (*path, i)))
            return items
        finally:
            self.open.discard(key)

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except ValueError as exc:  # a number past Python's limits, a date that is no date
            raise _RefusedError(
                self.problem(
                    node,
                    path,
                    f"cannot read {_excerpt(node.value)}: {exc} (quote it to make it a string)",
                )
            ) from None
        if isinstance(value, int) and not isinstance(value, bool):
            low, high = _INT_RANGE
            if not low <= value < high:
                raise _RefusedError(
                    self.problem(
                        node,
                        path,
                        f"the number {_excerpt(node.value)} does not fit in 64 bits (quote it "
                        "to make it a string)",
                    )
                )
        return value

    def key(self, node: yaml.Node, path: Path) -> str | None:
        """A mapping key as text; None (and a problem) for a key that is not a scalar."""
        self.pay(node, path)
        if not isinstance(node, yaml.ScalarNode):
            kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
            self.problems.append(self.problem(node, path, f"a key must be a string, not a {kind}"))
            return None
        if node.tag == _VALUE:  # the "=" key of YAML 1.1, which PyYAML reads as a string
            return str(node.value)
        key = self.scalar(node, path)
        if isinstance(key, str):
            return key
        return str(key) if isinstance(key, (int, float, bool)) else repr(key)

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        """A mapping, merge keys (``<<``) resolved as YAML's merge type says: the mapping's own
        keys first, then the merged mappings' in the order given."""
        chosen: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            if key in chosen:
                self.problems.append(
                    Problem(
                        self.file,
                        key_node.start_mark.line + 1,
                        format_path((*path, key)),
                        "duplicate key (first given above)",
                    )
                )
            chosen[key] = (key_node, value_node)
        merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for source in reversed(merges):  # ``<<`` given twice: the last one wins, as in PyYAML
            self.merge(source, node, path, merged, 0)
        out: dict[Any, Any] = {}
        # merged keys first, as PyYAML orders them; a key of the mapping's own wins
        for key, pair in [*merged.items(), *chosen.items()]:
            if key in chosen and pair is not chosen[key]:
                continue
            key_node, value_node = pair
            child = (*path, key)
            self.lines[child] = key_node.start_mark.line + 1
            out[key] = self.value(value_node, child)
        return out

    def merge(
        self,
        source: yaml.Node,
        into: yaml.MappingNode,
        path: Path,
        merged: dict[str, tuple[yaml.Node, yaml.Node]],
        depth: int,
    ) -> None:
        """Add the keys of a merge key's value (a mapping, or a list of them: the first one
        given wins) that ``merged`` does not have yet."""
        self.pay(source, path)
        if isinstance(source, yaml.SequenceNode):
            for item in source.value:
                if not isinstance(item, yaml.MappingNode):
                    raise _RefusedError(self.problem(item, path, _MERGE_WHAT))
                self.merge_mapping(item, into, path, merged, depth)
        elif isinstance(source, yaml.MappingNode):
            self.merge_mapping(source, into, path, merged, depth)
        else:
            raise _RefusedError(self.problem(source, path, _MERGE_WHAT))

    def merge_mapping(
        self,
        source: yaml.MappingNode,
        into: yaml.MappingNode,
        path: Path,
        merged: dict[str, tuple[yaml.Node, yaml.Node]],
        depth: int,
    ) -> None:
        """Add the keys of one merged mapping, its own before those it merges in turn."""
        if depth + len(path) >= MAX_DEPTH:
            raise _RefusedError(
                self.problem(
                    source, path, f"merge keys (<<) nested more than {MAX_DEPTH} levels deep"
                )
            )
        if source is into or id(source) in self.open:
            raise _RefusedError(self.problem(source, path, _LOOP))
        own: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        nested: list[yaml.Node] = []
        for key_node, value_node in source.value:
            if key_node.tag == _MERGE:
                nested.append(value_node)
                continue
            key = self.key(key_node, path)
            if key is not None:
                own[key] = (key_node, value_node)  # a key given twice: the last one, as PyYAML
        for key, pair in own.items():
            merged.setdefault(key, pair)
        self.open.add(id(source))
        try:
            for inner in reversed(nested):
                self.merge(inner, into, path, merged, depth + 1)
        finally:
            self.open.discard(id(source))


_LOOP = (
    "an alias here stands for a mapping or list that holds it: a loop, which a config "
    "cannot be (copy the values instead)"
)
_MERGE_WHAT = "a merge key (<<) takes a mapping, or a list of mappings"


def _excerpt(text: str, size: int = 40) -> str:
    """``text`` quoted, cut to about ``size`` characters."""
    return repr(text) if len(text) <= size else repr(text[: size - 3] + "...")


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
    line where the parser gave up (see ``diagnose``); ``judge`` helps choose between mends.
    Whatever the text, the work is bounded by its size (``MAX_DEPTH``, ``NODES_PER_CHARACTER``)
    and every problem is a ``Problem``: nothing else is raised."""
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:  # the reader refuses the whole text: say where and what
        return [], [_unprintable(text, bad.start(), file)]
    fast: tuple[list[Document], list[Problem]] | None = None
    if _FAST_LOADER is not None:
        documents, problems, broken = _parse(text, file, _FAST_LOADER, judge)
        if broken is None:
            return documents, problems
        if "nesting depth" in broken.message:  # libyaml's own bound, past ours
            where = _too_deep(text, file) or Problem(
                file, broken.line, "", f"nested more than {MAX_DEPTH} levels deep"
            )
            return documents, [*problems[:-1], where]
        fast = documents, problems
    # the pure-Python parser explains a syntax error better; its composer recurses, so a text
    # nested too deep is refused before it gets there
    deep = _too_deep(text, file)
    if deep is not None:
        return [], [deep]
    try:
        documents, problems, _ = _parse(text, file, yaml.SafeLoader, judge)
    except RecursionError:  # deeper than the parser alone could tell: the terse report
        if fast is not None:
            return fast
        return [], [Problem(file, 1, "", f"nested more than {MAX_DEPTH} levels deep")]
    return documents, problems


def _parse(
    text: str, file: str, loader_class: Any, judge: Judge | None = None
) -> tuple[list[Document], list[Problem], Problem | None]:
    """The documents and problems of ``text``, and the syntax error the parser stopped at, if
    it did (the fast parser's report of one is terse: the pure-Python one says more)."""
    fast = loader_class is _FAST_LOADER
    documents: list[Document] = []
    problems: list[Problem] = []
    budget = _Budget(text)
    broken: Problem | None = None
    loader = loader_class(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node guarantees a node
                break
            walker = _Walker(file, loader, budget)
            walker.lines[()] = node.start_mark.line + 1
            try:
                data = walker.value(node, ())
            except yaml.constructor.ConstructorError as exc:
                problems.extend(walker.problems)
                problems.append(_yaml_problem(exc, file))
                index += 1
                continue
            except _RefusedError as exc:
                problems.extend(walker.problems)
                problems.append(exc.problem)
                if budget.left < 0:  # the file's budget is spent: no more documents
                    break
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
        broken = _yaml_problem(exc, file) if fast else diagnose(text, exc, file, judge)
        problems.append(broken)
        # a document the parser ended early, at the broken line, is not what was written
        first, _ = _document_around(text.split("\n"), broken.line)
        documents = [d for d in documents if d.line - 1 < first]
    finally:
        loader.dispose()
    return documents, problems, broken


def _unprintable(text: str, at: int, file: str) -> Problem:
    """The problem of a character YAML does not allow anywhere in a file."""
    line = text.count("\n", 0, at) + 1
    character = text[at]
    code = ord(character)
    name = unicodedata.name(character, "") or _CONTROL_NAMES.get(code, "a control character")
    escaped = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return Problem(
        file,
        line,
        "",
        f"invalid YAML: the character U+{code:04X} ({name}) is not allowed in a YAML file: "
        f"remove it, or write it as {escaped} in a double-quoted string",
    )


_CONTROL_NAMES = {0: "NUL", 0x7F: "DEL", 0xFFFE: "a noncharacter", 0xFFFF: "a noncharacter"}


def _too_deep(text: str, file: str) -> Problem | None:
    """The problem of a text nested deeper than ``MAX_DEPTH``, read by the parser alone (which
    does not recurse); None when it is not (or when it does not parse that far)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_FAST_LOADER or yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark is not None else 1
                    return Problem(file, line, "", f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        pass
    return None


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
#: How many characters the mends may parse in all: a mend is tried on the whole document up to
#: the mistake, so a few dozen mends of a huge document would cost seconds. Past this, the
#: mistake is reported where the parser stopped, with PyYAML's words.
_MEND_BUDGET = 300_000
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
    cost = sum(len(line) + 1 for line in lines[first:last])
    affordable = _MEND_BUDGET // max(cost, 1)
    for mend in mends[:affordable]:
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
    budget = _Budget(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node guarantees a node
                break
            walker = _Walker("", loader, budget)
            data = walker.value(node, ())
            if data is not None:
                out.append(Document("", len(out), data, walker.lines))
    except (yaml.YAMLError, _RefusedError):
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
