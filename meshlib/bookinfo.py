"""``meshctl bookinfo``: change the rules of the running Bookinfo demo, as Istio's tasks do with
``kubectl apply``, and see what is in force.

The demo (``make demo``, or ``python -m examples.bookinfo``) keeps its state in a run directory
(``$BOOKINFO_RUN_DIR``, else ``<tmp>/meshlib-bookinfo-<uid>``)::

    bookinfo.json        the running services: name, version, URL, config file, metrics
                         endpoint; the store of the rules
    prometheus-targets.json  the metrics endpoints for Prometheus (file_sd_configs)
    config/<svc>.yaml    each service's mesh.yaml: includes ../rules/*.yaml
    registry.yaml        where each service listens
    rules/bookinfo.yaml  the rules in force, written by these commands only
    ca/                  the demo's root CA: each service's certificate comes from it

The rules live in a store (``meshlib.store.rules``): by default the file store
``file://<run dir>/rules/bookinfo.yaml``; a demo started with ``--store etcd://...`` keeps them
in etcd instead, and its services register there and find one another there (no
``registry.yaml``, no ``rules/``). These commands find the store in ``bookinfo.json``. On a file
store a service runs a change once its admin endpoint reports the digest of the config its files
hold; on etcd, once it reports (under the store's ``status/`` keys, as ``meshctl --store URL
status`` reads them) the rules revision of the change or a later one.

meshctl bookinfo apply FILE...     create or replace the resources of FILE (``-``: stdin), then
                                   wait until every service runs them
meshctl bookinfo delete FILE...    remove the resources named in FILE
meshctl bookinfo reset             back to the baseline: Istio's destination-rule-all.yaml
meshctl bookinfo routes            the rules in force, whether each service runs them, and
                                   where each one's metrics are
meshctl bookinfo load              concurrent calls to a service through a mesh of meshctl's
                                   own with the rules in force (fortio in Istio's tasks): the
                                   status codes and response flags, counted
meshctl bookinfo trace             load the product page once and show its trace: every hop
                                   across the services, with the mesh's faults and retries

The baseline is what Istio's tasks apply before their first step: the DestinationRules of
``destination-rule-all.yaml``, which define the subsets (v1, v2, v3) the VirtualServices route
to. ``apply`` keeps them (a file with a DestinationRule of the same name replaces it), and
``reset`` restores them.

The rules may be Istio's security resources as well (AuthorizationPolicy, PeerAuthentication,
RequestAuthentication), as in Istio's authorization and mutual TLS tasks. The services have mesh
identities, so their admin endpoints answer only mesh peers: these commands call them over
mutual TLS with a certificate of the demo's CA (``admin_context``), which a STRICT
PeerAuthentication lets through as well.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

from meshlib import control
from meshlib.config import model as m
from meshlib.config import security as sec
from meshlib.config.lint import lint
from meshlib.config.load import DEFAULT_ROOT_NAMESPACE, MeshConfig, load_config, load_texts
from meshlib.errors import ConfigError, Problem, StoreError
from meshlib.mesh import Mesh
from meshlib.store.rules import (
    EtcdRuleStore,
    RuleStore,
    Written,
    apply_sources,
    delete_sources,
    open_rule_store,
    replace_all,
)
from meshlib.store.url import StoreURL
from meshlib.telemetry import spantree

RUN_DIR_ENV = "BOOKINFO_RUN_DIR"
STATE_FILE = "bookinfo.json"
#: The run directory's root CA (``meshctl ca init`` layout), which the services' configs name.
CA_DIR = "ca"
#: Who ``meshctl bookinfo`` and the launcher are when they read the services' admin endpoints.
ADMIN_ACCOUNT = ("istio-system", "meshctl")


def admin_context(run_dir: str | os.PathLike[str]) -> ssl.SSLContext | None:
    """A client context with a fresh certificate of the run directory's CA (for
    ``spiffe://<trust domain>/ns/istio-system/sa/meshctl``), or None when the run directory has
    no CA (the services then have no identity, and their admin endpoints take plain text)."""
    folder = os.path.join(os.fspath(run_dir), CA_DIR)
    if not os.path.isdir(folder):
        return None
    from meshlib.security.ca import CertificateAuthority  # noqa: PLC0415 - loads cryptography
    from meshlib.security.workload import WorkloadIdentity  # noqa: PLC0415

    authority = CertificateAuthority.load(folder)
    namespace, account = ADMIN_ACCOUNT
    spiffe_id = f"spiffe://{authority.trust_domain}/ns/{namespace}/sa/{account}"
    return WorkloadIdentity.from_ca(authority, spiffe_id).client_context()


def default_run_dir() -> str:
    found = os.environ.get(RUN_DIR_ENV)
    if found:
        return found
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"meshlib-bookinfo-{uid}")


@dataclass(frozen=True, slots=True)
class Demo:
    """A running demo, as its launcher described it in ``bookinfo.json``."""

    run_dir: str
    #: the rules file (a file store); None when the rules are in etcd
    rules: str | None
    baseline: tuple[str, ...]
    services: tuple[control.ServiceRef, ...]
    productpage: str
    #: the services' metrics endpoints as a Prometheus file_sd_configs file, if the demo wrote one
    prometheus_targets: str | None = None
    #: where the rules are: ``file://<rules>``, or the ``etcd://`` store the services use
    store: str = ""

    @classmethod
    def load(cls, run_dir: str) -> Demo:
        path = os.path.join(run_dir, STATE_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                state: dict[str, Any] = json.load(handle)
        except FileNotFoundError:
            raise LookupError(
                f"no Bookinfo demo runs from {run_dir} (no {STATE_FILE}): start it with "
                "`make demo` or `python -m examples.bookinfo`, or name its run directory "
                f"with --run-dir or ${RUN_DIR_ENV}"
            ) from None
        except (OSError, ValueError) as exc:
            raise LookupError(f"{path} cannot be read: {exc}") from None
        try:
            rules = state.get("rules")
            store = str(StoreURL.parse(state.get("store") or (f"file://{rules}" if rules else "")))
            return cls(
                run_dir=run_dir,
                rules=rules,
                baseline=tuple(state.get("baseline", ())),
                services=tuple(
                    control.ServiceRef(
                        s["name"], s.get("version"), s["url"], s["config"], s.get("metrics")
                    )
                    for s in state["services"]
                ),
                productpage=state["productpage"],
                prometheus_targets=state.get("prometheus_targets"),
                store=store,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise LookupError(
                f"{path} does not describe a running demo ({type(exc).__name__}: {exc}): "
                "start the demo again"
            ) from None

    @property
    def on_etcd(self) -> bool:
        """Whether the rules and the endpoints are in etcd (``--store etcd://...``)."""
        return self.store.startswith("etcd:")

    @property
    def rules_label(self) -> str:
        """Where the rules are, as the commands say it: the rules file, or the store's URL."""
        return self.rules if self.rules is not None and not self.on_etcd else self.store

    def rule_store(self) -> RuleStore:
        """The store of the demo's rules (close it after use)."""
        return open_rule_store(self.store)

    def admin_tls(self) -> ssl.SSLContext | None:
        """How to reach the services' admin endpoints (see ``admin_context``)."""
        return admin_context(self.run_dir)

    def service_configs(self) -> list[MeshConfig]:
        """Each service's config as its files hold it now (those that load)."""
        out = []
        for service in self.services:
            try:
                out.append(load_config([service.config]))
            except ConfigError:
                continue
        return out


# --------------------------------------------------------------------------- the parser


def add_parser(commands: Any) -> None:
    """Register ``bookinfo`` and its subcommands on meshctl's subparsers."""
    group = commands.add_parser(
        "bookinfo",
        help="change and show the rules of the running Bookinfo demo, send it load",
        description="Apply Istio rule files to the running Bookinfo demo (make demo), as "
        "Istio's tasks do with kubectl apply, and wait until every service runs them.",
    )
    group.set_defaults(run=lambda args, out: _help(group, out))
    sub = group.add_subparsers(dest="bookinfo_command", metavar="COMMAND")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-d",
            "--run-dir",
            default=None,
            metavar="DIR",
            help=f"the demo's run directory (default: ${RUN_DIR_ENV} or {default_run_dir()})",
        )

    def waits(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=15.0,
            metavar="SECONDS",
            help="how long to wait for every service to run the change (default 15)",
        )
        parser.add_argument(
            "--no-wait", action="store_true", help="write the rules and return at once"
        )

    apply = sub.add_parser(
        "apply",
        help="create or replace the resources of rule files",
        description="Create each resource of the files, or replace the one of the same kind, "
        "namespace and name; the others stay (kubectl apply). Warnings of meshctl validate "
        "about the new resources are printed, with the services' declared app timeouts taken "
        "into account. Exit 0 when every service runs the result, 1 otherwise.",
    )
    common(apply)
    waits(apply)
    apply.add_argument("files", nargs="+", metavar="FILE", help="a rule file; - for stdin")
    apply.set_defaults(run=_apply)

    delete = sub.add_parser(
        "delete",
        help="remove the resources named in rule files",
        description="Remove the resources that the files name (kind, namespace, name).",
    )
    common(delete)
    waits(delete)
    delete.add_argument("files", nargs="+", metavar="FILE", help="a rule file; - for stdin")
    delete.set_defaults(run=_delete)

    reset = sub.add_parser(
        "reset",
        help="back to the baseline (Istio's destination-rule-all.yaml)",
        description="Remove every rule, then apply the baseline the demo started with.",
    )
    common(reset)
    waits(reset)
    reset.set_defaults(run=_reset)

    routes = sub.add_parser(
        "routes",
        help="the rules in force, whether each service runs them, where its metrics are",
        description="List the rules in force, route by route, each service's state, and "
        "where Prometheus scrapes each service's metrics.",
    )
    common(routes)
    routes.set_defaults(run=_routes)

    load = sub.add_parser(
        "load",
        help="send concurrent calls to a service through the mesh, count codes and flags",
        description="Send calls to a service of the demo, several at a time, through a mesh of "
        "meshctl's own that knows where the services are and runs the rules in force (as "
        "fortio and its sidecar do in Istio's circuit-breaking task), and print how many got "
        "each status code and each response flag. Exit 0 once every call is done.",
    )
    common(load)
    load.add_argument(
        "--service",
        default="productpage",
        help="the service to call (default productpage)",
    )
    load.add_argument(
        "--path",
        default=None,
        help="the path to call (default: the service's own, e.g. /productpage, /details/0)",
    )
    load.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=2,
        metavar="N",
        help=f"calls in flight at once (default 2, at most {MAX_CONCURRENCY})",
    )
    load.add_argument(
        "-n",
        "--calls",
        type=int,
        default=20,
        metavar="N",
        help=f"how many calls in all (default 20, at most {MAX_CALLS})",
    )
    load.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable), e.g. 'end-user: jason'",
    )
    load.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="the client's timeout on each call (default 10)",
    )
    load.set_defaults(run=_load)

    trace = sub.add_parser(
        "trace",
        help="load the product page once and show that request's trace across the services",
        description="Load the product page once, as a traced client (a new trace: its own "
        "traceparent), then collect that trace's spans from every service's GET "
        "/_mesh/traces and show them as a tree: each hop (a CLIENT span per attempt, the "
        "SERVER span of the service it reached), with the mesh's faults and retries as events. "
        "Exit 0 when the page answered and spans were found, 1 otherwise.",
    )
    common(trace)
    trace.add_argument(
        "--user", default=None, metavar="NAME", help="signed in as NAME (e.g. jason)"
    )
    trace.add_argument(
        "--path", default="/productpage", help="the page to load (default /productpage)"
    )
    trace.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="the page's timeout (default 15)",
    )
    trace.add_argument(
        "--json", action="store_true", help="print the trace's spans as JSON instead of a tree"
    )
    trace.set_defaults(run=_trace)


def _help(parser: argparse.ArgumentParser, out: TextIO) -> int:
    parser.print_help(out)
    return 2


def _demo(args: argparse.Namespace) -> Demo | None:
    try:
        return Demo.load(args.run_dir or default_run_dir())
    except LookupError as exc:
        print(f"meshctl bookinfo: {exc}", file=sys.stderr)
        return None


# --------------------------------------------------------------------------- commands


def _apply(args: argparse.Namespace, out: TextIO) -> int:
    demo = _demo(args)
    if demo is None:
        return 1
    store = demo.rule_store()
    try:
        sources = [control.Source.read(name) for name in args.files]
        control.resources_of(sources)  # the files' own errors first, named as validate does
        warnings = _warnings(demo, sources, store.read().documents)
        written = apply_sources(store, sources)
        _print_changes(written.changes, out)
        for problem in warnings:
            print(problem, file=out)
        return _finish(demo, store, written, args, out)
    except ConfigError as exc:
        _refused(exc)
        return 1
    except StoreError as exc:
        return _unreachable(demo, exc)
    finally:
        store.close()


def _delete(args: argparse.Namespace, out: TextIO) -> int:
    demo = _demo(args)
    if demo is None:
        return 1
    store = demo.rule_store()
    try:
        sources = [control.Source.read(name) for name in args.files]
        written = delete_sources(store, sources)
        _print_changes(written.changes, out)
        return _finish(demo, store, written, args, out)
    except ConfigError as exc:
        _refused(exc)
        return 1
    except StoreError as exc:
        return _unreachable(demo, exc)
    finally:
        store.close()


def _reset(args: argparse.Namespace, out: TextIO) -> int:
    demo = _demo(args)
    if demo is None:
        return 1
    store = demo.rule_store()
    try:
        written = replace_all(store, demo.baseline)
        names = ", ".join(os.path.basename(p) for p in demo.baseline) or "no rules"
        print(f"rules reset to the baseline: {names}", file=out)
        return _finish(demo, store, written, args, out)
    except ConfigError as exc:
        _refused(exc)
        return 1
    except StoreError as exc:
        return _unreachable(demo, exc)
    finally:
        store.close()


def _routes(args: argparse.Namespace, out: TextIO) -> int:
    demo = _demo(args)
    if demo is None:
        return 1
    store = demo.rule_store()
    try:
        return _show_routes(demo, store, out)
    except ConfigError as exc:
        _refused(exc)
        return 1
    except StoreError as exc:
        return _unreachable(demo, exc)
    finally:
        store.close()


def _show_routes(demo: Demo, store: RuleStore, out: TextIO) -> int:
    held = store.read()
    rules = (
        load_texts([(demo.rules_label, control.render(held.documents))]) if held.documents else None
    )
    where = demo.rules_label
    if isinstance(store, EtcdRuleStore):
        where += f", rules revision {held.revision}"
    print(f"Rules in force ({where}):", file=out)
    resources = rules.resources if rules is not None else ()
    if not resources:
        print("  none", file=out)
    for resource in sorted(resources, key=lambda r: (r.kind, r.namespace, r.name)):
        origin = (resource.document.data.get("metadata", {}).get("annotations") or {}).get(
            control.ANNOTATION, ""
        )
        name = (
            resource.name
            if resource.namespace == "default"
            else str(f"{resource.namespace}/{resource.name}")
        )
        kind_width, name_width = max(16, len(resource.kind) + 1), max(13, len(name) + 1)
        print(
            f"  {resource.kind:<{kind_width}}{name:<{name_width}}"
            f"{summary(resource.spec, resource.namespace)}",
            file=out,
        )
        if origin:
            print(f"      from {origin}", file=out)
        if isinstance(resource.spec, m.VirtualService):
            for line in http_routes(resource.spec):
                print(f"      {line}", file=out)
    print("Services:", file=out)
    tls = demo.admin_tls()
    if isinstance(store, EtcdRuleStore):
        syncs = explain_store_syncs(demo, store_syncs(demo, store, int(held.revision)))
    else:
        syncs = [control.check(s, tls) for s in demo.services]
    code = _print_sync(syncs, out)
    print("Metrics (Prometheus scrape targets):", file=out)
    for service in demo.services:
        print(f"  {service.label:<16}{service.metrics or 'off'}", file=out)
    if demo.prometheus_targets:
        print(f"  as a file_sd_configs file: {demo.prometheus_targets}", file=out)
    return code


MAX_CONCURRENCY = 64
#: A user name productpage signs in (its login form's rule).
_USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MAX_CALLS = 10_000
#: The path ``load`` calls on each Bookinfo service.
SERVICE_PATHS = {
    "productpage": "/productpage",
    "details": "/details/0",
    "reviews": "/reviews/0",
    "ratings": "/ratings/0",
}
#: What the response flags ``load`` may count mean (Envoy's words, shortened).
FLAG_MEANINGS = {
    "-": "no flag: the service answered",
    "UO": "upstream overflow: refused by the connection pool's limits or an open breaker",
    "UH": "no healthy upstream",
    "NC": "no cluster: the subset is not defined",
    "NR": "no route",
    "UT": "upstream request timeout",
    "UF": "upstream connection failure",
    "UC": "upstream connection termination",
    "URX": "retry limit exceeded",
    "FI": "fault injected: abort",
    "DI": "fault injected: delay",
}


def _load(args: argparse.Namespace, out: TextIO) -> int:
    if not 1 <= args.concurrency <= MAX_CONCURRENCY or not 1 <= args.calls <= MAX_CALLS:
        print(
            f"meshctl bookinfo load: -c must be 1 to {MAX_CONCURRENCY} and -n 1 to {MAX_CALLS}",
            file=sys.stderr,
        )
        return 2
    headers: dict[str, str] = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            print(
                f"meshctl bookinfo load: bad header {raw!r}: write it as 'name: value'",
                file=sys.stderr,
            )
            return 2
        headers[name.strip()] = value.strip()
    demo = _demo(args)
    if demo is None:
        return 1
    names = sorted({s.name for s in demo.services})
    if args.service not in names:
        print(
            f"meshctl bookinfo load: no service {args.service!r} in the demo "
            f"(its services: {', '.join(names)})",
            file=sys.stderr,
        )
        return 2
    path = args.path or SERVICE_PATHS.get(args.service, "/")
    url = f"http://{args.service}:9080{path}"
    mesh = _client_mesh(demo)
    codes: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    lock = threading.Lock()
    left = [args.calls]

    def take() -> bool:
        with lock:
            if left[0] <= 0:
                return False
            left[0] -= 1
            return True

    def worker(http: httpx.Client) -> None:
        while take():
            try:
                response = http.get(url, headers=headers)
            except httpx.HTTPError as exc:  # the mesh raises for some flags (UT, an open breaker)
                code, flag = type(exc).__name__, getattr(exc, "flag", "") or "-"
            else:
                code = str(response.status_code)
                flag = response.headers.get("x-mesh-response-flags", "-")
            with lock:
                codes[code] += 1
                flags[flag] += 1

    print(
        f"{args.calls} calls to {url}, {args.concurrency} at a time, through a mesh with the "
        "demo's rules in force",
        file=out,
    )
    started = time.monotonic()
    try:
        with (
            mesh.client(timeout=args.timeout) as http,
            ThreadPoolExecutor(args.concurrency) as pool,
        ):
            for done in [pool.submit(worker, http) for _ in range(args.concurrency)]:
                done.result()
    finally:
        mesh.close()
    took = time.monotonic() - started
    total = sum(codes.values())
    width = max(len(k) for k in [*codes, *flags])
    for code, count in sorted(codes.items(), key=lambda item: (not item[0].isdigit(), item[0])):
        label = "Code" if code.isdigit() else "Error"
        print(f"{label} {code:<{width}} : {count} ({100 * count / total:.1f} %)", file=out)
    print("Response flags (x-mesh-response-flags):", file=out)
    for flag, count in sorted(flags.items(), key=lambda item: (item[0] != "-", item[0])):
        meaning = FLAG_MEANINGS.get(flag, "")
        print(
            f"  {flag:<{width}} : {count} ({100 * count / total:.1f} %)"
            + (f"  {meaning}" if meaning else ""),
            file=out,
        )
    print(f"All done: {total} calls in {took:.1f}s", file=out)
    return 0


#: How long ``trace`` waits for the services to report the spans of the page load.
TRACE_SETTLE = 5.0


def _trace(args: argparse.Namespace, out: TextIO) -> int:
    if args.user is not None and not _USER_NAME.fullmatch(args.user):
        print(f"meshctl bookinfo trace: bad user name {args.user!r}", file=sys.stderr)
        return 2
    if not args.path.startswith("/"):
        print("meshctl bookinfo trace: --path must start with /", file=sys.stderr)
        return 2
    demo = _demo(args)
    if demo is None:
        return 1
    trace_id, parent = f"{secrets.randbits(128) or 1:032x}", f"{secrets.randbits(64) or 1:016x}"
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    if args.user is not None:
        headers["cookie"] = f"user={args.user}"
    url = demo.productpage.rsplit("/", 1)[0] + args.path
    started = time.monotonic()
    try:
        response = httpx.get(url, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"meshctl bookinfo trace: GET {url}: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    spans = collect_trace(demo, trace_id)
    if args.json:
        json.dump({"trace_id": trace_id, "status": response.status_code, "spans": spans}, out)
        out.write("\n")
        return 0 if spans else 1
    who = f" as {args.user}" if args.user else ""
    services = sorted({f"{s['service']} {s.get('version') or ''}".strip() for s in spans})
    print(
        f"GET {url}{who}: {response.status_code} in {took * 1000:.0f} ms, trace {trace_id}",
        file=out,
    )
    if not spans:
        print(
            "no spans: do the services trace (spec.telemetry.tracing)? A sampling percentage "
            "below 100 may have left this trace out.",
            file=out,
        )
        return 1
    print(f"{len(spans)} spans from {len(services)} services: {', '.join(services)}", file=out)
    print(f"{'start':>11} {'duration':>11}", file=out)
    for line in spantree.draw(spantree.build(spans)):
        print(line, file=out)
    return 0


def collect_trace(demo: Demo, trace_id: str, settle: float = TRACE_SETTLE) -> list[dict[str, Any]]:
    """The spans of ``trace_id`` from every service of the demo: polled until two looks in a row
    find the same spans (a service reports a span when it ends, just after it answered), or
    ``settle`` seconds pass."""
    tls = demo.admin_tls()
    deadline = time.monotonic() + settle
    last: list[dict[str, Any]] | None = None
    while True:
        found: dict[str, dict[str, Any]] = {}
        for service in demo.services:
            try:
                for span in control.fetch_spans(service, trace_id, tls=tls):
                    found[span["span_id"]] = span
            except (httpx.HTTPError, ValueError, KeyError):
                continue
        spans = sorted(found.values(), key=lambda s: s["start_unix_nano"])
        if (spans and spans == last) or time.monotonic() >= deadline:
            return spans
        last = spans
        time.sleep(0.1)


def _client_mesh(demo: Demo) -> Mesh:
    """A mesh of ``load``'s own, as fortio's sidecar is in Istio's task: it finds the services
    in the demo's registry file (or its etcd store) and runs the rules in force (not the
    services' own configs)."""
    if demo.on_etcd:
        text = (
            "apiVersion: meshlib.dev/v1\n"
            "kind: Service\n"
            "metadata: {name: meshctl-load}\n"
            f"spec:\n  store: {json.dumps(demo.store)}\n"
        )
        return Mesh.from_yaml(text, name="meshctl-load")
    assert demo.rules is not None
    registry = os.path.join(demo.run_dir, "registry.yaml")
    text = (
        "apiVersion: meshlib.dev/v1\n"
        "kind: Service\n"
        "metadata: {name: meshctl-load}\n"
        "spec:\n"
        f"  registry:\n    file: {{path: {json.dumps(os.path.abspath(registry))}}}\n"
        f"  include: [{json.dumps(os.path.abspath(demo.rules))}]\n"
    )
    return Mesh.from_yaml(text, name="meshctl-load")


def _warnings(
    demo: Demo, sources: Sequence[control.Source], in_force: Sequence[dict[str, Any]]
) -> list[Problem]:
    """meshctl validate's warnings about the applied files, seen with the rules ``in_force`` (so
    that subsets defined there count) and the services' configs (their app timeouts)."""
    names = [s.name for s in sources]
    texts = [(s.name, s.text) for s in sources]
    if in_force:
        texts.insert(0, (demo.rules_label, control.render(in_force)))
    config = load_texts(texts)
    found = lint(config, demo.service_configs())
    return [
        p
        for p in found
        if p.file in names and not (p.path == "metadata.name" and "replaces" in p.message)
    ]


def _refused(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print("nothing applied: the rules in force stay", file=sys.stderr)


def _unreachable(demo: Demo, exc: StoreError) -> int:
    print(f"meshctl bookinfo: store {demo.store}: {exc}", file=sys.stderr)
    return 1


def _print_changes(changes: Sequence[tuple[control.Key, str]], out: TextIO) -> None:
    for key, what in changes:
        print(f"{control.describe(key)} {what}", file=out)


def _finish(
    demo: Demo, store: RuleStore, written: Written, args: argparse.Namespace, out: TextIO
) -> int:
    if isinstance(store, EtcdRuleStore):
        print(f"rules revision {written.revision} in {store.url}", file=out)
    if args.no_wait:
        return 0
    started = time.monotonic()
    if isinstance(store, EtcdRuleStore):
        syncs = wait_store_sync(demo, store, int(written.revision), timeout=args.timeout)
    else:
        syncs = control.wait_in_sync(demo.services, timeout=args.timeout, tls=demo.admin_tls())
    took = time.monotonic() - started
    if all(s.in_sync for s in syncs):
        print(f"all {len(syncs)} services run the new rules ({took:.1f}s)", file=out)
        return 0
    return _print_sync(syncs, out)


def _print_sync(syncs: Sequence[control.Sync], out: TextIO) -> int:
    failed = 0
    for sync in syncs:
        service = sync.service
        if sync.in_sync and sync.reported:
            # a digest is shown as its first 12 characters, a rules revision whole
            shown = sync.reported if " " in sync.reported else sync.reported[:12]
            state = f"in sync  {shown}"
        else:
            state = "STALE"
        print(f"  {service.label:<16}{service.url:<26}{state}", file=out)
        if not sync.in_sync:
            failed += 1
            for line in (sync.error or "").splitlines():
                print(f"      {line}", file=out)
    return 1 if failed else 0


# --------------------------------------------------------------------------- on etcd


def _address(url: str) -> str:
    """``host:port`` of a service's base URL, as it registers it."""
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}"


def store_syncs(demo: Demo, store: EtcdRuleStore, revision: int) -> list[control.Sync]:
    """Whether each of the demo's services runs rules ``revision`` (or a later one), as its
    registration reports it in the store (``meshctl --store URL status``): ``reported`` is the
    revision it runs."""
    instances, _ = store.instances()
    found = {(i.service, i.address): i for i in instances}
    wanted = f"rules revision {revision}"
    out = []
    for service in demo.services:
        instance = found.get((service.name, _address(service.url)))
        if instance is None:
            out.append(control.Sync(service, wanted, None, f"not registered in {store.url}"))
            continue
        runs = instance.rules_revision
        reported = None if runs is None else f"rules revision {runs}"
        if runs is None:
            error = "registered, but it has not reported the rules it runs"
        elif instance.stale:
            error = "its store is unreachable: it keeps the last rules it had"
        elif runs < revision:
            error = "it has not applied the change yet"
        else:
            out.append(control.Sync(service, wanted, reported, synced=True))
            continue
        out.append(control.Sync(service, wanted, reported, error, synced=False))
    return out


def explain_store_syncs(demo: Demo, syncs: Sequence[control.Sync]) -> list[control.Sync]:
    """``syncs`` with the reason of a registered service that is behind, from its admin
    endpoint, when it refused the rules in the store (``store.rules_error``)."""
    tls = demo.admin_tls()
    out = []
    for sync in syncs:
        if not sync.in_sync and sync.reported is not None:
            try:
                status = control.fetch_status(sync.service, tls=tls)
            except (httpx.HTTPError, ValueError):
                status = {}
            refused = (status.get("store") or {}).get("rules_error")
            if refused:
                why = f"it refused the change:\n{refused}"
                out.append(
                    control.Sync(sync.service, sync.expected, sync.reported, why, synced=False)
                )
                continue
        out.append(sync)
    return out


def wait_store_sync(
    demo: Demo, store: EtcdRuleStore, revision: int, timeout: float, interval: float = 0.1
) -> list[control.Sync]:
    """Poll the store until every service of the demo runs rules ``revision`` or later, or
    ``timeout`` seconds pass; the last look at each."""
    deadline = time.monotonic() + timeout
    while True:
        syncs = store_syncs(demo, store, revision)
        if all(s.in_sync for s in syncs):
            return syncs
        if time.monotonic() >= deadline:
            return explain_store_syncs(demo, syncs)
        time.sleep(interval)


# --------------------------------------------------------------------------- summaries


def summary(spec: m.Model | None, namespace: str = "default") -> str:
    """One line about a resource: a DestinationRule's subsets and policy, a VS's hosts."""
    if isinstance(spec, m.DestinationRule):
        subsets = ", ".join(s.name for s in spec.subsets or ()) or "none"
        text = f"host {spec.host}, subsets {subsets}"
        if spec.traffic_policy is not None:
            dumped = spec.traffic_policy.model_dump(mode="json", by_alias=True, exclude_none=True)
            text += f", trafficPolicy {json.dumps(dumped, sort_keys=True)}"
        return text
    if isinstance(spec, m.VirtualService):
        return f"hosts {', '.join(spec.hosts or ())}"
    if isinstance(spec, sec.AuthorizationPolicy):
        rules = len(spec.rules or ())
        return f"{spec.action or 'ALLOW'} on {_selected(spec.selector, namespace)}, {rules} rule(s)"
    if isinstance(spec, sec.PeerAuthentication):
        mode = spec.mtls.mode if spec.mtls is not None and spec.mtls.mode else "UNSET"
        return f"mTLS {mode} on {_selected(spec.selector, namespace)}"
    if isinstance(spec, sec.RequestAuthentication):
        issuers = ", ".join(r.issuer or "?" for r in spec.jwt_rules or ()) or "none"
        return f"JWT issuers {issuers} on {_selected(spec.selector, namespace)}"
    return ""


def _selected(selector: m.WorkloadSelector | None, namespace: str) -> str:
    """Which workloads a security policy applies to, as the demo's services see it."""
    labels = (selector.match_labels or {}) if selector is not None else {}
    if labels:
        return ", ".join(f"{k}={v}" for k, v in labels.items())
    if namespace == DEFAULT_ROOT_NAMESPACE:
        return "the whole mesh"
    return f"namespace {namespace}"


def http_routes(spec: m.VirtualService) -> list[str]:
    """One line per http route: what it matches, where it sends, what it adds."""
    lines = []
    for index, http in enumerate(spec.http or ()):
        when = " or ".join(_match(entry) for entry in http.match or ()) or "any request"
        parts = [f"http[{index}] {when} -> {_destinations(http)}"]
        fault = http.fault
        if fault is not None and fault.delay is not None:
            parts.append(f"delay {fault.delay.fixed_delay:g}s ({_percent(fault.delay):g}%)")
        if fault is not None and fault.abort is not None:
            status = fault.abort.http_status or fault.abort.grpc_status
            parts.append(f"abort {status} ({_percent(fault.abort):g}%)")
        if http.timeout:
            parts.append(f"timeout {http.timeout:g}s")
        if http.retries is not None:
            parts.append(f"retries {http.retries.attempts}")
        lines.append(", ".join(parts))
    return lines


def _match(entry: m.HTTPMatchRequest) -> str:
    terms = []
    for name, value in (entry.headers or {}).items():
        terms.append(f"{name} {_string(value)}")
    if entry.uri is not None:
        terms.append(f"uri {_string(entry.uri)}")
    return " and ".join(terms) or "any request"


def _string(match: m.StringMatch) -> str:
    if match.exact is not None:
        return f"= {match.exact}"
    if match.prefix is not None:
        return f"starts with {match.prefix}"
    if match.regex is not None:
        return f"~ {match.regex}"
    return "present"


def _destinations(http: m.HTTPRoute) -> str:
    routes = http.route or ()
    if not routes:
        return "(no route)"
    out = []
    total = sum(d.weight for d in routes) if len(routes) > 1 else 0
    for destination in routes:
        target = destination.destination
        name = target.host + (f" {target.subset}" if target.subset else "")
        if total:
            name += f" {100 * destination.weight / total:g}%"
        out.append(name)
    return ", ".join(out)


def _percent(part: m.Delay | m.Abort) -> float:
    if part.percentage is not None:
        return part.percentage.value
    return float(part.percent or 0)


__all__ = [
    "ADMIN_ACCOUNT",
    "CA_DIR",
    "RUN_DIR_ENV",
    "STATE_FILE",
    "Demo",
    "add_parser",
    "admin_context",
    "collect_trace",
    "default_run_dir",
    "explain_store_syncs",
    "http_routes",
    "store_syncs",
    "wait_store_sync",
]
