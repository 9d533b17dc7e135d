"""HAProxy as a sidecar-style hop on 127.0.0.1, for ``bench.compare``.

``ensure()`` finds the ``haproxy`` program or installs Debian's package (``apt-get``, as root);
``HAProxy.start(upstream_port)`` writes a config and runs ``haproxy -db`` in the foreground, in
a process of its own that ends with the benchmark's. The config is what an outbound sidecar does
for a plain HTTP/1.1 call: keep-alive on both sides (server connections reused across client
connections), ``retries 3`` with ``retry-on all-retryable-errors`` and ``option redispatch``, and
active health checks (``check``) against the upstream; one thread (``nbthread 1``), no logging.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
CONFIG = """\
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 5m
    timeout server 30s
    timeout http-request 30s
    timeout http-keep-alive 5m
    retries 3
    retry-on all-retryable-errors
    option redispatch

frontend outbound
    bind {host}:{port}
    default_backend upstream

backend upstream
    http-reuse always
    option httpchk GET /_hits
    server upstream {host}:{upstream_port} check inter 2s
"""


def ensure() -> tuple[str | None, str]:
    """The ``haproxy`` program's path (installed from Debian's packages when missing), or None
    and why not."""
    found = shutil.which("haproxy")
    if found:
        return found, "found"
    if shutil.which("apt-get") is None:
        return None, "haproxy is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return None, "haproxy is not installed (apt-get install -y haproxy needs root)"
    print("haproxy is not installed: apt-get install -y haproxy", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "haproxy"]

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    if run(install).returncode != 0:
        run(["apt-get", "update", "-qq"])
        done = run(install)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
            return None, "apt-get install -y haproxy failed"
    # Debian's package may start a system-wide haproxy; the benchmark runs its own.
    if shutil.which("systemctl"):
        subprocess.run(["systemctl", "stop", "haproxy"], capture_output=True, check=False)
    elif shutil.which("service"):
        subprocess.run(["service", "haproxy", "stop"], capture_output=True, check=False)
    found = shutil.which("haproxy")
    return (found, "installed") if found else (None, "haproxy not found after apt-get install")


def version(program: str) -> str:
    out = subprocess.run([program, "-v"], capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else ""
    parts = first.split()
    return parts[2] if len(parts) > 2 else first


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark's process ends (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class HAProxy:
    """One haproxy process in front of one upstream."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    @classmethod
    def start(cls, program: str, upstream_port: int, timeout: float = 10.0) -> HAProxy:
        directory = Path(tempfile.mkdtemp(prefix="bench-haproxy-"))
        port = _free_port()
        config = directory / "haproxy.cfg"
        config.write_text(CONFIG.format(host=HOST, port=port, upstream_port=upstream_port))
        check = subprocess.run(
            [program, "-c", "-q", "-f", str(config)], capture_output=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects its config: {check.stderr.decode()[-500:]}")
        log = directory / "stderr.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [program, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no locks or threads
            )
        proxy = cls(process, port, directory)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(proxy.url("/_hits"), timeout=1) as reply:
                    if reply.status == 200:
                        return proxy
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                err = log.read_text(errors="replace")
                proxy.stop()
                raise RuntimeError(f"haproxy did not start: {err[-500:]}")
            time.sleep(0.05)

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> HAProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
