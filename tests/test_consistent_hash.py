"""Consistent hashing as Envoy does it: the same key goes to the same endpoint as from a sidecar.

Three kinds of evidence, none computed by the code under test:

* Envoy's own test expectations (``ring_hash_lb_test.cc``, ``maglev_lb_test.cc``): ring
  entries, ring sizes, entries per host, and the host chosen for given keys;
* a naive second implementation here, written straight from Envoy's description (entries by
  running target, a linear scan for the lookup; Maglev's permutation recomputed per probe),
  compared with meshlib's on seeded random pools;
* hash-key expectations from Envoy's hash policies (xxHash64, seed 0, values sorted and hashed
  as one stream), computed with xxhash's streaming API as Envoy's ``HashUtil`` does.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

import httpx
import pytest
import xxhash

from meshlib import balancing
from meshlib.balancing import (
    DEFAULT_MAXIMUM_RING_SIZE,
    InFlight,
    Maglev,
    RingHash,
    hash_key,
    host_hash_key,
    maglev_table,
    make_picker,
    ring_layout,
)
from meshlib.config import model as m
from meshlib.discovery import Endpoint
from meshlib.testing import Upstreams, in_memory_mesh

U64_MAX = (1 << 64) - 1


def _hosts(*ports: int, weights: Sequence[int] | None = None) -> tuple[Endpoint, ...]:
    """Envoy's test hosts: ``tcp://127.0.0.1:<port>``."""
    weights = weights or [1] * len(ports)
    return tuple(Endpoint("127.0.0.1", p, {}, w) for p, w in zip(ports, weights, strict=True))


def test_xxhash_is_xxh64_seed_0() -> None:
    # The reference value of XXH64 over no input, seed 0 (xxHash's own sanity check).
    assert xxhash.xxh64_intdigest(b"") == 0xEF46DB3751D8E999


# --------------------------------------------------------------------------- Envoy's ring tests

# RingHashLoadBalancerTest.Basic: six hosts, minimum_ring_size 12, this ring (port, position).
ENVOY_BASIC_RING = [
    (94, 833437586790550860),
    (92, 928266305478181108),
    (90, 1033482794131418490),
    (95, 3551244743356806947),
    (93, 3851675632748031481),
    (91, 5583722120771150861),
    (91, 6311230543546372928),
    (93, 7700377290971790572),
    (95, 13144177310400110813),
    (92, 13444792449719432967),
    (94, 15516499411664133160),
    (90, 16117243373044804889),
]


def test_envoy_basic_ring() -> None:
    hosts = _hosts(90, 91, 92, 93, 94, 95)
    picker = RingHash(random.Random(1), minimum_ring_size=12)
    ring = [(ep.port, point) for point, ep in picker.ring(hosts)]
    assert ring == [(port, point) for port, point in ENVOY_BASIC_RING]
    assert picker.pick(hosts, 0) is hosts[4]
    assert picker.pick(hosts, U64_MAX) is hosts[4]  # past the last entry: wraps to the first
    assert picker.pick(hosts, 3551244743356806947) is hosts[5]  # on an entry: that entry
    assert picker.pick(hosts, 3551244743356806948) is hosts[3]  # just past it: the next
    assert picker.pick(hosts, 16117243373044804880) is hosts[0]


def test_envoy_basic_ring_retry_walks_to_the_next_entry() -> None:
    # BasicWithRetryHostPredicate: key 0 lands on :94; with :94 rejected, the next entry (:92).
    hosts = _hosts(90, 91, 92, 93, 94, 95)
    picker = RingHash(random.Random(1), minimum_ring_size=12)
    assert picker.pick(hosts, 0, avoid=[hosts[4]]) is hosts[2]
    assert picker.pick(hosts, 0, avoid=[hosts[4], hosts[2]]) is hosts[0]


def test_envoy_uneven_hosts() -> None:
    # UnevenHosts: two hosts, minimum_ring_size 3: two entries each, a ring of 4.
    picker = RingHash(random.Random(1), minimum_ring_size=3)
    first = _hosts(80, 81)
    assert [(ep.port, p) for p, ep in picker.ring(first)] == [
        (80, 5454692015285649509),
        (81, 7859399908942313493),
        (80, 13838424394637650569),
        (81, 16064866803292627174),
    ]
    assert picker.pick(first, 0) is first[0]
    second = _hosts(81, 82)
    assert [(ep.port, p) for p, ep in picker.ring(second)] == [
        (81, 7859399908942313493),
        (82, 8241336090459785962),
        (82, 12882406409176325258),
        (81, 16064866803292627174),
    ]
    assert picker.pick(second, 0) is second[0]


def test_envoy_host_weighted_tiny_ring() -> None:
    # HostWeightedTinyRing: weights 1, 2, 3 on a ring of exactly six entries.
    hosts = _hosts(90, 91, 92, weights=[1, 2, 3])
    picker = RingHash(random.Random(1), minimum_ring_size=6, maximum_ring_size=6)
    expected = {
        928266305478181108: 2,
        4443673547860492590: 2,
        5583722120771150861: 1,
        6311230543546372928: 1,
        13444792449719432967: 2,
        16117243373044804889: 0,
    }
    for key, index in expected.items():
        assert picker.pick(hosts, key) is hosts[index]
    assert Counter(ep.port for _, ep in picker.ring(hosts)) == {90: 1, 91: 2, 92: 3}


def _histogram(picker: RingHash, hosts: Sequence[Endpoint], samples: int) -> list[int]:
    counts = Counter(picker.pick(hosts, i * (U64_MAX // samples)) for i in range(samples))
    return [counts[ep] for ep in hosts]


def test_envoy_host_weighted_large_ring() -> None:
    # HostWeightedLargeRing: minimum 6144; 1024, 2048 and 3072 entries; 6000 spread keys.
    hosts = _hosts(90, 91, 92, weights=[1, 2, 3])
    picker = RingHash(random.Random(1), minimum_ring_size=6144)
    assert ring_layout(hosts, 6144) == (6144.0, [1024, 2048, 3072])
    assert _histogram(picker, hosts, 6000) == [987, 1932, 3081]


def test_envoy_large_fractional_scale() -> None:
    # LargeFractionalScale: two hosts on a ring of exactly 1023: 512 and 511 entries.
    hosts = _hosts(90, 91)
    picker = RingHash(random.Random(1), minimum_ring_size=1023, maximum_ring_size=1023)
    assert ring_layout(hosts, 1023, 1023)[1] == [512, 511]
    assert _histogram(picker, hosts, 1023) == [526, 497]


def test_envoy_small_fractional_scale() -> None:
    # SmallFractionalScale: four hosts on a ring of two entries: two hosts get no traffic.
    hosts = _hosts(90, 91, 92, 93)
    picker = RingHash(random.Random(1), minimum_ring_size=2, maximum_ring_size=2)
    assert len(picker.ring(hosts)) == 2
    counts = _histogram(picker, hosts, 1024)
    assert counts.count(0) == 2
    assert sum(counts) == 1024


def test_envoy_bad_ring_size_bounds() -> None:
    with pytest.raises(ValueError, match=r"minimum_ring_size \(20\) > maximum_ring_size \(10\)"):
        RingHash(random.Random(1), minimum_ring_size=20, maximum_ring_size=10)
    with pytest.raises(ValueError, match="at least 1"):
        RingHash(random.Random(1), minimum_ring_size=0)


def test_ring_with_fewer_entries_than_endpoints_answers_none_only_when_empty() -> None:
    hosts = _hosts(90, 91, 92, 93)
    picker = RingHash(random.Random(1), minimum_ring_size=1, maximum_ring_size=1)
    assert len(picker.ring(hosts)) == 1
    only = picker.ring(hosts)[0][1]
    assert {picker.pick(hosts, k) for k in (0, 1 << 63, U64_MAX)} == {only}


# --------------------------------------------------------------------------- Envoy's Maglev tests


def test_envoy_maglev_basic() -> None:
    # MaglevLoadBalancerTest.Basic and BasicStability: table size 7, six hosts.
    hosts = _hosts(90, 91, 92, 93, 94, 95)
    expected = [2, 4, 0, 1, 5, 0, 3]
    picker = Maglev(random.Random(1), 7)
    for key in range(3 * len(expected)):
        assert picker.pick(hosts, key) is hosts[expected[key % 7]]
    shuffled = list(hosts)
    random.Random(3).shuffle(shuffled)  # the table does not depend on the hosts' order
    assert Maglev(random.Random(1), 7).table(shuffled) == tuple(hosts[i] for i in expected)


def test_envoy_maglev_weighted() -> None:
    # MaglevLoadBalancerTest.Weighted: weights 1 and 2, table size 17 (6 and 11 slots).
    hosts = _hosts(90, 91, weights=[1, 2])
    expected = [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]
    picker = Maglev(random.Random(1), 17)
    for key in range(3 * len(expected)):
        assert picker.pick(hosts, key) is hosts[expected[key % 17]]
    assert Counter(picker.table(hosts)) == {hosts[0]: 6, hosts[1]: 11}


def test_envoy_maglev_retry_moves_the_key() -> None:
    # BasicWithRetryHostPredicate: key 10 lands on :91; with :91 rejected, :90.
    hosts = _hosts(90, 91, 92, 93, 94, 95)
    picker = Maglev(random.Random(1), 7)
    assert picker.pick(hosts, 10) is hosts[1]
    assert picker.pick(hosts, 10, avoid=[hosts[1]]) is hosts[0]
    assert picker.pick(hosts, 10, avoid=hosts) in hosts  # every host tried: any will do


@pytest.mark.parametrize("size", [9, 4, 65536, 0, -7])
def test_a_maglev_table_size_that_is_not_prime_is_refused(size: int) -> None:
    # Envoy's MaglevTable constructor throws on it; with 9 the table would never fill up.
    hosts = _hosts(90, 91, 92, 93, 94, 95)
    message = rf"table size must be a prime number \(e\.g\. 65537\), not {size}"
    with pytest.raises(ValueError, match=message):
        Maglev(random.Random(1), size)
    with pytest.raises(ValueError, match=message):
        balancing.maglev_table(hosts, size)


def test_maglev_table_sizes_envoy_takes() -> None:
    naive = [n for n in range(1, 200) if n == 1 or all(n % d for d in range(2, n))]
    assert [n for n in range(1, 200) if balancing.is_prime(n)] == naive  # 1 counts, as in Envoy
    hosts = _hosts(90, 91)
    assert len(balancing.maglev_table(hosts, 1)) == 1
    assert sorted(Counter(balancing.maglev_table(hosts, 13)).values()) == [6, 7]


# --------------------------------------------------------------------------- a naive second version


def _naive_ring(
    endpoints: Sequence[Endpoint], minimum: int, maximum: int = DEFAULT_MAXIMUM_RING_SIZE
) -> list[tuple[int, int]]:
    """Envoy's ring written plainly: an endpoint's entries run from ceil of the running target
    before it to ceil of the running target after it."""
    total = sum(max(ep.weight, 1) for ep in endpoints)
    shares = [max(ep.weight, 1) * 1.0 / total for ep in endpoints]
    lightest = min(shares)
    scale = min(math.ceil(lightest * minimum) / lightest, float(maximum))
    ring: list[tuple[int, int]] = []
    target = 0.0
    for index, (ep, share) in enumerate(zip(endpoints, shares, strict=True)):
        before = math.ceil(target)
        target += scale * share
        address = f"[{ep.host}]:{ep.port}" if ":" in ep.host else f"{ep.host}:{ep.port}"
        for i in range(max(before, 0), max(math.ceil(target), before)):
            entry = i - before
            ring.append((xxhash.xxh64_intdigest(f"{address}_{entry}".encode()), index))
    return ring


def _naive_lookup(ring: list[tuple[int, int]], key: int) -> int:
    at_or_after = [entry for entry in ring if entry[0] >= key]
    return min(at_or_after or ring)[1]


def _random_pool(rng: random.Random) -> tuple[Endpoint, ...]:
    size = rng.randint(2, 9)
    pool = []
    for i in range(size):
        host = (
            f"fd00::{rng.randint(1, 0xFFFF):x}"
            if rng.random() < 0.3
            else f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{i + 1}"
        )
        pool.append(Endpoint(host, rng.choice([80, 9080, 8443]), {}, rng.choice([1, 1, 2, 3, 7])))
    return tuple(pool)


@pytest.mark.parametrize("seed", range(12))
def test_ring_matches_the_naive_ring(seed: int) -> None:
    rng = random.Random(seed)
    pool = _random_pool(rng)
    minimum = rng.choice([1, 7, 64, 100, 1024])
    picker = RingHash(random.Random(1), minimum_ring_size=minimum)
    naive = _naive_ring(pool, minimum)
    assert [(point, pool[i]) for point, i in sorted(naive)] == picker.ring(pool)
    keys = [rng.getrandbits(64) for _ in range(300)] + [0, U64_MAX] + [p for p, _ in naive[:20]]
    for key in keys:
        assert picker.pick(pool, key) is pool[_naive_lookup(naive, key)]


def _naive_maglev(endpoints: Sequence[Endpoint], size: int) -> list[int]:
    """Maglev's table (the paper's listing 1, weighted as Envoy weights it), probing with the
    permutation recomputed from scratch on every probe."""
    order = sorted(range(len(endpoints)), key=lambda i: host_hash_key(endpoints[i]))
    total = sum(max(ep.weight, 1) for ep in endpoints)
    share = {i: max(endpoints[i].weight, 1) * 1.0 / total for i in order}
    heaviest = max(share.values())
    offset = {i: xxhash.xxh64_intdigest(host_hash_key(endpoints[i]).encode()) % size for i in order}
    skip = {
        i: xxhash.xxh64_intdigest(host_hash_key(endpoints[i]).encode(), seed=1) % (size - 1) + 1
        for i in order
    }
    target = dict.fromkeys(order, 0.0)
    probe = dict.fromkeys(order, 0)
    table = [-1] * size
    filled = 0
    iteration = 1
    while filled < size:
        for i in order:
            if filled == size:
                break
            if iteration * share[i] < target[i]:
                continue
            target[i] += heaviest
            while table[(offset[i] + skip[i] * probe[i]) % size] != -1:
                probe[i] += 1
            table[(offset[i] + skip[i] * probe[i]) % size] = i
            probe[i] += 1
            filled += 1
        iteration += 1
    return table


@pytest.mark.parametrize("seed", range(8))
def test_maglev_matches_the_naive_table(seed: int) -> None:
    rng = random.Random(seed)
    pool = _random_pool(rng)
    size = rng.choice([7, 17, 251, 1009])
    assert maglev_table(pool, size) == _naive_maglev(pool, size)
    picker = Maglev(random.Random(1), size)
    naive = _naive_maglev(pool, size)
    for _ in range(200):
        key = rng.getrandbits(64)
        assert picker.pick(pool, key) is pool[naive[key % size]]


def test_maglev_default_table_is_balanced_and_stable() -> None:
    pool = tuple(Endpoint(f"10.0.0.{i}", 9080) for i in range(1, 6))
    table = maglev_table(pool, 65537)
    counts = Counter(table)
    assert min(counts.values()) >= 65537 // 5 - 5
    smaller = maglev_table(pool[:4], 65537)
    moved = sum(1 for a, b in zip(table, smaller, strict=True) if a not in (4, b))
    assert moved / 65537 < 0.05  # Maglev's minimal disruption: few slots move between the rest


def test_maglev_keeps_recent_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []
    real = balancing.maglev_table

    def counting(endpoints: Sequence[Endpoint], size: int) -> list[int]:
        builds.append(len(endpoints))
        return real(endpoints, size)

    monkeypatch.setattr(balancing, "maglev_table", counting)
    pool = _hosts(90, 91, 92, 93)
    picker = Maglev(random.Random(1), 251)
    full = picker.table(pool)
    ejected = picker.table(pool[1:])
    assert builds == [4, 3]
    assert picker.table(pool) == full  # back from ejection: the kept table
    assert picker.table(pool[::-1]) == full  # same endpoints in another order: same table
    assert picker.table(pool[1:]) == ejected
    assert builds == [4, 3]
    for size in range(1, 6):  # more lists than are kept: the oldest is built again
        picker.table(_hosts(*range(100, 100 + size + 1)))
    picker.table(pool)
    assert builds[-1] == 4


def test_host_hash_key_is_envoys_address_string() -> None:
    assert host_hash_key(Endpoint("10.1.2.3", 9080)) == "10.1.2.3:9080"
    assert host_hash_key(Endpoint("FD00:0:0::1", 80)) == "[fd00::1]:80"
    assert host_hash_key(Endpoint.parse("[::ffff:10.0.0.1]:80")) == "[::ffff:10.0.0.1]:80"
    assert host_hash_key(Endpoint("fe80::1%eth0", 80)) == "[fe80::1%eth0]:80"
    assert host_hash_key(Endpoint("reviews.default.svc", 9080)) == "reviews.default.svc:9080"


# --------------------------------------------------------------------------- hash keys


def _lb(**fields: object) -> m.ConsistentHashLB:
    return m.ConsistentHashLB.model_validate(fields)


def _envoy_values_hash(values: Sequence[bytes]) -> int:
    """Envoy's ``HashUtil::xxHash64(span)``: one xxHash64 stream over the values in turn."""
    state = xxhash.xxh64(seed=0)
    for value in values:
        state.update(value)
    return state.intdigest()


def test_header_key_is_xxhash64_of_the_value() -> None:
    lb = _lb(httpHeaderName="End-User")
    expected = xxhash.xxh64_intdigest(b"jason")
    assert hash_key(lb, httpx.Headers({"end-user": "jason"}), "", None) == expected
    assert hash_key(lb, {"end-user": "jason"}, "", None) == expected
    assert hash_key(lb, httpx.Headers({"x-other": "jason"}), "", None) is None
    assert hash_key(lb, httpx.Headers({"end-user": ""}), "", None) == xxhash.xxh64_intdigest(b"")


def test_header_key_with_several_lines_sorts_them() -> None:
    lb = _lb(httpHeaderName="x-user")
    both = httpx.Headers([("x-user", "foo"), ("x-user", "bar")])
    expected = _envoy_values_hash([b"bar", b"foo"])
    assert hash_key(lb, both, "", None) == expected
    flipped = httpx.Headers([("x-user", "bar"), ("x-user", "foo")])
    assert hash_key(lb, flipped, "", None) == expected
    # not the comma-joined value a plain .get would give
    assert expected != xxhash.xxh64_intdigest(b"foo, bar")


@pytest.mark.parametrize("raw", [b"\xe9t\xe9", "\u00e9t\u00e9".encode(), b"caf\xc3"])
def test_header_key_hashes_the_bytes_sent(raw: bytes) -> None:
    # Envoy hashes the value's bytes as they came: Latin-1 or UTF-8 alike.
    lb = _lb(httpHeaderName="x-user")
    headers = httpx.Headers([(b"x-user", raw)])
    assert hash_key(lb, headers, "", None) == xxhash.xxh64_intdigest(raw)
    cookie = _lb(httpCookie={"name": "s"})
    with_cookie = httpx.Headers([(b"cookie", b"s=" + raw)])
    assert hash_key(cookie, with_cookie, "", None) == xxhash.xxh64_intdigest(raw)


def test_hostile_values_give_a_key_not_an_error() -> None:
    lb = _lb(httpHeaderName="x-user")
    assert hash_key(lb, {"x-user": "\udc80\ud800"}, "", None) is not None
    by_param = _lb(httpQueryParameterName="\udc80")
    assert hash_key(by_param, {}, "\udc80=\ud800&" + "a=1&" * 10_000, None) is not None
    by_cookie = _lb(httpCookie={"name": "s"})
    assert hash_key(by_cookie, {"cookie": ";;;=;" * 10_000 + " s=\udc80"}, "", None) is not None


class _MultiDict:
    """A multidict's reading side (aiohttp's CIMultiDict answers ``getall``)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items

    def getall(self, key: str, default: Sequence[str] = ()) -> list[str]:
        return [v for k, v in self.items if k.lower() == key] or list(default)

    def get(self, key: str) -> str | None:
        found = self.getall(key)
        return found[0] if found else None


def test_header_key_from_a_multidict() -> None:
    lb = _lb(httpHeaderName="x-user")
    headers = _MultiDict([("X-User", "foo"), ("X-User", "bar")])
    assert hash_key(lb, headers, "", None) == _envoy_values_hash([b"bar", b"foo"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lines", "value"),
    [
        (["session=abc123"], "abc123"),
        (["theme=dark; session=abc123; lang=en"], "abc123"),
        (["theme=dark;   session=abc123"], "abc123"),  # leading spaces before the name
        (['session="abc123"'], "abc123"),  # one pair of quotes removed
        (['session=""'], None),  # empty: no key
        (["session="], None),
        (["theme=dark", "session=second-line"], "second-line"),  # every Cookie line
        (["session=first", "session=second"], "first"),  # the first one wins
        (["bare; session=x y"], "x y"),  # a part without "=" is skipped; value as written
        (["Session=abc"], None),  # names are case-sensitive
        (["other_session=abc123"], None),
        ([], None),
    ],
)
def test_cookie_key_as_envoy_parses_it(lines: list[str], value: str | None) -> None:
    lb = _lb(httpCookie={"name": "session", "ttl": "0s"})
    headers = httpx.Headers([("cookie", line) for line in lines])
    expected = None if value is None else xxhash.xxh64_intdigest(value.encode())
    assert hash_key(lb, headers, "", None) == expected


@pytest.mark.parametrize(
    ("query", "value"),
    [
        ("user=jason", "jason"),
        ("a=1&user=j%20son&user=x", "j%20son"),  # the first value, not percent-decoded
        ("?user=kim", "kim"),
        ("user", ""),  # a bare name: the empty value
        ("user=a=b", "a=b"),  # split on the first "="
        ("users=1&&user=", ""),
        ("a=1", None),
        ("", None),
    ],
)
def test_query_parameter_key_from_the_raw_query(query: str, value: str | None) -> None:
    lb = _lb(httpQueryParameterName="user")
    expected = None if value is None else xxhash.xxh64_intdigest(value.encode())
    assert hash_key(lb, {}, query, None) == expected


def test_source_ip_key() -> None:
    lb = _lb(useSourceIp=True)
    assert hash_key(lb, {}, "", "10.1.2.3") == xxhash.xxh64_intdigest(b"10.1.2.3")
    assert hash_key(lb, {}, "", None) is None
    assert hash_key(lb, {}, "", "") is None


def test_make_picker_maglev_table_size() -> None:
    settings = m.LoadBalancerSettings.model_validate(
        {"consistentHash": {"httpHeaderName": "x", "maglev": {"tableSize": 251}}}
    )
    picker = make_picker(settings, random.Random(1), InFlight())
    assert isinstance(picker, Maglev)
    assert picker.table_size == 251


# --------------------------------------------------------------------------- through the mesh

MESH = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: end-user
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpQueryParameterName: user
        maglev: {tableSize: 251}
"""


def _pool(upstreams: Upstreams, service: str) -> tuple[Endpoint, ...]:
    return upstreams.registry()[service]


def _expected_ring_pick(pool: Sequence[Endpoint], value: str) -> str:
    naive = _naive_ring(pool, 1024)
    return pool[_naive_lookup(naive, xxhash.xxh64_intdigest(value.encode()))].address


def _expected_maglev_pick(pool: Sequence[Endpoint], value: str) -> str:
    table = _naive_maglev(pool, 251)
    return pool[table[xxhash.xxh64_intdigest(value.encode()) % 251]].address


def _upstreams() -> Upstreams:
    upstreams = Upstreams()
    for service in ("ratings", "reviews"):
        for index in range(4):
            upstreams.endpoint(service, index=index)
    return upstreams


USERS = ["jason", "kim", "lee", "maria", "wei", "olu", "ana", "raj"]


def test_mesh_sends_each_key_where_envoy_would_sync() -> None:
    upstreams = _upstreams()
    mesh = in_memory_mesh(MESH, upstreams, seed=1)
    ratings, reviews = _pool(upstreams, "ratings"), _pool(upstreams, "reviews")
    with mesh.client() as http:
        for user in USERS:
            r = http.get("http://ratings:9080/", headers={"end-user": user})
            assert r.extensions["mesh"].endpoint == _expected_ring_pick(ratings, user)
            r = http.get(f"http://reviews:9080/?page=1&user={user}")
            assert r.extensions["mesh"].endpoint == _expected_maglev_pick(reviews, user)


async def test_mesh_sends_each_key_where_envoy_would_async() -> None:
    upstreams = _upstreams()
    mesh = in_memory_mesh(MESH, upstreams, seed=1)
    ratings, reviews = _pool(upstreams, "ratings"), _pool(upstreams, "reviews")
    async with mesh.async_client() as http:
        for user in USERS:
            r = await http.get("http://ratings:9080/", headers={"end-user": user})
            assert r.extensions["mesh"].endpoint == _expected_ring_pick(ratings, user)
            r = await http.get(f"http://reviews:9080/?page=1&user={user}")
            assert r.extensions["mesh"].endpoint == _expected_maglev_pick(reviews, user)
