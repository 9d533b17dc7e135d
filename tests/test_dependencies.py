"""What meshlib needs installed and what ``import meshlib`` loads.

meshlib depends on the OpenTelemetry API only; the SDK (the ``otel`` extra) is needed only when
meshlib builds a tracer provider itself. ``import meshlib`` loads what every user needs and
nothing more: the modules of optional features load when a feature is used.

Each check runs in a fresh interpreter (``sys.modules`` of this one holds what every other test
imported), with a finder that makes the named packages look absent where a test says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

#: What ``import meshlib`` must not load: optional extras, and what only some programs use (the
#: config machinery, identity, JWTs, the HTTP client's pool) — each loads on first use.
LAZY = (
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "httpx",
    "httpcore",
    "redis",
    "trio",
    "aiohttp",
    "requests",
    "uvicorn",
    "starlette",
    "pydantic",
    "re2",
    "cryptography",
    "jwt",
    "yaml",
    "tenacity",
    "pybreaker",
    "prometheus_client",
    "meshlib.mesh",
    "meshlib.clients",
)
#: What ``from meshlib import Mesh`` and a mesh without breakers, metrics, identity or tracing
#: must not load: pybreaker (which loads redis when installed, and redis the OpenTelemetry SDK
#: and cryptography), prometheus_client, the HTTP pool until a client is made without a
#: transport of the app's, the optional extras.
LAZY_FOR_MESH = (
    "pybreaker",
    "redis",
    "cryptography",
    "opentelemetry.sdk",
    "httpcore",
    "trio",
    "aiohttp",
    "uvicorn",
    "jwt",
    "opentelemetry.exporter",
    "meshlib.clients.httpx.httpcore",
    "meshlib.clients.httpx.aiohttp",
    "prometheus_client",
    "meshlib.telemetry.metrics",
)


def loaded(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules for p in packages if m == p or m.startswith(p + "."))


def run(code: str, *, absent: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter in which the packages ``absent`` cannot be imported."""
    prelude = textwrap.dedent(
        f"""
        import sys
        ABSENT = {absent!r}

        class Absent:
            def find_spec(self, name, path=None, target=None):
                if any(name == p or name.startswith(p + ".") for p in ABSENT):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Absent())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_meshlib_loads_none_of_the_optional_or_feature_packages() -> None:
    done = run(
        """
        import json, sys
        import meshlib
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    found = sorted(name for name in loaded for p in LAZY if name == p or name.startswith(p + "."))
    assert found == []
    assert "meshlib" in loaded  # the check itself sees what loads


def test_a_mesh_loads_the_http_pool_only_for_a_client_without_a_transport_of_its_own() -> None:
    """The tests above can fail: a mesh built from YAML loads its config parts; its first client
    on httpx's own pool loads httpcore."""
    done = run(
        """
        import json, sys
        import httpx
        from meshlib import Mesh
        text = "apiVersion: meshlib.dev/v1\\nkind: Service\\nmetadata: {name: a}\\n"
        mesh = Mesh.from_yaml(
            text, transport=httpx.MockTransport(lambda request: httpx.Response(200))
        )
        with mesh.client() as client:
            assert client.get("http://reviews:9080/").status_code == 200
        before = sorted(sys.modules)
        with Mesh.from_yaml(text).client():
            pass
        print(json.dumps([before, sorted(sys.modules)]))
        """
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout)
    assert {"yaml", "pydantic"} <= set(before)
    assert loaded(before, LAZY_FOR_MESH) == []
    assert "httpcore" in after


TRACED = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  telemetry: {tracing: {}, metrics: {}}
"""


def test_tracing_without_the_sdk_is_a_config_error_that_names_the_extra() -> None:
    done = run(
        f"""
        from meshlib import ConfigError, Mesh
        try:
            Mesh.from_yaml({TRACED!r})
        except ConfigError as exc:
            print(exc)
        """,
        absent=("opentelemetry.sdk",),
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'meshlib[otel]'" in done.stdout
    assert "tracing is on for reviews" in done.stdout


def test_metrics_and_an_apps_own_provider_need_no_sdk_and_no_prometheus_exporter() -> None:
    """The scrape is meshlib's own; tracing with a provider the app installed needs only the API
    (here a stand-in provider: the API's no-op tracer)."""
    done = run(
        """
        from opentelemetry import trace
        from meshlib import Mesh
        from meshlib.telemetry import metrics

        class Provider(trace.TracerProvider):
            def get_tracer(self, *args, **kwargs):
                return trace.NoOpTracer()

        trace.set_tracer_provider(Provider())
        text = (
            "apiVersion: meshlib.dev/v1\\nkind: Service\\nmetadata: {name: reviews}\\n"
            "spec:\\n  telemetry: {tracing: {}, metrics: {}}\\n"
        )
        mesh = Mesh.from_yaml(text)
        assert mesh.telemetry.tracer is not None
        print(metrics.scrape(mesh)[1].decode())
        mesh.close()
        """,
        absent=("opentelemetry.sdk", "opentelemetry.exporter"),
    )
    assert done.returncode == 0, done.stderr
    assert 'istio_build{component="proxy"' in done.stdout


def test_memory_tracer_without_the_sdk_says_what_to_install() -> None:
    done = run(
        """
        from meshlib.telemetry.tracing import memory_tracer
        try:
            memory_tracer()
        except ImportError as exc:
            print(exc)
        """,
        absent=("opentelemetry.sdk",),
    )
    assert done.returncode == 0, done.stderr
    assert "meshlib[otel]" in done.stdout


@pytest.mark.parametrize("package", ["redis", "trio", "aiohttp"])
def test_import_meshlib_works_without_each_optional_package(package: str) -> None:
    done = run("import meshlib, meshlib.testing", absent=(package,))
    assert done.returncode == 0, done.stderr


def test_breaker_state_names_are_pybreakers() -> None:
    """meshlib.policies.breaker compares states with its own copies of pybreaker's names, so
    that it need not import pybreaker until the first breaker is made."""
    import pybreaker

    from meshlib.policies import breaker

    assert (breaker._CLOSED, breaker._OPEN, breaker._HALF_OPEN) == (
        pybreaker.STATE_CLOSED,
        pybreaker.STATE_OPEN,
        pybreaker.STATE_HALF_OPEN,
    )
