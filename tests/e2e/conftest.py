"""End-to-end fixtures: the Bookinfo demo as a user runs it — ``python -m examples.bookinfo``
(six service processes on 127.0.0.1, free ports, a run directory of the session's own) — shared
by the walkthrough and the browser tests, and stopped with Ctrl-C (SIGINT) at the end."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # examples/ is not installed: import it from the repository
    sys.path.insert(0, str(ROOT))

from examples.bookinfo import walkthrough  # noqa: E402

from .chromium import chromium  # noqa: E402

SAMPLES = walkthrough.SAMPLES  # the project's Bookinfo rule files


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[walkthrough.Demo]:
    running = walkthrough.Demo.start(tmp_path_factory.mktemp("bookinfo-run"), SAMPLES)
    pids = running.service_pids()
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"the launcher exited with {code} on Ctrl-C"
        for pid in pids:  # every service process is gone with it
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not (running.run_dir / "bookinfo.json").exists()


@pytest.fixture(scope="session")
def rules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The rules Istio's tasks write inline, and the walkthrough's own two, as files."""
    return walkthrough.write_rules(tmp_path_factory.mktemp("rules"))


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium, headless (``chromium.py``); the test is skipped without it."""
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"))
