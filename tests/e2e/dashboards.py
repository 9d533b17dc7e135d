"""Istio's Grafana dashboards as the tests use them: the project's table of their HTTP panels
(``istio_dashboards.yaml``), how that table is read out of a dashboard's JSON (for the test that
checks it against Istio's own files), and what Grafana does with a panel's PromQL before
Prometheus sees it (template variables, ``$__rate_interval``).

A dashboard's **HTTP panels** are its panels with PromQL targets that are not about TCP (a panel
whose every shown target reads an ``istio_tcp_*`` metric is a TCP panel): the request panels and
the version panel (``istio_build``). A hidden target (``hide: true``) is left out, as Grafana
does not run it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TABLE = Path(__file__).with_name("istio_dashboards.yaml")
#: The dashboards of the table: Istio's Mesh, Service and Workload dashboards.
FILES = (
    "istio-mesh-dashboard.gen.json",
    "istio-service-dashboard.json",
    "istio-workload-dashboard.json",
)


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    row: str
    queries: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Variable:
    """A template variable: a ``query`` variable (``query_result(...)`` and the regex that picks
    the values out of each result line) or a ``custom`` one (fixed options)."""

    name: str
    type: str
    query: str
    regex: str
    include_all: bool
    multi: bool
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Dashboard:
    title: str
    file: str
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...]


# --------------------------------------------------------------------------- the table


def load_table(path: Path = TABLE) -> list[Dashboard]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        Dashboard(
            title=entry["dashboard"],
            file=entry["file"],
            variables=tuple(Variable(**v) for v in entry["variables"]),
            panels=tuple(Panel(p["title"], p["row"], tuple(p["queries"])) for p in entry["panels"]),
        )
        for entry in data
    ]


# --------------------------------------------------------------------------- a dashboard's JSON


def http_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The HTTP panels of a Grafana dashboard's JSON, in order: title, row, PromQL queries."""
    found: list[dict[str, Any]] = []

    def walk(panels: Sequence[Mapping[str, Any]], row: str) -> str:
        for panel in panels:
            if panel.get("type") == "row":
                row = str(panel.get("title") or "")
                walk(panel.get("panels") or (), row)  # a collapsed row holds its panels
                continue
            queries = [
                str(t["expr"])
                for t in panel.get("targets") or ()
                if t.get("expr") and t.get("hide") is not True
            ]
            if not queries or all("istio_tcp_" in q for q in queries):
                continue
            found.append({"title": str(panel.get("title") or ""), "row": row, "queries": queries})
        return row

    walk(dashboard.get("panels") or (), "")
    return found


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The template variables of a Grafana dashboard's JSON (but the data source)."""
    out: list[dict[str, Any]] = []
    for variable in (dashboard.get("templating") or {}).get("list") or ():
        kind = variable.get("type")
        if kind == "datasource":
            continue
        query = variable.get("query")
        if isinstance(query, Mapping):  # newer Grafana: {"query": "...", "refId": ...}
            query = query.get("query")
        entry: dict[str, Any] = {
            "name": variable["name"],
            "type": kind,
            "query": str(query or ""),
            "regex": str(variable.get("regex") or ""),
            "include_all": bool(variable.get("includeAll")),
            "multi": bool(variable.get("multi")),
        }
        if kind == "custom":
            entry["options"] = [str(o["value"]) for o in variable.get("options") or ()]
        out.append(entry)
    return out


# --------------------------------------------------------------------------- Grafana's side

_REFERENCE = re.compile(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]")


def special_regex_escape(value: str) -> str:
    """Grafana's ``prometheusSpecialRegexEscape``: a value inside a PromQL regex string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def formatted(variable: Variable, values: Sequence[str]) -> str:
    """A variable's selected values as Grafana's Prometheus data source writes them into a
    query (``interpolateQueryExpr``)."""
    if not variable.multi and not variable.include_all:
        return values[0].replace("\\", "\\\\").replace("'", "\\\\'") if values else ""
    escaped = [special_regex_escape(v) for v in values]
    if len(escaped) == 1:
        return escaped[0]
    return "(" + "|".join(escaped) + ")"


def interpolate(expr: str, chosen: Mapping[str, str], builtins: Mapping[str, str]) -> str:
    """``expr`` with each ``$name``/``${name}``/``[[name]]`` replaced: a template variable by its
    formatted value, a built-in (``__rate_interval``) by its value. An unknown name is an error
    (the dashboard would show it unreplaced)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in chosen:
            return chosen[name]
        if name in builtins:
            return builtins[name]
        raise KeyError(f"no value for ${name} in {expr}")

    return _REFERENCE.sub(replace, expr)


def result_lines(result: Sequence[Mapping[str, Any]]) -> list[str]:
    """An instant query's result as Grafana's ``query_result()`` shows it to the regex:
    ``name{label="value", ...} value timestamp``."""
    lines = []
    for row in result:
        metric = dict(row.get("metric") or {})
        name = metric.pop("__name__", "")
        labels = ", ".join(f'{k}="{v}"' for k, v in metric.items())
        timestamp, value = row["value"]
        lines.append(f"{name}{{{labels}}} {value} {int(float(timestamp) * 1000)}")
    return lines


def pick(regex: str, lines: Sequence[str]) -> list[str]:
    """The values a variable's regex (``/.../flags``) takes out of ``lines``, first group, in
    order, each once."""
    body, _, flags = regex[1:].rpartition("/") if regex.startswith("/") else (regex, "", "")
    pattern = re.compile(body, re.IGNORECASE if "i" in flags else 0)
    found: list[str] = []
    for line in lines:
        match = pattern.search(line)
        if match is None:
            continue
        value = match.group(1) if match.groups() else match.group(0)
        if value and value not in found:
            found.append(value)
    return found


def fill_variables(
    dashboard: Dashboard,
    instant: Callable[[str], Sequence[Mapping[str, Any]]],
    selected: Mapping[str, str],
    builtins: Mapping[str, str],
) -> dict[str, str]:
    """Each template variable's formatted value, in the dashboard's order (a variable's query
    may use the ones before it): a variable in ``selected`` takes that value; any other takes
    "All" of the values its query finds (``instant`` runs a PromQL instant query), or its only
    value when it has no "All"."""
    chosen: dict[str, str] = {}
    for variable in dashboard.variables:
        if variable.name in selected:
            chosen[variable.name] = formatted(variable, [selected[variable.name]])
            continue
        if variable.type == "custom":
            options = list(variable.options)
        else:
            query = interpolate(variable.query, chosen, builtins)
            inner = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL)
            assert inner is not None, f"{variable.name}: not a query_result() variable: {query}"
            options = pick(variable.regex, result_lines(instant(inner.group(1))))
        if variable.include_all:
            chosen[variable.name] = formatted(variable, options)
        else:
            chosen[variable.name] = formatted(variable, options[:1])
    return chosen
