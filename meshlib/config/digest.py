"""Which config is in force: a digest of a loaded config's resources.

Two loads of the same resources give the same digest, whatever the files were called, where they
were read from, how they were formatted or in which order the resources came; any change to a
resource (a weight, a delay, an annotation) gives another. ``meshctl bookinfo apply`` computes the
digest each service should run after a change and waits until every service reports it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from meshlib.config.load import MeshConfig, Resource


def config_digest(config: MeshConfig) -> str:
    """The digest (hex SHA-256) of every resource of ``config``, the ``Service`` document too."""
    entries = sorted((_entry(r) for r in config.resources), key=lambda e: e[:4])
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _entry(resource: Resource) -> tuple[str, str, str, str, Any]:
    return (
        resource.kind,
        resource.namespace,
        resource.name,
        resource.api_version,
        resource.document.data,
    )


__all__ = ["config_digest"]
