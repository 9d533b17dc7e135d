"""Load balancing: pickers, hash keys, outlier detection, and the balancer that ties them."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence

import httpx
import pytest

from meshlib import balancing
from meshlib.balancing import (
    Balancer,
    InFlight,
    LeastRequest,
    Maglev,
    OutlierDetector,
    OutlierPolicy,
    OutlierStatus,
    Picker,
    RandomPicker,
    RingHash,
    RoundRobin,
    hash_key,
    make_picker,
)
from meshlib.config import model as m
from meshlib.discovery import Endpoint


class _Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.0)

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t


def _endpoints(count: int, weights: Sequence[int] | None = None) -> tuple[Endpoint, ...]:
    weights = weights or [1] * count
    return tuple(
        Endpoint(f"10.0.0.{i + 1}", 9080, {"version": f"v{i + 1}"}, weights[i])
        for i in range(count)
    )


def _tally(picks: Sequence[Endpoint | None]) -> Counter[str]:
    """Picks per address (``Endpoint`` is not hashable: its labels are a dict)."""
    return Counter(ep.address if ep is not None else "none" for ep in picks)


def _shares(picker: Picker, endpoints: Sequence[Endpoint], picks: int = 10_000) -> list[float]:
    counts = _tally([picker.pick(endpoints, None) for _ in range(picks)])
    return [counts[ep.address] / picks for ep in endpoints]


def _detector(
    clock: _Clock | None = None, **fields: object
) -> tuple[OutlierDetector, _Clock, tuple[Endpoint, ...]]:
    clock = clock or _Clock()
    settings = m.OutlierDetection.model_validate({"maxEjectionPercent": 100, **fields})
    detector = OutlierDetector(settings, clock)
    pool = _endpoints(4)
    detector.available(pool)
    return detector, clock, pool


def _fail(detector: OutlierDetector, ep: Endpoint, times: int, status: int = 500) -> list[bool]:
    return [detector.record(ep, status) for _ in range(times)]


# --------------------------------------------------------------------------- pickers


def test_round_robin_cycles_in_order() -> None:
    a, b, c = pool = _endpoints(3)
    picker = RoundRobin()
    assert [picker.pick(pool, None) for _ in range(9)] == [a, b, c] * 3


def test_round_robin_weighted_is_smooth_and_exact() -> None:
    a, b, c = pool = _endpoints(3, [5, 1, 1])
    picker = RoundRobin()
    assert [picker.pick(pool, None) for _ in range(7)] == [a, a, b, a, c, a, a]
    counts = _tally([picker.pick(pool, None) for _ in range(7_000)])
    assert counts == {a.address: 5_000, b.address: 1_000, c.address: 1_000}


def test_round_robin_keeps_its_place_when_given_an_equal_list() -> None:
    pool = _endpoints(3)
    picker = RoundRobin()
    first = picker.pick(pool, None)
    second = picker.pick(list(pool), None)  # same endpoints, another list object
    assert (first, second) == (pool[0], pool[1])


def test_random_picker_respects_weights() -> None:
    pool = _endpoints(3, [1, 2, 7])
    shares = _shares(RandomPicker(random.Random(7)), pool)
    assert shares == pytest.approx([0.1, 0.2, 0.7], abs=0.015)


def test_random_picker_uniform() -> None:
    pool = _endpoints(4)
    shares = _shares(RandomPicker(random.Random(3)), pool)
    assert shares == pytest.approx([0.25] * 4, abs=0.015)


def test_least_request_uniform_when_idle() -> None:
    pool = _endpoints(4)
    shares = _shares(LeastRequest(random.Random(11), InFlight()), pool)
    assert shares == pytest.approx([0.25] * 4, abs=0.015)


def test_least_request_prefers_idle_endpoints() -> None:
    _, b, c = pool = _endpoints(3)
    inflight = InFlight()
    inflight.begin(b)
    for _ in range(2):
        inflight.begin(c)
    # Two draws with replacement, fewer in flight wins: a unless both draws miss it (5/9),
    # c only when both draws are c (1/9).
    shares = _shares(LeastRequest(random.Random(5), inflight), pool)
    assert shares == pytest.approx([5 / 9, 3 / 9, 1 / 9], abs=0.015)


def test_least_request_weighted_uses_load_adjusted_weights() -> None:
    a, b = pool = _endpoints(2, [1, 3])
    inflight = InFlight()
    picker = LeastRequest(random.Random(1), inflight)
    counts = _tally([picker.pick(pool, None) for _ in range(4_000)])
    assert counts == {a.address: 1_000, b.address: 3_000}
    for _ in range(5):
        inflight.begin(b)  # b: 3 / (5 + 1) = 0.5 against a: 1 / 1
    counts = _tally([picker.pick(pool, None) for _ in range(3_000)])
    assert counts[a.address] == pytest.approx(2_000, abs=2)
    assert counts[b.address] == pytest.approx(1_000, abs=2)


@pytest.mark.parametrize(
    "make",
    [
        RoundRobin,
        lambda: RoundRobin(random.Random(1)),
        lambda: RandomPicker(random.Random(1)),
        lambda: LeastRequest(random.Random(1), InFlight()),
        lambda: RingHash(random.Random(1)),
        lambda: Maglev(random.Random(1), 65537),
        lambda: Maglev(random.Random(1), 7),
    ],
    ids=[
        "round-robin",
        "round-robin-random-start",
        "random",
        "least-request",
        "ring-hash",
        "maglev",
        "maglev-tiny-table",
    ],
)
@pytest.mark.parametrize("weights", [[1, 1, 1, 1], [1, 2, 3, 4]], ids=["equal", "weighted"])
def test_every_picker_avoids_previous_hosts(make: Callable[[], Picker], weights: list[int]) -> None:
    picker = make()
    pool = _endpoints(4, weights)
    assert picker.pick((), None) is None
    assert picker.pick(pool[:1], None, avoid=pool[:1]) == pool[0]
    for key in range(300):
        chosen = picker.pick(pool, key * 7919, avoid=[pool[0], pool[2]])
        assert chosen in (pool[1], pool[3])
        assert picker.pick(pool, key * 7919, avoid=pool[:3]) == pool[3]
        assert picker.pick(pool, key, avoid=pool) in pool  # all tried: any will do


@pytest.mark.parametrize(
    ("make", "weights"),
    [
        (lambda: RandomPicker(random.Random(4)), [1, 1, 1, 1]),
        (lambda: RandomPicker(random.Random(4)), [1, 2, 3, 4]),
        (lambda: LeastRequest(random.Random(4), InFlight()), [1, 1, 1, 1]),
    ],
    ids=["random", "random-weighted", "least-request"],
)
def test_retry_picks_share_the_untried_endpoints_as_a_first_pick_would(
    make: Callable[[], Picker], weights: list[int]
) -> None:
    picker = make()
    pool = _endpoints(4, weights)
    counts = _tally([picker.pick(pool, None, avoid=[pool[1]]) for _ in range(12_000)])
    assert counts[pool[1].address] == 0
    untried = [i for i in range(4) if i != 1]
    total = sum(weights[i] for i in untried)
    shares = [counts[pool[i].address] / 12_000 for i in untried]
    assert shares == pytest.approx([weights[i] / total for i in untried], abs=0.02)


@pytest.mark.parametrize(
    "make",
    [lambda: RandomPicker(random.Random(5)), lambda: LeastRequest(random.Random(5), InFlight())],
    ids=["random", "least-request"],
)
def test_a_retry_pick_lists_the_untried_only_when_most_were_tried(
    make: Callable[[], Picker], monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[int] = []
    real = balancing._prefer

    def counting(endpoints: Sequence[Endpoint], avoid: Collection[Endpoint]) -> Sequence[Endpoint]:
        listed.append(len(endpoints))
        return real(endpoints, avoid)

    monkeypatch.setattr(balancing, "_prefer", counting)
    picker = make()
    pool = tuple(Endpoint(f"10.0.{i // 250}.{i % 250}", 9080) for i in range(1000))
    for i in range(200):
        assert picker.pick(pool, None, avoid=[pool[i]]) is not pool[i]
    assert listed == []  # drawn from the pool until untried: no scan of 1,000 endpoints
    tried = pool[:-1]
    assert all(picker.pick(pool, None, avoid=tried) is pool[-1] for _ in range(20))
    assert listed  # nearly every draw was tried: the untried are listed


def test_ring_hash_same_key_same_endpoint() -> None:
    pool = _endpoints(5)
    one, other = RingHash(random.Random(1)), RingHash(random.Random(2))
    for i in range(500):
        key = hash_key(m.ConsistentHashLB(http_header_name="x-user"), {"x-user": f"u{i}"}, {}, None)
        chosen = one.pick(pool, key)
        assert chosen == one.pick(pool, key) == other.pick(list(pool), key)


def test_ring_hash_removing_an_endpoint_moves_its_keys_and_few_others() -> None:
    # Envoy sizes the ring by the lightest endpoint's share: five equal endpoints get 205
    # entries each (a ring of 1025), four get 256 (1024). The gone endpoint's keys all move;
    # the entries the others gain take a few keys between them too, as in Envoy.
    pool = _endpoints(5)
    picker = RingHash(random.Random(1))
    keys = [random.Random(i).getrandbits(64) for i in range(4_000)]
    before = {key: picker.pick(pool, key) for key in keys}
    gone = pool[2]
    after = {key: picker.pick(pool[:2] + pool[3:], key) for key in keys}
    assert all(after[key] != gone for key in keys)
    owned = [key for key in keys if before[key] == gone]
    assert len(owned) / len(keys) == pytest.approx(0.2, abs=0.03)
    stayed = [key for key in keys if before[key] != gone]
    moved_between_others = sum(1 for key in stayed if after[key] != before[key])
    assert moved_between_others / len(stayed) < 0.2


def test_ring_hash_weights_are_proportional() -> None:
    pool = _endpoints(3, [1, 2, 3])
    shares = _shares(RingHash(random.Random(9)), pool)  # no key: random point on the ring
    assert shares == pytest.approx([1 / 6, 2 / 6, 3 / 6], abs=0.03)


def test_ring_hash_ring_size() -> None:
    lb = m.LoadBalancerSettings.model_validate(
        {"consistentHash": {"useSourceIp": True, "ringHash": {"minimumRingSize": 64}}}
    )
    picker = make_picker(lb, random.Random(1), InFlight())
    assert isinstance(picker, RingHash)
    assert picker.minimum_ring_size == 64
    pool = _endpoints(4)
    ring = picker.ring(pool)  # Envoy's: minimumRingSize entries in all, 16 each
    assert len(ring) == 64
    assert Counter(ep.address for _, ep in ring) == {ep.address: 16 for ep in pool}


# --------------------------------------------------------------------------- make_picker


@pytest.mark.parametrize(
    ("lb", "kind"),
    [
        (None, LeastRequest),
        ({}, LeastRequest),
        ({"simple": "UNSPECIFIED"}, LeastRequest),
        ({"simple": "LEAST_CONN"}, LeastRequest),
        ({"simple": "LEAST_REQUEST"}, LeastRequest),
        ({"simple": "ROUND_ROBIN"}, RoundRobin),
        ({"simple": "RANDOM"}, RandomPicker),
        ({"simple": "PASSTHROUGH"}, RandomPicker),
        ({"consistentHash": {"httpHeaderName": "x-user"}}, RingHash),
        ({"consistentHash": {"httpHeaderName": "x-user", "maglev": {"tableSize": 7}}}, Maglev),
        ({"consistentHash": {"httpHeaderName": "x-user", "ringHash": {}}}, RingHash),
        ({"localityLbSetting": {"enabled": True}}, LeastRequest),
    ],
)
def test_make_picker(lb: dict[str, object] | None, kind: type) -> None:
    settings = m.LoadBalancerSettings.model_validate(lb) if lb is not None else None
    assert isinstance(make_picker(settings, random.Random(1), InFlight()), kind)


def test_make_picker_ring_sizes() -> None:
    def size(consistent_hash: dict[str, object]) -> int:
        lb = m.LoadBalancerSettings.model_validate({"consistentHash": consistent_hash})
        picker = make_picker(lb, random.Random(1), InFlight())
        assert isinstance(picker, RingHash)
        return picker.minimum_ring_size

    assert size({"useSourceIp": True}) == 1024
    assert size({"useSourceIp": True, "minimumRingSize": 128}) == 128
    assert size({"useSourceIp": True, "ringHash": {"minimumRingSize": 256}}) == 256


# --------------------------------------------------------------------------- hash keys


def _lb(**fields: object) -> m.ConsistentHashLB:
    return m.ConsistentHashLB.model_validate(fields)


def test_hash_key_from_header() -> None:
    lb = _lb(httpHeaderName="X-User")
    key = hash_key(lb, httpx.Headers({"x-user": "jason"}), {}, None)
    assert key is not None
    assert 0 <= key < 1 << 64
    assert hash_key(lb, {"x-user": "jason"}, {}, "10.1.1.1") == key
    assert hash_key(lb, httpx.Headers({"X-USER": "jason"}), {}, None) == key
    assert hash_key(lb, {"x-user": "mary"}, {}, None) not in (None, key)
    assert hash_key(lb, {}, {"x-user": "jason"}, "10.1.1.1") is None


def test_hash_key_from_cookie() -> None:
    lb = _lb(httpCookie={"name": "session", "ttl": "0s"})
    plain = hash_key(lb, {"cookie": "theme=dark; session=abc123; lang=en"}, {}, None)
    assert plain is not None
    assert hash_key(lb, httpx.Headers({"Cookie": 'session="abc123"'}), {}, None) == plain
    assert hash_key(lb, {"cookie": "session=xyz"}, {}, None) not in (None, plain)
    assert hash_key(lb, {"cookie": "other_session=abc123"}, {}, None) is None
    assert hash_key(lb, {}, {}, "10.1.1.1") is None


def test_hash_key_from_query_parameter_and_source_ip() -> None:
    by_param = _lb(httpQueryParameterName="user")
    key = hash_key(by_param, {}, {"user": "jason"}, None)
    assert key is not None
    assert hash_key(by_param, {"user": "jason"}, {}, None) is None
    by_ip = _lb(useSourceIp=True)
    ip_key = hash_key(by_ip, {}, {}, "10.1.2.3")
    assert ip_key is not None
    assert ip_key == hash_key(by_ip, {"x": "y"}, {"a": "b"}, "10.1.2.3")
    assert hash_key(by_ip, {}, {}, None) is None
    assert hash_key(None, {"x-user": "jason"}, {"user": "jason"}, "10.1.2.3") is None


# --------------------------------------------------------------------------- outlier detection


def test_policy_defaults_are_istios() -> None:
    policy = OutlierPolicy.from_settings(m.OutlierDetection())
    assert policy == OutlierPolicy(
        consecutive_5xx=5,
        consecutive_gateway_errors=0,
        consecutive_local_origin_failures=5,
        split_external_local_origin_errors=False,
        interval=10.0,
        base_ejection_time=30.0,
        max_ejection_time=300.0,
        max_ejection_percent=10,
        min_health_percent=0,
    )
    deprecated = OutlierPolicy.from_settings(m.OutlierDetection(consecutive_errors=3))
    assert (deprecated.consecutive_gateway_errors, deprecated.consecutive_5xx) == (3, 0)
    both = OutlierPolicy.from_settings(
        m.OutlierDetection(consecutive_errors=3, consecutive_5xx_errors=7)
    )
    assert (both.consecutive_gateway_errors, both.consecutive_5xx) == (3, 7)
    long = OutlierPolicy.from_settings(
        m.OutlierDetection.model_validate({"baseEjectionTime": "10m"})
    )
    assert long.max_ejection_time == 600.0


def test_five_consecutive_5xx_eject() -> None:
    detector, _, pool = _detector()
    a = pool[0]
    assert _fail(detector, a, 5) == [False, False, False, False, True]
    assert detector.is_ejected(a)
    assert detector.ejections(a) == 1
    assert detector.available(pool) == pool[1:]


def test_success_in_between_resets() -> None:
    detector, _, pool = _detector()
    a = pool[0]
    _fail(detector, a, 4)
    assert not detector.record(a, 200)
    assert not any(_fail(detector, a, 4))
    assert not detector.record(a, 404)  # any non-5xx response is a success here
    assert not any(_fail(detector, a, 4))
    assert not detector.is_ejected(a)
    assert detector.record(a, 503)


def test_zero_consecutive_5xx_disables() -> None:
    detector, _, pool = _detector(consecutive5xxErrors=0)
    assert not any(_fail(detector, pool[0], 100))
    assert not any(detector.record(pool[0], None, local_origin_failure=True) for _ in range(20))
    assert detector.available(pool) is pool


def test_gateway_errors() -> None:
    detector, _, pool = _detector(consecutive5xxErrors=0, consecutiveGatewayErrors=3)
    a, b = pool[0], pool[1]
    assert not any(_fail(detector, a, 10, 500))  # not a gateway error
    for status in (503, 502, 500, 504, 503):  # the 500 resets the gateway counter
        assert not detector.record(a, status)
    assert detector.record(a, 504)
    assert [detector.record(b, s) for s in (502, 503, 504)] == [False, False, True]


def test_deprecated_consecutive_errors_counts_gateway_errors_only() -> None:
    detector, _, pool = _detector(consecutiveErrors=2)
    assert not any(_fail(detector, pool[0], 10, 500))
    assert _fail(detector, pool[0], 2, 503) == [False, True]


def test_local_origin_failures_count_as_5xx_and_gateway_errors() -> None:
    detector, _, pool = _detector()
    a, b = pool[0], pool[1]
    results = [detector.record(a, None, local_origin_failure=True) for _ in range(5)]
    assert results == [False, False, False, False, True]
    gateway, _, pool = _detector(consecutive5xxErrors=0, consecutiveGatewayErrors=2)
    assert not gateway.record(pool[1], None, local_origin_failure=True)
    assert gateway.record(pool[1], 503)
    assert not detector.record(b, None)  # no response and no failure: nothing to count


def test_split_local_origin_failures_count_separately() -> None:
    detector, _, pool = _detector(
        splitExternalLocalOriginErrors=True, consecutiveLocalOriginFailures=3
    )
    a, b = pool[0], pool[1]
    for _ in range(2):
        detector.record(a, None, local_origin_failure=True)
    detector.record(a, 500)  # a response: the connection worked, local counter resets
    assert not detector.record(a, None, local_origin_failure=True)
    assert not detector.record(a, None, local_origin_failure=True)
    assert detector.record(a, None, local_origin_failure=True)
    # local failures leave the 5xx counter alone: 4 × 500 around them do not eject
    _fail(detector, b, 3)
    for _ in range(2):
        detector.record(b, None, local_origin_failure=True)
    assert not detector.record(b, 500)
    assert detector.record(b, 500)


def test_split_uses_default_five_local_origin_failures() -> None:
    detector, _, pool = _detector(splitExternalLocalOriginErrors=True)
    results = [detector.record(pool[0], None, local_origin_failure=True) for _ in range(5)]
    assert results == [False, False, False, False, True]


def test_ejection_time_grows_with_each_ejection_and_endpoint_returns() -> None:
    detector, clock, pool = _detector()
    a = pool[0]
    _fail(detector, a, 5)
    clock.sleep(29.9)
    assert detector.is_ejected(a)
    clock.sleep(0.1)
    assert not detector.is_ejected(a)
    assert detector.available(pool) is pool
    assert detector.record(a, 503) is False  # counters were reset on return
    _fail(detector, a, 4)
    assert detector.ejections(a) == 2
    clock.sleep(59.9)
    assert a not in detector.available(pool)
    clock.sleep(0.1)
    assert a in detector.available(pool)


def test_ejection_multiplier_decays_while_healthy() -> None:
    detector, clock, pool = _detector()
    a = pool[0]
    _fail(detector, a, 5)
    clock.sleep(30)
    assert not detector.is_ejected(a)
    clock.sleep(20)  # two healthy intervals: the multiplier goes back from 1 to 0
    _fail(detector, a, 5)
    clock.sleep(30)
    assert not detector.is_ejected(a)


def test_ejection_time_is_capped() -> None:
    detector, clock, pool = _detector()
    a = pool[0]
    for _ in range(15):
        _fail(detector, a, 5)
        assert detector.is_ejected(a)
        status = next(s for s in detector.snapshot() if s.address == a.address)
        assert status.ejected_for <= 300.0
        clock.sleep(status.ejected_for)
    assert status.ejected_for == 300.0
    assert detector.ejections(a) == 15


def test_max_ejection_percent_is_strict_by_default() -> None:
    clock = _Clock()
    pool = _endpoints(3)
    detector = OutlierDetector(m.OutlierDetection(), clock)  # maxEjectionPercent 10
    detector.available(pool)
    assert not any(_fail(detector, pool[0], 20))
    assert detector.available(pool) is pool


def test_always_eject_one_host() -> None:
    clock = _Clock()
    pool = _endpoints(3)
    detector = OutlierDetector(m.OutlierDetection(), clock, always_eject_one_host=True)
    detector.available(pool)
    assert _fail(detector, pool[0], 5)[-1]
    assert not any(_fail(detector, pool[1], 20))
    assert detector.available(pool) == pool[1:]


def test_max_ejection_percent_half_of_four() -> None:
    detector, _, pool = _detector(maxEjectionPercent=50)
    ejected = [any(_fail(detector, ep, 5)) for ep in pool]
    assert ejected == [True, True, False, False]
    assert detector.available(pool) == pool[2:]


def test_zero_max_ejection_percent_means_ten() -> None:
    clock = _Clock()
    pool = _endpoints(10)
    detector = OutlierDetector(m.OutlierDetection(max_ejection_percent=0), clock)
    detector.available(pool)
    assert [any(_fail(detector, ep, 5)) for ep in pool[:3]] == [True, False, False]


def test_min_health_percent_panic_mode() -> None:
    detector, _, pool = _detector(minHealthPercent=50)
    for ep in pool[:2]:
        _fail(detector, ep, 5)
    assert detector.available(pool) == pool[2:]  # 50% healthy: not below the threshold
    _fail(detector, pool[2], 5)
    assert detector.available(pool) is pool  # 25% healthy: panic, use everything


def test_everything_ejected_without_panic_leaves_nothing() -> None:
    detector, _, pool = _detector()
    for ep in pool:
        _fail(detector, ep, 5)
    assert detector.available(pool) == ()


def test_http_error_codes_decide_what_fails() -> None:
    detector, _, pool = _detector(outlierDetectionHttpErrorCodes=[404])
    assert not any(_fail(detector, pool[0], 10, 503))
    assert _fail(detector, pool[0], 5, 404)[-1]


def test_listeners_and_snapshot() -> None:
    events: list[tuple[str, str, int]] = []
    clock = _Clock()
    detector = OutlierDetector(
        m.OutlierDetection(max_ejection_percent=100),
        clock,
        on_eject=lambda ep, count: events.append(("eject", ep.address, count)),
        on_return=lambda ep: events.append(("return", ep.address, 0)),
    )
    pool = _endpoints(2)
    detector.available(pool)
    _fail(detector, pool[0], 5)
    detector.record(pool[1], 502)
    assert detector.snapshot() == (
        OutlierStatus("10.0.0.1:9080", True, 1, 30.0, 0, 0, 0),
        OutlierStatus("10.0.0.2:9080", False, 0, 0.0, 1, 1, 0),
    )
    clock.sleep(30)
    assert detector.available(pool) is pool
    _fail(detector, pool[0], 5)
    assert events == [
        ("eject", "10.0.0.1:9080", 1),
        ("return", "10.0.0.1:9080", 0),
        ("eject", "10.0.0.1:9080", 2),
    ]


def test_prune_forgets_departed_endpoints() -> None:
    clock = _Clock()
    pool = _endpoints(4)
    detector = OutlierDetector(m.OutlierDetection(max_ejection_percent=25), clock)
    detector.available(pool)
    _fail(detector, pool[0], 5)
    assert not any(_fail(detector, pool[1], 5))  # 2 of 4 would exceed 25%
    detector.prune(pool[1:])
    assert detector.ejections(pool[0]) == 0
    assert not detector.is_ejected(pool[0])
    assert [s.address for s in detector.snapshot()] == [ep.address for ep in pool[1:]]
    detector.available(pool[1:] + _endpoints(5)[4:])
    assert _fail(detector, pool[1], 5)[-1]  # the pruned ejection no longer counts


def test_available_is_worked_out_once_per_change_of_the_ejected_set() -> None:
    detector, clock, pool = _detector(consecutive5xxErrors=1, baseEjectionTime="10s")
    assert detector.available(pool) is pool
    assert detector.record(pool[0], 500)
    first = detector.available(pool)
    assert list(first) == list(pool[1:])
    assert detector.available(pool) is first  # the same tuple, not a new filter of the pool
    assert detector.record(pool[1], 500)
    second = detector.available(pool)
    assert list(second) == list(pool[2:])
    assert detector.available(pool) is second
    other = pool[:3]
    assert list(detector.available(other)) == [pool[2]]  # another list: filtered anew
    clock.sleep(10)  # both come back
    assert detector.available(pool) is pool
    assert detector.record(pool[2], 500)
    assert list(detector.available(pool)) == [pool[0], pool[1], pool[3]]
    detector.prune(pool[:2] + pool[3:])  # the ejected one leaves the registry
    assert detector.available(pool[:2] + pool[3:]) == pool[:2] + pool[3:]


def test_available_does_not_scan_the_pool_on_every_pick() -> None:
    class Counted(tuple[Endpoint, ...]):
        scans = 0

        def __iter__(self) -> Iterator[Endpoint]:
            Counted.scans += 1
            return super().__iter__()

    detector, _, pool = _detector(consecutive5xxErrors=1)
    counted = Counted(pool)
    detector.available(counted)
    assert detector.record(counted[0], 500)
    detector.available(counted)
    scans = Counted.scans
    for _ in range(100):
        assert counted[0] not in detector.available(counted)
    assert Counted.scans == scans


# --------------------------------------------------------------------------- the balancer


def test_balancer_skips_ejected_endpoints() -> None:
    clock = _Clock()
    policy = m.TrafficPolicy.model_validate(
        {
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "outlierDetection": {"consecutive5xxErrors": 2, "maxEjectionPercent": 50},
        }
    )
    balancer = Balancer.from_policy(policy, random.Random(1), clock)
    assert isinstance(balancer.picker, RoundRobin)
    a, b = pool = _endpoints(2)
    assert balancer.choose(pool) in pool  # the detector now knows the pool has 2 endpoints
    assert not balancer.report(a, 500)
    assert balancer.report(a, 500)
    assert _tally([balancer.choose(pool) for _ in range(10)]) == {b.address: 10}
    assert balancer.choose(pool, avoid=[b]) == b
    clock.sleep(30)
    assert _tally([balancer.choose(pool) for _ in range(10)]) == {a.address: 5, b.address: 5}


def test_balancer_without_outlier_detection() -> None:
    balancer = Balancer.from_policy(None, random.Random(1), _Clock())
    assert isinstance(balancer.picker, LeastRequest)
    assert balancer.detector is None
    pool = _endpoints(3)
    assert not balancer.report(pool[0], 500)
    assert balancer.choose(pool) in pool
    assert balancer.choose(()) is None
    plain = Balancer(RoundRobin())
    assert plain.choose(pool) == pool[0]
    assert plain.inflight.snapshot() == {}


# --------------------------------------------------------------------------- concurrency


def test_inflight_counts() -> None:
    inflight = InFlight()
    a, b = _endpoints(2)
    inflight.begin(a)
    inflight.begin(a)
    inflight.begin(b)
    assert (inflight.count(a), inflight.count(b)) == (2, 1)
    inflight.end(a)
    inflight.end(b)
    inflight.end(b)  # an extra end does not go below zero
    assert inflight.snapshot() == {"10.0.0.1:9080": 1}


def test_concurrent_begin_end_and_picks() -> None:
    pool = _endpoints(4, [1, 2, 1, 3])
    equal = _endpoints(4)
    inflight = InFlight()
    clock = _Clock()
    pickers: list[Picker] = [
        RoundRobin(),
        RandomPicker(random.Random(1)),
        LeastRequest(random.Random(2), inflight),
        RingHash(random.Random(3), minimum_ring_size=64),
        Maglev(random.Random(4), 251),
    ]
    detector = OutlierDetector(m.OutlierDetection(max_ejection_percent=50), clock)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(5_000):
                ep = pool[(n + i) % 4]
                inflight.begin(ep)
                if i % 5 == 0:
                    picker = pickers[i % len(pickers)]
                    chosen = picker.pick(pool if n % 2 else equal, i, avoid=pool[:1])
                    assert chosen is not None
                    detector.record(ep, 500 if i % 3 else 200)
                    detector.available(pool)
                inflight.end(ep)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(inflight.count(ep) == 0 for ep in pool)
    assert inflight.snapshot() == {}
