"""``meshctl bookinfo`` and ``meshlib.control``: rules applied as ``kubectl apply`` applies them,
checked whole before they are written, and a wait until every service runs them — here with two
services of the test's own (meshes that watch their files, behind the admin endpoint, served by
uvicorn on 127.0.0.1). The whole demo is in ``tests/e2e``."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from meshlib import Mesh, control
from meshlib.cli import main
from meshlib.server import MeshAdmin

Capsys = pytest.CaptureFixture[str]
WriteYaml = Callable[[str, str], Path]

SERVICE = """
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  version: v1
  registry:
    static:
      reviews:
        - {{address: 127.0.0.1:9, labels: {{version: v1}}}}
        - {{address: 127.0.0.1:10, labels: {{version: v2}}}}
  include: [../rules/*.yaml]
"""

SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

TO_V2 = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
"""


async def nothing(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class Served:
    """A mesh behind the admin endpoint, served by uvicorn in a thread."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(MeshAdmin(nothing, mesh), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.005)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        self.mesh.close()


@pytest.fixture
def demo(write_yaml: WriteYaml, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A run directory with two running services: ``a`` watches its files, ``b`` does not
    unless the test makes it."""
    baseline = write_yaml("baseline/subsets.yaml", SUBSETS)
    rules = tmp_path / "rules" / "bookinfo.yaml"
    control.write_rules(str(rules), control.resources_of([control.Source.read(str(baseline))]))
    served = []
    for name in ("a", "b"):
        config = write_yaml(f"config/{name}.yaml", SERVICE.format(name=name))
        mesh = Mesh.from_file(config)
        if name == "a":
            mesh.watch(interval=0.02)
        served.append(Served(mesh))
    state = {
        "launcher": 0,
        "productpage": "http://127.0.0.1:1/productpage",
        "rules": str(rules),
        "baseline": [str(baseline)],
        "services": [
            {"name": n, "version": "v1", "url": s.url, "config": str(tmp_path / f"config/{n}.yaml")}
            for n, s in zip("ab", served, strict=True)
        ],
    }
    (tmp_path / "bookinfo.json").write_text(json.dumps(state), encoding="utf-8")
    try:
        yield {"dir": str(tmp_path), "a": served[0], "b": served[1], "rules": rules}
    finally:
        for server in served:
            server.stop()


def run(capsys: Capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def subset(mesh: Mesh) -> str | None:
    destination = mesh.explain("GET", "http://reviews/r").destination
    return destination.subset if destination is not None else None


def test_apply_waits_until_every_service_runs_the_rules(
    demo: dict[str, Any], write_yaml: WriteYaml, capsys: Capsys
) -> None:
    demo["b"].mesh.watch(interval=0.02)
    to_v2 = write_yaml("to-v2.yaml", TO_V2)
    code, out, _ = run(capsys, "bookinfo", "apply", "-d", demo["dir"], to_v2)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "VirtualService default/reviews created"
    assert lines[1].startswith("all 2 services run the new rules (")
    assert subset(demo["a"].mesh) == subset(demo["b"].mesh) == "v2"
    code, out, _ = run(capsys, "bookinfo", "apply", "-d", demo["dir"], to_v2)
    assert out.splitlines()[0] == "VirtualService default/reviews unchanged"
    written = demo["rules"].read_text()
    assert "meshctl.meshlib.dev/applied-from: to-v2.yaml" in written
    assert "meshctl.meshlib.dev/applied-from: subsets.yaml" in written

    code, out, _ = run(capsys, "bookinfo", "routes", "-d", demo["dir"])
    assert code == 0
    assert "  VirtualService  reviews      hosts reviews" in out
    assert "      http[0] any request -> reviews v2" in out
    assert "  DestinationRule reviews      host reviews, subsets v1, v2" in out
    assert out.count("in sync") == 2

    code, out, _ = run(capsys, "bookinfo", "delete", "-d", demo["dir"], to_v2)
    assert code == 0
    assert out.splitlines()[0] == "VirtualService default/reviews deleted"
    assert subset(demo["a"].mesh) is None

    run(capsys, "bookinfo", "apply", "-d", demo["dir"], to_v2)
    code, out, _ = run(capsys, "bookinfo", "reset", "-d", demo["dir"])
    assert code == 0
    assert out.splitlines()[0] == "rules reset to the baseline: subsets.yaml"
    assert subset(demo["a"].mesh) is None
    assert sorted(r.kind for r in demo["b"].mesh.config.resources) == ["DestinationRule", "Service"]


def test_a_service_that_does_not_reload_is_reported(
    demo: dict[str, Any], write_yaml: WriteYaml, capsys: Capsys
) -> None:
    to_v2 = write_yaml("to-v2.yaml", TO_V2)
    code, out, _ = run(capsys, "bookinfo", "apply", "-d", demo["dir"], "--timeout", "0.3", to_v2)
    assert code == 1
    assert f"  a v1            {demo['a'].url:<26}in sync" in out
    assert f"  b v1            {demo['b'].url:<26}STALE" in out
    assert "      it does not watch its config files" in out


def test_bad_rules_change_nothing(
    demo: dict[str, Any], write_yaml: WriteYaml, capsys: Capsys
) -> None:
    before = demo["rules"].read_text()
    bad = write_yaml("bad.yaml", TO_V2.replace("subset: v2}", "subset: v2, weight: -1}"))
    code, _, err = run(capsys, "bookinfo", "apply", "-d", demo["dir"], bad)
    assert code == 1
    assert f"{bad}:8: spec.http[0].route[0].destination.weight: unknown field" in err
    assert "nothing applied: the rules in force stay" in err
    service = write_yaml("service.yaml", SERVICE.format(name="c"))
    code, _, err = run(capsys, "bookinfo", "apply", "-d", demo["dir"], service)
    assert code == 1
    assert "a rules file holds Istio resources" in err
    assert demo["rules"].read_text() == before


def test_no_demo_running(tmp_path: Path, capsys: Capsys) -> None:
    code, _, err = run(capsys, "bookinfo", "routes", "-d", tmp_path)
    assert code == 1
    assert f"no Bookinfo demo runs from {tmp_path}" in err
    assert run(capsys, "bookinfo")[0] == 2
    code, _, err = run(capsys, "bookinfo", "trace", "-d", tmp_path)
    assert code == 1
    assert f"no Bookinfo demo runs from {tmp_path}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--user", "jason; drop"], "bad user name"),
        (["--user", ""], "bad user name"),
        (["--path", "productpage"], "--path must start with /"),
    ],
)
def test_trace_refuses_bad_arguments(
    tmp_path: Path, capsys: Capsys, argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "bookinfo", "trace", "-d", tmp_path, *argv)
    assert code == 2
    assert message in err


def test_merge_replaces_in_place_and_appends() -> None:
    def resource(kind: str, name: str, value: int) -> dict[str, Any]:
        return {"kind": kind, "metadata": {"name": name}, "spec": {"v": value}}

    current = [resource("DestinationRule", "reviews", 1), resource("VirtualService", "a", 1)]
    result, changes = control.merge(
        current,
        [
            resource("VirtualService", "a", 2),
            resource("VirtualService", "b", 1),
            resource("DestinationRule", "reviews", 1),
        ],
    )
    assert [(d["metadata"]["name"], d["spec"]["v"]) for d in result] == [
        ("reviews", 1),
        ("a", 2),
        ("b", 1),
    ]
    assert [what for _, what in changes] == ["configured", "created", "unchanged"]
    result, changes = control.remove(result, [("VirtualService", "default", "a")])
    assert [d["metadata"]["name"] for d in result] == ["reviews", "b"]
    assert changes == [(("VirtualService", "default", "a"), "deleted")]
