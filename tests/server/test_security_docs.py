"""docs/authorization.md and docs/propagation.md: the runnable examples print what the pages
show."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ("authorization.md", "# Runnable: an AuthorizationPolicy enforced by the ASGI middleware"),
    ("propagation.md", "# Runnable: the trust boundary for context headers"),
]


def _example(page: Path, mark: str) -> tuple[str, str]:
    """The runnable block and the console block right after it."""
    blocks = re.findall(r"```(\w*)\n(.*?)```", page.read_text(), flags=re.DOTALL)
    for index, (_, body) in enumerate(blocks):
        if body.startswith(mark):
            language, shown = blocks[index + 1]
            assert language == "console"
            return body, shown
    raise AssertionError(f"no block starting with {mark!r} in {page}")


@pytest.mark.parametrize(("page", "mark"), EXAMPLES)
def test_the_runnable_example_prints_what_the_page_shows(
    tmp_path: Path, page: str, mark: str
) -> None:
    code, shown = _example(ROOT / "docs" / page, mark)
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
