"""Access log: one line per inbound and outbound request."""

from __future__ import annotations

from meshlib.config import model as m
from meshlib.config.load import ServiceInfo
from meshlib.telemetry import MeshListener


def logger_from_settings(
    settings: m.AccessLogSettings | None, service: ServiceInfo
) -> MeshListener | None:
    return None
