"""A 3-member etcd cluster under traffic: its leader SIGKILLed, then the whole cluster stopped
and started again. Services keep serving; only a store with no member left makes them stale."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh
from meshlib.store.local import EtcdCluster
from meshlib.telemetry.metrics import scrape
from tests.store.conftest import eventually
from tests.store.test_etcd import RULES, apply, echo, service

pytestmark = pytest.mark.integration

REVIEWS = "reviews.default.svc.cluster.local"


class Traffic:
    """Calls to reviews through a mesh, in a thread (sync) and a task-less async loop, until
    stopped; counts answers by status and the endpoint that answered."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._sync, daemon=True),
            threading.Thread(target=self._async, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _record(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            self.answers[response.text] += 1
        else:
            flags = response.headers.get("x-mesh-response-flags")
            self.failures.append(f"{response.status_code} {flags}")

    def _sync(self) -> None:
        with self.mesh.client() as http:
            for _ in range(20_000):  # bounded: about 2 minutes at most
                if self._stop.is_set():
                    return
                self._record(http.get("http://reviews:9080/r"))
                time.sleep(0.005)

    def _async(self) -> None:
        import asyncio

        async def run() -> None:
            async with self.mesh.async_client() as http:
                for _ in range(20_000):
                    if self._stop.is_set():
                        return
                    self._record(await http.get("http://reviews:9080/r"))
                    await asyncio.sleep(0.005)

        asyncio.run(run())

    def count(self) -> int:
        return sum(self.answers.values())


@pytest.fixture
def fleet(tmp_path: Path, etcd_cluster: EtcdCluster, prefix: str) -> Iterator[tuple[Mesh, Mesh]]:
    url = etcd_cluster.url(prefix)
    caller = Mesh.from_file(
        service(tmp_path, "productpage", url, spec="  telemetry: {metrics: {enabled: true}}\n"),
        transport=httpx.MockTransport(echo),
    )
    reviews = Mesh.from_file(service(tmp_path, "reviews", url, "v2"))
    yield caller, reviews
    caller.close()
    reviews.close()


def test_the_leader_killed_during_traffic_changes_nothing_a_service_sees(
    tmp_path: Path, etcd_cluster: EtcdCluster, fleet: tuple[Mesh, Mesh], prefix: str
) -> None:
    caller, reviews = fleet
    url = etcd_cluster.url(prefix)
    with reviews.register("10.0.2.1:9080", ttl=3) as registration:
        eventually(lambda: len(caller.registry.endpoints(REVIEWS)) == 1)
        with Traffic(caller) as traffic:
            eventually(lambda: traffic.count() > 20)
            leader = etcd_cluster.leader()
            etcd_cluster.kill(leader)
            # a rule change through the two members left arrives
            code, out = apply(tmp_path, url, RULES.replace("SUBSET", "v2"))
            assert code == 0, out
            revision = int(out.splitlines()[-1].split()[-1])
            store = caller.store
            assert store is not None
            eventually(lambda: store.applied_revision == revision)
            # longer than the lease: it was renewed through the other members
            time.sleep(registration.ttl + 0.5)
            seen = traffic.count()
            eventually(lambda: traffic.count() > seen + 20)
        assert traffic.failures == []
        assert set(traffic.answers) == {"10.0.2.1:9080"}
        assert not store.stale
        assert store.feed.health.announced is False  # never reported stale
        assert registration.registrations == 1  # never had to register again
        assert [e.address for e in caller.registry.endpoints(REVIEWS)] == ["10.0.2.1:9080"]


def test_the_whole_cluster_stopped_and_started_again_under_traffic(
    tmp_path: Path,
    etcd_cluster: EtcdCluster,
    fleet: tuple[Mesh, Mesh],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caller, reviews = fleet
    url = etcd_cluster.url(prefix)
    caplog.set_level(logging.WARNING, logger="meshlib.store")
    assert apply(tmp_path, url, RULES.replace("SUBSET", "v2"))[0] == 0
    with reviews.register("10.0.3.1:9080", ttl=3):
        eventually(lambda: len(caller.registry.endpoints(REVIEWS)) == 1)
        store = caller.store
        assert store is not None
        with Traffic(caller) as traffic:
            eventually(lambda: traffic.count() > 20)
            etcd_cluster.stop_all()
            eventually(lambda: store.stale)
            # the last known endpoints and rules stay in force, and say so
            seen = traffic.count()
            eventually(lambda: traffic.count() > seen + 50)
            status = store.status()
            assert status["stale"]
            assert status["synced"]
            assert status["rules_revision"] > 0
            assert caller.explain("GET", "http://reviews:9080/").destination.subset == "v2"
            text = scrape(caller)[1].decode()
            assert f'meshlib_store_stale{{store="{url}"}} 1.0' in text
            etcd_cluster.restart_all()
            eventually(lambda: not store.stale, timeout=15)
            # it catches up: a change made after the restart arrives
            changed = RULES.replace("SUBSET", "v2") + "    timeout: 5s\n"
            code, out = apply(tmp_path, url, changed)
            assert code == 0, out
            eventually(lambda: caller.explain("GET", "http://reviews:9080/").timeout == 5.0)
        assert traffic.failures == []
        assert set(traffic.answers) == {"10.0.3.1:9080"}
        text = scrape(caller)[1].decode()
        assert f'meshlib_store_stale{{store="{url}"}} 0.0' in text
    lines = [r.getMessage() for r in caplog.records if r.name == "meshlib.store"]
    unreachable = [line for line in lines if "unreachable" in line and url in line]
    again = [line for line in lines if "reachable again" in line and url in line]
    # one line each way for the caller (and the same for the reviews mesh): not one per retry
    assert len(unreachable) == 2
    assert len(again) == 2
