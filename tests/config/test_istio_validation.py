"""Validation parity with Istio: Istio's own test cases, translated to YAML, with Istio's verdict.

Each file in ``tests/config/istio_validation/`` is a list of cases taken from istio/istio's
``pkg/config/validation`` tests (``validation_test.go``, ``virtualservice_test.go``, …) and from the
CRD schema test data of istio/api and istio/istio (``testdata/crds``). A case is::

    - name: "regex empty"                      # the case's name in Istio's test, where it has one
      source: virtualservice_test.go TestValidateHTTPMatchRequest
      istio: invalid                           # valid | warning | invalid: Istio's verdict
      kind: VirtualService                     # networking.istio.io/v1 kind (or ``document:``)
      metadata: {name: x, namespace: default}  # optional
      spec: {...}
      meshlib: valid                           # only where meshlib knowingly differs …
      why: "…"                                 # … and then why

or, instead of ``kind``/``spec``, ``document:`` with a whole YAML document as text.

meshlib's verdict is ``invalid`` when loading raises ``ConfigError``, ``warning`` when the resource
loads with a warning, and ``valid`` otherwise. Each case must give Istio's verdict unless it names
its difference (``meshlib:`` and ``why:``); differences stay under 2 % of the cases. No case may
raise anything but ``ConfigError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlib import ConfigError
from meshlib.config.load import load_texts

CASES_DIR = Path(__file__).parent / "istio_validation"
VERDICTS = ("valid", "warning", "invalid")
MAX_DIFFERENCE = 0.02


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        assert isinstance(entries, list), f"{path.name}: a list of cases"
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            name = str(entry.get("name") or i)
            case_id = f"{path.stem}:{name}"
            assert case_id not in seen, f"{path.name}: case name {name!r} twice"
            seen.add(case_id)
            cases.append((case_id, entry))
    return cases


CASES = _cases()


def _document(case: dict[str, Any]) -> str:
    if "document" in case:
        return str(case["document"])
    doc = {
        "apiVersion": case.get("apiVersion", "networking.istio.io/v1"),
        "kind": case["kind"],
        "metadata": case.get("metadata") or {"name": "case", "namespace": "default"},
        "spec": case["spec"],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def verdict_of(case: dict[str, Any]) -> tuple[str, str]:
    """meshlib's verdict on a case, and what it said."""
    try:
        config = load_texts([("case.yaml", _document(case))])
    except ConfigError as exc:
        return "invalid", str(exc)
    if config.warnings:
        return "warning", "\n".join(str(w) for w in config.warnings)
    return "valid", ""


def test_cases_are_well_formed() -> None:
    assert len(CASES) >= 100, "Istio's test cases, translated"
    for case_id, case in CASES:
        assert case.get("istio") in VERDICTS, f"{case_id}: istio: one of {VERDICTS}"
        assert case.get("source"), f"{case_id}: source: where Istio tests it"
        assert ("document" in case) != ("spec" in case), f"{case_id}: spec or document"
        if "meshlib" in case:
            assert case["meshlib"] in VERDICTS, f"{case_id}: meshlib: one of {VERDICTS}"
            assert case["meshlib"] != case["istio"], f"{case_id}: a difference that is none"
            assert case.get("why"), f"{case_id}: a known difference says why"


@pytest.mark.parametrize(("case_id", "case"), CASES, ids=[c[0] for c in CASES])
def test_verdict_matches_istio(case_id: str, case: dict[str, Any]) -> None:
    expected = case.get("meshlib", case["istio"])
    verdict, said = verdict_of(case)
    assert verdict == expected, f"{case_id}: Istio says {case['istio']}, meshlib {verdict}\n{said}"
    if verdict == "invalid":
        # every error names the file, a line and (for a spec problem) the field
        for line in said.splitlines():
            assert line.startswith("case.yaml:"), line


def test_differences_stay_under_two_percent() -> None:
    differences = [case_id for case_id, case in CASES if "meshlib" in case]
    assert len(differences) <= MAX_DIFFERENCE * len(CASES), differences
