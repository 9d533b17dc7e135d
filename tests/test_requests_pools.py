"""meshlib.clients.requests: the adapter's headers and its plain-text connection pools.

The adapter keeps a request's and a response's headers in ``Headers`` (a requests
``CaseInsensitiveDict`` whose lookups of a missing name raise nothing inside), and remembers
urllib3's pool per plain-text host and port instead of looking it up on every call. Both must be
invisible to a caller: these tests hold them to requests' own behaviour, against real upstreams.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from meshlib import Mesh
from meshlib.clients.requests import Headers, MeshAdapter
from tests.integration.upstream import Upstream

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  registry:
    static:
      reviews: [{address: "%(reviews)s", labels: {version: v1}}]
      ratings: [{address: "%(ratings)s", labels: {version: v1}}]
"""


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    first, second = Upstream.start_many(["v1", "v2"])
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


@pytest.fixture
def mesh(upstreams: tuple[Upstream, Upstream]) -> Mesh:
    reviews, ratings = upstreams
    return Mesh.from_yaml(
        SERVICE % {"reviews": reviews.address, "ratings": ratings.address}, seed=1
    )


# --------------------------------------------------------------------------- Headers


def _both(pairs: dict[str, str]) -> tuple[CaseInsensitiveDict[str], Headers]:
    return CaseInsensitiveDict(pairs), Headers.of(CaseInsensitiveDict(pairs))


def test_headers_answer_every_lookup_as_requests_own_dict_does() -> None:
    theirs, ours = _both({"Content-Type": "text/plain", "X-Trace": "1"})
    assert isinstance(ours, CaseInsensitiveDict)
    for name in ("content-type", "CONTENT-TYPE", "x-trace", "missing"):
        assert (name in ours) == (name in theirs)
        assert ours.get(name) == theirs.get(name)
        assert ours.get(name, "default") == theirs.get(name, "default")
    assert 3 not in ours  # not a name: False, as requests' answers (it raises inside)
    assert list(ours) == list(theirs) == ["Content-Type", "X-Trace"]
    assert list(ours.items()) == list(theirs.items())
    assert list(ours.lower_items()) == list(theirs.lower_items())
    assert ours == theirs
    assert ours == {"content-type": "text/plain", "x-trace": "1"}
    assert repr(ours) == repr(theirs)
    assert len(ours) == 2


def test_headers_are_edited_as_requests_own_dict_is() -> None:
    theirs, ours = _both({"Content-Type": "text/plain", "X-Trace": "1"})
    for made in (theirs, ours):
        made["x-TRACE"] = "2"  # the name as last written is kept
        del made["content-type"]
        made["Accept"] = "*/*"
    assert list(ours.items()) == list(theirs.items()) == [("x-TRACE", "2"), ("Accept", "*/*")]
    assert ours.pop("ACCEPT") == theirs.pop("ACCEPT") == "*/*"
    assert ours.pop("accept", None) is None
    with pytest.raises(KeyError):
        ours.pop("accept")
    with pytest.raises(KeyError):
        ours["accept"]
    copy = ours.copy()
    copy["new"] = "1"
    assert "new" not in ours
    assert isinstance(copy, Headers)
    ours.update({"A": "1"}, b="2")
    assert ours["a"] == "1"
    assert ours["B"] == "2"


def test_headers_copy_a_dict_a_copy_and_urllib3s_headers() -> None:
    raw = urllib3.HTTPHeaderDict()
    raw.add("Set-Cookie", "a=1")
    raw.add("set-cookie", "b=2")
    raw.add("Date", "today")
    # requests joins a repeated response header as it builds the response: so does the copy
    assert dict(Headers.of(raw).lower_items()) == dict(CaseInsensitiveDict(raw).lower_items())
    assert Headers.of({"Host": "reviews"})["HOST"] == "reviews"
    assert list(Headers.of(Headers.of({"A": "1"}))) == ["A"]
    assert len(Headers.of(None)) == 0
    assert len(Headers()) == 0


def test_a_response_through_the_mesh_has_headers_requests_reads_as_its_own(mesh: Mesh) -> None:
    with mesh.requests_session() as session:
        response = session.get("http://reviews/r", headers={"X-Caller": "me"}, timeout=5)
    assert response.status_code == 200
    assert isinstance(response.headers, CaseInsensitiveDict)
    assert response.headers["CONTENT-TYPE"].startswith("application/json")
    assert response.json()["headers"]["x-caller"] == "me"
    assert response.request.headers["x-caller"] == "me"


# --------------------------------------------------------------------------- pools


def test_a_pool_is_looked_up_once_per_host_and_again_after_close(mesh: Mesh) -> None:
    with mesh.requests_session() as session:
        adapter = session.get_adapter("http://reviews/")
        assert isinstance(adapter, MeshAdapter)
        for _ in range(3):
            assert session.get("http://reviews/r", timeout=5).json()["version"] == "v1"
        assert len(adapter._plain_pools) == 1
        (pool,) = adapter._plain_pools.values()
        adapter.close()  # requests closes its pools: the next call must not find a closed one
        assert session.get("http://reviews/r", timeout=5).json()["version"] == "v1"
        assert next(iter(adapter._plain_pools.values())) is not pool


def test_pools_urllib3_evicts_are_looked_up_again(mesh: Mesh) -> None:
    """With room for one pool, urllib3 forgets the other host's at each switch: so does the
    adapter."""
    session = requests.Session()
    session.mount("http://", MeshAdapter(mesh, pool_connections=1))  # one pool at a time
    with session:
        for _ in range(3):
            assert session.get("http://reviews/r", timeout=5).json()["version"] == "v1"
            assert session.get("http://ratings/r", timeout=5).json()["version"] == "v2"
            assert len(session.get_adapter("http://reviews/")._plain_pools) == 1


def test_a_proxy_the_caller_names_is_still_used(
    mesh: Mesh, upstreams: tuple[Upstream, Upstream]
) -> None:
    """A proxy (the caller's ``proxies=``, or requests' from the environment) takes requests'
    own way: the attempt goes to the proxy, with the endpoint's absolute URL."""
    reviews, proxy = upstreams
    with mesh.requests_session() as session:
        response = session.get("http://reviews/r", proxies={"http": proxy.url()}, timeout=5)
    body = response.json()
    assert body["version"] == "v2"
    assert body["path"] == f"http://{reviews.address}/r"
