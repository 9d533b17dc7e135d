"""Fuzzing config loading: valid configs, mutated the ways a file goes wrong (cut short, a slice
lost, stray bytes and control characters, aliases, loops, deep nesting, huge scalars, lists and
numbers). Whatever the text, loading returns a config or raises ``ConfigError`` whose every
problem names the file and a line; each case takes well under a second (hypothesis' deadline)
and its memory is bounded by the text's size (tracemalloc's peak)."""

from __future__ import annotations

import re
import tracemalloc
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.bookinfo import NETWORKING
from meshlib import ConfigError, Mesh
from meshlib.config.load import MeshConfig, load_texts

NAME = "mutant.yaml"

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage, namespace: bookinfo}
spec:
  version: v1
  propagateHeaders: [end-user]
  registry:
    static:
      reviews:
        - &endpoint {address: 127.0.0.1:9081, labels: {version: v1}}
        - {<<: *endpoint, address: 127.0.0.1:9082, labels: {version: v2}}
      ratings:
        - {address: 127.0.0.1:9085, labels: {version: v1}, weight: 2}
  appTimeouts:
    reviews: {timeout: 3s, attempts: 2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: end-user}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

#: Valid configs to start from: the Service document above and Bookinfo's rule files.
SEEDS = [SERVICE] + [
    SERVICE + "---\n" + path.read_text(encoding="utf-8")
    for path in sorted(NETWORKING.glob("*.yaml"))
]

#: Characters a file goes wrong with: YAML's indicators, control characters (NUL, ESC, DEL, the
#: C1 NEL YAML allows), line and byte-order marks, non-ASCII letters, an emoji.
HOSTILE = (
    ":-?,[]{}&*!|>'\"%@`# \t\n\r"
    "\x00\x01\x07\x08\x0b\x0c\x1b\x7f\x85\x9f\u2028\u2029\ufeff\ufffe\uffff"
    "éß€中😀"
)

positions = st.floats(min_value=0, max_value=1)


def at(text: str, where: float) -> int:
    return int(where * len(text))


@st.composite
def truncated(draw: st.DrawFn, text: str) -> str:
    return text[: at(text, draw(positions))]


@st.composite
def sliced(draw: st.DrawFn, text: str) -> str:
    start = at(text, draw(positions))
    return text[:start] + text[start + draw(st.integers(1, 200)) :]


@st.composite
def stray(draw: st.DrawFn, text: str) -> str:
    where = at(text, draw(positions))
    return text[:where] + draw(st.text(alphabet=HOSTILE, min_size=1, max_size=6)) + text[where:]


@st.composite
def line_moved(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    line = lines[at(lines, draw(positions)) % len(lines)] if lines else ""
    indent = " " * draw(st.integers(0, 12))
    lines.insert(at(lines, draw(positions)), indent + line.lstrip())
    return "\n".join(lines)


def bomb(levels: int, width: int) -> str:
    rows = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        rows.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(rows) + "\n"


def merge_bomb(levels: int, width: int) -> str:
    rows = ["m0: &m0 {a: 1, b: 2, c: 3}"]
    for level in range(1, levels):
        sources = ", ".join([f"*m{level - 1}"] * width)
        rows.append(f"m{level}: &m{level} {{<<: [{sources}], k{level}: {level}}}")
    return "\n".join(rows) + "\n"


#: Values that stand in for a scalar of the config: aliases, loops, deep nesting, huge values.
SUBSTITUTES = st.one_of(
    st.sampled_from(
        [
            "&loop [*loop]",
            "&loop {a: *loop}",
            "&loop {<<: *loop}",
            "*undefined",
            "&dup 1",
            "!!python/object:os.system ls",
            "!!binary AAAA=",
            "!!binary not-base64!",
            "!!timestamp 2001-13-40",
            "0000-01-01",
            "!!set {a, b}",
            "!!omap [a: 1, a: 2]",
            "? [a, b]",
            "{? {a: 1}: x}",
            "1:" * 3000 + "0",
            "0b" + "1" * 20_000,
            "0x" + "f" * 20,
            "9" * 5000,
            ".inf",
            "-.nan",
            "1e400",
        ]
    ),
    st.integers(1, 2_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 2_000).map(lambda n: "{a: " * n + "x" + "}" * n),
    st.integers(1, 100_000).map(lambda n: "x" * n),
    st.integers(1, 5_000).map(lambda n: "[" + ", ".join(["a"] * n) + "]"),
    st.integers(1, 2_000).map(lambda n: "{" + ", ".join(f"k{i}: {i}" for i in range(n)) + "}"),
)


#: A block mapping's ``key: value`` line: its value can be replaced whole.
BLOCK_VALUE = re.compile(r"^(\s*(?:- )?[\w.-]+: )(\S.*)$", re.MULTILINE)


@st.composite
def substituted(draw: st.DrawFn, text: str) -> str:
    """The value of a ``key: value`` line replaced, or a block (a bomb) put before the text."""
    places = [found.span(2) for found in BLOCK_VALUE.finditer(text)]
    if not places or draw(st.integers(0, 4)) == 0:
        prefix = draw(
            st.one_of(
                st.builds(bomb, st.integers(2, 10), st.integers(2, 12)),
                st.builds(merge_bomb, st.integers(2, 10), st.integers(2, 12)),
            )
        )
        return prefix + "---\n" + text
    start, end = places[at(places, draw(positions)) % len(places)]
    return text[:start] + draw(SUBSTITUTES) + text[end:]


#: Mutations that break a file the ways files break: cut short, a slice lost, stray characters,
#: a line moved (and mis-indented).
BREAKS = [truncated, sliced, stray, line_moved]


@st.composite
def mutants(draw: st.DrawFn) -> str:
    """A seed config broken (one to three times), or given hostile values (once or twice), or
    both: a third of the cases each."""
    text = draw(st.sampled_from(SEEDS))
    plan = draw(st.integers(0, 2))
    if plan != 1:
        for _ in range(draw(st.integers(1, 3))):
            text = draw(draw(st.sampled_from(BREAKS))(text))
    if plan != 0:
        for _ in range(draw(st.integers(1, 2))):
            text = draw(substituted(text))
    return text


def load(text: str) -> MeshConfig | ConfigError:
    """Load ``text``, and build a mesh of it when it loads (compiling belongs to loading too).
    Anything but ``ConfigError`` propagates and fails the test."""
    try:
        config = load_texts([(NAME, text)])
    except ConfigError as exc:
        return exc
    Mesh(config).close()
    return config


def assert_where(result: MeshConfig | ConfigError, text: str) -> None:
    if isinstance(result, ConfigError):
        assert result.problems
        lines = text.count("\n") + 1
        for problem in result.problems:
            assert problem.file == NAME, problem
            assert 1 <= problem.line <= lines, problem


FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(mutants())
def test_a_mutated_config_loads_or_says_where_it_is_wrong(text: str) -> None:
    assert_where(load(text), text)


#: What reading a file may use at most (tracemalloc's peak): a fixed part, and a part that
#: grows with the text (the text itself, its parse, its values: an alias may not multiply it).
MEMORY_FIXED = 10_000_000
MEMORY_PER_CHARACTER = 400


@settings(FUZZ, max_examples=30, deadline=None)
@given(mutants())
def test_reading_a_mutated_config_uses_memory_bounded_by_its_size(text: str) -> None:
    tracemalloc.start()
    try:
        result = load(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_where(result, text)
    assert peak < MEMORY_FIXED + MEMORY_PER_CHARACTER * len(text), (peak, len(text))
