"""Builds a mesh's telemetry hub from the Service document's ``spec.telemetry``.

Each part has its own module and one factory: ``tracing.tracer_from_settings``,
``metrics.recorder_from_settings`` and ``accesslog.logger_from_settings``; a part that is not
enabled returns None and costs nothing.
"""

from __future__ import annotations

from meshlib.clock import Clock
from meshlib.config.load import ServiceInfo
from meshlib.telemetry import MeshListener, Telemetry, accesslog, metrics, tracing


def build(service: ServiceInfo, clock: Clock) -> Telemetry:
    """The telemetry hub for ``service``'s settings."""
    settings = service.telemetry
    listeners: list[MeshListener] = []
    recorder = metrics.recorder_from_settings(settings.metrics if settings else None, service)
    if recorder is not None:
        listeners.append(recorder)
    logger = accesslog.logger_from_settings(
        settings.access_log if settings else None, service, clock
    )
    if logger is not None:
        listeners.append(logger)
    tracer = tracing.tracer_from_settings(settings.tracing if settings else None, service, clock)
    return Telemetry(listeners, tracer)
