"""Self-registration: this service's endpoint in the store, on a lease kept alive in the background.

```python
with mesh.register("10.0.0.5:9080", labels={"zone": "a"}, ttl=10) as registration:
    serve()                        # others find this endpoint while the lease lives
# close() (or leaving the block) revokes the lease: the endpoint is gone at once
```

A registration writes two keys on one lease (``meshlib.store.layout``): the endpoint under
``registry/`` (address, labels, version) and the service's status under ``status/`` (the rules
revision it runs, whether its view is stale). A thread renews the lease every ``ttl / 3``
seconds. A process that dies without ``close()`` (SIGKILL) stops renewing: etcd deletes both
keys when the lease expires, ``ttl`` seconds later, and every watching service sees the endpoint
go.

When the store cannot be reached the thread keeps trying; a lease that expired meanwhile (etcd
answers TTL 0) is granted again and both keys written again, so the endpoint comes back by
itself when the store does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import StoreError
from meshlib.store.etcd import EtcdClient
from meshlib.store.layout import Layout
from meshlib.store.state import encode_endpoint

log = logging.getLogger("meshlib.store")

MIN_TTL = 2
MAX_TTL = 3600
#: seconds between tries while the store does not answer
RETRY = 0.5


class Registration:
    """A registered endpoint (see the module). A context manager; ``close()`` is idempotent."""

    def __init__(
        self,
        client: EtcdClient,
        layout: Layout,
        *,
        namespace: str,
        service: str,
        address: str,
        labels: Mapping[str, str],
        version: str | None,
        ttl: int = 10,
        report: Callable[[], Mapping[str, Any]] | None = None,
        on_close: Callable[[Registration], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be a whole number of seconds, {MIN_TTL} to {MAX_TTL}")
        self.client = client
        self.clock = clock
        self.namespace, self.service, self.address = namespace, service, address
        self.key = layout.endpoint(namespace, service, address)  # ValueError: a bad address
        self.status_key = layout.status(namespace, service, address)
        self.labels = dict(labels)
        self.version = version
        self.ttl = ttl
        self.lease = 0
        self.registrations = 0  # how many times the keys were written on a new lease
        self._report = report or dict
        self._on_close = on_close
        self._reported: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.closed = False

    @property
    def registered(self) -> bool:
        """Whether the endpoint is in the store now (as far as this process knows)."""
        return self.lease != 0 and not self.closed

    # ------------------------------------------------------------------ life

    def start(self) -> Registration:
        """Register now (when the store answers; otherwise the thread keeps trying) and start
        renewing the lease."""
        try:
            self._register()
        except StoreError as exc:
            log.warning("registering %s: the store did not answer, retrying: %s", self.key, exc)
        self._thread = threading.Thread(
            target=self._run, name=f"meshlib-lease-{self.address}", daemon=True
        )
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Revoke the lease (the endpoint and the status go at once) and stop renewing it."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        lease, self.lease = self.lease, 0
        if lease:
            try:
                self.client.revoke(lease, timeout=timeout)
            except StoreError as exc:
                log.warning("deregistering %s: %s; it goes when its lease expires", self.key, exc)
        if self._on_close is not None:
            self._on_close(self)

    def __enter__(self) -> Registration:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Registration:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        import asyncio  # noqa: PLC0415

        await asyncio.to_thread(self.close)

    def changed(self) -> None:
        """The service's status changed (a new rules revision, stale or not): write it."""
        self._wake.set()

    # ------------------------------------------------------------------ the work

    def _status(self) -> bytes:
        data = {
            **self._report(),
            "version": self.version,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def _register(self) -> None:
        lease = self.client.grant(self.ttl)
        status = self._status()
        value = encode_endpoint(self.address, self.labels, self.version)
        self.client.txn(
            [],
            [
                EtcdClient.op_put(self.key, value, lease),
                EtcdClient.op_put(self.status_key, status, lease),
            ],
        )
        with self._lock:
            if self.closed:  # closed while registering: undo
                self.client.revoke(lease)
                return
            self.lease = lease
            self._reported = status.decode()
            self.registrations += 1

    def _run(self) -> None:
        interval = max(self.ttl / 3.0, 0.5)
        renew_at = self.clock.now() + interval
        while not self._stop.is_set():
            wait = RETRY if not self.lease else max(0.0, renew_at - self.clock.now())
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if not self.lease:
                    self._register()
                    log.info("registered %s", self.key)
                    renew_at = self.clock.now() + interval
                    continue
                if self.clock.now() >= renew_at:
                    if self.client.keepalive(self.lease) <= 0:
                        log.warning("the lease of %s expired: registering again", self.key)
                        self.lease = 0
                        self._register()
                    renew_at = self.clock.now() + interval
                status = self._status()
                if status.decode() != self._reported:
                    self.client.put(self.status_key, status, lease=self.lease)
                    self._reported = status.decode()
            except StoreError as exc:
                log.debug("the lease of %s: %s", self.key, exc)
                renew_at = min(renew_at, self.clock.now() + RETRY)
            except Exception:  # the thread outlives any surprise; the log says what it was
                log.exception("the lease of %s: unexpected error", self.key)
                renew_at = self.clock.now() + RETRY


__all__ = ["MAX_TTL", "MIN_TTL", "RETRY", "Registration"]
