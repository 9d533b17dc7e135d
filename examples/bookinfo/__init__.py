"""Istio's Bookinfo on meshlib: productpage, details, reviews v1/v2/v3 and ratings, each a process
of its own with its own mesh.yaml (``config/``), started together by ``python -m examples.bookinfo``
(``make demo``) and driven by ``meshctl bookinfo``. See docs/tutorial.md."""
