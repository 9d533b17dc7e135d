"""What a validation rule reports: where, what, and whether it rejects the resource."""

from __future__ import annotations

from dataclasses import dataclass

from meshlib.config.source import Path
from meshlib.errors import Severity


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of Istio's validation. ``path`` starts at the document's root
    (``("spec", "http", 0, "timeout")``), so that the loader can name its line."""

    path: Path
    message: str
    severity: Severity = "error"


def error(path: Path, message: str) -> Finding:
    return Finding(path, message)


def warning(path: Path, message: str) -> Finding:
    return Finding(path, message, "warning")
