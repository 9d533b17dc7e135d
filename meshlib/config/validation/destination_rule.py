"""Istio's validation of a destination rule."""

from __future__ import annotations

from meshlib.config import model as m
from meshlib.config.validation.findings import Finding


def check(spec: m.Model, metadata: m.Metadata) -> list[Finding]:
    return []
