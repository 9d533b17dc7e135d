"""The Bookinfo demo on etcd (``python -m examples.bookinfo --store etcd://...``), end to end:
a real etcd started by the test, the six service processes registering there and finding one
another there only, ``meshctl bookinfo`` writing the rules there and waiting until every
service reports running them, and the product page loaded through a stock ``httpx.Client`` and a
stock ``httpx.AsyncClient``.

``meshctl`` runs in this process (``meshlib.cli.main``, the command's own code): a Python start
per step would make this module several times slower (the walkthrough's tests run it as a
process of its own)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from examples.bookinfo import walkthrough
from examples.bookinfo.walkthrough import Demo
from meshlib.cli import main as meshctl_main
from meshlib.security.outbound import TLS_MODE_LABEL
from meshlib.store import local
from meshlib.store.rules import EtcdRuleStore
from meshlib.store.url import StoreURL

from .conftest import SAMPLES

pytestmark = pytest.mark.integration

RED = [(5, "red"), (4, "red")]
PREFIX = "/bookinfo"


def meshctl(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    """``meshctl ARGS`` in this process: its exit code, standard output and standard error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = meshctl_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


class DemoHere(Demo):
    """The demo, with ``meshctl bookinfo`` run in this process."""

    def meshctl(self, *args: str | os.PathLike[str]) -> str:
        code, out, err = meshctl("bookinfo", *args, "--run-dir", self.run_dir)
        if code != 0:
            raise RuntimeError(f"meshctl bookinfo {args}: exit {code}\n{out}\n{err}")
        return out


@pytest.fixture(scope="module")
def etcd() -> Iterator[local.EtcdCluster]:
    if not local.available():
        pytest.skip("etcd is not installed (.ci/run installs Debian's etcd-server)")
    with local.EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def store(etcd: local.EtcdCluster) -> Iterator[EtcdRuleStore]:
    rules = EtcdRuleStore(StoreURL.parse(etcd.url(PREFIX)))
    yield rules
    rules.close()


@pytest.fixture(scope="module")
def demo(
    etcd: local.EtcdCluster, store: EtcdRuleStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Demo]:
    running = DemoHere.start(
        tmp_path_factory.mktemp("bookinfo-on-etcd"), SAMPLES, store=etcd.url(PREFIX)
    )
    try:
        yield running
    finally:
        assert running.stop() == 0, "the launcher exited badly on Ctrl-C"
    # a graceful stop deregisters every service at once (no waiting for the leases)
    instances, _ = store.instances()
    assert instances == []


def test_the_services_find_one_another_through_etcd_only(
    demo: Demo, store: EtcdRuleStore, etcd: local.EtcdCluster
) -> None:
    url = etcd.url(PREFIX)
    assert demo.store == url
    assert not (demo.run_dir / "registry.yaml").exists()
    assert not (demo.run_dir / "rules").exists()
    for service in demo.state["services"]:
        spec = yaml.safe_load(Path(service["config"]).read_text(encoding="utf-8"))["spec"]
        assert spec["store"] == url
        assert "registry" not in spec
        assert "include" not in spec
    instances, revision = store.instances()
    registered = {(i.service, i.version, i.address): i.labels for i in instances}
    expected = {
        (s["name"], s["version"], s["url"].removeprefix("http://")) for s in demo.state["services"]
    }
    assert set(registered) == expected
    for (name, version, _), labels in registered.items():
        assert labels == {"app": name, "version": version, TLS_MODE_LABEL: "istio"}
    # meshctl --store URL status: every instance runs the rules in the store
    code, out, err = meshctl("--store", url, "status")
    assert code == 0, out + err
    assert out.splitlines()[0] == f"rules revision {revision} in {url}"
    assert out.count("SYNCED") == 6


def test_routing_steps_on_etcd_through_both_clients(demo: Demo, store: EtcdRuleStore) -> None:
    step = walkthrough.step_all_v1(demo, SAMPLES, loads=3)
    assert step.ok, "\n".join(step.seen)
    assert len(step.pages) == 4  # anonymous and jason, each through both clients
    for pages in step.pages.values():
        assert {p.version for p in pages} == {"v1"}
        assert all(p.stars == [] for p in pages)

    lines = demo.apply(SAMPLES / "virtual-service-reviews-v3.yaml").splitlines()
    assert lines[0] == "VirtualService default/reviews configured"
    revision = int(lines[1].split()[2])
    assert lines[1] == f"rules revision {revision} in {demo.store}"
    assert lines[2].startswith("all 6 services run the new rules")
    visitors = demo.visitors() + demo.visitors("jason")
    try:
        for visitor in visitors:
            for _ in range(3):
                page = visitor.load()
                assert (page.status, page.version, page.stars) == (200, "v3", RED), visitor.name
    finally:
        for visitor in visitors:
            visitor.close()

    # the rules are in etcd, and each service says it runs them
    (reviews,) = [
        d
        for d in store.read().documents
        if d["kind"] == "VirtualService" and d["metadata"]["name"] == "reviews"
    ]
    assert reviews["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v3"
    routes = demo.meshctl("routes")
    assert f"Rules in force ({demo.store}, rules revision {revision}):" in routes
    assert "http[0] any request -> reviews v3" in routes
    assert routes.count(f"in sync  rules revision {revision}") == 6

    # a mesh of meshctl's own finds the services and the rules in etcd as well
    load = demo.meshctl("load", "--service", "reviews", "-n", "4")
    assert "Code 200 : 4 (100.0 %)" in load


def test_a_refused_change_writes_nothing_to_etcd(
    demo: Demo, store: EtcdRuleStore, tmp_path: Path
) -> None:
    before = store.read()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"
        "spec:\n  hosts: [reviews]\n  http:\n  - route:\n"
        "    - destination: {host: reviews, subset: v1}\n      weight: -1\n",
        encoding="utf-8",
    )
    with pytest.raises(RuntimeError, match="must be >= 0") as refused:
        demo.apply(bad)
    assert "nothing applied: the rules in force stay" in str(refused.value)
    assert store.read() == before
