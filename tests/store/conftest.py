"""Fixtures of the store's tests: a real etcd started by the tests (Debian's etcd-server), and
fake event streams for the pure core."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from meshlib.store import local

_prefixes = itertools.count()


def need_etcd() -> None:
    if not local.available():
        pytest.skip("etcd is not installed (.ci/run installs Debian's etcd-server)")


@pytest.fixture(scope="module")
def etcd() -> Iterator[local.EtcdCluster]:
    """One etcd member on a free 127.0.0.1 port, for the tests of a module (each test uses a
    prefix of its own: ``prefix``)."""
    need_etcd()
    with local.EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster() -> Iterator[local.EtcdCluster]:
    """Three etcd members of one cluster on free 127.0.0.1 ports, for one test."""
    need_etcd()
    with local.EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"/t{next(_prefixes)}-{time.monotonic_ns()}"


def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> float:
    """Wait until ``predicate()`` is true; returns how long it took (fails after ``timeout``)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not true within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - started
