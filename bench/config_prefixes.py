"""How many half-written states of a config file a watcher could apply.

    python -m bench.config_prefixes [--json]

A file rewritten in place goes through every prefix of its new text. This counts, for a sample
config (a Service with its registry, a VirtualService, a DestinationRule):

* ``prefixes``: the prefixes of the text, the empty one included, the whole text not;
* ``load``: those that load as a config at all — each one a config other than the file's (a
  route to a subset not defined yet, no registry: calls fail under it);
* ``applied (one look per write)``: the prefixes a real ``ConfigWatcher`` applies when the
  file is written one byte at a time in place and the watcher looks once between every two
  writes (a writer that never pauses for a whole look), the whole text at the end;
* ``applied if seen at every change``: the same count for a watcher that applies any change a
  look sees (meshlib's rule before settling): every prefix that loads.
* ``could apply with a paused writer``: prefixes that load and are not empty: what a writer that
  stops half-way for ``settle`` seconds or more could get applied (an empty file never is).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from meshlib import ConfigError, Mesh
from meshlib.config.load import load_texts
from meshlib.config.watch import ConfigWatcher, holds_nothing

SAMPLE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
    retries: {attempts: 3, perTryTimeout: 2s}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  registry:
    static:
      reviews:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v2}}
"""


def count(text: str = SAMPLE) -> dict[str, int]:
    whole = load_texts([("mesh.yaml", text)]).resources
    loading = other = paused = 0
    for end in range(len(text)):
        try:
            prefix = load_texts([("mesh.yaml", text[:end])])
        except ConfigError:
            continue
        loading += 1
        other += prefix.resources != whole
        paused += not holds_nothing(text[:end].encode())
    return {
        "bytes": len(text),
        "prefixes": len(text),
        "load": loading,
        "load as another config": other,
        "applied (one look per write)": _watched(text),
        "applied if seen at every change": loading,
        "could apply with a paused writer": paused,
    }


def _watched(text: str) -> int:
    """Prefixes a ConfigWatcher applies when it looks between every two one-byte writes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "mesh.yaml")
        path.write_text(text.replace("subset: v1", "subset: v2"), encoding="utf-8")
        mesh = Mesh.from_file(path)
        watcher = ConfigWatcher(mesh, interval=1.0)
        try:
            applied = 0
            with path.open("w", encoding="utf-8") as out:
                for end in range(len(text) + 1):
                    if end:
                        out.write(text[end - 1])
                    out.flush()
                    os.utime(path, ns=(end, end))  # a new state even on a coarse clock
                    applied += watcher.check() and end < len(text)
            return applied
        finally:
            mesh.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = count()
    if args.json:
        print(json.dumps(figures))
        return
    for name, value in figures.items():
        print(f"{name:34} {value}")


if __name__ == "__main__":
    main()
