"""A real etcd cluster on this machine, for tests, benchmarks and trying things out.

```python
with EtcdCluster(size=3) as cluster:          # three members on free 127.0.0.1 ports
    url = cluster.url("/meshlib")             # etcd://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/meshlib
    cluster.kill(cluster.leader())            # SIGKILL the leader; the other two elect one
    cluster.restart_all()                     # every member again, on the same ports and data
```

It runs the ``etcd`` binary (Debian's ``etcd-server``; ``$ETCD_BINARY`` names another) in a
temporary directory, with short heartbeat and election timeouts so that a lost leader is
replaced within about a second, and removes everything on ``close()``. ``available()`` says
whether the binary is there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Any

import httpx

BINARY_ENV = "ETCD_BINARY"
START_TIMEOUT = 20.0


def binary() -> str | None:
    """The etcd binary to run, or None when there is none."""
    return shutil.which(os.environ.get(BINARY_ENV, "etcd"))


def available() -> bool:
    return binary() is not None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EtcdCluster:
    """``size`` etcd members on ``host`` (see the module)."""

    def __init__(
        self,
        size: int = 1,
        *,
        host: str = "127.0.0.1",
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        extra_args: tuple[str, ...] = (),
        netns: tuple[str, ...] | None = None,
    ) -> None:
        found = binary()
        if found is None:
            raise FileNotFoundError("no etcd binary (apt-get install etcd-server)")
        self.binary = found
        self.size = size
        self.host = host
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.extra_args = extra_args
        #: a command prefix for the members, e.g. ("ip", "netns", "exec", "ns1"), or None; in a
        #: namespace of its own the members use etcd's ports (2379, 2380, ...) and ``start``
        #: does not wait for them (this process may not reach them)
        self.netns = netns
        self.root = tempfile.mkdtemp(prefix="meshlib-etcd-")
        self.names = [f"m{i}" for i in range(size)]
        if netns is None:
            self.client_ports = [free_port(host) for _ in range(size)]
            self.peer_ports = [free_port(host) for _ in range(size)]
        else:  # a namespace of its own: etcd's own ports are free there
            self.client_ports = [2379 + 2 * i for i in range(size)]
            self.peer_ports = [2380 + 2 * i for i in range(size)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * size
        self._token = f"meshlib-{os.getpid()}-{id(self)}"

    # ------------------------------------------------------------------ addresses

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.host}:{port}" for port in self.client_ports]

    def url(self, prefix: str = "/meshlib") -> str:
        return f"etcd://{','.join(self.endpoints)}{prefix}"

    # ------------------------------------------------------------------ life

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> EtcdCluster:
        try:
            for index in range(self.size):
                self._spawn(index)
            if self.netns is None:  # from another namespace it cannot be asked; clients retry
                self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self, index: int) -> None:
        cluster = ",".join(
            f"{name}=http://{self.host}:{port}"
            for name, port in zip(self.names, self.peer_ports, strict=True)
        )
        client = f"http://{self.host}:{self.client_ports[index]}"
        peer = f"http://{self.host}:{self.peer_ports[index]}"
        data = os.path.join(self.root, self.names[index])
        command = [
            self.binary,
            "--name",
            self.names[index],
            "--data-dir",
            data,
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            self._token,
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            str(self.heartbeat_ms),
            "--election-timeout",
            str(self.election_ms),
            "--logger",
            "zap",
            "--log-outputs",
            os.path.join(self.root, f"{self.names[index]}.log"),
            *self.extra_args,
        ]
        if self.netns is not None:
            command = [*self.netns, *command]
        self.processes[index] = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = START_TIMEOUT, members: list[int] | None = None) -> None:
        """Until each running member (or each of ``members``) answers and knows a leader."""
        deadline = time.monotonic() + timeout
        wanted = members if members is not None else self.running()
        for index in wanted:
            while True:
                process = self.processes[index]
                if process is None or process.poll() is not None:
                    raise RuntimeError(f"etcd member {self.names[index]} exited: {self.log(index)}")
                if str(self.status(index).get("leader", "0")) not in ("0", ""):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd member {self.names[index]} not ready in time")
                time.sleep(0.05)

    def status(self, index: int) -> dict[str, Any]:
        """The member's ``maintenance/status`` (empty when it does not answer)."""
        try:
            response = httpx.post(
                f"http://{self.endpoints[index]}/v3/maintenance/status", json={}, timeout=1.0
            )
            data = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        return data if isinstance(data, dict) and "leader" in data else {}

    def running(self) -> list[int]:
        return [i for i, p in enumerate(self.processes) if p is not None and p.poll() is None]

    def leader(self) -> int:
        """The index of the member that leads now."""
        for index in self.running():
            status = self.status(index)
            if status and status["leader"] == (status.get("header") or {}).get("member_id"):
                return index
        raise RuntimeError("no etcd member leads")

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Signal one member (SIGKILL: no goodbye) and wait for it to go."""
        process = self.processes[index]
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=10)

    def stop_all(self) -> None:
        for index in range(self.size):
            self.kill(index, signal.SIGTERM)

    def restart(self, index: int) -> None:
        """Start a stopped member again, on its ports and data."""
        self.kill(index)
        self._spawn(index)

    def restart_all(self, wait: bool = True) -> None:
        for index in range(self.size):
            self.restart(index)
        if wait:
            self.wait_ready()

    def log(self, index: int) -> str:
        path = os.path.join(self.root, f"{self.names[index]}.log")
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        for index in range(self.size):
            with contextlib.suppress(Exception):
                self.kill(index)
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["BINARY_ENV", "EtcdCluster", "available", "binary", "free_port"]
