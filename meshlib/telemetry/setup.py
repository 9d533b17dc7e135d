"""Builds a mesh's telemetry hub from the Service document's ``spec.telemetry``.

Each part has its own module and one factory: ``tracing.tracer_from_settings``,
``metrics.recorder_from_settings`` and ``accesslog.logger_from_settings``; a part that is not
enabled returns None and costs nothing. The metrics and access log modules are imported only
for a service whose config has their section (metrics load ``prometheus_client`` and a scrape
server); tracing's always is, since an app's own tracer provider turns it on without one.
"""

from __future__ import annotations

from meshlib.clock import Clock
from meshlib.config.load import ServiceInfo
from meshlib.telemetry import MeshListener, Telemetry, tracing


def build(service: ServiceInfo, clock: Clock) -> Telemetry:
    """The telemetry hub for ``service``'s settings."""
    settings = service.telemetry
    listeners: list[MeshListener] = []
    if settings is not None and settings.metrics is not None:
        from meshlib.telemetry import metrics  # noqa: PLC0415 - prometheus_client

        recorder = metrics.recorder_from_settings(settings.metrics, service)
        if recorder is not None:
            listeners.append(recorder)
    if settings is not None and settings.access_log is not None:
        from meshlib.telemetry import accesslog  # noqa: PLC0415

        logger = accesslog.logger_from_settings(settings.access_log, service, clock)
        if logger is not None:
            listeners.append(logger)
    tracer = tracing.tracer_from_settings(settings.tracing if settings else None, service, clock)
    return Telemetry(listeners, tracer)
