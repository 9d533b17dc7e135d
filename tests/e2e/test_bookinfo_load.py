"""``meshctl bookinfo load``: concurrent calls to a service of the running demo through a mesh
with the rules in force (fortio and its sidecar in Istio's circuit-breaking task), counted by
status code and response flag — here against the demo's own six processes on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.bookinfo import walkthrough

#: The tutorial's circuit-breaking rule for productpage (Istio's httpbin settings).
CIRCUIT_BREAKER = walkthrough.RULES["productpage-circuit-breaker.yaml"]


def meshctl(demo: walkthrough.Demo, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "meshlib.cli", "bookinfo", *args]
    command += ["--run-dir", str(demo.run_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def counted(output: str) -> tuple[dict[str, int], dict[str, int]]:
    """The status codes and flags ``load`` printed, with their counts."""
    codes = {m[0]: int(m[1]) for m in re.findall(r"^Code (\d+)\s+: (\d+) \(", output, re.M)}
    flags = {m[0]: int(m[1]) for m in re.findall(r"^  (\S+)\s+: (\d+) \(", output, re.M)}
    return codes, flags


@pytest.fixture
def breaker(demo: walkthrough.Demo, tmp_path: Path) -> Iterator[None]:
    """The circuit-breaking task's pool limits on productpage, for the test's length."""
    demo.reset()
    path = tmp_path / "productpage-circuit-breaker.yaml"
    path.write_text(CIRCUIT_BREAKER, encoding="utf-8")
    demo.apply(path)
    try:
        yield
    finally:
        demo.reset()


def test_without_limits_every_call_is_answered(demo: walkthrough.Demo) -> None:
    demo.reset()
    done = meshctl(demo, "load", "-c", "3", "-n", "12")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "12 calls to http://productpage:9080/productpage, 3 at a time, through a mesh with the "
        "demo's rules in force"
    )
    assert lines[1:4] == [
        "Code 200 : 12 (100.0 %)",
        "Response flags (x-mesh-response-flags):",
        "  -   : 12 (100.0 %)  no flag: the service answered",
    ]
    assert re.fullmatch(r"All done: 12 calls in \d+\.\ds", lines[4])
    assert len(lines) == 5


def test_the_pool_limits_refuse_the_overflow_with_503_uo(
    demo: walkthrough.Demo, breaker: None
) -> None:
    done = meshctl(demo, "load", "-c", "3", "-n", "30")
    assert done.returncode == 0, done.stderr
    codes, flags = counted(done.stdout)
    assert sum(codes.values()) == sum(flags.values()) == 30
    assert set(codes) == {"200", "503"}, done.stdout
    assert codes["200"] >= 1  # the call that holds the connection goes through
    assert flags == {"-": codes["200"], "UO": codes["503"]}  # every 503 is the pool's
    assert "upstream overflow" in done.stdout


def test_other_services_and_headers(demo: walkthrough.Demo) -> None:
    demo.reset()
    done = meshctl(demo, "load", "--service", "details", "-n", "4", "-H", "end-user: jason")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("4 calls to http://details:9080/details/0, 2 ")
    assert counted(done.stdout) == ({"200": 4}, {"-": 4})


def test_bad_arguments_exit_2_and_no_demo_exits_1(demo: walkthrough.Demo, tmp_path: Path) -> None:
    done = meshctl(demo, "load", "--service", "nosuch")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "meshctl bookinfo load: no service 'nosuch' in the demo (its services: details, "
        "productpage, ratings, reviews)\n"
    )
    done = meshctl(demo, "load", "-c", "0")
    assert (done.returncode, done.stderr) == (
        2,
        "meshctl bookinfo load: -c must be 1 to 64 and -n 1 to 10000\n",
    )
    command = [sys.executable, "-m", "meshlib.cli", "bookinfo", "load", "-d", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith(f"meshctl bookinfo: no Bookinfo demo runs from {tmp_path}")
