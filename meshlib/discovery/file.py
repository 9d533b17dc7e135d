"""A registry kept in a YAML file, re-read when it changes (no restart).

The file maps service names to endpoints, in the same form as ``registry.static``::

    reviews:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v2}, weight: 2}

The file's modification time is checked at most once per ``refresh`` seconds, on use. A file
that does not parse or validate leaves the last good endpoints in force, and says why in the log.
"""

from __future__ import annotations

import logging
import os
import threading

from pydantic import TypeAdapter, ValidationError

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.config import model as m
from meshlib.config.compile import fqdn
from meshlib.config.source import format_path, parse_yaml
from meshlib.discovery import Endpoint
from meshlib.errors import ConfigError, Problem

log = logging.getLogger("meshlib.discovery")

_SCHEMA: TypeAdapter[dict[str, list[m.Endpoint]]] = TypeAdapter(dict[str, list[m.Endpoint]])


class FileRegistry:
    """Endpoints from a watched YAML file. Thread-safe; a reload swaps one reference."""

    def __init__(
        self,
        path: str,
        namespace: str = "default",
        *,
        refresh: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.path = path
        self.namespace = namespace
        self.refresh = refresh
        self.clock = clock
        self._lock = threading.Lock()
        self._table: dict[str, tuple[Endpoint, ...]] = {}
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self.last_error: ConfigError | None = None
        self.reload()
        if self.last_error is not None:
            raise self.last_error

    def endpoints(self, host: str) -> tuple[Endpoint, ...]:
        if self.clock.now() >= self._next_check:
            self.check()
        return self._table.get(host, ())

    def hosts(self) -> list[str]:
        return list(self._table)

    def check(self) -> bool:
        """Re-read the file if it changed since the last read. True when endpoints changed."""
        with self._lock:
            self._next_check = self.clock.now() + self.refresh
            try:
                info = os.stat(self.path)
            except OSError:
                return False
            if (info.st_mtime_ns, info.st_size) == self._stamp:
                return False
        return self.reload()

    def reload(self) -> bool:
        """Read the file now. On a bad file, keep the last good endpoints and log the problem."""
        try:
            stamp, table = self._read()
        except ConfigError as exc:
            self.last_error = exc
            log.warning(
                "registry file %s not applied, keeping the last good one: %s", self.path, exc
            )
            return False
        with self._lock:
            changed = table != self._table
            self._table, self._stamp, self.last_error = table, stamp, None
        return changed

    def _read(self) -> tuple[tuple[int, int], dict[str, tuple[Endpoint, ...]]]:
        try:
            info = os.stat(self.path)
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError.single(self.path, 0, "", f"cannot read: {exc.strerror}") from exc
        documents, problems = parse_yaml(text, self.path)
        if problems:
            raise ConfigError(problems)
        data = documents[0].data if documents else {}
        try:
            parsed = _SCHEMA.validate_python(data or {}, strict=True)
        except ValidationError as exc:
            doc = documents[0]
            raise ConfigError(
                [
                    Problem(
                        self.path,
                        doc.line_of(tuple(e["loc"])),
                        format_path(tuple(e["loc"])),
                        str(e["msg"]).removeprefix("Value error, "),
                    )
                    for e in exc.errors(include_url=False)
                ]
            ) from None
        table = {
            fqdn(name, self.namespace): tuple(
                Endpoint.parse(e.address, e.labels, e.weight) for e in endpoints
            )
            for name, endpoints in parsed.items()
        }
        return (info.st_mtime_ns, info.st_size), table
