"""``meshctl dashboard`` run as a user runs it, in a process of its own, and page loads of the
Bookinfo demo in a thread: for the dashboard's end-to-end tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from examples.bookinfo.walkthrough import Demo, Visitor

ROOT = Path(__file__).resolve().parents[2]


class DashboardProcess:
    """``meshctl dashboard ARGS --port 0`` in a process of its own; ``url`` is where it serves."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "meshlib.cli", "dashboard", "--port", "0", *args]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(self.process.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        line = first[0] if first else ""
        if not line.startswith("meshctl dashboard: http://127.0.0.1:"):
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise RuntimeError(f"meshctl dashboard did not start: {line!r}\n{err}")
        self.url = line.split(": ", 1)[1].strip()
        self.errors: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line)

    def stop(self) -> int:
        """Ctrl-C, as at a terminal."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=20)


class Load:
    """Page loads in a thread, until stopped or ``limit`` loads or ``seconds`` are done."""

    def __init__(
        self, demo: Demo, user: str | None = None, limit: int = 3000, seconds: float = 120
    ) -> None:
        self.visitor = Visitor(demo.base_url, "sync", user)
        self.limit = limit
        self.seconds = seconds
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and self.done < self.limit and time.monotonic() < deadline:
            self.visitor.load()
            self.done += 1
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.visitor.close()
