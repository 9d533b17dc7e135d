"""What ``import meshlib`` gives a program, checked in a fresh interpreter each time (this
process has imported half of meshlib already): its submodules as attributes
(``meshlib.context.wrap(fn)``, as the docs write them), and the module paths of earlier releases
still importable, each with one ``DeprecationWarning`` that names the new path.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import meshlib


def run(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_submodule_is_an_attribute_of_a_bare_import_meshlib() -> None:
    found = run(
        """
        import json, sys
        import meshlib
        before = sorted(n for n in sys.modules if n.startswith("meshlib."))
        ok = {
            "context.wrap": callable(meshlib.context.wrap),
            "context.current": meshlib.context.current() is None,
            "context.start_thread": callable(meshlib.context.start_thread),
            "server.MeshAdmin": meshlib.server.MeshAdmin.__name__,
            "server.refused_headers": callable(meshlib.server.refused_headers),
            "client.configure": meshlib.client.configure is meshlib.configure,
            "errors.MeshError": meshlib.errors.MeshError is meshlib.MeshError,
            "telemetry": meshlib.telemetry.__name__,
        }
        try:
            meshlib.no_such_module
        except AttributeError as exc:
            ok["missing"] = str(exc)
        print(json.dumps({"before": before, "ok": ok}))
        """
    )
    assert found["before"] == ["meshlib.version"]  # the attributes load on use, not before
    assert found["ok"] == {
        "context.wrap": True,
        "context.current": True,
        "context.start_thread": True,
        "server.MeshAdmin": "MeshAdmin",
        "server.refused_headers": True,
        "client.configure": True,
        "errors.MeshError": True,
        "telemetry": "meshlib.telemetry",
        "missing": "module 'meshlib' has no attribute 'no_such_module'",
    }


def test_the_submodule_names_are_the_modules_on_disk() -> None:
    on_disk = {info.name for info in pkgutil.iter_modules(meshlib.__path__)}
    assert set(meshlib._SUBMODULES) == on_disk


# old path -> (a name it held, the module that holds it now)
MOVED = {
    "meshlib.transport": ("AsyncMeshTransport", "meshlib.clients.httpx.transport"),
    "meshlib.aiohttp_transport": ("AiohttpTransport", "meshlib.clients.httpx.aiohttp"),
    "meshlib.inner": ("new_async_transport", "meshlib.clients.httpx.inner"),
    "meshlib.httpcore_transport": ("HTTPCoreTransport", "meshlib.clients.httpx.httpcore"),
    "meshlib.headers": ("with_entries", "meshlib.clients.httpx.headers"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_still_imports_and_warns_once(old: str) -> None:
    name, new = MOVED[old]
    found = run(
        f"""
        import importlib, json, sys, warnings
        import meshlib
        loaded_by_meshlib = {old!r} in sys.modules
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from {old} import {name}
            from {old} import *
            importlib.import_module({old!r})
        new = importlib.import_module({new!r})
        print(json.dumps({{
            "loaded_by_meshlib": loaded_by_meshlib,
            "same": {name} is getattr(new, {name!r}),
            "star": {name!r} in dir(),
            "warnings": [
                [w.category.__name__, str(w.message), w.filename] for w in caught
            ],
        }}))
        """
    )
    assert found["loaded_by_meshlib"] is False
    assert found["same"] is True
    assert found["star"] is True
    # one warning, pointing at the importing line (here ``-c``'s "<string>"), naming the new home
    [(category, message, where)] = found["warnings"]  # type: ignore[misc]
    assert (category, where) == ("DeprecationWarning", "<string>")
    assert message.startswith(f"{old} is deprecated: import from {new} ")


def test_the_old_transport_path_keeps_the_codec_helpers_it_held() -> None:
    found = run(
        """
        import json, warnings
        warnings.simplefilter("ignore")
        import meshlib.transport as old
        from meshlib.clients.httpx import codec
        from meshlib.pipeline import headers
        import meshlib.headers as old_headers
        print(json.dumps([
            old.with_endpoint is codec.with_endpoint,
            old.view_of is codec.view_of,
            old_headers.carriable is headers.carriable,
            hasattr(old, "no_such_name"),
        ]))
        """
    )
    assert found == [True, True, True, False]


def test_the_httpx_clients_old_home_warns_once_per_name() -> None:
    found = run(
        """
        import json, warnings
        from meshlib.clients.httpx import client
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from meshlib.clients import MeshClient
            from meshlib.clients import MeshClient as again
            from meshlib.clients import MeshAsyncClient, URL_CACHE_SIZE
        try:
            from meshlib.clients import NoSuchClient
        except ImportError as exc:
            missing = type(exc).__name__
        print(json.dumps({
            "same": [
                MeshClient is again is client.MeshClient,
                MeshAsyncClient is client.MeshAsyncClient,
                URL_CACHE_SIZE == client.URL_CACHE_SIZE,
            ],
            "missing": missing,
            "warnings": [[w.category.__name__, str(w.message), w.filename] for w in caught],
        }))
        """
    )
    assert found["same"] == [True, True, True]
    assert found["missing"] == "ImportError"
    assert found["warnings"] == [
        [
            "DeprecationWarning",
            f"meshlib.clients.{name} is deprecated: import it from meshlib.clients.httpx.client",
            "<string>",
        ]
        for name in ("MeshClient", "MeshAsyncClient", "URL_CACHE_SIZE")
    ]
