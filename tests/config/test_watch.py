"""Hot reload: ``Mesh.watch`` re-reads the main file and every included one when they change,
picks up files added to an included directory, and keeps the last good config (saying why,
with file and line) when a change does not load."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshlib import ConfigError, Mesh
from meshlib.config.watch import ConfigWatcher, watched_paths

WriteYaml = Callable[[str, str], Path]

MAIN = """
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  registry:
    static:
      reviews:
        - {address: 127.0.0.1:9082, labels: {version: v1}}
        - {address: 127.0.0.1:9083, labels: {version: v2}}
  include: [rules/*.yaml]
"""

SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def route_to(subset: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {subset}}}
"""


def subset_of(mesh: Mesh) -> str | None:
    destination = mesh.explain("GET", "http://reviews:9080/reviews/0").destination
    return destination.subset if destination is not None else None


def touch_later(path: Path) -> None:
    """Make sure the next write shows in the file's stamp even on a coarse clock."""
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp + 1_000_000, stamp + 1_000_000))


@pytest.fixture
def mesh(write_yaml: WriteYaml) -> Mesh:
    main = write_yaml("mesh.yaml", MAIN)
    write_yaml("rules/00-subsets.yaml", SUBSETS)
    write_yaml("rules/reviews.yaml", route_to("v1"))
    return Mesh.from_file(main)


def test_watched_paths_are_the_loaded_files_and_the_include_directories(
    mesh: Mesh, tmp_path: Path
) -> None:
    paths = [os.path.normpath(p) for p in watched_paths(mesh.config)]
    assert paths == [
        str(tmp_path / "mesh.yaml"),
        str(tmp_path / "rules" / "00-subsets.yaml"),
        str(tmp_path / "rules" / "reviews.yaml"),
        str(tmp_path / "rules"),
    ]


def test_a_changed_included_file_is_reloaded_once_it_settles(
    mesh: Mesh, write_yaml: WriteYaml
) -> None:
    watcher = ConfigWatcher(mesh, interval=1.0)
    assert watcher.check() is False  # nothing changed yet
    assert subset_of(mesh) == "v1"
    touch_later(write_yaml("rules/reviews.yaml", route_to("v2")))
    assert watcher.check() is False  # seen: it applies once a look finds it the same again
    assert watcher.status().waiting is not None
    assert subset_of(mesh) == "v1"
    assert watcher.check() is True
    assert subset_of(mesh) == "v2"
    assert watcher.reloads == 1
    assert watcher.status().waiting is None
    assert watcher.check() is False


def test_a_file_still_being_written_is_not_applied(mesh: Mesh, write_yaml: WriteYaml) -> None:
    """Each look that finds the file changed since the one before waits for the next."""
    watcher = ConfigWatcher(mesh, interval=1.0)
    path = write_yaml("rules/reviews.yaml", route_to("v1"))
    whole = route_to("v2")
    for end in range(10, len(whole), 40):  # the writer is half-way at every look
        path.write_text(whole[:end], encoding="utf-8")
        touch_later(path)
        assert watcher.check() is False
        assert subset_of(mesh) == "v1"
    path.write_text(whole, encoding="utf-8")
    touch_later(path)
    assert watcher.check() is False
    assert watcher.check() is True
    assert subset_of(mesh) == "v2"


def test_a_file_that_became_empty_is_not_applied(
    mesh: Mesh, write_yaml: WriteYaml, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = ConfigWatcher(mesh, interval=1.0)
    for emptied in ("", "# being rewritten\n---\n"):
        touch_later(write_yaml("rules/reviews.yaml", emptied))
        with caplog.at_level(logging.WARNING, logger="meshlib"):
            assert watcher.check() is False
            assert watcher.check() is False
            assert watcher.check() is False
        assert subset_of(mesh) == "v1"  # the rules of the emptied file stay in force
        waiting = watcher.status().waiting
        assert waiting is not None
        assert "reviews.yaml became empty" in waiting
    assert caplog.text.count("became empty") == 2  # once per content, not at every look
    touch_later(write_yaml("rules/reviews.yaml", route_to("v2")))
    assert watcher.check() is False
    assert watcher.check() is True
    assert subset_of(mesh) == "v2"
    assert watcher.status().waiting is None


def test_a_write_that_lands_while_the_reload_reads_is_loaded_next(
    mesh: Mesh, write_yaml: WriteYaml, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher keeps the state it read, not the state after reloading: a rewrite made
    while the files are being read is not lost."""
    watcher = ConfigWatcher(mesh, interval=1.0)
    reload = mesh.reload

    def reload_while_rewritten(*, verify: Callable[[], bool]) -> bool:
        def rewritten() -> bool:  # the v2 file was read ... then it changes
            touch_later(write_yaml("rules/reviews.yaml", route_to("v3")))
            return verify()

        return reload(verify=rewritten)

    monkeypatch.setattr(mesh, "reload", reload_while_rewritten)
    touch_later(write_yaml("rules/reviews.yaml", route_to("v2")))
    assert watcher.check() is False  # settling
    assert watcher.check() is False  # read, but written to meanwhile: not applied
    assert subset_of(mesh) == "v1"
    monkeypatch.setattr(mesh, "reload", reload)
    assert watcher.check() is True  # the write made during the reload, settled
    assert subset_of(mesh) == "v3"
    assert watcher.check() is False


def test_a_file_added_to_an_included_directory_is_loaded(
    mesh: Mesh, write_yaml: WriteYaml, tmp_path: Path
) -> None:
    watcher = ConfigWatcher(mesh, interval=1.0)
    (tmp_path / "rules" / "reviews.yaml").unlink()
    assert watcher.check() is False
    assert watcher.check() is True
    assert subset_of(mesh) is None  # no VirtualService: the default route
    write_yaml("rules/zz-new.yaml", route_to("v2"))
    assert watcher.check() is False
    assert watcher.check() is True
    assert subset_of(mesh) == "v2"


def test_a_bad_change_keeps_the_last_good_config_and_says_where(
    mesh: Mesh, write_yaml: WriteYaml, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = ConfigWatcher(mesh, interval=1.0)
    bad = write_yaml("rules/reviews.yaml", route_to("v2").replace("subset: v2", "weight: -1"))
    touch_later(bad)
    with caplog.at_level(logging.WARNING, logger="meshlib"):
        assert watcher.check() is False
        assert watcher.check() is False
        assert watcher.check() is False  # the same bad file is not tried again
        bad.write_text(bad.read_text())  # nor when it is saved again as it was
        touch_later(bad)
        assert watcher.check() is False
        assert watcher.check() is False
    assert subset_of(mesh) == "v1"  # the last good config stays in force
    assert watcher.last_error is not None
    where = f"{bad}:8: spec.http[0].route[0].destination.weight: unknown field"
    assert where in str(watcher.last_error)
    assert caplog.text.count(where) == 1
    assert watcher.status().last_error == str(watcher.last_error)
    touch_later(write_yaml("rules/reviews.yaml", route_to("v2")))
    assert watcher.check() is False
    assert watcher.check() is True
    assert subset_of(mesh) == "v2"
    assert watcher.last_error is None


def test_bad_content_back_after_the_file_was_emptied_is_not_logged_again(
    mesh: Mesh, write_yaml: WriteYaml, caplog: pytest.LogCaptureFixture
) -> None:
    """A file rewritten in place (truncated, then filled) can be seen empty by two looks when the
    writer is slow; the bad content it then holds again was refused already."""
    watcher = ConfigWatcher(mesh, interval=1.0)
    text = route_to("v2").replace("subset: v2", "weight: -1")
    with caplog.at_level(logging.WARNING, logger="meshlib"):
        for content in (text, "", text, "", text):
            touch_later(write_yaml("rules/reviews.yaml", content))
            assert watcher.check() is False
            assert watcher.check() is False
    assert subset_of(mesh) == "v1"
    assert watcher.last_error is not None
    assert caplog.text.count("unknown field") == 1
    assert caplog.text.count("became empty") == 1
    touch_later(write_yaml("rules/reviews.yaml", route_to("v2")))
    assert watcher.check() is False
    assert watcher.check() is True
    assert subset_of(mesh) == "v2"
    touch_later(write_yaml("rules/reviews.yaml", text))  # refused contents are forgotten on load
    with caplog.at_level(logging.WARNING, logger="meshlib"):
        assert watcher.check() is False
        assert watcher.check() is False
    assert caplog.text.count("unknown field") == 2


def test_mesh_watch_runs_a_thread_until_close(mesh: Mesh, write_yaml: WriteYaml) -> None:
    watcher = mesh.watch(interval=0.02)
    assert mesh.watch(interval=0.02) is watcher
    assert watcher.running
    touch_later(write_yaml("rules/reviews.yaml", route_to("v2")))
    deadline = time.monotonic() + 5
    while subset_of(mesh) != "v2" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert subset_of(mesh) == "v2"
    mesh.close()
    assert not watcher.running


def test_a_mesh_not_built_from_files_cannot_watch() -> None:
    with pytest.raises(ConfigError, match="not built from files"):
        Mesh.from_yaml("").watch()


def test_interval_must_be_positive(mesh: Mesh) -> None:
    with pytest.raises(ValueError, match="interval"):
        ConfigWatcher(mesh, interval=0)
