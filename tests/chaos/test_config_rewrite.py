"""A config file rewritten in place while a mesh serves calls: only complete, settled content is
applied. A real file, rewritten by a real writer thread (truncated, then filled a few bytes at a
time), watched by the mesh's own watcher thread, while ``httpx.Client`` and ``httpx.AsyncClient``
through the mesh call a real upstream process: no call fails. Every prefix of the file that
loads is a different config — no endpoint for the service, no subset — under which calls fail.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh
from meshlib.config.load import load_texts
from meshlib.config.watch import ConfigWatcher
from tests.integration.upstream import Upstream

HOST = "reviews.mesh.invalid"  # nothing but the mesh's registry knows it
URL = f"http://{HOST}:9080/reviews/0"


def config(address: str, retries: int) -> str:
    """The route first, then the subsets, then the service and its registry: a prefix routes to
    a subset not defined yet (503), or has no endpoint for the host (a DNS failure)."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [{HOST}]
  http:
  - route:
    - destination: {{host: {HOST}, subset: v1}}
    retries: {{attempts: {retries}, perTryTimeout: 2s}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: {HOST}
  subsets:
  - name: v1
    labels: {{version: v1}}
---
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  registry:
    static:
      {HOST}:
      - {{address: "{address}", labels: {{version: v1}}}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("v1") as started:
        yield started


class Calls:
    """``httpx.Client`` and ``httpx.AsyncClient`` through ``mesh``, each in a thread of its own,
    calling ``URL`` one call after another until ``stop``; every failure is kept."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.done = threading.Event()
        self.made = {"sync": 0, "async": 0}
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._sync, daemon=True),
            threading.Thread(target=lambda: asyncio.run(self._async()), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _record(self, kind: str, outcome: httpx.Response | Exception) -> None:
        self.made[kind] += 1
        if isinstance(outcome, Exception):
            self.failures.append(f"{kind}: {type(outcome).__name__}: {outcome}")
        elif outcome.status_code != 200:
            flags = outcome.headers.get("x-mesh-response-flags")
            self.failures.append(f"{kind}: {outcome.status_code} {flags}")

    def _sync(self) -> None:
        with self.mesh.client(timeout=5.0) as http:
            while not self.done.is_set():
                try:
                    self._record("sync", http.get(URL))
                except httpx.HTTPError as exc:
                    self._record("sync", exc)

    async def _async(self) -> None:
        async with self.mesh.async_client(timeout=5.0) as http:
            while not self.done.is_set():
                try:
                    self._record("async", await http.get(URL))
                except httpx.HTTPError as exc:
                    self._record("async", exc)

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(10)


def retries_of(mesh: Mesh) -> int | None:
    """The retries of the config in force; None: not the file's route (a prefix of it)."""
    decision = mesh.explain("GET", URL)
    return decision.retry.attempts if decision.retry.source == "route" else None


def rewrite(path: Path, text: str, chunk: int = 24, pause: float = 0.002) -> None:
    """Rewrite ``path`` in place as a program writing its output would: truncate it, then write
    ``chunk`` bytes at a time, ``pause`` seconds apart."""
    with path.open("w", encoding="utf-8") as out:
        out.flush()
        for start in range(0, len(text), chunk):
            time.sleep(pause)
            out.write(text[start : start + chunk])
            out.flush()


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_every_prefix_that_loads_is_another_config(upstream: Upstream) -> None:
    """What the watcher must not apply: prefixes of the file that load, and are not it."""
    text = config(upstream.address, 2)
    whole = load_texts([("mesh.yaml", text)])
    loading = 0
    for end in range(0, len(text.rstrip()), 3):  # the file but its last newline is the file
        try:
            prefix = load_texts([("mesh.yaml", text[:end])])
        except ValueError:
            continue
        loading += 1
        assert prefix.resources != whole.resources
    assert loading > 10


def test_a_file_rewritten_slowly_never_applies_half_way(upstream: Upstream, tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(config(upstream.address, 1), encoding="utf-8")
    mesh = Mesh.from_file(path)
    watcher = mesh.watch(interval=0.02, settle=0.3)
    calls = Calls(mesh)
    try:
        wait_for(lambda: min(calls.made.values()) > 0)
        for retries in (2, 3, 4, 5):
            rewrite(path, config(upstream.address, retries))
            wait_for(lambda retries=retries: retries_of(mesh) == retries)  # type: ignore[misc]
            assert retries_of(mesh) == retries
    finally:
        calls.stop()
        mesh.close()
    assert calls.failures == []
    assert min(calls.made.values()) > 10
    assert watcher.reloads == 4  # each whole file once, nothing in between
    assert watcher.last_error is None


def test_the_watcher_looks_between_every_write(upstream: Upstream, tmp_path: Path) -> None:
    """The writer never pauses past a look: every prefix is looked at, none is applied."""
    path = tmp_path / "mesh.yaml"
    path.write_text(config(upstream.address, 1), encoding="utf-8")
    mesh = Mesh.from_file(path)
    watcher = ConfigWatcher(mesh, interval=1.0)
    calls = Calls(mesh)
    text = config(upstream.address, 2)
    try:
        with path.open("w", encoding="utf-8") as out:
            out.flush()
            assert watcher.check() is False
            for start in range(0, len(text), 8):
                out.write(text[start : start + 8])
                out.flush()
                assert watcher.check() is False
                assert retries_of(mesh) == 1
        assert watcher.check() is True  # the whole file, seen twice
        assert retries_of(mesh) == 2
    finally:
        calls.stop()
        mesh.close()
    assert calls.failures == []
    assert watcher.reloads == 1


def test_a_file_left_empty_is_not_applied(
    upstream: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(config(upstream.address, 1), encoding="utf-8")
    mesh = Mesh.from_file(path)
    watcher = mesh.watch(interval=0.02)
    calls = Calls(mesh)
    try:
        with caplog.at_level(logging.WARNING, logger="meshlib"):
            path.write_text("", encoding="utf-8")  # as `> mesh.yaml` leaves it
            checks = watcher.checks
            wait_for(lambda: watcher.checks > checks + 20)
        status = watcher.status()
        assert status.waiting is not None
        assert "became empty" in status.waiting
        assert caplog.text.count("became empty") == 1
        assert retries_of(mesh) == 1
        path.write_text(config(upstream.address, 3), encoding="utf-8")
        wait_for(lambda: watcher.reloads == 1)  # the watcher's own count follows the swap
        assert retries_of(mesh) == 3
        assert watcher.status().waiting is None
    finally:
        calls.stop()
        mesh.close()
    assert calls.failures == []
    assert min(calls.made.values()) > 10
