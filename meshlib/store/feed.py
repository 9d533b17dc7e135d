"""The store's watch, as a daemon thread: list, then watch from the next revision, forever.

```
list [registry/, rules0)  → FleetState.reset(kvs, revision)
watch from revision + 1   → FleetState.apply(events) per response
  stream silent `idle` s  → watch again from revision + 1       (nothing missed, nothing replayed)
  member gone             → the next member, from revision + 1  (no one notices)
  compacted               → list again, reset                   (the difference is one change)
  store's revision went back (a new cluster) → list again
  no member answers       → stale: the last state stays in force; retry with backoff
```

``Health`` is the pure part: whether the view is stale, since when and why, and which call is a
transition (logged once, not at every retry). ``Backoff`` spaces the retries (jittered by a
seeded ``random.Random``).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import StoreError
from meshlib.store.etcd import Compacted, EtcdClient
from meshlib.store.layout import Layout
from meshlib.store.state import Change, FleetState

log = logging.getLogger("meshlib.store")


@dataclass(frozen=True, slots=True)
class HealthStatus:
    stale: bool
    synced: bool  # the store was read at least once
    stale_since: float | None  # wall-clock time it went stale
    last_error: str | None
    last_contact: float | None  # wall-clock time of the last answer from the store


class Health:
    """Whether a service's view of the store is current. It starts stale (nothing read yet);
    ``lost`` and ``reached`` answer whether the call is a transition, the one to report."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.stale = True
        self.synced = False
        self.stale_since: float | None = clock.wall()
        self.last_error: str | None = None
        self.last_contact: float | None = None
        self.announced = False  # this stale spell was reported

    def reached(self) -> bool:
        """The store answered. True when this ends a stale spell (the first sync included)."""
        self.last_contact = self.clock.wall()
        self.synced = True
        if not self.stale:
            return False
        self.stale, self.stale_since, self.last_error = False, None, None
        return True

    def lost(self, reason: str) -> bool:
        """No member answered. True the first time in a stale spell (the one to report)."""
        self.last_error = reason
        if not self.stale:
            self.stale, self.stale_since = True, self.clock.wall()
        if self.announced:
            return False
        self.announced = True
        return True

    def status(self) -> HealthStatus:
        return HealthStatus(
            self.stale, self.synced, self.stale_since, self.last_error, self.last_contact
        )


class Backoff:
    """Retry delays: ``first`` doubling up to ``cap``, each ±20% (seeded)."""

    def __init__(
        self, first: float = 0.1, cap: float = 2.0, rng: random.Random | None = None
    ) -> None:
        self.first, self.cap = first, cap
        self.rng = rng or random.Random()
        self._next = first

    def delay(self) -> float:
        value = self._next
        self._next = min(self.cap, self._next * 2)
        return value * (0.8 + 0.4 * self.rng.random())

    def reset(self) -> None:
        self._next = self.first


class StoreFeed:
    """Keeps a ``FleetState`` current from etcd in a daemon thread; calls ``on_change`` with
    each non-empty change, and ``on_health(stale)`` at each transition (from that thread)."""

    def __init__(
        self,
        client: EtcdClient,
        layout: Layout,
        *,
        url: str = "",
        state: FleetState | None = None,
        on_change: Callable[[Change], None] | None = None,
        on_health: Callable[[bool], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        idle: float = 10.0,
    ) -> None:
        self.client = client
        self.layout = layout
        self.url = url or ",".join(client.endpoints)
        self.state = state if state is not None else FleetState(layout)
        self.on_change = on_change
        self.on_health = on_health
        self.clock = clock
        self.health = Health(clock)
        self.backoff = Backoff(rng=rng)
        self.idle = idle
        self.lists = 0  # how many times the range was listed (the first, and after compaction)
        self.watches = 0  # how many watch streams were opened
        self._need_list = True
        self._streaming = False  # the current watch stream was accepted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ one step each

    def list_now(self) -> Change:
        """List the watched range and reset the state to it (raises ``StoreError``)."""
        start, end = self.layout.watched()
        kvs, revision = self.client.range(start, end)
        self.lists += 1
        change = self.state.reset(kvs, revision)
        self._need_list = False
        self._reached()
        self._deliver(change)
        return change

    def watch_once(self) -> None:
        """One watch stream, from the revision after the state's, until it ends (raises
        ``StoreError``; ``Compacted`` or a store that went back in time mark a new list)."""
        start, end = self.layout.watched()
        self.watches += 1
        self._streaming = False
        for batch in self.client.watch(start, end, self.state.revision + 1, idle=self.idle):
            if self._stop.is_set():
                return
            if batch.canceled:
                if batch.compact_revision:
                    self._need_list = True
                    raise Compacted(batch.compact_revision)
                raise StoreError(f"etcd canceled the watch: {batch.cancel_reason or 'no reason'}")
            if batch.created:
                if batch.revision and batch.revision < self.state.revision:
                    # a store whose revision went back is another store: read it whole
                    self._need_list = True
                    raise StoreError(
                        f"the store's revision went back ({batch.revision} < "
                        f"{self.state.revision}): listing again"
                    )
                self._streaming = True
                self._reached()
                continue
            self._deliver(self.state.apply(batch.events))

    def step(self) -> float:
        """One turn of the loop: list if needed, then watch. Returns how long to wait before
        the next turn (0 after a clean end of stream)."""
        try:
            if self._need_list:
                self.list_now()
            self.watch_once()
        except Compacted as exc:
            log.info("store %s: %s; listing again", self.url, exc)
            return 0.0
        except StoreError as exc:
            if self._stop.is_set():
                return 0.0  # closed under the watch: nothing to report
            if self._need_list and self.health.synced and "went back" in str(exc):
                log.warning("store %s: %s", self.url, exc)
                return 0.0
            if self._streaming:
                # a watch that was running broke (its member stopped): that is no outage
                # until no member takes the next one
                self._streaming = False
                log.info("store %s: %s; watching again", self.url, exc)
                return self.backoff.delay()
            self.lost(str(exc))
            return self.backoff.delay()
        self.backoff.reset()
        return 0.0

    # ------------------------------------------------------------------ the thread

    def start(self) -> StoreFeed:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="meshlib-store", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread: at once when the client is closed right after (that ends the
        stream it reads), else within ``idle`` seconds; waits at most ``timeout``."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step()
            except Exception:  # the watch outlives any surprise; the log says what it was
                log.exception("store %s: unexpected error in the watch", self.url)
                wait = self.backoff.delay()
            if wait:
                self._stop.wait(wait)

    # ------------------------------------------------------------------ reporting

    def _deliver(self, change: Change) -> None:
        for problem in change.problems:
            log.warning("store %s: left out %s", self.url, problem)
        if not change.empty and self.on_change is not None:
            self.on_change(change)

    def _reached(self) -> None:
        announced = self.health.announced
        if self.health.reached():
            self.health.announced = False
            log.log(
                logging.WARNING if announced else logging.INFO,
                "store %s %s (revision %d, rules revision %d)",
                self.url,
                "reachable again" if announced else "read",
                self.state.revision,
                self.state.rules_revision,
            )
            if self.on_health is not None:
                self.on_health(False)

    def lost(self, reason: str) -> None:
        if self.health.lost(reason):
            log.warning(
                "store %s unreachable, keeping the last known endpoints and rules "
                "(revision %d): %s",
                self.url,
                self.state.revision,
                reason,
            )
            if self.on_health is not None:
                self.on_health(True)


__all__ = ["Backoff", "Health", "HealthStatus", "StoreFeed"]
