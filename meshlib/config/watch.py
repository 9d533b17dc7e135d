"""Hot reload: re-read a mesh's config files when they change, without a restart.

```python
mesh = Mesh.from_file("mesh.yaml")
mesh.watch(interval=0.5)          # or: ConfigWatcher(mesh, interval=0.5).start()
```

A daemon thread looks, every ``interval`` seconds, at every file the config was loaded from —
the main files, every file an ``include`` brought in — and at the directory of each ``include``
pattern, so that a file added to or removed from ``rules/*.yaml`` counts too. When anything
changed (modification time, size or inode: an editor's save and an atomic ``os.replace`` both
show), it calls ``Mesh.reload()``. A config that does not load keeps the last good one in force;
the watcher logs every problem as ``file:line: path: message`` and keeps it in ``last_error``
until a later change loads. Only a change is acted on: a bad file is reported once, not at every
look.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshlib.config import model as m
from meshlib.config.load import MeshConfig, store_file
from meshlib.errors import ConfigError

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

log = logging.getLogger("meshlib.config")

#: What a file's or directory's state is compared by: (mtime ns, size, inode), None when absent.
Stamp = tuple[int, int, int] | None


def stamp_of(path: str) -> Stamp:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def watched_paths(config: MeshConfig) -> list[str]:
    """The files ``config`` was loaded from, and the directories of its ``include`` patterns."""
    paths = dict.fromkeys(config.files)
    for resource in config.of_kind("Service"):
        spec = resource.spec
        if not isinstance(spec, m.Service):
            continue
        base = os.path.dirname(resource.file) or "."
        rules = store_file(spec.store, base)  # a file:// store: watched even before it exists
        if rules is not None:
            paths.setdefault(rules)
        for pattern in spec.include or ():
            full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
            if glob.has_magic(full):
                paths.setdefault(_fixed_part(full))
            else:
                paths.setdefault(full)
    return list(paths)


def _fixed_part(pattern: str) -> str:
    """The directory of a glob pattern up to its first wildcard (``rules/*.yaml`` → ``rules``)."""
    parts: list[str] = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or os.sep


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """What the watcher has seen: for admin endpoints and ``meshctl``."""

    running: bool
    interval: float
    checks: int
    reloads: int
    last_reload: float | None  # wall-clock time of the last good reload
    last_error: str | None  # the problems of the last config that did not load


class ConfigWatcher:
    """Polls a mesh's config files and reloads the mesh when they change. Thread-safe."""

    def __init__(self, mesh: Mesh, *, interval: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.mesh = mesh
        self.interval = interval
        self.last_error: ConfigError | None = None
        self.checks = 0
        self.reloads = 0
        self.last_reload: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamps = self._take(watched_paths(mesh.config))

    @staticmethod
    def _take(paths: Iterable[str]) -> dict[str, Stamp]:
        return {path: stamp_of(path) for path in paths}

    def _since(self, read: dict[str, Stamp]) -> dict[str, Stamp]:
        """The stamps of the files the config in force watches: as they were read for the
        files watched before, as they are now for the ones the new config added."""
        return {
            path: read[path] if path in read else stamp_of(path)
            for path in watched_paths(self.mesh.config)
        }

    # ------------------------------------------------------------------ one look

    def changed(self) -> bool:
        """Whether any watched file or directory changed since the last look or reload."""
        return any(stamp_of(path) != known for path, known in self._stamps.items())

    def check(self) -> bool:
        """Look once; reload if anything changed. True when a new config went into force."""
        with self._lock:
            self.checks += 1
            if not self.changed():
                return False
            # The state about to be read: a write that lands while the reload reads the files
            # differs from it, so the next look loads that write too.
            read = self._take(self._stamps)
            try:
                self.mesh.reload()
            except ConfigError as exc:
                # Mesh.reload has logged every problem; remember what was seen, so that only
                # the next change is tried again.
                self.last_error = exc
                self._stamps = {**read, **self._since(read)}
                return False
            self._stamps = self._since(read)
            self.last_error = None
            self.reloads += 1
            self.last_reload = time.time()
            files = ", ".join(os.path.normpath(f) for f in self.mesh.config.files)
            log.info("config reloaded: %s", files)
            return True

    # ------------------------------------------------------------------ the thread

    def start(self) -> ConfigWatcher:
        """Start the polling thread (a daemon); starting twice is harmless."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="meshlib-config-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watcher outlives any surprise; the log says what it was
                log.exception("config watch: unexpected error")

    def status(self) -> WatchStatus:
        error = self.last_error
        return WatchStatus(
            running=self.running,
            interval=self.interval,
            checks=self.checks,
            reloads=self.reloads,
            last_reload=self.last_reload,
            last_error=str(error) if error is not None else None,
        )


__all__ = ["ConfigWatcher", "Stamp", "WatchStatus", "stamp_of", "watched_paths"]
