"""A mesh on a real etcd (one member, started by the tests): endpoints and rules from the store,
merged with the file's own resources, watched; self-registration; meshctl on the store."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh
from meshlib.cli import main as meshctl
from meshlib.errors import StoreError
from meshlib.store.etcd import EtcdClient
from meshlib.store.layout import Layout
from meshlib.store.local import EtcdCluster
from meshlib.telemetry import ConfigReloaded
from tests.store.conftest import eventually

pytestmark = pytest.mark.integration

REVIEWS = "reviews.default.svc.cluster.local"


def echo(request: httpx.Request) -> httpx.Response:
    """Every upstream: answers with the address the mesh sent the call to."""
    return httpx.Response(200, text=f"{request.url.host}:{request.url.port}")


def service(
    tmp_path: Path, name: str, url: str, version: str = "v1", extra: str = "", spec: str = ""
) -> Path:
    """A service's config file with ``spec.store: url`` (``spec``: more lines of its spec,
    ``extra``: more documents)."""
    path = tmp_path / f"{name}-{version}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: meshlib.dev/v1
            kind: Service
            metadata: {{name: {name}}}
            spec:
              version: {version}
              store: {url}
            """
        )
        + spec
        + textwrap.dedent(extra),
        encoding="utf-8",
    )
    return path


RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: SUBSET}
"""


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        code = meshctl(list(argv))
    return code, out.getvalue()


def apply(tmp_path: Path, url: str, text: str, name: str = "rules.yaml") -> tuple[int, str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return run("--store", url, "apply", "-f", str(path))


@pytest.fixture
def url(etcd: EtcdCluster, prefix: str) -> str:
    return etcd.url(prefix)


async def test_services_register_find_each_other_and_follow_rules_applied_to_the_store(
    tmp_path: Path, url: str
) -> None:
    caller = Mesh.from_file(
        service(tmp_path, "productpage", url), transport=httpx.MockTransport(echo)
    )
    v1 = Mesh.from_file(service(tmp_path, "reviews", url, "v1"))
    v2 = Mesh.from_file(service(tmp_path, "reviews", url, "v2"))
    try:
        with v1.register("10.0.1.1:9080"), v2.register("10.0.1.2:9080", labels={"zone": "b"}):
            eventually(lambda: len(caller.registry.endpoints(REVIEWS)) == 2)
            labels = {e.address: dict(e.labels) for e in caller.registry.endpoints(REVIEWS)}
            assert labels == {
                "10.0.1.1:9080": {"app": "reviews", "version": "v1"},
                "10.0.1.2:9080": {"app": "reviews", "version": "v2", "zone": "b"},
            }
            code, out = apply(tmp_path, url, RULES.replace("SUBSET", "v2"))
            assert code == 0, out
            assert out.splitlines()[:2] == [
                "DestinationRule default/reviews created",
                "VirtualService default/reviews created",
            ]
            revision = int(out.splitlines()[-1].split()[-1])
            eventually(
                lambda: caller.store is not None and caller.store.applied_revision == revision
            )
            with caller.client() as http:
                assert {http.get("http://reviews:9080/r").text for _ in range(4)} == {
                    "10.0.1.2:9080"
                }
            async with caller.async_client() as ahttp:
                answers = {(await ahttp.get("http://reviews:9080/r")).text for _ in range(4)}
                assert answers == {"10.0.1.2:9080"}

            # every registered service reports the revision it runs
            def synced() -> bool:
                code, _out = run("--store", url, "status")
                return code == 0

            eventually(synced)
            code, out = run("--store", url, "status")
            assert out.splitlines()[0] == f"rules revision {revision} in {url}"
            rows = [line.split() for line in out.splitlines()[2:]]
            assert rows == [
                ["reviews.default", "v1", "10.0.1.1:9080", str(revision), "SYNCED"],
                ["reviews.default", "v2", "10.0.1.2:9080", str(revision), "SYNCED"],
            ]
        # closed: the leases are revoked, the endpoints gone at once
        eventually(lambda: caller.registry.endpoints(REVIEWS) == (), timeout=2.0)
    finally:
        for mesh in (caller, v1, v2):
            mesh.close()


def test_a_change_is_validated_whole_and_swapped_in_at_one_revision(
    tmp_path: Path, url: str
) -> None:
    mesh = Mesh.from_file(
        service(tmp_path, "productpage", url), transport=httpx.MockTransport(echo)
    )
    reloads: list[ConfigReloaded] = []

    class Listener:
        def on_event(self, event: object) -> None:
            if isinstance(event, ConfigReloaded):
                reloads.append(event)

    mesh.add_listener(Listener())
    try:
        assert apply(tmp_path, url, RULES.replace("SUBSET", "v1"))[0] == 0
        eventually(lambda: len(mesh.config.of_kind("VirtualService")) == 1)
        assert len(reloads) == 1  # the rule and its subsets arrived together
        before = Layout(url.rpartition("/")[2] and "/" + url.rpartition("/")[2])
        client = EtcdClient(url.removeprefix("etcd://").split("/")[0].split(","))
        start, end = before.rules_range()
        stored, _revision = client.range(start, end)
        # a bad weight in one of two files: nothing is written
        bad = RULES.replace("SUBSET", "v2").replace("subset: v2}", "subset: v2}\n      weight: -5")
        (tmp_path / "good.yaml").write_text(RULES.replace("SUBSET", "v2"), encoding="utf-8")
        (tmp_path / "bad.yaml").write_text(bad, encoding="utf-8")
        import contextlib

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code, _ = run(
                "--store",
                url,
                "apply",
                "-f",
                str(tmp_path / "good.yaml"),
                "-f",
                str(tmp_path / "bad.yaml"),
            )
        assert code == 1
        assert (
            f"{tmp_path / 'bad.yaml'}:18: spec.http[0].route[0].weight: must be >= 0"
            in err.getvalue()
        )
        assert "nothing applied" in err.getvalue()
        assert client.range(start, end)[0] == stored
        client.close()
        # get lists and prints what the store holds
        code, out = run("--store", url, "get")
        assert out.splitlines()[1:3] == [
            "DestinationRule  default    reviews",
            "VirtualService   default    reviews",
        ]
        code, out = run("--store", url, "get", "vs", "reviews")
        assert "subset: v1" in out
        assert "namespace: default" in out
        # delete: the mesh drops the rules at the next revision
        (tmp_path / "vs.yaml").write_text(
            RULES.split("---\n")[1].replace("SUBSET", "v1"), encoding="utf-8"
        )
        code, out = run("--store", url, "delete", "-f", str(tmp_path / "vs.yaml"))
        assert out.splitlines()[0] == "VirtualService default/reviews deleted"
        eventually(lambda: not mesh.config.of_kind("VirtualService"))
        assert len(mesh.config.of_kind("DestinationRule")) == 1
    finally:
        mesh.close()


def test_store_rules_merge_with_the_files_own_and_replace_them_with_a_warning(
    tmp_path: Path, url: str
) -> None:
    own = """\
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: ratings}
    spec:
      hosts: [ratings]
      http:
      - route:
        - destination: {host: ratings}
        timeout: 3s
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - route:
        - destination: {host: reviews}
        timeout: 1s
    """
    mesh = Mesh.from_file(service(tmp_path, "productpage", url, extra=own))
    try:
        assert apply(tmp_path, url, RULES.replace("SUBSET", "v2"))[0] == 0
        eventually(lambda: mesh.explain("GET", "http://reviews:9080/").destination.subset == "v2")
        assert mesh.explain("GET", "http://ratings:9080/").timeout == 3.0  # the file's own
        assert mesh.explain("GET", "http://reviews:9080/").timeout is None  # the store's won
        warnings = [str(w) for w in mesh.warnings]
        assert any(
            w.startswith(f"etcd:{url.rpartition('/')[1]}") or "replaces the one at" in w
            for w in warnings
        )
    finally:
        mesh.close()


def test_a_killed_process_endpoint_goes_within_its_ttl_and_calls_to_it_are_retried(
    tmp_path: Path, url: str
) -> None:
    import subprocess
    import sys
    import time

    script = tmp_path / "registers.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import sys, time
            from meshlib import Mesh
            mesh = Mesh.from_file({str(service(tmp_path, "reviews", url, "v3"))!r})
            mesh.register("127.0.0.1:9", ttl=2)
            print("registered", flush=True)
            time.sleep(60)
            """
        ),
        encoding="utf-8",
    )
    answered: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.port == 9:
            raise httpx.ConnectError("connection refused", request=request)
        answered.append(str(request.url.port))
        return httpx.Response(200)

    caller = Mesh.from_file(
        service(tmp_path, "productpage", url), transport=httpx.MockTransport(upstream), seed=3
    )
    other = Mesh.from_file(service(tmp_path, "reviews", url, "v1"))
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        with other.register("127.0.0.1:10"):
            assert process.stdout is not None
            assert process.stdout.readline() == b"registered\n"
            eventually(lambda: len(caller.registry.endpoints(REVIEWS)) == 2)
            with caller.client() as http:
                # a call sent to the dead port is retried (Istio's default retry on connect-failure)
                assert all(http.get("http://reviews:9080/").status_code == 200 for _ in range(6))
            process.kill()
            process.wait()
            killed = time.monotonic()
            eventually(lambda: len(caller.registry.endpoints(REVIEWS)) == 1, timeout=8)
            assert time.monotonic() - killed <= 2 + 2
            assert [e.port for e in caller.registry.endpoints(REVIEWS)] == [10]
    finally:
        process.kill()
        caller.close()
        other.close()


def test_registering_needs_an_etcd_store(tmp_path: Path) -> None:
    mesh = Mesh.from_yaml("apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: a}\n")
    with pytest.raises(StoreError, match="registering needs an etcd store"):
        mesh.register("127.0.0.1:1")
    mesh.close()


def test_a_store_that_does_not_answer_at_start_leaves_the_mesh_stale_until_it_does(
    tmp_path: Path, prefix: str
) -> None:
    from meshlib.store.local import free_port

    port = free_port()
    mesh = Mesh.from_file(service(tmp_path, "productpage", f"etcd://127.0.0.1:{port}{prefix}"))
    try:
        assert mesh.store is not None
        status = mesh.store.status()
        assert status["stale"]
        assert not status["synced"]
        assert "Connection refused" in status["last_error"]
        with pytest.raises(ValueError, match="ttl must be"):
            mesh.register("127.0.0.1:1", ttl=1)
    finally:
        mesh.close()
    assert json.dumps(status)  # the admin endpoint can show it
