"""Request path normalisation: Istio's pathNormalization options, on Istio's documented examples
and on hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib.security.paths import (
    DEFAULT_PATH_NORMALIZATION,
    PATH_NORMALIZATIONS,
    InvalidPathError,
    normalize_path,
    split_query,
)


def test_default_is_istios_base() -> None:
    assert DEFAULT_PATH_NORMALIZATION == "BASE"


# (raw, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)
CASES = [
    # Istio's normalization reference page
    ("/some%2fdata/%61%62%63", "/some%2Fdata/abc", "/some%2Fdata/abc", "/some/data/abc"),
    ("/some\\data", "/some/data", "/some/data", "/some/data"),
    ("/some//data///abc", "/some//data///abc", "/some/data/abc", "/some/data/abc"),
    ("/public/./data/abc/../xyz", "/public/data/xyz", "/public/data/xyz", "/public/data/xyz"),
    ("/foo?v=1", "/foo", "/foo", "/foo"),
    # Istio's best-practices table
    ("/a/../b", "/b", "/b", "/b"),
    ("/a//b", "/a//b", "/a/b", "/a/b"),
    ("/a%2fb", "/a%2Fb", "/a%2Fb", "/a/b"),
    ("/a%5Cb", "/a%5Cb", "/a%5Cb", "/a/b"),
    # unreserved characters decoded once, others upper-cased, no double decoding
    ("/%2d%2E%5f%7e%41%7A%30", "/-._~Az0", "/-._~Az0", "/-._~Az0"),
    ("/a%3fb", "/a%3Fb", "/a%3Fb", "/a%3Fb"),
    ("/a/%252e%252e/b", "/a/%252e%252e/b", "/a/%252e%252e/b", "/a/%252e%252e/b"),
    # dot segments, encoded or not, never above the root
    ("/public/%2e%2e/admin", "/admin", "/admin", "/admin"),
    ("/public/%2E./admin", "/admin", "/admin", "/admin"),
    ("/../../../etc/passwd", "/etc/passwd", "/etc/passwd", "/etc/passwd"),
    ("/a/b/..", "/a/", "/a/", "/a/"),
    ("/a/./", "/a/", "/a/", "/a/"),
    ("/admin%2F..", "/admin%2F..", "/admin%2F..", "/"),
    ("/admin%2f..%2fsecret", "/admin%2F..%2Fsecret", "/admin%2F..%2Fsecret", "/secret"),
    ("/..\\admin", "/admin", "/admin", "/admin"),
    # characters a path may not hold are encoded (as Envoy's canonicaliser does)
    ("/a b", "/a%20b", "/a%20b", "/a%20b"),
    ("/caf\u00e9", "/caf%C3%A9", "/caf%C3%A9", "/caf%C3%A9"),
    # case is kept: paths are case-sensitive
    ("/Admin", "/Admin", "/Admin", "/Admin"),
]


@pytest.mark.parametrize(("raw", "base", "merge", "decode"), CASES, ids=[c[0] for c in CASES])
def test_istio_normalizations(raw: str, base: str, merge: str, decode: str) -> None:
    assert normalize_path(raw) == base
    assert normalize_path(raw, "BASE") == base
    assert normalize_path(raw, "MERGE_SLASHES") == merge
    assert normalize_path(raw, "DECODE_AND_MERGE_SLASHES") == decode


def test_none_keeps_the_path_but_drops_the_query() -> None:
    assert normalize_path("/a/../%2e//b?x=1", "NONE") == "/a/../%2e//b"


def test_bytes_are_read_as_sent() -> None:
    assert normalize_path(b"/caf\xc3\xa9/%2e%2e/x?q") == "/x"
    assert normalize_path(b"/\xff") == "/%FF"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("/a%00b", 400),
        ("/a\x00b", 400),
        ("/a\nb", 400),
        ("/a#frag", 400),
        ("relative/path", 400),
        ("", 400),
        ("*", 400),
        ("/" + "a" * 70_000, 431),
    ],
)
@pytest.mark.parametrize("mode", PATH_NORMALIZATIONS)
def test_envoy_refusals(raw: str, status: int, mode: str) -> None:
    with pytest.raises(InvalidPathError) as info:
        normalize_path(raw, mode)  # type: ignore[arg-type]
    assert info.value.status == status


def test_length_bound_is_configurable() -> None:
    with pytest.raises(InvalidPathError):
        normalize_path("/abcdef", max_length=4)
    assert normalize_path("/abc", max_length=4) == "/abc"


def test_split_query() -> None:
    assert split_query("/a?b=1&c") == ("/a", "b=1&c")
    assert split_query("/a") == ("/a", "")


hostile = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "/",
                "//",
                "\\",
                ".",
                "..",
                "%2e",
                "%2E",
                "%2f",
                "%2F",
                "%5c",
                "%25",
                "%00",
                "%",
                "a",
                "A",
                "admin",
                "?",
                "#",
                "\x00",
                " ",
                "\u00e9",
                "%zz",
                ";",
                "%252e",
            ]
        ),
        max_size=30,
    ).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(raw=hostile, mode=st.sampled_from(PATH_NORMALIZATIONS))
def test_hostile_input_never_raises_anything_else(raw: str | bytes, mode: str) -> None:
    try:
        path = normalize_path(raw, mode)  # type: ignore[arg-type]
    except InvalidPathError as error:
        status = error.status
        assert status in (400, 431)
        return
    assert path.startswith("/")
    assert "?" not in path
    if mode == "NONE":
        return
    assert path.isascii()
    assert "\\" not in path
    segments = path.split("/")
    assert "." not in segments
    assert ".." not in segments
    if mode != "BASE":
        assert "//" not in path
    assert normalize_path(path, mode) == path  # idempotent: one pass says it all  # type: ignore[arg-type]
