"""docs/authorization.md and docs/propagation.md: the runnable examples print what the pages
show."""

from __future__ import annotations

import pytest

from tests.conftest import RunDocsExample

EXAMPLES = [
    ("authorization.md", "# Runnable: an AuthorizationPolicy enforced by the ASGI middleware"),
    ("propagation.md", "# Runnable: the trust boundary for context headers"),
]


@pytest.mark.parametrize(("page", "mark"), EXAMPLES)
def test_the_runnable_example_prints_what_the_page_shows(
    run_docs_example: RunDocsExample, page: str, mark: str
) -> None:
    run_docs_example(page, mark)
