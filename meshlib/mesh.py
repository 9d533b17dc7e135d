"""``Mesh``: one service's mesh: its config, routing table and (later) runtime state.

Everything lives on a ``Mesh``; nothing is global. The default mesh behind ``meshlib.client`` is
one explicit, replaceable instance.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

from meshlib.config.compile import compile_table
from meshlib.config.load import MeshConfig, load_config, load_texts
from meshlib.errors import Problem
from meshlib.routing import RouteDecision, RouteRequest, RouteTable


class Mesh:
    """A compiled config and the decisions made from it.

    ``seed`` makes weighted choices reproducible: two meshes made with the same seed and config
    route the same sequence of requests identically.
    """

    def __init__(self, config: MeshConfig, *, seed: int | None = None) -> None:
        self._config = config
        self._table = compile_table(config)
        self.rng = random.Random(seed)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_files(
        cls, paths: Sequence[str | os.PathLike[str]], *, seed: int | None = None
    ) -> Mesh:
        """Load, validate and compile config files; raises ``ConfigError`` naming every problem."""
        return cls(load_config(paths), seed=seed)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, seed: int | None = None) -> Mesh:
        return cls.from_files([path], seed=seed)

    @classmethod
    def from_yaml(cls, text: str, *, name: str = "<string>", seed: int | None = None) -> Mesh:
        """Build from YAML text (handy in tests and notebooks)."""
        return cls(load_texts([(name, text)]), seed=seed)

    # ------------------------------------------------------------------ state

    @property
    def config(self) -> MeshConfig:
        return self._config

    @property
    def table(self) -> RouteTable:
        return self._table

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return self._config.warnings

    # ------------------------------------------------------------------ decisions

    def route(self, request: RouteRequest) -> RouteDecision:
        """The routing decision for one request (the data plane's entry point)."""
        return self._table.route(request, self.rng)

    def explain(
        self, method: str, url: str, headers: Mapping[str, str] | None = None
    ) -> RouteDecision:
        """What the mesh will do with a request: route, destination, fault, timeout, retries,
        traffic policy, and why each earlier route did not match (``decision.skipped``)."""
        return self._table.explain(RouteRequest.from_url(method, url, headers), self.rng)
