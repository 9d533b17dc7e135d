"""SpiffeId: Istio's workload names, parsed strictly."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib.errors import IdentityError, MeshError, SpiffeIdError
from meshlib.security.identity import SpiffeId

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


def test_parse_gives_the_parts_the_uri_and_istio_principal() -> None:
    spiffe = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bookinfo-productpage")
    assert spiffe == SpiffeId("cluster.local", "default", "bookinfo-productpage")
    assert spiffe.uri == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    assert spiffe.principal == "cluster.local/ns/default/sa/bookinfo-productpage"
    assert str(spiffe) == spiffe.uri
    assert SpiffeId.from_principal(spiffe.principal) == spiffe


def test_a_spiffe_id_is_frozen_and_hashable() -> None:
    spiffe = SpiffeId("cluster.local", "default", "reviews")
    with pytest.raises(AttributeError):
        spiffe.namespace = "other"  # type: ignore[misc]
    assert {spiffe, SpiffeId.parse(spiffe.uri)} == {spiffe}


def test_errors_are_value_errors_of_the_mesh_tree() -> None:
    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId.parse("spiffe://cluster.local/ns/default")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, IdentityError)
    assert isinstance(caught.value, MeshError)
    assert "/ns/<namespace>/sa/<service-account>" in str(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "spiffe://",
        "spiffe:///ns/default/sa/x",  # no trust domain
        "spiffe://cluster.local",
        "spiffe://cluster.local/",
        "spiffe://cluster.local/ns/default/sa/",  # empty service account
        "spiffe://cluster.local/ns//sa/x",  # empty namespace
        "spiffe://cluster.local/ns/default/sa/x/",  # trailing slash
        "spiffe://cluster.local/ns/default/sa/x/extra",
        "spiffe://cluster.local//ns/default/sa/x",
        "spiffe://cluster.local/sa/x/ns/default",  # order
        "spiffe://cluster.local/NS/default/sa/x",
        "spiffe://cluster.local/ns/../sa/x",
        "spiffe://cluster.local/ns/./sa/x",
        "spiffe://cluster.local/ns/default/sa/..",
        "spiffe://cluster.local/ns/default/sa/.x",
        "spiffe://cluster.local/ns/default/sa/%2e%2e",
        "spiffe://cluster.local/ns/default%2Fsa/sa/x",
        "spiffe://cluster.local/ns/default/sa/x%00",
        "spiffe://cluster.local/ns/default/sa/x\x00",
        "spiffe://cluster.local/ns/default/sa/x\n",
        "spiffe://cluster.local/ns/default/sa/x ",
        " spiffe://cluster.local/ns/default/sa/x",
        "spiffe://cluster.local/ns/default/sa/x?y=1",
        "spiffe://cluster.local/ns/default/sa/x#frag",
        "spiffe://cluster.local/ns/Default/sa/x",  # upper case
        "spiffe://cluster.local/ns/default/sa/X",
        "spiffe://cluster.local/ns/de_fault/sa/x",
        "spiffe://cluster.local/ns/-default/sa/x",
        "spiffe://cluster.local/ns/default-/sa/x",
        "spiffe://cluster.local/ns/a.b/sa/x",  # a namespace is one label
        "spiffe://cluster.local/ns/default/sa/x..y",
        "SPIFFE://cluster.local/ns/default/sa/x",
        "spiffe:/cluster.local/ns/default/sa/x",
        "https://cluster.local/ns/default/sa/x",
        "spiffe://Cluster.Local/ns/default/sa/x",
        "spiffe://cluster.local./ns/default/sa/x",
        "spiffe://.cluster.local/ns/default/sa/x",
        "spiffe://cluster..local/ns/default/sa/x",
        "spiffe://cluster.local:443/ns/default/sa/x",
        "spiffe://user@cluster.local/ns/default/sa/x",
        "spiffe://cluster_local/ns/default/sa/x",
        "spiffe://clüster.local/ns/default/sa/x",  # non-ASCII
        "spiffe://cluster.local/ns/dеfault/sa/x",  # Cyrillic е
        "spiffe://cluster.local/ns/default/sa/x\u200b",  # zero-width space
        "spiffe://cluster.local/ns/１/sa/x",  # fullwidth digit
        "spiffe://" + "a" * 64 + "/ns/default/sa/x",  # label too long
        "spiffe://" + ".".join(["a" * 63] * 5) + "/ns/default/sa/x",  # domain > 253
        "spiffe://cluster.local/ns/" + "a" * 64 + "/sa/x",
        "spiffe://cluster.local/ns/default/sa/" + "a." * 127 + "a",  # sa > 253
        "spiffe://cluster.local/ns/default/sa/" + "a" * 3000,
    ],
)
def test_hostile_and_malformed_ids_are_refused(uri: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(uri)


def test_messages_stay_short_for_long_input() -> None:
    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId.parse("spiffe://cluster.local/ns/" + "x" * 1500 + "/sa/x")
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("value", [None, 7, b"spiffe://cluster.local/ns/a/sa/b"])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(value)  # type: ignore[arg-type]


def test_direct_construction_validates_too() -> None:
    with pytest.raises(SpiffeIdError, match="namespace"):
        SpiffeId("cluster.local", "../x", "y")
    with pytest.raises(SpiffeIdError, match="trust domain"):
        SpiffeId("cluster.local/ns", "x", "y")
    with pytest.raises(SpiffeIdError, match="without 'spiffe://'"):
        SpiffeId.from_principal("spiffe://cluster.local/ns/a/sa/b")


def test_bounds_at_the_edges_are_accepted() -> None:
    longest = SpiffeId(".".join(["a" * 63] * 3) + ".abc", "n" * 63, ".".join(["s" * 63] * 4)[:253])
    assert SpiffeId.parse(longest.uri) == longest


@given(st.text(alphabet=string.printable + "ü/%.\x00", max_size=120))
def test_parse_either_round_trips_or_raises_spiffe_id_error(text: str) -> None:
    for candidate in (text, "spiffe://" + text, "spiffe://cluster.local/ns/" + text):
        try:
            parsed = SpiffeId.parse(candidate)
        except SpiffeIdError:
            continue
        assert parsed.uri == candidate


@given(st.text(max_size=300))
def test_any_text_is_parsed_or_refused_cleanly(text: str) -> None:
    try:
        parsed = SpiffeId.from_principal(text)
    except SpiffeIdError:
        return
    assert parsed.principal == text


@given(_DOMAIN, _LABEL, _DOMAIN)
def test_every_valid_id_round_trips(domain: str, namespace: str, account: str) -> None:
    spiffe = SpiffeId(domain, namespace, account)
    assert SpiffeId.parse(spiffe.uri) == spiffe
    assert SpiffeId.from_principal(spiffe.principal) == spiffe


def test_import_meshlib_loads_neither_this_package_nor_cryptography_x509() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, meshlib; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith(('meshlib.security', 'cryptography.x509'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
