"""The data-plane examples run, and the docs show them as they are.

Every ``examples/dataplane/*.py`` script runs with the venv's Python from the repository root,
exits 0 and prints its key line. Every ``examples/dataplane/*.yaml`` config passes
``meshctl validate``. In ``docs/*.md``, a code block whose first line names an example file
(``# examples/dataplane/routing.py``) must be that file, byte for byte, and a console block that
runs one (``$ python examples/dataplane/routing.py``, ``$ meshctl validate examples/...``) must
show exactly what it prints today. So when the code changes what an example does, this fails
until the page is updated.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "dataplane"
DOCS = ROOT / "docs"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

SCRIPTS = sorted(EXAMPLES.glob("*.py"))
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))

#: One line each script must print: the behaviour it exists to show.
KEY_LINES = {
    "circuit_breaker.py": "call 4: CircuitOpenError flag=UO     breaker open",
    "connection_pool.py": "third:  503 UO",
    "default_client.py": "details: 503 details is down for maintenance",
    "discovery.py": "a bad file: the last good endpoints stay",
    "faults.py": "kim: 500 flags=FI body=b'fault filter abort' after 0s",
    "load_balancing.py": "ROUND_ROBIN, weights 5,1,1: 1 1 2 1 3 1 1 1 1 2 1 3 1 1",
    "outlier_detection.py": "ratings, maxEjectionPercent 10 (Istio's default)",
    "response_flags.py": "breaker open                   raises CircuitOpenError, .flag: UO",
    "retries.py": "  POST: 503, 200                  503 flags=-",
    "route_actions.py": "redirect: 308 http://productpage:9080/api/v1/products?page=2",
    "routing.py": "subset not defined       -> 503 NC 'no healthy upstream'",
    "testing_kit.py": "async: connection refused, then 200 on the retry",
    "timeouts.py": "  reviews, httpx timeout 0.2s            httpx.ReadTimeout",
}

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_RUN = re.compile(r"^\$ python (examples/dataplane/\S+\.py)$")
_VALIDATE = re.compile(r"^\$ meshctl validate (examples/dataplane/\S+\.yaml)$")
_NAMED = re.compile(r"^# (examples/dataplane/\S+\.(?:py|yaml))$")


@functools.cache
def run_script(relative: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, relative],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@functools.cache
def validate(relative: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "meshlib.cli", "validate", relative],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_example_has_a_key_line() -> None:
    assert sorted(KEY_LINES) == [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs(script: Path) -> None:
    result = run_script(script.relative_to(ROOT).as_posix())
    assert result.returncode == 0, result.stderr
    assert KEY_LINES[script.name] in result.stdout, result.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_validates(config: Path) -> None:
    result = validate(config.relative_to(ROOT).as_posix())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("valid: 1 file(s)")


def _blocks() -> list[tuple[str, str]]:
    """(page name, block text) of every fenced block of the docs that shows an example."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for match in _FENCE.finditer(page.read_text(encoding="utf-8")):
            text = match.group(1)
            first = text.split("\n", 1)[0]
            if _NAMED.match(first) or _RUN.match(first) or _VALIDATE.match(first):
                found.append((page.name, text))
    return found


BLOCKS = _blocks()


def test_the_docs_show_every_example() -> None:
    shown = {_NAMED.match(text.split("\n", 1)[0]) for _, text in BLOCKS}
    names = {m.group(1) for m in shown if m is not None}
    expected = {p.relative_to(ROOT).as_posix() for p in [*SCRIPTS, *CONFIGS]}
    assert expected - names == set(), "examples no page shows"


@pytest.mark.parametrize(
    ("page", "block"),
    BLOCKS,
    ids=[f"{page}:{block.split(chr(10), 1)[0]}" for page, block in BLOCKS],
)
def test_docs_block_is_current(page: str, block: str) -> None:
    first, _, rest = block.partition("\n")
    if named := _NAMED.match(first):
        current = (ROOT / named.group(1)).read_text(encoding="utf-8")
        assert block == current, f"{page} shows an old {named.group(1)}: paste the file again"
        return
    if run := _RUN.match(first):
        result = run_script(run.group(1))
    else:
        checked = _VALIDATE.match(first)
        assert checked is not None
        result = validate(checked.group(1))
    assert rest == result.stdout, (
        f"{page}: the output of `{first[2:]}` changed; paste the new output:\n{result.stdout}"
    )
