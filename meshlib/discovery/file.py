"""A registry kept in a YAML file, re-read when it changes (no restart).

The file maps service names to endpoints, in the same form as ``registry.static``::

    reviews:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v2}, weight: 2}

The file's state (modification time, size, inode) is looked at at most once per ``refresh``
seconds, on use. As for config files (``meshlib.config.watch``), only complete, settled content
is applied: a change is read at the first look that finds the file as the look before found it
(one ``refresh`` later), and applied only if the file did not move while it was read; a file
that became empty is not applied (delete a service's entries to remove its endpoints). A file
that does not parse or validate leaves the last good endpoints in force, and says why in the
log, once for each content.
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
        self._stamp: Stamp = None  # of the content in force, or last refused
        self._pending: Stamp = None  # a change seen at the last look, waiting to settle
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
        """Look at the file if ``refresh`` has passed; re-read it once a change has settled
        (the same state at two looks in a row). True when endpoints changed."""
        with self._lock:
            self._next_check = self.clock.now() + self.refresh
            stamp = _stamp_of(self.path)
            if stamp is None or stamp == self._stamp:
                self._pending = None
                return False
            if stamp != self._pending:
                self._pending = stamp
                return False
            self._pending = None
        return self.reload(settled=stamp)

    def reload(self, settled: Stamp = None) -> bool:
        """Read the file now. On a bad file, keep the last good endpoints and log the problem
        (once for each state of the file). ``settled``: the state a look found twice, applied
        only if the file is still in it once read; an emptied file is not applied then."""
        try:
            stamp, table, empty = self._read()
        except ConfigError as exc:
            with self._lock:
                seen = self._stamp == (stamp := _stamp_of(self.path))
                self._stamp, self.last_error = stamp, exc
            if not seen:
                log.warning(
                    "registry file %s not applied, keeping the last good one: %s", self.path, exc
                )
            return False
        if settled is not None:
            after = _stamp_of(self.path)
            if stamp != settled or after != settled:  # written to while read: it settles anew
                with self._lock:
                    self._pending = after
                return False
            if empty and self._table:
                with self._lock:
                    self._stamp = stamp
                log.warning(
                    "registry file %s became empty: not applied, the endpoints in force stay",
                    self.path,
                )
                return False
        with self._lock:
            changed = table != self._table
            self._table, self._stamp, self.last_error = table, stamp, None
        return changed

    def _read(self) -> tuple[Stamp, dict[str, tuple[Endpoint, ...]], bool]:
        """The file's state before reading, its endpoints, and whether it holds nothing."""
        stamp = _stamp_of(self.path)
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError.single(self.path, 0, "", f"cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError.single(self.path, 1, "", f"not UTF-8 text: {exc.reason}") from exc
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
        return _stamp_of(self.path) if stamp is None else stamp, table, not documents


Stamp = tuple[int, int, int] | None


def _stamp_of(path: str) -> Stamp:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)
