"""Hot reload: re-read a mesh's config files when they change, without a restart.

```python
mesh = Mesh.from_file("mesh.yaml")
mesh.watch(interval=0.5)          # or: ConfigWatcher(mesh, interval=0.5).start()
```

A daemon thread looks, every ``interval`` seconds, at every file the config was loaded from —
the main files, every file an ``include`` brought in — and at the directory of each ``include``
pattern, so that a file added to or removed from ``rules/*.yaml`` counts too. A file's state is
its modification time, size and inode (an editor's save and an atomic ``os.replace`` both show).

Only complete, settled content is applied:

* **Settled.** A change is applied at the first look that finds the files as the look before
  found them: the thread looks again ``settle`` seconds (default: ``interval``) after it saw a
  change, and while the files keep changing it keeps waiting. A file being written — truncated,
  then filled — is not read half-way, as long as its writer does not pause longer than
  ``settle``. (Writing a new file and ``os.replace``-ing it over the old one is always safe.)
* **Read while still.** The files are read, parsed and validated, and then looked at again: if
  they moved meanwhile, nothing is applied and the new state waits to settle in turn.
* **Not emptied.** A file that held resources and now holds none (empty, or only comments) is
  not applied: the config in force stays, as an empty ``kubectl apply`` changes nothing. Delete
  the file (from an ``include`` directory) to remove its resources.

A config that does not load keeps the last good one in force; the problems are logged as
``file:line: path: message`` once per distinct content of the files (the same bad content saved
again, or written back after the file was truncated and refilled, is not read again: the last
16 refused contents are remembered), and kept in ``last_error`` until a later change loads.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshlib.config import model as m
from meshlib.config.load import MeshConfig, store_file
from meshlib.errors import ConfigError, Problem

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

log = logging.getLogger("meshlib.config")

#: How many refused contents (a bad config, an emptied file) the watcher remembers.
REFUSED_KEPT = 16

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


def holds_nothing(text: bytes) -> bool:
    """Whether a config file's text holds no document: only blank lines, comments and document
    markers (``---``, ``...``)."""
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(b"#") and line not in (b"---", b"..."):
            return False
    return True


def _read(path: str) -> bytes | None:
    """A watched file's bytes; None for a directory or a file that cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _listing(path: str) -> tuple[str, ...] | None:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """What the watcher has seen: for admin endpoints and ``meshctl``."""

    running: bool
    interval: float
    checks: int
    reloads: int
    last_reload: float | None  # wall-clock time of the last good reload
    last_error: str | None  # the problems of the last config that did not load
    #: Why a change seen is not in force yet: the files are settling, or one became empty.
    waiting: str | None = None
    settle: float | None = None


class ConfigWatcher:
    """Polls a mesh's config files and reloads the mesh when they change. Thread-safe."""

    def __init__(self, mesh: Mesh, *, interval: float = 0.5, settle: float | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        if settle is not None and settle <= 0:
            raise ValueError("settle must be > 0")
        self.mesh = mesh
        self.interval = interval
        self.settle = interval if settle is None else settle
        self.last_error: ConfigError | None = None
        self.checks = 0
        self.reloads = 0
        self.last_reload: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamps = self._take(watched_paths(mesh.config))
        #: A changed state seen at the last look, waiting for a look that finds it again.
        self._pending: dict[str, Stamp] | None = None
        #: Digests of the contents refused since the last config that loaded (the newest last,
        #: at most REFUSED_KEPT): bad content saved again, or back after an emptied interlude
        #: (a file truncated and refilled in place), is not read or logged again.
        self._refused: dict[str, None] = {}
        #: The config files that held resources in the config in force.
        self._filled = self._holding(mesh.config.files)
        #: Why the state in force is not the files': one became empty.
        self._held: str | None = None
        self._logged_surprise: str | None = None

    @staticmethod
    def _take(paths: Iterable[str]) -> dict[str, Stamp]:
        return {path: stamp_of(path) for path in paths}

    @staticmethod
    def _holding(files: Iterable[str]) -> frozenset[str]:
        """Those of ``files`` that hold at least one document."""
        return frozenset(
            f for f in files if (text := _read(f)) is not None and not holds_nothing(text)
        )

    @property
    def waiting(self) -> str | None:
        """Why a change seen is not in force: it is settling, or a file became empty."""
        if self._pending is not None:
            return "a change is settling: the files changed since the last look"
        return self._held

    def _since(self, read: dict[str, Stamp]) -> dict[str, Stamp]:
        """The stamps of the files the config in force watches: as they were read for the
        files watched before, as they are now for the ones the new config added."""
        return {
            path: read[path] if path in read else stamp_of(path)
            for path in watched_paths(self.mesh.config)
        }

    def _content(self, paths: Iterable[str]) -> str:
        """A digest of what the watched paths hold: each file's bytes, each directory's names."""
        digest = hashlib.sha256()
        for path in sorted(paths):
            digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
            if os.path.isdir(path):
                digest.update(repr(_listing(path)).encode("utf-8", "surrogateescape"))
            else:
                text = _read(path)
                digest.update(b"-" if text is None else b"+%d:" % len(text) + text)
            digest.update(b"\0")
        return digest.hexdigest()

    # ------------------------------------------------------------------ one look

    def changed(self) -> bool:
        """Whether any watched file or directory changed since the last look or reload."""
        return any(stamp_of(path) != known for path, known in self._stamps.items())

    def check(self) -> bool:
        """Look once; reload if a change has settled. True when a new config went into force.

        A change is settled when this look finds the files as the previous look found them
        (and different from the config in force)."""
        with self._lock:
            self.checks += 1
            now = self._take(self._stamps)
            if now == self._stamps:
                self._pending = None
                return False
            if now != self._pending:  # first seen, or moved since the last look: wait a look
                self._pending = now
                return False
            self._pending = None
            return self._apply(now)

    def _apply(self, now: dict[str, Stamp]) -> bool:
        """Read and apply the settled state ``now`` of the files (the lock is held)."""
        files = self.mesh.files
        content = self._content(now)
        if content in self._refused:  # content refused before: saved again, say
            self._stamps = now
            return False
        emptied = sorted(
            f for f in self._filled if (text := _read(f)) is not None and holds_nothing(text)
        )
        if emptied:
            self._refuse(content)
            self._stamps = now
            names = ", ".join(os.path.normpath(f) for f in emptied)
            self._held = (
                f"not applied: {names} became empty (the config in force stays; delete the "
                "file to remove its resources)"
            )
            log.warning("config change %s", self._held)
            return False

        def still() -> bool:  # the files did not move while they were read
            return self._take(now) == now

        try:
            applied = self.mesh.reload(verify=still)
        except ConfigError as exc:
            # Mesh.reload has logged every problem; remember what was refused, so that only
            # another content is tried (and logged) again
            self._refuse(content)
            self.last_error = exc
            self._held = None
            self._stamps = {**now, **self._since(now)}
            return False
        except Exception as exc:  # a config that breaks the mesh: say so once, keep the last
            self._refuse(content)
            self.last_error = ConfigError(
                [Problem(f, 0, "", f"not applied: {type(exc).__name__}: {exc}") for f in files]
            )
            self._held = None
            self._stamps = {**now, **self._since(now)}
            log.exception("config not applied, the last good one stays in force")
            return False
        if not applied:  # written to while being read: that state settles in turn
            self._pending = self._take(now)
            return False
        self._stamps = self._since(now)
        self._filled = self._holding(self.mesh.config.files)
        self._refused.clear()
        self.last_error = None
        self._held = None
        self.reloads += 1
        self.last_reload = time.time()
        names = ", ".join(os.path.normpath(f) for f in self.mesh.config.files)
        log.info("config reloaded: %s", names)
        return True

    def _refuse(self, content: str) -> None:
        self._refused.pop(content, None)
        self._refused[content] = None
        while len(self._refused) > REFUSED_KEPT:
            del self._refused[next(iter(self._refused))]

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
        while not self._stop.wait(self.interval if self._pending is None else self.settle):
            try:
                self.check()
            except Exception as exc:  # the watcher outlives any surprise; logged once
                said = f"{type(exc).__name__}: {exc}"
                if said != self._logged_surprise:
                    self._logged_surprise = said
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
            waiting=self.waiting,
            settle=self.settle,
        )


__all__ = ["ConfigWatcher", "Stamp", "WatchStatus", "holds_nothing", "stamp_of", "watched_paths"]
