"""docs/security.md: the runnable example runs and prints what the page shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "security.md"
MARK = "# Runnable: mTLS between two workloads"


def _example() -> tuple[str, str]:
    """The runnable block and the console block right after it."""
    text = PAGE.read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.DOTALL)
    for index, (_, body) in enumerate(blocks):
        if body.startswith(MARK):
            language, shown = blocks[index + 1]
            assert language == "console"
            return body, shown
    raise AssertionError(f"no block starting with {MARK!r} in {PAGE}")


def test_the_runnable_example_prints_what_the_page_shows(tmp_path: Path) -> None:
    code, shown = _example()
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
