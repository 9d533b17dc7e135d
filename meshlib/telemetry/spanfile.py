"""The ``file`` span exporter: each finished span as one JSON object a line, appended to a file.

For local use: ``spec.telemetry.tracing.file: traces.jsonl`` (or ``$MESHLIB_TRACES_FILE``), then
read the file with ``jq`` or ``meshctl``. Each line has the form of ``GET /_mesh/traces``'s spans
(``meshlib.telemetry.tracing.span_record``). The file is opened for appending, so several
processes may share one: each batch is written with a single ``write`` of whole lines.

This module imports the OpenTelemetry SDK; ``tracing.provider_from_environment`` imports it only
when it sets the exporter up.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meshlib.errors import ConfigError
from meshlib.telemetry.tracing import span_record


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span to ``path`` as a line of JSON (see the module's docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            # O_APPEND: every write lands at the end, whoever else writes to the file
            self._file: io.FileIO | None = io.FileIO(self.path, "a")
        except OSError as exc:
            raise ConfigError.single(
                "spec.telemetry.tracing.file",
                0,
                "",
                f"cannot open the traces file {self.path}: {exc.strerror or exc}",
            ) from None
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            record = span_record(span)
            if record is not None:
                lines.append(json.dumps(record, separators=(",", ":")) + "\n")
        with self._lock:
            handle = self._file
            if handle is None:
                return SpanExportResult.FAILURE
            try:
                handle.write("".join(lines).encode("utf-8"))  # one write(2), unbuffered
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            handle, self._file = self._file, None
        if handle is not None:
            handle.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


__all__ = ["JsonLinesSpanExporter"]
