"""A Prometheus server of a test's own: Debian's ``prometheus`` binary on a free loopback port,
with a generated config, queried through its HTTP API."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

#: Every second: the tests' load runs for seconds, not minutes.
SCRAPE_INTERVAL = "1s"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape_config(jobs: Mapping[str, str]) -> str:
    """A Prometheus config scraping every second: one job per entry, ``name: <the job's
    YAML lines after job_name, indented by four spaces>``."""
    text = (
        f"global: {{scrape_interval: {SCRAPE_INTERVAL}, scrape_timeout: {SCRAPE_INTERVAL}, "
        f"evaluation_interval: {SCRAPE_INTERVAL}}}\n"
        "scrape_configs:\n"
    )
    for name, body in jobs.items():
        text += f"  - job_name: {name}\n{body}"
    return text


class Prometheus:
    """Debian's Prometheus, started on 127.0.0.1 with ``config`` (a prometheus.yml's text)."""

    def __init__(self, binary: str, workdir: Path, config: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = workdir / "prometheus.yml"
        path.write_text(config, encoding="utf-8")
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http.get("/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{self.output()}")
            time.sleep(0.1)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query through ``/api/v1/query`` (evaluated at ``at``, unix seconds, when
        given): the result vector."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._result("/api/v1/query", params)

    def query_range(
        self, promql: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """A range query through ``/api/v1/query_range`` (what a Grafana time series panel
        sends): the result matrix, or a vector for a scalar result."""
        return self._result(
            "/api/v1/query_range",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        )

    def _result(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        response = self.http.get(path, params=params)
        body = response.json()
        assert response.status_code == 200, (params, body)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.http.get("/api/v1/targets").json()["data"][
            "activeTargets"
        ]
        return active

    def stop(self) -> int:
        self.http.close()
        self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        finally:
            self.log.close()

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(encoding="utf-8", errors="replace")[-4000:]
