"""Micro-benchmark: one authorization decision.

    python -m bench.authz [--json]

Ten ALLOW policies on one workload, each with a rule on the peer's principal, the method and a
path prefix, and a ``when`` on a header; the request matches only the last one, so every rule of
the nine others is tried first. Target: at most 20 µs per decision. Timed with ``timeit``
(median of repeats, per call), beside an empty function call.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import timeit

from meshlib.config.security import AuthorizationPolicy
from meshlib.security.authz import (
    NamedPolicy,
    RequestAttributes,
    compile_authorization,
)

TARGET_US = 20.0


def policies(count: int = 10) -> list[NamedPolicy]:
    out = []
    for i in range(count):
        spec = AuthorizationPolicy.model_validate(
            {
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [
                            {"source": {"principals": [f"cluster.local/ns/default/sa/client-{i}"]}}
                        ],
                        "to": [
                            {"operation": {"methods": ["GET", "HEAD"], "paths": [f"/api/v{i}/*"]}}
                        ],
                        "when": [{"key": "request.headers[x-tenant]", "values": [f"tenant-{i}"]}],
                    }
                ],
            }
        )
        out.append(NamedPolicy(f"policy-{i}", "default", spec))
    return out


def per_call(stmt: str, namespace: dict[str, object], number: int, repeat: int) -> float:
    timer = timeit.Timer(stmt, globals=namespace)
    return statistics.median(timer.repeat(repeat=repeat, number=number)) / number


def run(number: int = 20_000, repeat: int = 7) -> dict[str, object]:
    authorizer = compile_authorization(policies())
    request = RequestAttributes(
        method="GET",
        path="/api/v9/items",
        host="svc.default.svc.cluster.local",
        port=8080,
        headers={"x-tenant": "tenant-9"},
        peer_principal="cluster.local/ns/default/sa/client-9",
        peer_address="10.0.0.9",
    )
    decision = authorizer.decide(request)
    if not decision.allowed or decision.policy != "default/policy-9":
        raise RuntimeError(f"unexpected decision: {decision}")
    decide = per_call(
        "decide(request)", {"decide": authorizer.decide, "request": request}, number, repeat
    )
    empty = per_call("f()", {"f": lambda: None}, number, repeat)
    return {
        "benchmark": "authz",
        "python": platform.python_version(),
        "policies": 10,
        "decision_us": round(decide * 1e6, 2),
        "empty_call_us": round(empty * 1e6, 3),
        "target_us": TARGET_US,
        "met": decide * 1e6 <= TARGET_US,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verdict = "met" if result["met"] else "MISSED"
        print(
            f"authorization decision, 10 policies, match on the last: {result['decision_us']} µs "
            f"(target ≤ {TARGET_US:g} µs: {verdict}; an empty call: {result['empty_call_us']} µs)"
        )


if __name__ == "__main__":
    main()
