"""``meshctl bookinfo`` on a demo whose rules are in etcd (a real etcd, one member): the store is
found in ``bookinfo.json``, a change is one transaction, and the wait is on what each service
reports under ``status/``; each service that does not run the change is named, with why."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from meshlib import Mesh, bookinfo, control
from meshlib.cli import main as meshctl_main
from meshlib.errors import StoreError
from meshlib.store.local import EtcdCluster
from meshlib.store.rules import EtcdRuleStore, Instance
from meshlib.store.url import StoreURL
from tests.store.conftest import eventually

pytestmark = pytest.mark.integration

SUBSETS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
"""
ROUTE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""


def meshctl(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = meshctl_main(list(args))
    return code, out.getvalue(), err.getvalue()


def demo_on(tmp_path: Path, url: str, ports: dict[str, int]) -> Path:
    """A run directory whose bookinfo.json names ``url`` and one service per ``ports`` entry."""
    baseline = tmp_path / "baseline.yaml"
    baseline.write_text(SUBSETS, encoding="utf-8")
    state = {
        "productpage": "http://127.0.0.1:1/productpage",
        "rules": None,
        "store": url,
        "baseline": [str(baseline)],
        "services": [
            {"name": name, "version": "v1", "url": f"http://127.0.0.1:{port}", "config": ""}
            for name, port in ports.items()
        ],
    }
    (tmp_path / "bookinfo.json").write_text(json.dumps(state), encoding="utf-8")
    return tmp_path


def test_apply_waits_for_each_service_on_etcd_and_names_those_that_do_not_run_it(
    tmp_path: Path, etcd: EtcdCluster, prefix: str
) -> None:
    url = etcd.url(prefix)
    run_dir = demo_on(tmp_path, url, {"reviews": 19081, "ratings": 19082})
    config = tmp_path / "reviews.yaml"
    config.write_text(
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: reviews}\n"
        f"spec:\n  version: v1\n  store: {url}\n",
        encoding="utf-8",
    )
    (tmp_path / "route.yaml").write_text(ROUTE, encoding="utf-8")
    reviews = Mesh.from_file(config)
    try:
        with reviews.register("127.0.0.1:19081"):  # ratings never registers
            code, out, err = meshctl("bookinfo", "reset", "--no-wait", "--run-dir", str(run_dir))
            assert code == 0, err
            assert out.splitlines() == [
                "rules reset to the baseline: baseline.yaml",
                f"rules revision {out.split()[-3]} in {url}",
            ]
            code, out, err = meshctl(
                "bookinfo", "apply", str(tmp_path / "route.yaml"), "--run-dir", str(run_dir),
                "--timeout", "1",
            )  # fmt: skip
            assert code == 1, err
            lines = out.splitlines()
            assert lines[0] == "VirtualService default/reviews created"
            revision = int(lines[1].split()[2])
            assert lines[1] == f"rules revision {revision} in {url}"
            assert lines[2].split() == [
                "reviews", "v1", "http://127.0.0.1:19081", "in", "sync", "rules", "revision",
                str(revision),
            ]  # fmt: skip
            assert lines[3].split() == ["ratings", "v1", "http://127.0.0.1:19082", "STALE"]
            assert lines[4].strip() == f"not registered in {url}"
            # the rules are in etcd, one resource a key, and the service runs them
            assert reviews.config.of_kind("VirtualService")
            held = EtcdRuleStore(StoreURL.parse(url))
            try:
                kinds = sorted(d["kind"] for d in held.read().documents)
            finally:
                held.close()
            assert kinds == ["DestinationRule", "VirtualService"]
            code, out, _ = meshctl("bookinfo", "routes", "--run-dir", str(run_dir))
            assert code == 1
            assert f"Rules in force ({url}, rules revision {revision}):" in out
            assert "http[0] any request -> reviews v1" in out
            assert f"in sync  rules revision {revision}" in out
            # no wait asked for: written, exit 0
            code, out, _ = meshctl(
                "bookinfo", "delete", str(tmp_path / "route.yaml"), "--no-wait",
                "--run-dir", str(run_dir),
            )  # fmt: skip
            assert code == 0
            assert out.splitlines()[0] == "VirtualService default/reviews deleted"
            eventually(lambda: not reviews.config.of_kind("VirtualService"))
    finally:
        reviews.close()


def test_an_unreachable_store_is_one_clear_line(tmp_path: Path) -> None:
    from meshlib.store.local import free_port

    url = f"etcd://127.0.0.1:{free_port()}/demo"
    run_dir = demo_on(tmp_path, url, {"reviews": 19081})
    code, out, err = meshctl("bookinfo", "reset", "--run-dir", str(run_dir))
    assert code == 1
    assert out == ""
    assert err.startswith(f"meshctl bookinfo: store {url}: no etcd member answered")


class Reports:
    """What a store's registrations say (``EtcdRuleStore.instances``), without etcd."""

    url = "etcd://127.0.0.1:2379/demo"

    def __init__(self, *instances: Instance) -> None:
        self.found = list(instances)

    def instances(self) -> tuple[list[Instance], int]:
        return self.found, 0


def instance(service: str, port: int, revision: int | None, stale: bool = False) -> Instance:
    return Instance("default", service, f"127.0.0.1:{port}", "v1", {}, revision, stale, None, None)


def test_each_service_is_in_sync_at_the_revision_or_later_and_otherwise_says_why(
    tmp_path: Path,
) -> None:
    names = ["productpage", "details", "reviews", "ratings", "other"]
    refs = tuple(
        control.ServiceRef(n, "v1", f"http://127.0.0.1:{9080 + i}", "") for i, n in enumerate(names)
    )
    demo = bookinfo.Demo(str(tmp_path), None, (), refs, "", store=Reports.url)
    reports = Reports(
        instance("productpage", 9080, 12),  # later than asked: in sync
        instance("details", 9081, 10),
        instance("reviews", 9082, 9),
        instance("ratings", 9083, 10, stale=True),
        instance("other", 9999, 10),  # not this demo's address
    )
    syncs = bookinfo.store_syncs(demo, reports, 10)  # type: ignore[arg-type]
    assert [(s.in_sync, s.reported, s.error) for s in syncs] == [
        (True, "rules revision 12", None),
        (True, "rules revision 10", None),
        (False, "rules revision 9", "it has not applied the change yet"),
        (False, "rules revision 10", "its store is unreachable: it keeps the last rules it had"),
        (False, None, f"not registered in {Reports.url}"),
    ]
    reports.found.append(instance("other", 9084, None))
    (last,) = bookinfo.store_syncs(demo, reports, 10)[4:]  # type: ignore[arg-type]
    assert last.error == "registered, but it has not reported the rules it runs"


def test_the_demo_does_not_start_on_a_prefix_where_services_are_registered(
    tmp_path: Path, etcd: EtcdCluster, prefix: str
) -> None:
    from examples.bookinfo import launcher

    url = etcd.url(prefix)
    config = tmp_path / "reviews.yaml"
    config.write_text(
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: reviews}\n"
        f"spec:\n  version: v2\n  store: {url}\n",
        encoding="utf-8",
    )
    other = Mesh.from_file(config)
    try:
        with other.register("127.0.0.1:19083"):
            with pytest.raises(StoreError, match=r"registered under this prefix already \(reviews"):
                launcher.lay_out(tmp_path / "run", {}, [], StoreURL.parse(url))
            held = EtcdRuleStore(StoreURL.parse(url))
            try:
                assert held.read().documents == ()  # nothing written
            finally:
                held.close()
        launcher.lay_out(tmp_path / "run", {}, [], StoreURL.parse(url))  # gone: it starts
        assert not (tmp_path / "run" / "registry.yaml").exists()
    finally:
        other.close()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "cannot be read"),
        ("[]", "does not describe a running demo"),
        ('{"services": []}', "does not describe a running demo"),
        ('{"rules": "/r.yaml", "store": "redis://x", "services": [], "productpage": ""}', "scheme"),
    ],
)
def test_a_state_file_that_is_not_a_demos_is_one_clear_line(
    tmp_path: Path, text: str, says: str
) -> None:
    (tmp_path / "bookinfo.json").write_text(text, encoding="utf-8")
    code, out, err = meshctl("bookinfo", "routes", "--run-dir", str(tmp_path))
    assert code == 1
    assert out == ""
    assert err.startswith(f"meshctl bookinfo: {tmp_path / 'bookinfo.json'}")
    assert says in err
    assert len(err.splitlines()) == 1
