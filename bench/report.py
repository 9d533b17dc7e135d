"""What the benchmarks share: their JSON files in ``bench/results/`` and a few small figures."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """``bench/results/<name>.json``, written whole (a temporary file, then a rename)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(scratch, path)
    return path


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return float(ordered[index])


def rss_kib() -> int:
    """This process's resident set size (``VmRSS``), in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def verdict(met: bool | None) -> str:
    if met is None:
        return "–"
    return "PASS" if met else "**MISS**"


def publish(
    name: str, result: dict[str, Any], as_json: bool, markdown: Callable[[dict[str, Any]], str]
) -> Path:
    """Write ``bench/results/<name>.json`` and print the result: as JSON, or its markdown table
    and where the JSON went."""
    path = write_json(name, result)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))
        print(f"\n({result['seconds']} s; JSON in {path})")
    return path
