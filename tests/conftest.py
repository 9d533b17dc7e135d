"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import Mesh

#: Istio's Bookinfo networking samples, kept unmodified beside the repository (``../shared``).
BOOKINFO_DIR = Path(__file__).parents[1].parent / "shared" / "istio-bookinfo"

WriteYaml = Callable[[str, str], Path]
Send = Callable[..., httpx.Response]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that take ``bookinfo_file`` run once for each YAML file of the Bookinfo samples."""
    if "bookinfo_file" in metafunc.fixturenames:
        files = sorted(BOOKINFO_DIR.glob("*.yaml"))
        metafunc.parametrize("bookinfo_file", files, ids=[f.name for f in files])


@pytest.fixture(scope="session")
def bookinfo_dir() -> Path:
    """The directory of Istio's Bookinfo networking samples."""
    assert BOOKINFO_DIR.is_dir(), f"Istio's Bookinfo samples are missing: {BOOKINFO_DIR}"
    return BOOKINFO_DIR


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
