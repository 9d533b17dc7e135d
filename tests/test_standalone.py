"""The repository stands alone: a user clones it and nothing else.

The demo, the tutorial and the tests use the project's own Bookinfo rule files; only the tests
that check meshlib against Istio's own files read those, from ``$ISTIO_BOOKINFO_SAMPLES``. The
suite's guard (``tests/conftest.py``) fails any other test that reads beside the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.bookinfo import NETWORKING

ROOT = Path(__file__).resolve().parents[1]


def _guard(request: pytest.FixtureRequest) -> list[str]:
    conftest = request.config.pluginmanager.get_plugin(str(Path(__file__).parent / "conftest.py"))
    assert conftest is not None
    reads: list[str] = conftest._reads_outside
    return reads


def test_a_read_beside_the_repository_is_caught(request: pytest.FixtureRequest) -> None:
    reads = _guard(request)
    probe = ROOT.parent / "shared" / "istio-bookinfo" / "no-such-file.yaml"
    with pytest.raises(FileNotFoundError):
        probe.open()
    assert str(probe) in reads
    reads.clear()  # caught: this test meant it
    with pytest.raises(FileNotFoundError):
        os.listdir(ROOT.parent / "no-such-folder-beside-the-repository")
    assert reads == [str(ROOT.parent / "no-such-folder-beside-the-repository")]
    reads.clear()


def test_reads_inside_the_repository_are_not_counted(request: pytest.FixtureRequest) -> None:
    reads = _guard(request)
    (NETWORKING / "destination-rule-all.yaml").read_text(encoding="utf-8")
    sorted(NETWORKING.glob("*.yaml"))
    assert reads == []


def test_the_demo_needs_no_folder_beside_the_repository() -> None:
    launcher = (ROOT / "examples" / "bookinfo" / "launcher.py").read_text(encoding="utf-8")
    walkthrough = (ROOT / "examples" / "bookinfo" / "walkthrough.py").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for text in (launcher, walkthrough, makefile):
        assert '"shared"' not in text
        assert "../shared" not in text
    assert (NETWORKING / "destination-rule-all.yaml").is_file()


def test_bookinfo_samples_names_the_demos_rule_files(tmp_path: Path) -> None:
    """``BOOKINFO_SAMPLES=DIR make demo`` reads the baseline rules from DIR, and says so when
    DIR has none, before anything starts."""
    env = {**os.environ, "BOOKINFO_SAMPLES": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "examples.bookinfo", "--port", "0", "--run-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"bookinfo: {tmp_path / 'destination-rule-all.yaml'} not found: name a folder of "
        "Bookinfo rule files with --samples (or $BOOKINFO_SAMPLES), or start with --no-baseline"
    )
