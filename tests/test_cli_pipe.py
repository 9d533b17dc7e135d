"""``meshctl ... | head``: when the reader of its output goes away, meshctl stops quietly, with
the exit code a shell shows for a command SIGPIPE ends (141, as for git or cat), not a
``BrokenPipeError`` traceback. Checked through real pipes."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from meshlib.cli import EXIT_BROKEN_PIPE

MESHCTL = [sys.executable, "-m", "meshlib.cli"]


def many_warnings(folder: Path) -> Path:
    """A valid config whose ``validate`` output is far larger than a pipe's buffer (64 KiB):
    3000 routes after a catch-all, one warning each."""
    routes = "".join(
        f"  - match: [{{uri: {{prefix: /p{i}}}}}]\n"
        "    route: [{destination: {host: reviews}}]\n"
        for i in range(3000)
    )
    path = folder / "many.yaml"
    path.write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"
        "spec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n"
        + routes,
        encoding="utf-8",
    )
    return path


def test_piped_into_head_it_exits_141_without_a_traceback(tmp_path: Path) -> None:
    command = shlex.join([*MESHCTL, "validate", str(many_warnings(tmp_path))])
    done = subprocess.run(
        ["bash", "-c", f'{command} | head -n 2; echo "meshctl exited ${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{tmp_path / 'many.yaml'}:") for line in lines)
    assert done.stderr == f"meshctl exited {EXIT_BROKEN_PIPE}\n"  # and nothing else
    assert EXIT_BROKEN_PIPE == 128 + 13  # SIGPIPE's number on Linux and macOS


def test_a_reader_that_closes_early(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*MESHCTL, "validate", str(many_warnings(tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    errors = process.stderr.read()
    assert process.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert first.startswith(str(tmp_path / "many.yaml").encode())
    assert errors == b""


def test_help_and_short_output_through_a_pipe_exit_as_usual(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", f'{shlex.join([*MESHCTL, "--help"])} | cat; echo "${{PIPESTATUS[0]}}"'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.startswith("usage: meshctl")
    assert done.stdout.splitlines()[-1] == "0"
    assert done.stderr == ""
