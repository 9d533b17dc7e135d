"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.bookinfo import NETWORKING as BOOKINFO_DIR
from meshlib import Mesh

ROOT = Path(__file__).resolve().parents[1]

WriteYaml = Callable[[str, str], Path]
Send = Callable[..., httpx.Response]
RunDocsExample = Callable[[str, str], None]

# --------------------------------------------------------------------------- Istio's own files


def _istio_files(variable: str, folder: str) -> tuple[Path | None, str]:
    """Istio's own files for the compatibility tests: ``$variable``, else ``folder`` of the
    ``shared`` folder beside the repository when there is one. Returns the folder, or None and
    why the tests that need it skip."""
    named = os.environ.get(variable)
    if named:
        path = Path(named).resolve()
        return (path, "") if path.is_dir() else (None, f"${variable} ({named}) is not a folder")
    beside = ROOT.parent / "shared" / folder  # the default when $variable is unset
    if beside.is_dir():
        return beside, ""
    return None, f"Istio's files are not here: set ${variable} to a folder of them"


ISTIO_BOOKINFO, ISTIO_BOOKINFO_MISSING = _istio_files("ISTIO_BOOKINFO_SAMPLES", "istio-bookinfo")
ISTIO_SECURITY, ISTIO_SECURITY_MISSING = _istio_files("ISTIO_SECURITY_SAMPLES", "istio-security")
ISTIO_DASHBOARDS, ISTIO_DASHBOARDS_MISSING = _istio_files("ISTIO_DASHBOARDS", "istio-dashboards")
#: The fixtures through which a test may read Istio's own files, and only those tests.
ISTIO_FIXTURES = frozenset(
    {"istio_bookinfo_dir", "istio_bookinfo_file", "istio_security_dir", "istio_dashboards_dir"}
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``bookinfo_file``: once for each of the project's Bookinfo rule files.
    ``istio_bookinfo_file``: once for each of Istio's (one skipped case when they are absent)."""
    if "bookinfo_file" in metafunc.fixturenames:
        files = sorted(BOOKINFO_DIR.glob("*.yaml"))
        metafunc.parametrize("bookinfo_file", files, ids=[f.name for f in files])
    if "istio_bookinfo_file" in metafunc.fixturenames:
        if ISTIO_BOOKINFO is None:
            skipped = pytest.param(None, marks=pytest.mark.skip(reason=ISTIO_BOOKINFO_MISSING))
            metafunc.parametrize("istio_bookinfo_file", [skipped], ids=["absent"])
        else:
            files = sorted(ISTIO_BOOKINFO.glob("*.yaml"))
            metafunc.parametrize("istio_bookinfo_file", files, ids=[f.name for f in files])


@pytest.fixture(scope="session")
def bookinfo_dir() -> Path:
    """The project's Bookinfo rule files (``examples/bookinfo/networking``), named after Istio's."""
    return BOOKINFO_DIR


@pytest.fixture(scope="session")
def istio_bookinfo_dir() -> Path:
    """Istio's Bookinfo networking samples, unmodified (``$ISTIO_BOOKINFO_SAMPLES``)."""
    if ISTIO_BOOKINFO is None:
        pytest.skip(ISTIO_BOOKINFO_MISSING)
    return ISTIO_BOOKINFO


@pytest.fixture(scope="session")
def istio_security_dir() -> Path:
    """Istio's security test data, unmodified (``$ISTIO_SECURITY_SAMPLES``)."""
    if ISTIO_SECURITY is None:
        pytest.skip(ISTIO_SECURITY_MISSING)
    return ISTIO_SECURITY


@pytest.fixture(scope="session")
def istio_dashboards_dir() -> Path:
    """Istio's Grafana dashboards, unmodified (``$ISTIO_DASHBOARDS``: istio/istio's folder
    ``manifests/addons/dashboards``, or any folder holding its JSON files)."""
    if ISTIO_DASHBOARDS is None:
        pytest.skip(ISTIO_DASHBOARDS_MISSING)
    return ISTIO_DASHBOARDS


# --------------------------------------------------------------------------- standing alone

_OUTSIDE = [str(ROOT.parent)] + [
    str(p) for p in (ISTIO_BOOKINFO, ISTIO_SECURITY, ISTIO_DASHBOARDS) if p
]
#: The repository, and the Python installation that runs the tests (a venv may sit beside it).
_INSIDE = tuple({str(ROOT), sys.prefix, sys.base_prefix, sys.exec_prefix})
_READ_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})
_reads_outside: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Notes every file or folder read beside the repository (or in Istio's folders)."""
    if event not in _READ_EVENTS or not args or isinstance(args[0], int) or args[0] is None:
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    for inside in _INSIDE:
        if path == inside or path.startswith(inside + os.sep):
            return
    for outside in _OUTSIDE:
        if path == outside or path.startswith(outside + os.sep):
            _reads_outside.append(path)
            return


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _stands_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    """A user clones only the repository: no test but those given Istio's files through
    ``istio_*`` fixtures may read anything outside it (the folder around the clone included)."""
    _reads_outside.clear()
    yield
    if _reads_outside and not ISTIO_FIXTURES & set(request.fixturenames):
        read = sorted(set(_reads_outside))
        _reads_outside.clear()
        pytest.fail(f"read outside the repository: {', '.join(read[:5])}", pytrace=False)


def dedent_yaml(text: str) -> str:
    """Dedent ``text`` and drop the one newline after an opening triple quote, so that line 1
    of the result is the first line written after the quote."""
    return textwrap.dedent(text).removeprefix("\n")


@pytest.fixture
def write_yaml(tmp_path: Path) -> WriteYaml:
    """``write_yaml("name.yaml", text)`` writes dedented ``text`` under ``tmp_path`` (creating
    directories in ``name``) and returns the file's path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent_yaml(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_docs_example(tmp_path: Path) -> RunDocsExample:
    """``run_docs_example("security.md", mark)`` runs the block of ``docs/<page>`` that
    starts with ``mark`` in a fresh interpreter (in ``tmp_path``, with the repository on its
    path) and asserts that it prints the ``console`` block right after it."""

    def run(page: str, mark: str) -> None:
        path = ROOT / "docs" / page
        blocks = re.findall(r"```(\w*)\n(.*?)```", path.read_text(), flags=re.DOTALL)
        index = next((i for i, (_, body) in enumerate(blocks) if body.startswith(mark)), None)
        if index is None:
            raise AssertionError(f"no block starting with {mark!r} in {path}")
        code, (language, shown) = blocks[index][1], blocks[index + 1]
        assert language == "console"
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == shown

    return run


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server on 127.0.0.1 for this test session (Debian's redis-server)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["sync", "async"])
def send(request: pytest.FixtureRequest) -> Send:
    """``send(mesh, method, url, **kw)`` through a stock ``httpx.Client`` or ``AsyncClient``."""

    def call(mesh: Mesh, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if request.param == "sync":
            with mesh.client() as client:
                return client.request(method, url, **kwargs)

        async def go() -> httpx.Response:
            async with mesh.async_client() as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(go())

    return call
