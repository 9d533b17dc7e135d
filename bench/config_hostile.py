"""What hostile YAML costs to refuse: alias bombs, merge-key bombs, deep nesting, a loop.

    python -m bench.config_hostile

For each text (the bombs of ``tests/chaos/test_config_yaml.py``): its size, the best of five
wall-clock times to load it (``load_texts``: a ``ConfigError``) and the peak memory traced while
loading it once (``tracemalloc``).
"""

from __future__ import annotations

import time
import tracemalloc

from meshlib import ConfigError
from meshlib.config.load import load_texts
from tests.chaos.test_config_yaml import laughs, merge_laughs

TEXTS = {
    "laughs(9)": laughs(9),
    "laughs(12)": laughs(12),
    "merge_laughs(9)": merge_laughs(9),
    "1000-deep lists": "a: " + "[" * 1000 + "]" * 1000 + "\n",
    "a loop": "a: &a [*a]\n",
}


def refuse(text: str) -> None:
    try:
        load_texts([("hostile.yaml", text)])
    except ConfigError:
        return
    raise AssertionError("loaded")


def main() -> None:
    for name, text in TEXTS.items():
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            refuse(text)
            best = min(best, time.perf_counter() - started)
        tracemalloc.start()
        try:
            refuse(text)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(
            f"{name:16} {len(text):5} bytes  refused in {best * 1000:6.1f} ms (best of 5)  "
            f"peak traced {peak / 1e6:5.2f} MB"
        )


if __name__ == "__main__":
    main()
