"""What ``import meshlib`` costs, beside ``import httpx``: wall time and resident memory.

    python -m bench.import_cost [--runs N] [--python PATH | --clean] [--json]

Rows: ``import httpx`` (the yardstick), ``import meshlib``, and ``from meshlib import Mesh`` (what
a program that builds a mesh pays at its first line).

The Makefile's ``bench`` target runs it with ``--clean``; the figures also go to
``bench/results/import_cost.json``.

Each figure is the median of ``--runs`` fresh interpreters (the two modules alternate, so both
see the same machine). In each one the time is ``time.perf_counter()`` around the ``import``
statement, the memory ``VmRSS`` just after it less ``VmRSS`` before it (the interpreter's own
share, which both rows pay alike, is left out; meshlib's row includes the httpx it imports).
``python -X importtime -c 'import meshlib'`` says where the time goes, module by module.

``--clean`` measures in a new virtual environment with meshlib's core dependencies only
(``pip install -c constraints.txt .``, no extra): what a user who installs meshlib gets. Without
it, the interpreter running the bench (``--python`` names another one) — with the test and
bench extras installed, which ``import meshlib`` must not load either.

Targets: ``import meshlib`` ≤ 0.12 s, and ≤ 10 MiB more memory than ``import httpx``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import publish, verdict

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 0.12
TARGET_EXTRA_MIB = 10.0
#: the statements timed; the first two are the target's, the third what a program that builds a
#: mesh pays at its first line (the config machinery, the pipeline, the policies)
STATEMENTS = ("import httpx", "import meshlib", "from meshlib import Mesh")

#: run in each fresh interpreter: the import's wall time and VmRSS growth, and what it loaded
PROBE = """
import json, sys, time

def rss_kib():
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

before_modules = len(sys.modules)
before = rss_kib()
started = time.perf_counter()
{statement}
seconds = time.perf_counter() - started
after = rss_kib()
print(json.dumps({{"seconds": seconds, "rss_kib": after, "grew_kib": after - before,
                   "modules": len(sys.modules) - before_modules}}))
"""


def probe(python: str, statement: str) -> dict[str, Any]:
    done = subprocess.run(
        [python, "-c", PROBE.format(statement=statement)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tempfile.gettempdir(),  # not the repository: import the installed meshlib
    )
    if done.returncode != 0:
        raise SystemExit(f"{statement} failed under {python}:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def clean_venv(where: Path) -> str:
    """A new venv at ``where`` with meshlib's core dependencies only; its python."""
    python = str(where / "bin" / "python")
    steps = (
        [sys.executable, "-m", "venv", str(where)],
        [python, "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"), str(ROOT)],
    )
    for step in steps:
        if subprocess.run(step, check=False).returncode != 0:
            raise SystemExit(
                f"cannot build the clean venv ({' '.join(step[:4])} … failed); "
                "--python PATH measures an interpreter you have"
            )
    return python


def measure(python: str, runs: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {statement: [] for statement in STATEMENTS}
    for _ in range(runs):
        for statement in STATEMENTS:
            samples[statement].append(probe(python, statement))
    rows: dict[str, dict[str, Any]] = {}
    for statement, found in samples.items():
        rows[statement] = {
            "median_s": statistics.median(s["seconds"] for s in found),
            "min_s": min(s["seconds"] for s in found),
            "max_s": max(s["seconds"] for s in found),
            "median_grew_mib": statistics.median(s["grew_kib"] for s in found) / 1024,
            "median_rss_mib": statistics.median(s["rss_kib"] for s in found) / 1024,
            "modules": statistics.median(s["modules"] for s in found),
        }
    return rows


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        f"### import cost ({result['environment']}; median of {result['runs']} fresh interpreters)",
        "",
        "| statement | time (s) | min–max (s) | memory it adds (MiB) | RSS after (MiB) | modules |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for statement in STATEMENTS:
        row = rows[statement]
        lines.append(
            f"| `{statement}` | {row['median_s']:.3f} | {row['min_s']:.3f}–{row['max_s']:.3f}"
            f" | {row['median_grew_mib']:.1f} | {row['median_rss_mib']:.1f} |"
            f" {row['modules']:.0f} |"
        )
    lines += [
        "",
        f"- `import meshlib` ≤ {TARGET_SECONDS} s: {rows['import meshlib']['median_s']:.3f} s — "
        f"{verdict(result['met_time'])}",
        f"- memory ≤ `import httpx` + {TARGET_EXTRA_MIB:.0f} MiB: "
        f"{result['extra_mib']:+.1f} MiB — {verdict(result['met_memory'])}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="fresh interpreters per module")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--python", default=None, help="the interpreter to measure in")
    where.add_argument(
        "--clean", action="store_true", help="measure in a new venv with the core only"
    )
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meshlib-import-") as scratch:
        if args.clean:
            python = clean_venv(Path(scratch) / "venv")
            environment = "a clean venv, meshlib's core dependencies only"
        else:
            python = args.python or sys.executable
            environment = f"the interpreter {python}"
        rows = measure(python, args.runs)
    extra = rows["import meshlib"]["median_grew_mib"] - rows["import httpx"]["median_grew_mib"]
    result: dict[str, Any] = {
        "machine": f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}",
        "environment": environment,
        "runs": args.runs,
        "rows": rows,
        "extra_mib": extra,
        "target_seconds": TARGET_SECONDS,
        "target_extra_mib": TARGET_EXTRA_MIB,
        "met_time": rows["import meshlib"]["median_s"] <= TARGET_SECONDS,
        "met_memory": extra <= TARGET_EXTRA_MIB,
    }
    result["met"] = result["met_time"] and result["met_memory"]
    result["seconds"] = round(time.perf_counter() - started, 1)
    publish("import_cost", result, args.json, markdown)


if __name__ == "__main__":
    main()
