"""PeerAuthentication resolution: Istio's ComposePeerAuthentication, table-driven."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from meshlib.config.load import load_texts
from meshlib.config.security import PeerAuthentication
from meshlib.security.peer_authn import (
    PeerAuthenticationResult,
    peer_authentication_of,
    resolve_peer_authentication,
)

ROOT = "istio-system"
LABELS = {"app": "productpage", "version": "v1"}


@dataclass(frozen=True)
class Policy:
    name: str
    namespace: str
    spec: object


def pa(name: str, namespace: str = "default", **spec: Any) -> Policy:
    return Policy(name, namespace, PeerAuthentication.model_validate(spec))


def mtls(mode: str) -> dict[str, str]:
    return {"mode": mode}


SELECT = {"matchLabels": {"app": "productpage"}}

CASES: list[tuple[str, list[Policy], str, dict[int, str]]] = [
    ("no policy: PERMISSIVE", [], "PERMISSIVE", {}),
    ("mesh STRICT", [pa("m", ROOT, mtls=mtls("STRICT"))], "STRICT", {}),
    ("mesh DISABLE", [pa("m", ROOT, mtls=mtls("DISABLE"))], "DISABLE", {}),
    ("mesh without mtls: PERMISSIVE", [pa("m", ROOT)], "PERMISSIVE", {}),
    (
        "namespace overrides mesh",
        [pa("m", ROOT, mtls=mtls("STRICT")), pa("n", mtls=mtls("PERMISSIVE"))],
        "PERMISSIVE",
        {},
    ),
    (
        "namespace UNSET inherits mesh",
        [pa("m", ROOT, mtls=mtls("STRICT")), pa("n", mtls=mtls("UNSET"))],
        "STRICT",
        {},
    ),
    (
        "workload overrides namespace and mesh",
        [
            pa("m", ROOT, mtls=mtls("STRICT")),
            pa("n", mtls=mtls("STRICT")),
            pa("w", selector=SELECT, mtls=mtls("PERMISSIVE")),
        ],
        "PERMISSIVE",
        {},
    ),
    (
        "workload UNSET inherits namespace",
        [pa("n", mtls=mtls("DISABLE")), pa("w", selector=SELECT, mtls=mtls("UNSET"))],
        "DISABLE",
        {},
    ),
    (
        "workload without mtls inherits mesh",
        [pa("m", ROOT, mtls=mtls("STRICT")), pa("w", selector=SELECT)],
        "STRICT",
        {},
    ),
    (
        "selector not matching the labels: skipped",
        [
            pa("n", mtls=mtls("STRICT")),
            pa("w", selector={"matchLabels": {"app": "reviews"}}, mtls=mtls("DISABLE")),
        ],
        "STRICT",
        {},
    ),
    (
        "selector with every label of the workload matches",
        [pa("w", selector={"matchLabels": LABELS}, mtls=mtls("STRICT"))],
        "STRICT",
        {},
    ),
    (
        "selector with one label more than the workload: skipped",
        [pa("w", selector={"matchLabels": {**LABELS, "x": "y"}}, mtls=mtls("STRICT"))],
        "PERMISSIVE",
        {},
    ),
    (
        "empty matchLabels is namespace-wide",
        [pa("n", selector={"matchLabels": {}}, mtls=mtls("STRICT"))],
        "STRICT",
        {},
    ),
    (
        "another namespace: skipped",
        [pa("n", "prod", mtls=mtls("STRICT"))],
        "PERMISSIVE",
        {},
    ),
    (
        "selector in the root namespace: ignored (Istio ignores it)",
        [pa("w", ROOT, selector=SELECT, mtls=mtls("STRICT"))],
        "PERMISSIVE",
        {},
    ),
    (
        "two namespace-wide: the first loaded wins",
        [pa("a", mtls=mtls("DISABLE")), pa("b", mtls=mtls("STRICT"))],
        "DISABLE",
        {},
    ),
    (
        "two mesh-wide: the first loaded wins",
        [pa("a", ROOT, mtls=mtls("STRICT")), pa("b", ROOT, mtls=mtls("DISABLE"))],
        "STRICT",
        {},
    ),
    (
        "two workload: the first loaded wins, its UNSET inherits (not the second's mode)",
        [
            pa("n", mtls=mtls("STRICT")),
            pa("a", selector=SELECT),
            pa("b", selector=SELECT, mtls=mtls("DISABLE")),
        ],
        "STRICT",
        {},
    ),
    (
        "port level overrides the workload mode",
        [
            pa(
                "w",
                selector=SELECT,
                mtls=mtls("STRICT"),
                portLevelMtls={"8080": mtls("PERMISSIVE"), 9090: mtls("DISABLE")},
            )
        ],
        "STRICT",
        {8080: "PERMISSIVE", 9090: "DISABLE"},
    ),
    (
        "port level UNSET inherits the workload's (inherited) mode",
        [
            pa("m", ROOT, mtls=mtls("STRICT")),
            pa("w", selector=SELECT, portLevelMtls={"8080": mtls("UNSET")}),
        ],
        "STRICT",
        {8080: "STRICT"},
    ),
    (
        "port level on a namespace policy: ignored",
        [pa("n", mtls=mtls("STRICT"), portLevelMtls={"8080": mtls("DISABLE")})],
        "STRICT",
        {},
    ),
]


@pytest.mark.parametrize(
    ("policies", "mode", "ports"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_resolution(policies: list[Policy], mode: str, ports: dict[int, str]) -> None:
    result = resolve_peer_authentication(
        policies, namespace="default", labels=LABELS, root_namespace=ROOT
    )
    assert result.mode == mode
    assert dict(result.per_port) == ports
    assert result.mode_for_port(1) == mode
    for port, port_mode in ports.items():
        assert result.mode_for_port(port) == port_mode


def test_the_chosen_policies_are_named() -> None:
    result = resolve_peer_authentication(
        [pa("m", ROOT, mtls=mtls("STRICT")), pa("w", selector=SELECT, mtls=mtls("PERMISSIVE"))],
        namespace="default",
        labels=LABELS,
        root_namespace=ROOT,
    )
    assert result == PeerAuthenticationResult(
        mode="PERMISSIVE", mesh_policy="istio-system/m", workload_policy="default/w"
    )


def test_a_custom_root_namespace() -> None:
    policies = [pa("m", "mesh-root", mtls=mtls("STRICT")), pa("i", ROOT, mtls=mtls("DISABLE"))]
    result = resolve_peer_authentication(
        policies, namespace="default", labels=LABELS, root_namespace="mesh-root"
    )
    assert (result.mode, result.mesh_policy) == ("STRICT", "mesh-root/m")


def test_from_a_loaded_config() -> None:
    config = load_texts(
        [
            (
                "mesh.yaml",
                """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage, namespace: shop}
spec: {version: v1}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: productpage}
spec:
  selector: {matchLabels: {app: productpage}}
  mtls: {mode: UNSET}
  portLevelMtls:
    "9080": {mode: PERMISSIVE}
""",
            )
        ]
    )
    result = peer_authentication_of(config)
    assert result.mode == "STRICT"
    assert result.mode_for_port(9080) == "PERMISSIVE"
    assert result.workload_policy == "shop/productpage"  # the Service's namespace by default
