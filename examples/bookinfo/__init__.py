"""Istio's Bookinfo on meshlib: productpage, details, reviews v1/v2/v3 and ratings, each a process
of its own with its own mesh.yaml (``config/``), started together by ``python -m examples.bookinfo``
(``make demo``) and driven by ``meshctl bookinfo``. See docs/tutorial.md.

``networking/`` holds the demo's rule files, one for each step of Istio's Bookinfo tasks, each named
after Istio's file for that step and meaning what Istio's file means: Istio's own files can be
used in their place (``--samples``, ``$BOOKINFO_SAMPLES``)."""

from pathlib import Path

#: The project's Bookinfo rule files, in Istio's resource language (Istio keeps its own in
#: ``samples/bookinfo/networking``).
NETWORKING = Path(__file__).resolve().parent / "networking"
