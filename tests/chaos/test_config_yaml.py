"""Hostile YAML in a config file: alias bombs, loops, deep nesting, control characters, numbers
past every limit. Each is a ``ConfigError`` naming the file and the line, read with time and
memory bounded by the file's size (peak traced memory well under 10 MB for a file under 1 KB);
under ``Mesh.watch`` such a file is logged once, reported in ``last_error``, and the last good
config keeps serving calls (``httpx.Client`` and ``httpx.AsyncClient``, a real upstream)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from meshlib import ConfigError, Mesh
from meshlib.config.load import load_config, load_texts
from meshlib.config.source import MAX_DEPTH, NODE_ALLOWANCE, NODES_PER_CHARACTER
from tests.integration.upstream import Upstream

HEAD = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"


def laughs(levels: int, width: int = 9) -> str:
    """The billion laughs: each level an alias list of the one below, ``width`` ** ``levels``
    values in a few hundred bytes."""
    rows = [f"a: &a [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        this, below = chr(ord("a") + level), chr(ord("a") + level - 1)
        rows.append(f"{this}: &{this} [{', '.join(['*' + below] * width)}]")
    return "\n".join(rows) + "\n"


def merge_laughs(levels: int, width: int = 9) -> str:
    """The same with merge keys: each mapping merges the one below ``width`` times."""
    rows = ["a: &a {x: lol, y: lol, z: lol}"]
    for level in range(1, levels):
        this, below = chr(ord("a") + level), chr(ord("a") + level - 1)
        rows.append(f"{this}: &{this} {{<<: [{', '.join(['*' + below] * width)}], {this}: 1}}")
    return "\n".join(rows) + "\n"


def read(tmp_path: Path, text: str) -> tuple[ConfigError, int]:
    """The error of loading ``text`` from a file, and the peak memory traced while loading."""
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as caught:
            load_config([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for problem in caught.value.problems:
        assert problem.file == str(path)
        assert problem.line >= 1
    return caught.value, peak


@pytest.mark.parametrize("levels", [6, 9, 12])
@pytest.mark.parametrize("bomb", [laughs, merge_laughs])
def test_an_alias_bomb_is_refused_in_bounded_memory(
    tmp_path: Path, bomb: Callable[[int], str], levels: int
) -> None:
    text = bomb(levels)
    assert len(text) < 1024
    error, peak = read(tmp_path, text)
    assert "aliases are expanded" in str(error)
    assert peak < 10_000_000


def test_the_bound_grows_with_the_file_not_with_its_aliases(tmp_path: Path) -> None:
    """Aliases a config means — an endpoint written once, used many times — read as usual."""
    uses = "\n".join(f"      - {{<<: *ep, address: 127.0.0.1:{9000 + i}}}" for i in range(200))
    text = (
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: productpage}\nspec:\n"
        "  registry:\n    static:\n      reviews:\n"
        "      - &ep {address: 127.0.0.1:8999, labels: {version: v1, team: a}, weight: 2}\n"
        f"{uses}\n"
    )
    config = load_texts([("mesh.yaml", text)])
    endpoints = config.service.registry["reviews"]
    assert len(endpoints) == 201
    assert {e.weight for e in endpoints} == {2}
    assert NODE_ALLOWANCE + NODES_PER_CHARACTER * len(text) > 201 * 9


def test_a_merge_key_is_overridden_by_the_mappings_own_key() -> None:
    """YAML's merge type: the mapping's own keys win over merged ones (not a duplicate)."""
    text = (
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: productpage}\nspec:\n"
        "  registry:\n    static:\n      reviews:\n"
        "      - &ep {address: 127.0.0.1:9001, labels: {version: v1}}\n"
        "      - {<<: *ep, address: 127.0.0.1:9002}\n"
        "      - {<<: [{weight: 3}, *ep], weight: 4, address: 127.0.0.1:9003}\n"
    )
    endpoints = load_texts([("mesh.yaml", text)]).service.registry["reviews"]
    assert [(e.address, e.weight) for e in endpoints] == [
        ("127.0.0.1:9001", 1),
        ("127.0.0.1:9002", 1),
        ("127.0.0.1:9003", 4),
    ]


@pytest.mark.parametrize(
    ("text", "line", "said"),
    [
        (HEAD + "spec: &s {hosts: [reviews], http: [*s]}\n", 4, "a loop"),
        (HEAD + "spec: &s\n  hosts: [reviews]\n  more: [*s]\n", 4, "a loop"),
        (HEAD + "spec: &s\n  <<: *s\n", 4, "a loop"),
        (HEAD + "spec: &s {x: {<<: *s}}\n", 4, "a loop"),
        (HEAD + "spec: &s [[*s]]\n", 4, "a loop"),
        (HEAD + "spec: {hosts: [" + "[" * 1000 + "]" * 1000 + "]}\n", 4, "levels deep"),
        (HEAD + "spec:\n" + "".join(" " * i + "  a:\n" for i in range(1000)), 104, "deep"),
        (HEAD + "spec: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", 4, "levels deep"),
        (HEAD + "spec: " + "- " * 1000 + "x\n", 4, ""),
        (HEAD + "spec: {hosts: [x]}\n\x00\n", 5, "U+0000 (NUL)"),
        (HEAD + "spec: {hosts: [re\x07views]}\n", 4, "U+0007"),
        (HEAD + "spec: {hosts: [reviews\x7f]}\n", 4, "U+007F"),
        (HEAD + "spec: {hosts: [reviews]}\n# \ufffe\n", 5, "U+FFFE"),
        (HEAD + "spec: {hosts: [reviews], x: " + "9" * 5000 + "}\n", 4, "cannot read"),
        (HEAD + "spec: {hosts: [reviews], x: " + "1:" * 3000 + "0}\n", 4, "64 bits"),
        (HEAD + "spec: {hosts: [reviews], x: 0b" + "1" * 20000 + "}\n", 4, "64 bits"),
        (HEAD + "spec: {hosts: [reviews], x: 0000-01-01}\n", 4, "cannot read"),
        (HEAD + "spec: {hosts: [reviews], x: 2001-02-30}\n", 4, "cannot read"),
        (HEAD + "spec: {? [hosts]: [reviews]}\n", 4, "a key must be a string"),
        (HEAD + "spec: {hosts: [reviews], <<: [1]}\n", 4, "merge key"),
        (HEAD + "spec: {hosts: [*nowhere]}\n", 4, "undefined alias"),
    ],
    ids=[
        "alias-in-its-own-list",
        "alias-in-its-own-mapping",
        "merge-of-itself",
        "merge-of-an-ancestor",
        "alias-two-levels-down",
        "1000-deep-flow-lists",
        "1000-deep-block-mappings",
        "1000-deep-flow-mappings",
        "1000-deep-block-lists",
        "nul",
        "bell",
        "del",
        "noncharacter",
        "5000-digit-number",
        "sexagesimal-past-64-bits",
        "binary-past-64-bits",
        "year-zero",
        "february-30",
        "list-as-key",
        "merge-of-a-number",
        "undefined-alias",
    ],
)
def test_hostile_yaml_is_a_config_error_with_its_line(
    tmp_path: Path, text: str, line: int, said: str
) -> None:
    error, peak = read(tmp_path, text)
    assert error.problems[0].line == line, str(error)
    assert said in str(error)
    assert peak < 10_000_000 + 100 * len(text)


def test_nesting_up_to_the_bound_reads() -> None:
    deep = "{a: " * (MAX_DEPTH - 3) + "1" + "}" * (MAX_DEPTH - 3)
    route = "[{route: [{destination: {host: reviews}}]}]"
    text = HEAD + f"spec: {{hosts: [reviews], http: {route}}}\nstatus: {deep}\n"
    config = load_texts([("deep.yaml", text)])
    assert config.resources[0].name == "reviews"


def test_a_huge_scalar_or_list_is_read_in_memory_bounded_by_its_size(tmp_path: Path) -> None:
    for text in (
        HEAD + "spec: {hosts: [reviews], x: " + "y" * 1_000_000 + "}\n",
        HEAD + "spec: {hosts: [" + ", ".join(["reviews"] * 20_000) + "], x: 1}\n",
    ):
        error, peak = read(tmp_path, text)
        assert "spec.x: unknown field" in str(error)
        assert peak < 10_000_000 + 100 * len(text)


# --------------------------------------------------------------------------- under watch()

HOST = "reviews.mesh.invalid"


def good(address: str) -> str:
    return f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  registry:
    static:
      {HOST}:
      - {{address: "{address}"}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("v1") as started:
        yield started


def calls_succeed(mesh: Mesh) -> None:
    """One call through each client kind reaches the upstream."""
    url = f"http://{HOST}:9080/reviews/0"
    with mesh.client(timeout=5.0) as http:
        assert http.get(url).status_code == 200

    async def once() -> int:
        async with mesh.async_client(timeout=5.0) as http:
            return (await http.get(url)).status_code

    assert asyncio.run(once()) == 200


@pytest.mark.parametrize(
    ("hostile", "said"),
    [
        (laughs(9), "aliases are expanded"),
        ("a: &a [*a]\n", "a loop"),
        ("a: " + "[" * 1000 + "]" * 1000 + "\n", "levels deep"),
        ("a: b\n\x00\n", "U+0000"),
        ("kind: [\n", "invalid YAML"),
    ],
    ids=["bomb", "loop", "deep", "nul", "syntax"],
)
def test_under_watch_a_bad_file_is_logged_once_and_reported(
    upstream: Upstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    hostile: str,
    said: str,
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(good(upstream.address), encoding="utf-8")
    mesh = Mesh.from_file(path)
    watcher = mesh.watch(interval=0.01)
    try:
        calls_succeed(mesh)
        with caplog.at_level(logging.DEBUG, logger="meshlib"):
            path.write_text(good(upstream.address) + "---\n" + hostile, encoding="utf-8")
            deadline = time.monotonic() + 10
            while watcher.last_error is None and time.monotonic() < deadline:
                time.sleep(0.01)
            checks = watcher.checks
            while watcher.checks < checks + 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            path.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")  # saved again
            checks = watcher.checks
            while watcher.checks < checks + 10 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert watcher.last_error is not None
        assert said in str(watcher.last_error)
        assert re.search(f"{re.escape(str(path))}:1[0-9]: ", str(watcher.last_error))
        assert watcher.status().last_error == str(watcher.last_error)
        assert caplog.text.count(said) == 1  # once, not at every look
        assert "Traceback" not in caplog.text
        calls_succeed(mesh)  # the last good config serves on
    finally:
        mesh.close()


def test_every_failure_is_a_config_error_for_mesh_reload(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(good("127.0.0.1:1"), encoding="utf-8")
    mesh = Mesh.from_file(path)
    for hostile in (laughs(9), "a: &a {b: *a}\n", "\x00", "{" * 2000 + "}" * 2000):
        path.write_text(hostile, encoding="utf-8")
        with pytest.raises(ConfigError):
            mesh.reload()
    assert mesh.config.service.name == "productpage"
    # the old config still routes (to a closed port)
    with pytest.raises(httpx.HTTPError), mesh.client(timeout=2.0) as http:
        http.get(f"http://{HOST}:9080/")
