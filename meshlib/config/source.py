"""YAML text → plain Python documents, each with a map from field path to source line.

PyYAML's own loaders drop positions; meshlib walks the composed node tree instead, so every value
keeps the line it came from. Duplicate keys, which PyYAML silently collapses, are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from meshlib.errors import Problem

Path = tuple[str | int, ...]


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


def parse_yaml(text: str, file: str) -> tuple[list[Document], list[Problem]]:
    """Parse multi-document YAML. Returns the documents and any problems (with lines)."""
    if _FAST_LOADER is not None:
        documents, problems = _parse(text, file, _FAST_LOADER)
        if not problems:
            return documents, problems
    return _parse(text, file, yaml.SafeLoader)


def _parse(text: str, file: str, loader_class: Any) -> tuple[list[Document], list[Problem]]:
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
        problems.append(_yaml_problem(exc, file))
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
