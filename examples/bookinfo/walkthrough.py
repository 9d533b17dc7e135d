"""Istio's Bookinfo traffic-management and security tasks, step by step, against Bookinfo on
meshlib.

    python examples/bookinfo/walkthrough.py            # starts its own demo on free ports
    python examples/bookinfo/walkthrough.py --attach   # uses the demo `make demo` runs
    python examples/bookinfo/walkthrough.py --store etcd://127.0.0.1:2379/bookinfo  # on etcd

Each step changes the rules with ``meshctl bookinfo``, as Istio's tasks do with ``kubectl
apply``, loads the product page as a browser would (a stock ``httpx.Client`` and a stock
``httpx.AsyncClient``, each with its own cookie jar, signed in or not), and prints what Istio's
task says to expect and what the page showed. The test suite runs the same steps
(``tests/e2e/test_bookinfo_walkthrough.py``).

The rule files are the demo's own (``examples/bookinfo/networking/``, named after Istio's files and
meaning what Istio's mean); ``--samples DIR`` runs the steps on another folder of them, such as
Istio's ``samples/bookinfo/networking``. The few rules Istio's tasks write inline are written to a
temporary directory. The security steps (Istio's "Authorization for HTTP traffic" and mutual TLS
tasks) apply the demo's ``examples/bookinfo/security/`` files, the policies Istio's task pages
write inline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

from meshlib import Mesh
from meshlib.bookinfo import admin_context, default_run_dir
from meshlib.security.verify import spiffe_id_of_der

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "examples" / "bookinfo" / "networking"
#: The demo's security rule files: the policies of Istio's authorization and mutual TLS tasks.
SECURITY = ROOT / "examples" / "bookinfo" / "security"
CLIENTS = ("sync", "async")
REVIEWS_ERROR = "Sorry, product reviews are currently unavailable for this book."
RATINGS_ERROR = "Ratings service is currently unavailable"
DETAILS_FAILED = "Error fetching product details"
REVIEWS_FAILED = "Error fetching product reviews"
DENIED = "RBAC: access denied"
#: The authorization task's policies, in the order its steps apply them.
AUTHORIZATION = (
    "allow-nothing.yaml",
    "productpage-viewer.yaml",
    "details-viewer.yaml",
    "reviews-viewer.yaml",
    "ratings-viewer.yaml",
)
MUTUAL_TLS = (
    "peer-authentication-mesh-strict.yaml",
    "peer-authentication-productpage-permissive.yaml",
)
#: Istio's end-user authentication task, at the edge: the JWT rule, then the policy that
#: requires a token; demo.jwt is a token the rule's key set verifies.
END_USER_AUTH = ("request-authentication-jwt.yaml", "require-jwt.yaml")
DEMO_TOKEN = "demo.jwt"
#: What Istio's task sends as a token that cannot verify, and Envoy's answer to it.
BAD_TOKEN = "deadbeef"
JWT_MALFORMED = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"

# --------------------------------------------------------------------------- inline rules

#: The rules Istio's tasks write inline (``kubectl apply -f - <<EOF``), and the two this
#: walkthrough adds to the fault-injection task: jason on reviews v3, and a 2 s delay for him.
RULES = {
    "reviews-jason-v3.yaml": """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v3}
  - route:
    - destination: {host: reviews, subset: v1}
""",
    "ratings-jason-delay-2s.yaml": """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    fault:
      delay:
        percentage: {value: 100}
        fixedDelay: 2s
    route:
    - destination: {host: ratings, subset: v1}
  - route:
    - destination: {host: ratings, subset: v1}
""",
    "reviews-v2.yaml": """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
""",
    "ratings-delay-2s.yaml": """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - fault:
      delay:
        percentage: {value: 100}
        fixedDelay: 2s
    route:
    - destination: {host: ratings, subset: v1}
""",
    "reviews-v2-timeout.yaml": """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
    timeout: 0.5s
""",
    "productpage-circuit-breaker.yaml": """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
spec:
  host: productpage
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
  subsets:
  - name: v1
    labels: {version: v1}
""",
}


def write_rules(folder: Path) -> dict[str, Path]:
    """Write ``RULES`` to ``folder``; their paths by name."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, text in RULES.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        out[name] = path
    return out


# --------------------------------------------------------------------------- the page


@dataclass
class Page:
    """What one load of the product page showed."""

    status: int
    seconds: float
    user: str | None = None
    version: str | None = None  # of reviews ("Reviews served by")
    stars: list[tuple[int, str]] = field(default_factory=list)  # full stars, colour; per review
    empty_stars: int = 0
    reviews_error: str | None = None
    ratings_errors: list[str] = field(default_factory=list)
    details_error: str | None = None
    text: str = ""  # the body as received

    @property
    def colors(self) -> set[str]:
        return {color for _, color in self.stars}

    def describe(self) -> str:
        if self.status != 200:
            short = self.text if len(self.text) < 80 and "<" not in self.text else ""
            return f"HTTP {self.status} {short}".rstrip()
        if self.details_error:
            shown = "Error fetching product details! "
            if self.reviews_error:
                shown += "Error fetching product reviews!"
            else:
                shown += f"reviews {self.version}"
        elif self.reviews_error:
            shown = f"Error fetching product reviews! {self.reviews_error}"
        elif self.ratings_errors:
            shown = f"reviews {self.version}, {self.ratings_errors[0]}"
        elif self.stars:
            counts = "+".join(str(n) for n, _ in self.stars)
            shown = f"reviews {self.version}, {counts} {'/'.join(sorted(self.colors))} stars"
        else:
            shown = f"reviews {self.version}, no stars"
        return f"{shown} ({self.seconds:.1f}s)"


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page(200, 0.0)
        self._capture: str | None = None
        self._text: list[str] = []
        self._stars: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        if tag == "section" and found.get("id") == "reviews":
            self.page.version = found.get("data-reviews-version")
        elif tag == "div" and "stars" in classes:
            self._stars = []
        elif tag == "svg" and found.get("data-star") and self._stars is not None:
            if found["data-star"] == "full":
                self._stars.append(found.get("data-star-color") or "")
            else:
                self.page.empty_stars += 1
        elif tag == "div" and found.get("id") in ("reviews-error", "details-error"):
            self._capture = found["id"]
        elif tag == "p" and "rating-error" in classes:
            self._capture = "rating-error"
        elif tag == "b" and found.get("id") == "user":
            self._capture = "user"
        if self._capture is not None and tag in ("p", "b"):
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._stars is not None:
            colors = set(self._stars)
            self.page.stars.append((len(self._stars), colors.pop() if len(colors) == 1 else "?"))
            self._stars = None
        if self._capture is None or tag not in ("p", "b"):
            return
        text = "".join(self._text).strip()
        if self._capture == "reviews-error":
            self.page.reviews_error = text
        elif self._capture == "details-error":
            self.page.details_error = text
        elif self._capture == "rating-error":
            self.page.ratings_errors.append(text)
        elif self._capture == "user":
            self.page.user = text
        self._capture = None


def read_page(html: str, status: int = 200, seconds: float = 0.0) -> Page:
    """The product page's HTML → what it shows."""
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    page = parser.page
    page.status, page.seconds, page.text = status, seconds, html
    return page


# --------------------------------------------------------------------------- a browser stand-in


class Visitor:
    """A person at the product page: a stock ``httpx.Client`` (``kind="sync"``) or
    ``httpx.AsyncClient`` (``"async"``) with a cookie jar, signed in as ``user`` or not."""

    def __init__(self, base_url: str, kind: str, user: str | None = None) -> None:
        self.kind = kind
        self.user = user
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None
        options: dict[str, Any] = {"base_url": base_url, "timeout": 30.0}
        if kind == "sync":
            self._sync = httpx.Client(**options)
        else:
            self._loop = asyncio.new_event_loop()
            self._async = httpx.AsyncClient(**options)
        if user is not None:
            response = self._send("POST", "/login", data={"username": user})
            assert response.status_code == 303, f"login as {user}: {response.status_code}"

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self._sync is not None:
            return self._sync.request(method, url, **kwargs)
        assert self._loop is not None
        assert self._async is not None
        return self._loop.run_until_complete(self._async.request(method, url, **kwargs))

    def load(self, headers: Mapping[str, str] | None = None) -> Page:
        started = time.monotonic()
        response = self._send("GET", "/productpage", headers=headers)
        return read_page(response.text, response.status_code, time.monotonic() - started)

    def html(self) -> str:
        return self._send("GET", "/productpage").text

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        if self._loop is not None and self._async is not None:
            self._loop.run_until_complete(self._async.aclose())
            self._loop.close()

    @property
    def name(self) -> str:
        client = "httpx.Client" if self.kind == "sync" else "httpx.AsyncClient"
        return f"{self.user or 'anonymous'} ({client})"


def load_together(visitors: Sequence[Visitor]) -> list[Page]:
    """One page load per visitor, all at once (each in a thread of its own)."""
    with ThreadPoolExecutor(len(visitors)) as pool:
        return list(pool.map(lambda v: v.load(), visitors))


# --------------------------------------------------------------------------- the demo


class Demo:
    """The running demo: its product page and ``meshctl bookinfo`` on its run directory."""

    def __init__(self, run_dir: Path, process: subprocess.Popen[str] | None = None) -> None:
        self.run_dir = run_dir
        self.process = process
        state = json.loads((run_dir / "bookinfo.json").read_text(encoding="utf-8"))
        self.state = state
        self.productpage = str(state["productpage"])
        self.base_url = self.productpage.rsplit("/", 1)[0]

    @property
    def store(self) -> str | None:
        """The etcd store the demo runs on (``--store``), None when it runs on files."""
        found = self.state.get("store")
        return found if isinstance(found, str) and found.startswith("etcd:") else None

    @classmethod
    def start(
        cls,
        run_dir: Path,
        samples: Path = SAMPLES,
        timeout: float = 60.0,
        store: str | None = None,
    ) -> Demo:
        """Start ``python -m examples.bookinfo`` on free ports (on the etcd ``store`` when
        given); wait until it is up."""
        command = [sys.executable, "-m", "examples.bookinfo", "--port", "0"]
        command += ["--run-dir", str(run_dir), "--samples", str(samples)]
        if store is not None:
            command += ["--store", store]
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        # the launcher prints its lines, then "Press Ctrl-C to stop." once all are up
        reader = threading.Thread(target=lambda: lines.extend(_until_ready(process)))
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        if not lines or lines[-1] != "Press Ctrl-C to stop.":
            process.kill()
            _, err = process.communicate(timeout=10)
            raise RuntimeError(f"the demo did not start:\n{''.join(lines)}\n{err}")
        # drain the services' logs, so that a full pipe never blocks them
        threading.Thread(target=_drain, args=(process.stderr,), daemon=True).start()
        threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
        return cls(run_dir, process)

    def stop(self) -> int:
        """Ctrl-C, as a person at the terminal would: the launcher stops every service."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)

    def service_url(self, name: str) -> str:
        """The base URL of a service (its first instance)."""
        return next(str(s["url"]) for s in self.state["services"] if s["name"] == name)

    def service_pids(self) -> list[int]:
        return [int(s["pid"]) for s in self.state["services"]]

    def meshctl(self, *args: str | os.PathLike[str]) -> str:
        """``meshctl bookinfo ARGS --run-dir DIR``: its output (raises when it fails)."""
        command = [sys.executable, "-m", "meshlib.cli", "bookinfo", *map(str, args)]
        command += ["--run-dir", str(self.run_dir)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def reset(self) -> str:
        return self.meshctl("reset")

    def apply(self, *files: str | os.PathLike[str]) -> str:
        return self.meshctl("apply", *files)

    def visitors(self, user: str | None = None) -> list[Visitor]:
        """One visitor per client kind (httpx.Client, httpx.AsyncClient)."""
        return [Visitor(self.base_url, kind, user) for kind in CLIENTS]

    def mesh(self) -> Mesh:
        """A mesh of the walkthrough's own, as fortio's sidecar is in Istio's circuit-breaking
        task: it knows where the services are and includes the rules in force (on etcd: it
        reads both from the store)."""
        if self.store is not None:
            return Mesh.from_yaml(
                "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: fortio}\n"
                f"spec:\n  store: {json.dumps(self.store)}\n",
                name="fortio",
            )
        text = f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: fortio}}
spec:
  registry:
    file: {{path: {self.run_dir / "registry.yaml"}}}
  include: [{self.run_dir / "rules" / "*.yaml"}]
"""
        folder = self.run_dir / "clients"
        folder.mkdir(exist_ok=True)
        path = folder / "fortio.yaml"
        path.write_text(text, encoding="utf-8")
        return Mesh.from_file(path)


def _until_ready(process: subprocess.Popen[str]) -> Iterator[str]:
    assert process.stdout is not None
    for line in process.stdout:
        yield line.rstrip("\n")
        if line.startswith("Press Ctrl-C"):
            return


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


@contextmanager
def running_demo(
    run_dir: Path | None = None, samples: Path = SAMPLES, store: str | None = None
) -> Iterator[Demo]:
    """A demo of its own, on free ports (on the etcd ``store`` when given), stopped at the
    end."""
    with tempfile.TemporaryDirectory(prefix="bookinfo-") as temporary:
        demo = Demo.start(run_dir or Path(temporary), samples, store=store)
        try:
            yield demo
        finally:
            demo.stop()


# --------------------------------------------------------------------------- the steps


@dataclass
class Step:
    """One step: what was applied, what Istio's task says to expect, what the pages showed."""

    title: str
    expect: str
    pages: dict[str, list[Page]] = field(default_factory=dict)  # by visitor
    seen: list[str] = field(default_factory=list)
    ok: bool = True

    def check(self, condition: bool, what: str) -> None:
        self.seen.append(("ok    " if condition else "WRONG ") + what)
        self.ok = self.ok and condition


def _load(step: Step, visitors: Sequence[Visitor], times: int) -> None:
    for visitor in visitors:
        step.pages[visitor.name] = [visitor.load() for _ in range(times)]


def step_no_rules(demo: Demo, loads: int = 30) -> Step:
    demo.reset()
    step = Step(
        "No rules (the baseline destination rules only)",
        "refreshes alternate between reviews v1 (no stars), v2 (black) and v3 (red)",
    )
    visitors = demo.visitors()
    _load(step, visitors, loads)
    for name, pages in step.pages.items():
        versions = {p.version for p in pages}
        step.check(versions == {"v1", "v2", "v3"}, f"{name}: versions seen {sorted(versions)}")
    _close(visitors)
    return step


def step_all_v1(demo: Demo, samples: Path, loads: int = 20) -> Step:
    demo.reset()
    demo.apply(samples / "virtual-service-all-v1.yaml")
    step = Step("virtual-service-all-v1.yaml", "no stars, no matter how many times you refresh")
    visitors = demo.visitors() + demo.visitors("jason")
    _load(step, visitors, loads)
    for name, pages in step.pages.items():
        stars = sum(len(p.stars) for p in pages)
        versions = {p.version for p in pages}
        step.check(stars == 0 and versions == {"v1"}, f"{name}: v1 only, no stars")
    _close(visitors)
    return step


def step_test_v2(demo: Demo, samples: Path, loads: int = 10) -> Step:
    demo.reset()
    demo.apply(samples / "virtual-service-all-v1.yaml")
    demo.apply(samples / "virtual-service-reviews-test-v2.yaml")
    step = Step(
        "virtual-service-reviews-test-v2.yaml",
        "jason sees black stars (reviews v2); anyone else, no stars",
    )
    jason, others = demo.visitors("jason"), demo.visitors() + demo.visitors("kim")
    _load(step, jason + others, loads)
    for visitor in jason:
        pages = step.pages[visitor.name]
        good = all(p.stars == [(5, "black"), (4, "black")] for p in pages)
        step.check(good, f"{visitor.name}: 5 and 4 black stars on every load")
    for visitor in others:
        pages = step.pages[visitor.name]
        step.check(all(not p.stars for p in pages), f"{visitor.name}: no stars")
    _close(jason + others)
    return step


def step_delay(demo: Demo, samples: Path) -> Step:
    demo.reset()
    demo.apply(samples / "virtual-service-all-v1.yaml")
    demo.apply(samples / "virtual-service-reviews-test-v2.yaml")
    output = demo.apply(samples / "virtual-service-ratings-test-delay.yaml")
    step = Step(
        "virtual-service-ratings-test-delay.yaml (7 s for jason)",
        "jason: 'Sorry, product reviews are currently unavailable for this book.' after about "
        "6 s (productpage: 3 s + 1 retry); others unaffected",
    )
    warned = "gives up after 2 tries × 3s = 6s" in output
    step.check(warned, "meshctl warned: productpage gives up after 2 tries × 3s = 6s")
    jason, others = demo.visitors("jason"), demo.visitors()
    for visitor, page in zip(jason, load_together(jason), strict=True):
        step.pages[visitor.name] = [page]
        step.check(
            page.reviews_error == REVIEWS_ERROR and 5.5 <= page.seconds < 9.0,
            f"{visitor.name}: reviews error after {page.seconds:.1f}s",
        )
    _load(step, others, 3)
    for visitor in others:
        pages = step.pages[visitor.name]
        fast = all(p.version == "v1" and p.seconds < 2.0 for p in pages)
        step.check(fast, f"{visitor.name}: reviews v1 at once")
    _close(jason + others)
    return step


def step_delay_fixed(demo: Demo, rules: dict[str, Path]) -> Step:
    demo.reset()
    demo.apply(rules["reviews-jason-v3.yaml"], rules["ratings-jason-delay-2s.yaml"])
    step = Step(
        "jason on reviews v3 (2.5 s ratings timeout) with a 2 s delay",
        "the page works for jason: red stars after about 2 s",
    )
    jason = demo.visitors("jason")
    for visitor, page in zip(jason, load_together(jason), strict=True):
        step.pages[visitor.name] = [page]
        good = page.stars == [(5, "red"), (4, "red")] and 1.9 <= page.seconds < 2.5 + 1.5
        step.check(good, f"{visitor.name}: red stars after {page.seconds:.1f}s")
    _close(jason)
    return step


def step_abort(demo: Demo, samples: Path, loads: int = 3) -> Step:
    demo.reset()
    demo.apply(samples / "virtual-service-all-v1.yaml")
    demo.apply(samples / "virtual-service-reviews-test-v2.yaml")
    demo.apply(samples / "virtual-service-ratings-test-abort.yaml")
    step = Step(
        "virtual-service-ratings-test-abort.yaml (HTTP 500 for jason)",
        "jason: 'Ratings service is currently unavailable', at once; others unaffected",
    )
    jason, others = demo.visitors("jason"), demo.visitors()
    _load(step, jason + others, loads)
    for visitor in jason:
        pages = step.pages[visitor.name]
        good = all(p.ratings_errors == [RATINGS_ERROR] * 2 and p.seconds < 2.0 for p in pages)
        step.check(good, f"{visitor.name}: '{RATINGS_ERROR}' at once")
    for visitor in others:
        pages = step.pages[visitor.name]
        good = all(p.version == "v1" and not p.ratings_errors for p in pages)
        step.check(good, f"{visitor.name}: reviews v1, no error")
    _close(jason + others)
    return step


def step_shift_50(demo: Demo, samples: Path, loads: int = 100) -> Step:
    demo.reset()
    demo.apply(samples / "virtual-service-all-v1.yaml")
    demo.apply(samples / "virtual-service-reviews-50-v3.yaml")
    step = Step(
        "virtual-service-reviews-50-v3.yaml",
        "red stars on about half of the refreshes",
    )
    visitors = demo.visitors()
    _load(step, visitors, loads)
    for name, pages in step.pages.items():
        red = sum(1 for p in pages if p.colors == {"red"})
        others = {p.version for p in pages if p.colors != {"red"}}
        step.check(30 <= red <= 70 and others <= {"v1"}, f"{name}: {red} of {loads} red")
    _close(visitors)
    return step


def step_all_v3(demo: Demo, samples: Path, loads: int = 20) -> Step:
    demo.reset()
    demo.apply(samples / "virtual-service-all-v1.yaml")
    demo.apply(samples / "virtual-service-reviews-v3.yaml")
    step = Step("virtual-service-reviews-v3.yaml", "red stars on every refresh")
    visitors = demo.visitors()
    _load(step, visitors, loads)
    for name, pages in step.pages.items():
        red = sum(1 for p in pages if p.stars == [(5, "red"), (4, "red")])
        step.check(red == loads, f"{name}: {red} of {loads} red")
    _close(visitors)
    return step


def step_request_timeout(demo: Demo, samples: Path, rules: dict[str, Path]) -> Step:
    demo.reset()
    demo.apply(samples / "virtual-service-all-v1.yaml")
    demo.apply(rules["reviews-v2.yaml"], rules["ratings-delay-2s.yaml"])
    step = Step(
        "Request timeouts: reviews -> v2, ratings delayed 2 s; then timeout: 0.5s on reviews",
        "with the delay the page works after about 2 s; with the timeout it returns in about "
        "1 s (productpage retries once) with the reviews error",
    )
    visitors = demo.visitors()
    for visitor, page in zip(visitors, load_together(visitors), strict=True):
        step.pages[f"{visitor.name}, delay"] = [page]
        good = page.stars == [(5, "black"), (4, "black")] and 1.9 <= page.seconds < 3.5
        step.check(good, f"{visitor.name}: black stars after {page.seconds:.1f}s")
    demo.apply(rules["reviews-v2-timeout.yaml"])
    for visitor, page in zip(visitors, load_together(visitors), strict=True):
        step.pages[f"{visitor.name}, timeout 0.5s"] = [page]
        good = page.reviews_error == REVIEWS_ERROR and 0.9 <= page.seconds < 2.5
        step.check(good, f"{visitor.name}: reviews error after {page.seconds:.1f}s")
    _close(visitors)
    return step


@dataclass
class Load:
    """What one client of the circuit-breaking step got: statuses and flags, counted."""

    statuses: dict[int, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)

    def add(self, response: httpx.Response) -> None:
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        flag = response.headers.get("x-mesh-response-flags", "-")
        self.flags[flag] = self.flags.get(flag, 0) + 1


def step_circuit_breaking(demo: Demo, rules: dict[str, Path], rounds: int = 10) -> Step:
    demo.reset()
    demo.apply(rules["productpage-circuit-breaker.yaml"])
    step = Step(
        "Circuit breaking: maxConnections 1, http1MaxPendingRequests 1 on productpage; "
        f"3 concurrent clients x {rounds}",
        "some calls are trapped by the circuit breaker: 503 with flag UO",
    )
    mesh = demo.mesh()
    url = "http://productpage:9080/productpage"
    try:
        loads = {"httpx.Client": _load_sync(mesh, url, rounds)}
        loads["httpx.AsyncClient"] = asyncio.run(_load_async(mesh, url, rounds))
    finally:
        mesh.close()
    for name, load in loads.items():
        overflow = load.flags.get("UO", 0)
        step.check(
            overflow > 0 and load.statuses.get(200, 0) > 0 and load.statuses.get(503) == overflow,
            f"{name}: statuses {load.statuses}, flags {load.flags}",
        )
    return step


def _load_sync(mesh: Mesh, url: str, rounds: int) -> Load:
    load = Load()
    with mesh.client(timeout=10.0) as http, ThreadPoolExecutor(3) as pool:
        for _ in range(rounds):
            start = threading.Barrier(3)

            def one(_: int, start: threading.Barrier = start) -> httpx.Response:
                start.wait(timeout=10)
                return http.get(url)

            for response in pool.map(one, range(3)):
                load.add(response)
    return load


async def _load_async(mesh: Mesh, url: str, rounds: int) -> Load:
    load = Load()
    async with mesh.async_client(timeout=10.0) as http:
        for _ in range(rounds):
            for response in await asyncio.gather(*(http.get(url) for _ in range(3))):
                load.add(response)
    return load


# --------------------------------------------------------------------------- security


def _authorization(demo: Demo, security: Path, upto: int, title: str, expect: str) -> Step:
    """Reset, apply the authorization task's policies up to ``AUTHORIZATION[upto]``, load the
    page once per visitor (anonymous and jason, both clients). jason signs in first: the
    policies allow GET only, and signing in is a POST."""
    demo.reset()
    visitors = demo.visitors() + demo.visitors("jason")
    demo.apply(*(security / name for name in AUTHORIZATION[: upto + 1]))
    step = Step(f"{AUTHORIZATION[upto]}: {title}", expect)
    _load(step, visitors, 1)
    _close(visitors)
    return step


def step_allow_nothing(demo: Demo, security: Path = SECURITY) -> Step:
    step = _authorization(
        demo, security, 0, "ALLOW without rules in default", f"productpage answers {DENIED}"
    )
    for name, (page,) in step.pages.items():
        step.check(page.status == 403 and page.text == DENIED, f"{name}: {page.status} {page.text}")
    return step


def step_productpage_viewer(demo: Demo, security: Path = SECURITY) -> Step:
    step = _authorization(
        demo,
        security,
        1,
        "GET productpage from anyone",
        f'the page loads with "{DETAILS_FAILED}" and "{REVIEWS_FAILED}"',
    )
    for name, (page,) in step.pages.items():
        good = page.status == 200 and DETAILS_FAILED in page.text and REVIEWS_FAILED in page.text
        step.check(good, f"{name}: {page.status}, details and reviews errors")
    return step


def step_details_viewer(demo: Demo, security: Path = SECURITY) -> Step:
    step = _authorization(
        demo,
        security,
        2,
        "GET details from cluster.local/ns/default/sa/bookinfo-productpage",
        "the book's details are shown; the reviews error stays",
    )
    for name, (page,) in step.pages.items():
        good = page.details_error is None and "<dt>ISBN-10</dt>" in page.text
        good = good and REVIEWS_FAILED in page.text
        step.check(page.status == 200 and good, f"{name}: details shown, reviews error")
    return step


def step_reviews_viewer(demo: Demo, security: Path = SECURITY) -> Step:
    step = _authorization(
        demo,
        security,
        3,
        "GET reviews from cluster.local/ns/default/sa/bookinfo-productpage",
        f'reviews are shown; v2 and v3 say "{RATINGS_ERROR}"',
    )
    for name, (page,) in step.pages.items():
        good = page.reviews_error is None and page.details_error is None and not page.stars
        if page.version in ("v2", "v3"):
            good = good and page.ratings_errors == [RATINGS_ERROR] * 2
        step.check(page.status == 200 and good, f"{name}: reviews {page.version}, no stars")
    return step


def step_ratings_viewer(demo: Demo, security: Path = SECURITY, loads: int = 6) -> Step:
    demo.reset()
    demo.apply(*(security / name for name in AUTHORIZATION))
    step = Step(
        f"{AUTHORIZATION[4]}: GET ratings from cluster.local/ns/default/sa/bookinfo-reviews",
        "the stars are back: black (v2) and red (v3)",
    )
    visitors = demo.visitors()
    _load(step, visitors, loads)
    _close(visitors)
    for name, pages in step.pages.items():
        starred = [p for p in pages if p.version in ("v2", "v3")]
        good = all(p.status == 200 and p.details_error is None for p in pages)
        good = good and bool(starred) and all(len(p.stars) == 2 for p in starred)
        good = good and all(not p.ratings_errors for p in pages)
        step.check(good, f"{name}: stars on every v2/v3 page ({len(starred)} of {len(pages)})")
    return step


@dataclass
class PlainCall:
    """What a client without a mesh identity got from a service: a status, or the error."""

    status: int | None
    error: str | None


def plain_call(url: str) -> PlainCall:
    """One plain-text GET, as ``curl http://...`` from outside the mesh."""
    try:
        response = httpx.get(url, timeout=5.0)
    except httpx.HTTPError as exc:
        return PlainCall(None, type(exc).__name__)
    return PlainCall(response.status_code, None)


def presented_identity(base_url: str, run_dir: Path) -> str:
    """The SPIFFE ID in the certificate a service presents to a mesh client (a TLS handshake with
    a certificate of the demo's CA, as ``openssl s_client`` shows it in Istio's task)."""
    context = admin_context(run_dir)
    if context is None:
        raise RuntimeError(f"{run_dir} has no CA: the services have no identity")
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5.0) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise RuntimeError(f"{base_url} presented no certificate")
    return spiffe_id_of_der(der).uri


def step_mutual_tls(demo: Demo, security: Path = SECURITY, loads: int = 6) -> Step:
    demo.reset()
    demo.apply(*(security / name for name in MUTUAL_TLS))
    step = Step(
        "PeerAuthentication: STRICT mesh-wide (istio-system), PERMISSIVE on productpage",
        "the page works (the services call one another over mutual TLS; browsers reach "
        "productpage in plain text); a plain-text call to details is refused",
    )
    visitors = demo.visitors() + demo.visitors("jason")
    _load(step, visitors, loads)
    _close(visitors)
    for name, pages in step.pages.items():
        good = all(p.status == 200 and not p.details_error and not p.reviews_error for p in pages)
        step.check(good, f"{name}: the page, with details and reviews")
    details = demo.service_url("details")
    call = plain_call(f"{details}/details/0")
    step.check(call.error is not None, f"plain text to details: {call.error or call.status}")
    identity = presented_identity(details, demo.run_dir)
    step.check(
        identity == "spiffe://cluster.local/ns/default/sa/bookinfo-details",
        f"details presents {identity}",
    )
    return step


def _end_user_auth(demo: Demo, security: Path, upto: int, title: str, expect: str) -> Step:
    """Reset, apply the end-user authentication task's resources up to ``END_USER_AUTH[upto]``,
    and load the page once per visitor with no token, with Istio's bad token and with the
    demo's valid one (as ``curl -H "Authorization: Bearer $TOKEN"`` in Istio's task)."""
    demo.reset()
    demo.apply(*(security / name for name in END_USER_AUTH[: upto + 1]))
    step = Step(f"{END_USER_AUTH[upto]}: {title}", expect)
    token = (security / DEMO_TOKEN).read_text(encoding="utf-8").strip()
    tokens = {"no token": None, "bad token": BAD_TOKEN, "valid token": token}
    visitors = demo.visitors()
    for visitor in visitors:
        for label, value in tokens.items():
            headers = {"authorization": f"Bearer {value}"} if value is not None else None
            step.pages[f"{visitor.name}, {label}"] = [visitor.load(headers)]
    _close(visitors)
    return step


def _shows_the_page(page: Page) -> bool:
    return page.status == 200 and page.details_error is None and page.reviews_error is None


def step_request_authentication(demo: Demo, security: Path = SECURITY) -> Step:
    step = _end_user_auth(
        demo,
        security,
        0,
        "productpage verifies tokens from testing@secure.istio.io",
        f"a bad token gets 401 ({JWT_MALFORMED}); no token and a valid token get the page",
    )
    for name, (page,) in step.pages.items():
        if name.endswith("bad token"):
            good = page.status == 401 and page.text == JWT_MALFORMED
        else:
            good = _shows_the_page(page)
        step.check(good, f"{name}: {page.describe()}")
    return step


def step_require_jwt(demo: Demo, security: Path = SECURITY) -> Step:
    step = _end_user_auth(
        demo,
        security,
        1,
        "DENY requests without a request principal on productpage",
        f"no token gets {DENIED}; a bad token still 401; a valid token gets the page",
    )
    for name, (page,) in step.pages.items():
        if name.endswith("no token"):
            good = page.status == 403 and page.text == DENIED
        elif name.endswith("bad token"):
            good = page.status == 401 and page.text == JWT_MALFORMED
        else:
            good = _shows_the_page(page)
        step.check(good, f"{name}: {page.describe()}")
    return step


def _close(visitors: Sequence[Visitor]) -> None:
    for visitor in visitors:
        visitor.close()


def steps(
    demo: Demo, samples: Path, rules: dict[str, Path]
) -> list[tuple[str, Callable[[], Step]]]:
    """Every step, in the order of Istio's tasks."""
    return [
        ("request routing", lambda: step_no_rules(demo)),
        ("request routing", lambda: step_all_v1(demo, samples)),
        ("request routing", lambda: step_test_v2(demo, samples)),
        ("fault injection", lambda: step_delay(demo, samples)),
        ("fault injection", lambda: step_delay_fixed(demo, rules)),
        ("fault injection", lambda: step_abort(demo, samples)),
        ("traffic shifting", lambda: step_shift_50(demo, samples)),
        ("traffic shifting", lambda: step_all_v3(demo, samples)),
        ("request timeouts", lambda: step_request_timeout(demo, samples, rules)),
        ("circuit breaking", lambda: step_circuit_breaking(demo, rules)),
        ("authorization", lambda: step_allow_nothing(demo)),
        ("authorization", lambda: step_productpage_viewer(demo)),
        ("authorization", lambda: step_details_viewer(demo)),
        ("authorization", lambda: step_reviews_viewer(demo)),
        ("authorization", lambda: step_ratings_viewer(demo)),
        ("mutual TLS", lambda: step_mutual_tls(demo)),
        ("end-user authentication", lambda: step_request_authentication(demo)),
        ("end-user authentication", lambda: step_require_jwt(demo)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attach", action="store_true", help="use the demo that runs already")
    parser.add_argument("--run-dir", default=None, help="the running demo's run directory")
    parser.add_argument(
        "--samples", type=Path, default=SAMPLES, help="a folder of Bookinfo rule files"
    )
    parser.add_argument(
        "--steps", default=None, metavar="N,N", help="run only these steps (1-based, comma list)"
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="start the demo on this etcd store (etcd://host:port/prefix) instead of files",
    )
    args = parser.parse_args(argv)
    only = {int(n) for n in args.steps.split(",")} if args.steps else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="walkthrough-") as temporary:
        rules = write_rules(Path(temporary) / "rules")
        if args.attach:
            demo = Demo(Path(args.run_dir or default_run_dir()))
            failed = _run(demo, args.samples, rules, only)
            demo.reset()
        else:
            with running_demo(samples=args.samples, store=args.store) as demo:
                print(f"Bookinfo started: {demo.productpage}\n")
                failed = _run(demo, args.samples, rules, only)
            print("Bookinfo stopped.")
    print(f"\n{failed} step(s) not as Istio's tasks describe; {time.monotonic() - started:.0f}s")
    return 1 if failed else 0


def _run(demo: Demo, samples: Path, rules: dict[str, Path], only: set[int] | None) -> int:
    failed = 0
    for number, (task, run) in enumerate(steps(demo, samples, rules), 1):
        if only is not None and number not in only:
            continue
        step = run()
        print(f"{number}. [{task}] {step.title}")
        print(f"   Istio says: {step.expect}")
        for name, pages in step.pages.items():
            shown = pages[0].describe() if len(pages) == 1 else _summary(pages)
            print(f"   {name}: {shown}")
        for line in step.seen:
            print(f"   {line}")
        print(flush=True)
        failed += not step.ok
    return failed


def _summary(pages: Sequence[Page]) -> str:
    counts: dict[str, int] = {}
    for page in pages:
        key = page.describe().rsplit(" (", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return f"{len(pages)} loads: " + "; ".join(f"{n}x {k}" for k, n in counts.items())


if __name__ == "__main__":
    sys.exit(main())
