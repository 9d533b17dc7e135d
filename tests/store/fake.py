"""An in-memory etcd for the pure core's tests: a revisioned history, compaction, and an outage
switch, behind the calls ``StoreFeed`` makes (``range``, ``watch``)."""

from __future__ import annotations

from collections.abc import Iterator

from meshlib.errors import StoreError
from meshlib.store.etcd import WatchBatch
from meshlib.store.state import Event


class FakeEtcd:
    def __init__(self) -> None:
        self.revision = 1
        self.kv: dict[str, Event] = {}
        self.history: list[Event] = []
        self.compacted = 0
        self.down = False
        self.endpoints = ("fake:2379",)
        #: a watch stream breaks after this many batches (None: it ends after the history)
        self.break_after: int | None = None
        self.watch_starts: list[int] = []

    # ------------------------------------------------------------------ writes

    def txn(self, *changes: tuple[str, str, bytes]) -> int:
        """Puts and deletes at one revision: ``("put", key, value)``, ``("delete", key, b"")``."""
        self.revision += 1
        for kind, key, value in changes:
            event = Event("put" if kind == "put" else "delete", key, value, self.revision)
            self.history.append(event)
            if kind == "put":
                self.kv[key] = event
            else:
                self.kv.pop(key, None)
        return self.revision

    def put(self, key: str, value: bytes) -> int:
        return self.txn(("put", key, value))

    def delete(self, key: str) -> int:
        return self.txn(("delete", key, b""))

    def compact(self) -> None:
        self.compacted = self.revision
        self.history = [e for e in self.history if e.revision > self.compacted]

    # ------------------------------------------------------------------ the client's calls

    def range(self, start: str, end: str | None = None, **_: object) -> tuple[list[Event], int]:
        if self.down:
            raise StoreError("no etcd member answered: fake:2379: connection refused")
        keys = sorted(k for k in self.kv if start <= k < (end or start + "\0"))
        return [self.kv[k] for k in keys], self.revision

    def watch(
        self, start: str, end: str, start_revision: int, *, idle: float = 10.0
    ) -> Iterator[WatchBatch]:
        if self.down:
            raise StoreError("no etcd member accepted the watch: fake:2379: connection refused")
        self.watch_starts.append(start_revision)
        if start_revision <= self.compacted:
            yield WatchBatch(self.revision, created=True)
            yield WatchBatch(self.revision, canceled=True, compact_revision=self.compacted + 1)
            return
        yield WatchBatch(self.revision, created=True)
        sent = 0
        for revision in sorted({e.revision for e in self.history if e.revision >= start_revision}):
            if self.break_after is not None and sent >= self.break_after:
                raise StoreError("etcd watch on fake:2379 broke: connection reset")
            events = tuple(
                e for e in self.history if e.revision == revision and start <= e.key < end
            )
            if events:
                yield WatchBatch(revision, events)
                sent += 1
