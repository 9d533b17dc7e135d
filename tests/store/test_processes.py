"""Services in separate processes find each other through etcd alone: on loopback, and in
separate network namespaces joined by a bridge (where the machine allows ``ip netns``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlib.store.local import EtcdCluster
from tests.store.conftest import need_etcd
from tests.store.test_etcd import service

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def start(
    config: Path, host: str, other: str, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "tests.store.peer", str(config), host, other],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def answers(processes: list[subprocess.Popen[str]]) -> list[str]:
    out = []
    try:
        for process in processes:
            assert process.stdout is not None
            out.append(process.stdout.readline().strip())
    finally:
        for process in processes:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    return out


def test_two_processes_register_and_call_each_other(
    tmp_path: Path, etcd: EtcdCluster, prefix: str
) -> None:
    url = etcd.url(prefix)
    a = start(service(tmp_path, "alpha", url), "127.0.0.1", "beta")
    b = start(service(tmp_path, "beta", url), "127.0.0.1", "alpha")
    assert answers([a, b]) == ["I am beta", "I am alpha"]


# --------------------------------------------------------------------------- namespaces


def _netns_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    probe = f"mlprobe{os.getpid()}"
    made = subprocess.run(
        ["ip", "netns", "add", probe], check=False, capture_output=True, text=True
    )
    if made.returncode != 0:
        return f"ip netns add is not allowed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


class Namespaces:
    """Three namespaces (etcd, alpha, beta), each with a veth into a fourth that holds a
    bridge: 10.<n>.0.1-3/24. Nothing outside these namespaces is touched or reached."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}"
        self.switch = f"mls{tag}"
        self.names = {role: f"ml{role[0]}{tag}" for role in ("etcd", "alpha", "beta")}
        self.subnet = f"10.{200 + os.getpid() % 50}.0"
        self.address = {
            "alpha": f"{self.subnet}.1",
            "beta": f"{self.subnet}.2",
            "etcd": f"{self.subnet}.3",
        }
        self.made: list[str] = []

    def run(self, *command: str) -> None:
        subprocess.run(command, check=True, capture_output=True)

    def exec_in(self, role: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.names[role])

    def __enter__(self) -> Namespaces:
        try:
            for name in (self.switch, *self.names.values()):
                self.run("ip", "netns", "add", name)
                self.made.append(name)
                self.run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
            sw = ("ip", "netns", "exec", self.switch)
            self.run(*sw, "ip", "link", "add", "br0", "type", "bridge")
            self.run(*sw, "ip", "link", "set", "br0", "up")
            for index, (role, name) in enumerate(self.names.items()):
                inner, outer = f"in{index}", f"out{index}"
                self.run(*sw, "ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
                self.run(*sw, "ip", "link", "set", inner, "netns", name)
                self.run(*sw, "ip", "link", "set", outer, "master", "br0")
                self.run(*sw, "ip", "link", "set", outer, "up")
                here = self.exec_in(role)
                self.run(*here, "ip", "addr", "add", f"{self.address[role]}/24", "dev", inner)
                self.run(*here, "ip", "link", "set", inner, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    reason = _netns_reason()
    if reason is not None:
        pytest.skip(reason)
    need_etcd()
    with Namespaces() as made:
        yield made


def test_services_in_separate_network_namespaces_find_each_other_only_through_etcd(
    tmp_path: Path, namespaces: Namespaces, prefix: str
) -> None:
    with EtcdCluster(
        1, host=namespaces.address["etcd"], netns=namespaces.exec_in("etcd")
    ) as cluster:
        url = cluster.url(prefix)
        alpha = start(
            service(tmp_path, "alpha", url),
            namespaces.address["alpha"],
            "beta",
            namespaces.exec_in("alpha"),
        )
        beta = start(
            service(tmp_path, "beta", url),
            namespaces.address["beta"],
            "alpha",
            namespaces.exec_in("beta"),
        )
        assert answers([alpha, beta]) == ["I am beta", "I am alpha"]
