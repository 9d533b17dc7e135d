"""docs/security.md: the runnable example runs and prints what the page shows."""

from __future__ import annotations

from tests.conftest import RunDocsExample


def test_the_runnable_example_prints_what_the_page_shows(
    run_docs_example: RunDocsExample,
) -> None:
    run_docs_example("security.md", "# Runnable: mTLS between two workloads")
