"""Start Bookinfo: six service processes on 127.0.0.1, each with its own mesh.yaml; stop them all
on Ctrl-C.

    python -m examples.bookinfo [--port 9080] [--run-dir DIR] [--samples DIR] [--no-baseline]
                                [--store etcd://HOST:PORT/PREFIX]

productpage listens on PORT (default ``$BOOKINFO_PORT``, else 9080, as in Istio), details,
reviews v1, v2, v3 and ratings on the five ports after it; ``--port 0`` puts every service on a
free port. The launcher lays out the run directory that ``meshctl bookinfo`` works on::

    DIR/config/<service>.yaml   each service's mesh.yaml, copied from examples/bookinfo/config/
    DIR/registry.yaml           where each service listens (its registry.file)
    DIR/rules/bookinfo.yaml     the rules in force (each mesh.yaml includes ../rules/*.yaml)
    DIR/ca/                     the demo's root CA (``meshctl ca init``), new for each run: each
                                service's certificate comes from it (``spec.identity``)
    DIR/bookinfo.json           the services, their URLs, config files and where Prometheus
                                scrapes each one's metrics; removed at the end
    DIR/prometheus-targets.json those metrics endpoints as a Prometheus file_sd_configs file

It binds every port itself, then hands each service its socket: a port in use is reported before
anything starts. Every registry endpoint is labelled ``security.istio.io/tlsMode: istio``, as
Istio labels the endpoints of pods with a sidecar: the services call one another over mutual TLS
(auto mTLS), each as its Istio service account (``bookinfo-productpage``, ``bookinfo-details``,
``bookinfo-reviews``, ``bookinfo-ratings``). The baseline rules are
``destination-rule-all.yaml`` from ``--samples`` (default ``$BOOKINFO_SAMPLES``, else the demo's
own ``examples/bookinfo/networking/``; Istio's ``samples/bookinfo/networking`` folder works as
well), applied first as Istio's tasks have it.

Each service reports Istio's request metrics on a scrape server of its own (its config's
``spec.telemetry.metrics``, on a free port, as an Istio sidecar serves them on a port of its own
apart from the app's traffic) and traces every request (``spec.telemetry.tracing``): the spans
go where the ``OTEL_*`` variables say (``OTEL_EXPORTER_OTLP_ENDPOINT`` for a collector or Jaeger,
``MESHLIB_TRACES_FILE`` for a JSON-lines file); with none set they are only kept in each
service's memory for ``meshctl bookinfo trace``.

``--store etcd://...`` (default ``$BOOKINFO_STORE``) runs the demo on etcd instead of files: each
service's config says ``spec.store: <URL>`` (no ``registry.file``, no ``include``), each service
registers its address in etcd when it starts (``make_server(register=True)``, labelled with its
version and ``security.istio.io/tlsMode: istio``) and deregisters when it stops, and they find
one another there only: the run directory has no ``registry.yaml`` and no ``rules/``. The
launcher replaces the rules under the URL's prefix with the baseline first, and is ready once
every service sees all six endpoints. ``meshctl bookinfo`` finds the store in ``bookinfo.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import yaml

from examples.bookinfo import NETWORKING as DEFAULT_SAMPLES
from meshlib import control
from meshlib.bookinfo import CA_DIR, RUN_DIR_ENV, STATE_FILE, admin_context, default_run_dir
from meshlib.errors import ConfigError, StoreError
from meshlib.security.ca import CertificateAuthority
from meshlib.security.outbound import TLS_MODE_LABEL
from meshlib.store.rules import EtcdRuleStore, replace_all
from meshlib.store.url import StoreURL

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIGS = HERE / "config"
BASELINE = "destination-rule-all.yaml"
RULES = "bookinfo.yaml"
#: The services' metrics endpoints, in Prometheus' file_sd_configs format.
TARGETS = "prometheus-targets.json"
#: Any of these set: the user chose where spans go. None set: no exporter (the services keep their
#: spans in memory only, instead of trying an OTLP collector that is not there).
TRACE_EXPORT_ENV = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "MESHLIB_TRACES_FILE",
)
START_TIMEOUT = 30.0
#: The demo on etcd: ``--store`` when not given.
STORE_ENV = "BOOKINFO_STORE"
STOP_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Spec:
    """One service process: its module, version and config file."""

    name: str
    version: str
    config: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


SERVICES = (
    Spec("productpage", "v1", "productpage.yaml"),
    Spec("details", "v1", "details.yaml"),
    Spec("reviews", "v1", "reviews-v1.yaml"),
    Spec("reviews", "v2", "reviews-v2.yaml"),
    Spec("reviews", "v3", "reviews-v3.yaml"),
    Spec("ratings", "v1", "ratings.yaml"),
)


@dataclass
class Running:
    spec: Spec
    port: int
    process: subprocess.Popen[bytes]
    config: str
    metrics: str | None = None  # where Prometheus scrapes it, once it has started

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class Stopped(Exception):  # noqa: N818 - a signal, not an error
    """SIGINT or SIGTERM arrived."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"bookinfo: cannot listen on {HOST}:{port}: {exc.strerror}; "
            "choose other ports with --port (or $BOOKINFO_PORT), or --port 0 for free ones"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def lay_out(
    run_dir: Path, ports: dict[Spec, int], baseline: list[str], store: StoreURL | None = None
) -> None:
    """The run directory: a new root CA, configs, registry, baseline rules (in ``store`` when
    the demo runs on etcd: then no registry and no rules file)."""
    for part in ("config", "rules"):
        shutil.rmtree(run_dir / part, ignore_errors=True)
    (run_dir / "config").mkdir(parents=True)
    CertificateAuthority.init(run_dir / CA_DIR, force=True)
    if store is not None:
        (run_dir / "registry.yaml").unlink(missing_ok=True)
        for spec in SERVICES:
            text = store_config(CONFIGS / spec.config, str(store))
            (run_dir / "config" / spec.config).write_text(text, encoding="utf-8")
        rules = EtcdRuleStore(store)
        try:
            instances, _ = rules.instances()
            if instances:  # a demo runs on this prefix, or one was killed less than a TTL ago
                addresses = ", ".join(sorted(f"{i.service} {i.address}" for i in instances))
                raise StoreError(
                    f"services are registered under this prefix already ({addresses}): another "
                    "demo runs on it? Choose another prefix, or wait for their leases to expire "
                    "(10 s) if that demo was killed"
                )
            replace_all(rules, baseline)
        finally:
            rules.close()
        return
    (run_dir / "rules").mkdir(parents=True)
    for spec in SERVICES:
        shutil.copyfile(CONFIGS / spec.config, run_dir / "config" / spec.config)
    registry: dict[str, list[dict[str, object]]] = {}
    for spec, port in ports.items():
        registry.setdefault(spec.name, []).append(
            {
                "address": f"{HOST}:{port}",
                "labels": {"version": spec.version, TLS_MODE_LABEL: "istio"},
            }
        )
    (run_dir / "registry.yaml").write_text(
        "# Where each Bookinfo service listens: written by the launcher.\n"
        + yaml.safe_dump(registry, sort_keys=False),
        encoding="utf-8",
    )
    sources = [control.Source.read(path) for path in baseline]
    control.write_rules(str(run_dir / "rules" / RULES), control.resources_of(sources))


def store_config(config: Path, url: str) -> str:
    """A service's config for the demo on etcd: ``spec.store: url`` in place of its registry
    file and its rules include."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    spec = data["spec"]
    spec.pop("registry", None)
    spec.pop("include", None)
    spec["store"] = url
    return (
        f"# {config.name} for the demo on {url}: endpoints and rules from the store.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )


def spawn(spec: Spec, sock: socket.socket, config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MESH_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    if not any(os.environ.get(name) for name in TRACE_EXPORT_ENV):
        env["OTEL_TRACES_EXPORTER"] = "none"
    module = f"examples.bookinfo.{spec.name}"
    command = [sys.executable, "-m", module, "--fd", str(sock.fileno())]
    command += ["--version", spec.version, "--watch-stdin"]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        pass_fds=[sock.fileno()],
        start_new_session=True,  # Ctrl-C reaches the launcher, which stops each in turn
    )


def wait_ready(services: list[Running], run_dir: Path, on_store: bool = False) -> None:
    """Until each service answers its admin endpoint (over mutual TLS, as a mesh peer) and, on
    a store, has registered and sees every service's endpoint there; notes where each one's
    metrics are, as it reports them there."""
    deadline = time.monotonic() + START_TIMEOUT
    tls = admin_context(run_dir)
    with httpx.Client(timeout=2.0, verify=tls if tls is not None else True) as http:
        for service in services:
            ref = control.ServiceRef(service.spec.name, service.spec.version, service.url, "")
            while True:
                code = service.process.poll()
                if code is not None:
                    raise SystemExit(f"bookinfo: {service.spec.label} exited with {code}")
                try:
                    response = http.get(control.admin_url(ref, tls))
                    if response.status_code == 200 and (
                        not on_store or sees_everyone(response.json(), len(services))
                    ):
                        service.metrics = response.json().get("metrics")
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"bookinfo: {service.spec.label} did not start in time")
                time.sleep(0.05)


def sees_everyone(status: dict[str, object], count: int) -> bool:
    """Whether a service's ``GET /_mesh/config`` says it is registered in its store and knows
    ``count`` endpoints there."""
    store = status.get("store")
    if not isinstance(store, dict):
        return False
    endpoints = store.get("endpoints")
    return bool(store.get("registered")) and isinstance(endpoints, int) and endpoints >= count


def scrape_targets(services: list[Running]) -> list[dict[str, object]]:
    """The services' metrics endpoints as Prometheus' ``file_sd_configs`` wants them: one group
    per service, labelled with its app and version as Istio's pods are."""
    groups: list[dict[str, object]] = []
    for service in services:
        if not service.metrics:
            continue
        url = httpx.URL(service.metrics)
        groups.append(
            {
                "targets": [f"{url.host}:{url.port}"],
                "labels": {
                    "__metrics_path__": url.path,
                    "app": service.spec.name,
                    "version": service.spec.version,
                    "namespace": "default",
                },
            }
        )
    return groups


def stop(services: list[Running]) -> None:
    for service in services:
        if service.process.poll() is None:
            service.process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for service in services:
        try:
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(timeout=STOP_TIMEOUT)
        if service.process.stdin is not None:
            with contextlib.suppress(OSError):
                service.process.stdin.close()


def already_running(run_dir: Path) -> int | None:
    """The pid of a launcher that runs from ``run_dir`` now, if any."""
    try:
        state = json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
        pid = int(state["launcher"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.bookinfo",
        description="Run Istio's Bookinfo on meshlib: six processes on 127.0.0.1.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("BOOKINFO_PORT", "9080")),
        help="productpage's port; the others use the five after it; 0: free ports "
        "(default $BOOKINFO_PORT or 9080)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help=f"where configs and rules live (default ${RUN_DIR_ENV} or {default_run_dir()})",
    )
    parser.add_argument(
        "--samples",
        default=os.environ.get("BOOKINFO_SAMPLES", str(DEFAULT_SAMPLES)),
        help="a folder of Bookinfo rule files, for the baseline destination-rule-all.yaml "
        "(default $BOOKINFO_SAMPLES, else examples/bookinfo/networking; Istio's "
        "samples/bookinfo/networking works too)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="start with no rules at all (no subsets)"
    )
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV) or None,
        metavar="URL",
        help="run on etcd: etcd://host:port[,host:port...]/prefix holds the rules and the "
        f"services' endpoints (default ${STORE_ENV}; without it, files in the run directory)",
    )
    args = parser.parse_args(argv)
    store: StoreURL | None = None
    if args.store:
        try:
            store = StoreURL.parse(args.store)
        except ValueError as exc:
            print(f"bookinfo: --store: {exc}", file=sys.stderr)
            return 1
        if store.scheme != "etcd":
            print(
                "bookinfo: --store takes an etcd:// URL; without --store the rules are the run "
                "directory's rules/bookinfo.yaml (a file store)",
                file=sys.stderr,
            )
            return 1
    run_dir = Path(args.run_dir or default_run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    other = already_running(run_dir)
    if other is not None:
        print(f"bookinfo: already running from {run_dir} (pid {other})", file=sys.stderr)
        return 1
    baseline = [] if args.no_baseline else [str(Path(args.samples).resolve() / BASELINE)]
    for path in baseline:
        if not os.path.exists(path):
            print(
                f"bookinfo: {path} not found: name a folder of Bookinfo rule files with "
                "--samples (or $BOOKINFO_SAMPLES), or start with --no-baseline",
                file=sys.stderr,
            )
            return 1

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sockets: dict[Spec, socket.socket] = {}
    services: list[Running] = []
    try:
        for index, spec in enumerate(SERVICES):
            sockets[spec] = bind(args.port + index if args.port else 0)
        ports = {spec: sock.getsockname()[1] for spec, sock in sockets.items()}
        try:
            lay_out(run_dir, ports, baseline, store)
        except ConfigError as exc:
            print(f"bookinfo: the baseline rules do not load:\n{exc}", file=sys.stderr)
            return 1
        except StoreError as exc:
            print(f"bookinfo: store {store}: {exc}", file=sys.stderr)
            return 1
        for spec, sock in sockets.items():
            config = run_dir / "config" / spec.config
            services.append(Running(spec, ports[spec], spawn(spec, sock, config), str(config)))
            sock.close()
        wait_ready(services, run_dir, on_store=store is not None)
        productpage = f"{services[0].url}/productpage"
        state = {
            "launcher": os.getpid(),
            "productpage": productpage,
            "rules": None if store is not None else str(run_dir / "rules" / RULES),
            "store": str(store) if store is not None else f"file://{run_dir / 'rules' / RULES}",
            "baseline": baseline,
            "services": [
                {
                    "name": s.spec.name,
                    "version": s.spec.version,
                    "url": s.url,
                    "config": s.config,
                    "pid": s.process.pid,
                    "metrics": s.metrics,
                }
                for s in services
            ],
            "prometheus_targets": str(run_dir / TARGETS),
        }
        targets = json.dumps(scrape_targets(services), indent=2)
        (run_dir / TARGETS).write_text(targets, encoding="utf-8")
        (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        print(f"Bookinfo is running ({len(services)} services, run directory {run_dir}):")
        for service in services:
            metrics = f"metrics {service.metrics}" if service.metrics else ""
            print(f"  {service.spec.label:<16}{service.url:<26}{metrics}")
        if store is not None:
            print(f"\nRules and endpoints in {store}")
        print(f"\nOpen {productpage}")
        print(f"Prometheus scrape targets: {run_dir / TARGETS} (docs/observability.md)")
        print("Change the rules with: .venv/bin/meshctl bookinfo apply FILE...  (docs/tutorial.md)")
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            for service in services:
                code = service.process.poll()
                if code is not None:
                    print(f"bookinfo: {service.spec.label} exited with {code}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
    except Stopped:
        print("\nstopping Bookinfo ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for sock in sockets.values():
            sock.close()
        stop(services)
        for name in (STATE_FILE, TARGETS):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        if services:
            print("Bookinfo stopped.", flush=True)
