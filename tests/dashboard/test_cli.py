"""``meshctl dashboard`` on the command line: what it needs, what it refuses, where it listens,
and how it stops."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from meshlib.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--admin", "127.0.0.1:9080"], "--admin 127.0.0.1:9080: not an http:// or https:// URL"),
        (["--admin", "http://a", "--registry", "r.yaml"], "name the services one way"),
        (["--admin", "http://a", "--interval", "0"], "--interval must be above 0"),
        (["--admin", "http://a", "--interval", "5", "--window", "2"], "at least one interval"),
        (["--prometheus", "localhost:9090"], "--prometheus localhost:9090: not a URL"),
        (["--admin", "http://a", "--ca", "/nonexistent/ca"], "--ca /nonexistent/ca:"),
        (["--registry", "/nonexistent/registry.yaml"], "registry file /nonexistent/registry.yaml"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dashboard", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshctl dashboard: ")
    assert message in err


def test_without_services_it_says_how_to_name_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOOKINFO_RUN_DIR", str(tmp_path))  # no demo runs there

    assert main(["dashboard"]) == 2

    err = capsys.readouterr().err
    assert "--bookinfo [RUN_DIR]" in err
    assert "--admin URL" in err
    assert "--prometheus URL" in err


def test_a_port_in_use_is_said_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        code = main(["dashboard", "--admin", "http://127.0.0.1:1", "--port", str(port)])

    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "--port" in err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_it_serves_on_127_0_0_1_and_stops_cleanly(stop: signal.Signals) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshlib.cli",
            "dashboard",
            "--port",
            "0",
            "--admin",
            "http://127.0.0.1:1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("meshctl dashboard: http://127.0.0.1:"), first
        url = first.split(": ", 1)[1].strip()
        second = process.stdout.readline()
        assert second.strip() == "data: 1 admin endpoint(s); Ctrl-C stops."
        page = httpx.get(url, timeout=5)
        assert page.status_code == 200
        assert '<svg id="graph"' in page.text
    finally:
        process.send_signal(stop)
        code = process.wait(timeout=20)
    _, err = process.communicate(timeout=5)
    assert code == 0, err
    assert "Traceback" not in err
