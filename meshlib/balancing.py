"""Load balancing: which endpoint an attempt goes to, and which endpoints sit out for a while.

One ``Balancer`` serves one destination (host and subset). For every attempt it takes the
registry's endpoints, drops those the ``OutlierDetector`` has ejected, and lets a ``Picker``
choose among the rest; the attempt's outcome goes back to the detector through ``report``.

Pickers, as Envoy's load balancers behave (DestinationRule ``trafficPolicy.loadBalancer``):

* ``LeastRequest`` is the default (``loadBalancer`` unset, ``UNSPECIFIED``, ``LEAST_REQUEST`` and
  the deprecated ``LEAST_CONN``). With equal weights it is Envoy's power of two choices: draw two
  endpoints at random (with replacement, as Envoy does) and keep the one with fewer requests in
  flight; on a tie the first draw stays. With unequal weights Envoy switches to a weighted
  schedule whose weights are recomputed at pick time as
  ``weight / (active_requests + 1) ** active_request_bias`` (bias 1.0). meshlib runs that
  schedule as a smooth weighted round robin over the recomputed weights of every endpoint,
  where Envoy's EDF scheduler refreshes only the weight of the host it just picked.
* ``RoundRobin`` (``ROUND_ROBIN``): a rotation when all weights are equal, else a smooth weighted
  round robin (the nginx schedule: ``5, 1, 1`` gives ``a a b a c a a``). Envoy uses an EDF
  schedule, which gives the same shares in a less even order.
* ``RandomPicker`` (``RANDOM``): uniform, or weighted when the weights differ. ``PASSTHROUGH``
  maps to it too: in Envoy it sends the connection to the original destination address, but an
  in-process client names a service rather than an address, so there is no original destination
  to keep; a random pick among the known endpoints is the closest meaning.
* ``RingHash`` (``consistentHash``, and ``ringHash``) is Envoy's ``RING_HASH`` entry for entry,
  and ``Maglev`` (``consistentHash.maglev``) Envoy's ``MAGLEV`` table slot for slot, so a key
  goes to the same endpoint from meshlib, from an Envoy sidecar and from a proxyless gRPC
  client. An endpoint is hashed as Envoy prints its address (``ip:port``, ``[ip6]:port``) with
  xxHash64. The ring has about ``minimumRingSize`` entries in all (Istio's default 1024): the
  lightest endpoint gets a whole number of them and the others their share of weight, each
  entry ``xxHash64("<address>_<i>")``; a key goes to the first entry at or after it, wrapping
  around. The request's key is Envoy's hash policy (``hash_key``). Without a key the pick is
  random, as in Envoy.

Every picker honours ``avoid``, the endpoints earlier attempts of the same request already
tried (Envoy's ``previous_hosts`` retry predicate): it picks among the others while any remain.
The ring hash walks on along the ring to the next endpoint not tried, as Envoy does under such
a predicate; Maglev moves the key as Envoy does (``key ^ (2**64 - attempt)``).

Outlier detection (DestinationRule ``outlierDetection``, only when configured), Istio's way:

* ``consecutive5xxErrors`` (default 5; 0 disables) counts responses 500–599;
  ``consecutiveGatewayErrors`` (off unless set) counts 502, 503 and 504. Any other response
  resets both counters, and a 5xx that is not a gateway error resets the gateway counter. The
  deprecated ``consecutiveErrors`` becomes a gateway-error threshold and turns the 5xx counter
  off unless ``consecutive5xxErrors`` is also given (Istio's old translation).
* Local-origin failures (connect failure, reset, timeout) count as a 503 in both counters unless
  ``splitExternalLocalOriginErrors`` is true; then they count only against
  ``consecutiveLocalOriginFailures`` (default 5), which any response from the endpoint resets.
* ``outlierDetectionHttpErrorCodes``, when given, decides which statuses are errors: a listed
  status counts as a 500, any other as a success (Envoy's outlier ``error_matcher``).
* An ejection lasts ``baseEjectionTime`` (30s) × the endpoint's ejection multiplier, capped at
  ``max(300s, baseEjectionTime)``. The multiplier grows by one with each ejection and, as in
  Envoy, shrinks by one for every ``interval`` (10s) the endpoint has stayed healthy since it came
  back. Envoy returns hosts at its interval ticks; meshlib checks the clock lazily whenever it is
  asked, so an endpoint returns exactly when its time is up. ``interval`` only paces that decay.
* ``maxEjectionPercent`` (default 10; 0 also means 10, as in Istio): an ejection happens only if
  ``(active ejections + 1) / known endpoints`` stays within it. Envoy before 1.27 always let the
  first ejection through; since envoyproxy/envoy#27909 (2023) the limit is strict unless
  ``always_eject_one_host`` is set, which Istio does not set. meshlib follows current Envoy
  (with the default 10%, a pool of fewer than ten endpoints never ejects) and offers
  ``always_eject_one_host=True`` for the older behaviour.
* ``minHealthPercent`` (default 0): when the share of endpoints not ejected falls below it, all
  endpoints are used (Envoy's panic mode); at 0 panic mode is off and a pool with every endpoint
  ejected has no endpoint to offer.

State (in-flight counts, outlier records) is keyed by host and port: an endpoint that leaves the
registry and comes back at the same address is the same endpoint, and ``prune`` forgets those
that left. Success-rate and failure-percentage ejection are not implemented (Istio turns
success-rate ejection off), nor is ``warmup`` (slow start).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import random
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, islice
from typing import Protocol

from xxhash import xxh64_intdigest as _xxh64

from meshlib.clock import Clock
from meshlib.config import model as m
from meshlib.discovery import Endpoint

DEFAULT_MINIMUM_RING_SIZE = 1024
"""Istio's and Envoy's default ``minimumRingSize``."""

DEFAULT_MAXIMUM_RING_SIZE = 8 * 1024 * 1024
"""Envoy's default ``maximum_ring_size`` (Istio does not set it)."""

DEFAULT_MAGLEV_TABLE_SIZE = 65537
"""Envoy's default Maglev ``table_size`` (a prime)."""

MAGLEV_TABLES_KEPT = 4
"""Maglev tables kept for endpoint lists seen lately (one of 65537 slots: about 0.5 MiB)."""

MAGLEV_RETRY_PROBES = 5
"""Slots a retry's Maglev pick tries (Envoy's key mutation per attempt) before it takes an
untried endpoint by the key modulo their count."""

LEAST_REQUEST_CHOICES = 2
"""Envoy's default ``choice_count``: the power of two choices."""

ACTIVE_REQUEST_BIAS = 1.0
"""Envoy's default ``active_request_bias`` for least request with unequal weights."""

GATEWAY_ERRORS = frozenset({502, 503, 504})

_MASK64 = (1 << 64) - 1
_NO_RETURN = math.inf

EjectListener = Callable[[Endpoint, int], None]
"""Called with the endpoint and how many times it has now been ejected."""

ReturnListener = Callable[[Endpoint], None]
"""Called with an endpoint whose ejection time is over."""


def _same(a: Sequence[Endpoint], b: Sequence[Endpoint]) -> bool:
    """Whether two endpoint lists hold the same endpoints in the same order."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is not y and x != y:
            return False
    return True


def _prefer(endpoints: Sequence[Endpoint], avoid: Collection[Endpoint]) -> Sequence[Endpoint]:
    """The endpoints not in ``avoid``; all of them when every one was already tried."""
    fresh = [ep for ep in endpoints if ep not in avoid]
    return fresh if fresh else endpoints


REJECTION_DRAWS = 4
"""Draws a retry's pick makes from the whole pool, each kept unless already tried, before it
lists the untried endpoints. A draw from the pool that is kept when untried is a draw from the
untried endpoints, with the same shares, so a retry costs no scan of the pool unless most of it
was tried."""


# --------------------------------------------------------------------------- in-flight requests


class InFlight:
    """Requests in flight per endpoint (by address). Thread-safe; ``count`` takes no lock."""

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def begin(self, endpoint: Endpoint) -> None:
        """An attempt to ``endpoint`` starts."""
        key = (endpoint.host, endpoint.port)
        with self._lock:
            counts = self._counts
            counts[key] = counts.get(key, 0) + 1

    def end(self, endpoint: Endpoint) -> None:
        """An attempt to ``endpoint`` is over (whatever its outcome)."""
        key = (endpoint.host, endpoint.port)
        with self._lock:
            counts = self._counts
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)

    def count(self, endpoint: Endpoint) -> int:
        """Attempts to ``endpoint`` in flight now."""
        return self._counts.get((endpoint.host, endpoint.port), 0)

    def snapshot(self) -> dict[str, int]:
        """Address (``host:port``) → attempts in flight, for endpoints with any."""
        with self._lock:
            counts = list(self._counts.items())
        return {f"{host}:{port}": n for (host, port), n in counts}


# --------------------------------------------------------------------------- pickers


class Picker(Protocol):
    """Chooses the endpoint for one attempt."""

    def pick(
        self,
        endpoints: Sequence[Endpoint],
        hash_key: int | None,
        avoid: Collection[Endpoint] = (),
    ) -> Endpoint | None:
        """One of ``endpoints``, preferring those not in ``avoid``; None only when empty."""
        ...


@dataclass(frozen=True, slots=True)
class _WeightTable:
    """Weights of one endpoint list, kept while the list stays the same."""

    endpoints: tuple[Endpoint, ...]
    weights: tuple[int, ...]
    cumulative: tuple[int, ...]
    uniform: bool

    @classmethod
    def of(cls, endpoints: Sequence[Endpoint]) -> _WeightTable:
        members = tuple(endpoints)
        weights = tuple(ep.weight if ep.weight > 1 else 1 for ep in members)
        return cls(members, weights, tuple(accumulate(weights)), len(set(weights)) <= 1)


def _table_for(cached: _WeightTable | None, endpoints: Sequence[Endpoint]) -> _WeightTable:
    if cached is not None and _same(cached.endpoints, endpoints):
        return cached
    return _WeightTable.of(endpoints)


def _smooth_next(
    current: list[float],
    weights: Sequence[float],
    endpoints: Sequence[Endpoint],
    avoid: Collection[Endpoint],
) -> int:
    """One step of smooth weighted round robin: the index of the endpoint to use."""
    best = -1
    best_value = -math.inf
    fallback = 0
    fallback_value = -math.inf
    total = 0.0
    for i, weight in enumerate(weights):
        value = current[i] + weight
        current[i] = value
        total += weight
        if value > fallback_value:
            fallback, fallback_value = i, value
        if value > best_value and (not avoid or endpoints[i] not in avoid):
            best, best_value = i, value
    if best < 0:
        best = fallback
    current[best] -= total
    return best


class RoundRobin:
    """Round robin; smooth weighted round robin when the weights differ."""

    __slots__ = ("_current", "_lock", "_next", "_table")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        # Envoy starts each rotation at a random place, so that clients do not move in step.
        self._next = rng.getrandbits(32) if rng is not None else 0
        self._table: _WeightTable | None = None
        self._current: list[float] = []

    def pick(
        self,
        endpoints: Sequence[Endpoint],
        hash_key: int | None,
        avoid: Collection[Endpoint] = (),
    ) -> Endpoint | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        with self._lock:
            table = self._table
            if table is None or not _same(table.endpoints, endpoints):
                table = self._table = _WeightTable.of(endpoints)
                self._current = [0.0] * n
            if not table.uniform:
                return endpoints[_smooth_next(self._current, table.weights, endpoints, avoid)]
            start = self._next
            self._next = start + 1
        chosen = endpoints[start % n]
        if avoid and chosen in avoid:
            for step in range(1, n):
                other = endpoints[(start + step) % n]
                if other not in avoid:
                    return other
        return chosen


class RandomPicker:
    """Uniform random choice; weighted when the weights differ. Also serves ``PASSTHROUGH``."""

    __slots__ = ("_rng", "_table")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._table: _WeightTable | None = None

    def pick(
        self,
        endpoints: Sequence[Endpoint],
        hash_key: int | None,
        avoid: Collection[Endpoint] = (),
    ) -> Endpoint | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        table = self._table = _table_for(self._table, endpoints)
        if not avoid:
            return self._draw(table)
        for _ in range(REJECTION_DRAWS):
            chosen = self._draw(table)
            if chosen not in avoid:
                return chosen
        candidates = _prefer(endpoints, avoid)
        if len(candidates) == 1:
            return candidates[0]
        return self._draw(_WeightTable.of(candidates))

    def _draw(self, table: _WeightTable) -> Endpoint:
        members = table.endpoints
        # int(random() * n) < n for every n up to 2**53: the product rounds down, never to n.
        if table.uniform:
            return members[int(self._rng.random() * len(members))]
        cumulative = table.cumulative
        point = int(self._rng.random() * cumulative[-1])
        return members[bisect.bisect_right(cumulative, point)]


class LeastRequest:
    """Envoy's least request: power of two choices, or load-adjusted weights when they differ."""

    __slots__ = ("_bias", "_choices", "_current", "_inflight", "_lock", "_rng", "_state", "_table")

    def __init__(
        self,
        rng: random.Random,
        inflight: InFlight,
        choice_count: int = LEAST_REQUEST_CHOICES,
        active_request_bias: float = ACTIVE_REQUEST_BIAS,
    ) -> None:
        if choice_count < 1:
            raise ValueError("choice_count must be at least 1")
        if active_request_bias < 0:
            raise ValueError("active_request_bias must be >= 0")
        self._rng = rng
        self._inflight = inflight
        self._choices = choice_count
        self._bias = active_request_bias
        self._lock = threading.Lock()
        self._table: _WeightTable | None = None
        self._state: _WeightTable | None = None
        self._current: list[float] = []

    def pick(
        self,
        endpoints: Sequence[Endpoint],
        hash_key: int | None,
        avoid: Collection[Endpoint] = (),
    ) -> Endpoint | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        table = self._table = _table_for(self._table, endpoints)
        count = self._inflight.count
        if table.uniform:
            if avoid:
                drawn = self._draws_avoiding(endpoints, avoid)
                if drawn is not None:
                    return drawn
                candidates = _prefer(endpoints, avoid)
            else:
                candidates = endpoints
            size = len(candidates)
            draw = self._rng.random
            best = candidates[int(draw() * size)]
            if size == 1:
                return best
            best_active = count(best)
            for _ in range(self._choices - 1):
                other = candidates[int(draw() * size)]
                active = count(other)
                if active < best_active:
                    best, best_active = other, active
            return best
        bias = self._bias
        members = table.endpoints
        if bias == 1.0:
            weights = [w / (count(ep) + 1) for w, ep in zip(table.weights, members, strict=True)]
        elif bias == 0.0:
            weights = [float(w) for w in table.weights]
        else:
            weights = [
                w / (count(ep) + 1) ** bias for w, ep in zip(table.weights, members, strict=True)
            ]
        with self._lock:
            if self._state is not table:
                self._state = table
                self._current = [0.0] * n
            return members[_smooth_next(self._current, weights, members, avoid)]

    def _draws_avoiding(
        self, endpoints: Sequence[Endpoint], avoid: Collection[Endpoint]
    ) -> Endpoint | None:
        """Power of two choices among the endpoints not in ``avoid``, each choice drawn from
        the whole pool until untried (``REJECTION_DRAWS`` at most); None when a choice found no
        untried endpoint that way (the caller then lists them)."""
        draw = self._rng.random
        count = self._inflight.count
        size = len(endpoints)
        best: Endpoint | None = None
        best_active = 0
        for _ in range(self._choices):
            for _ in range(REJECTION_DRAWS):
                other = endpoints[int(draw() * size)]
                if other not in avoid:
                    break
            else:
                return None
            active = count(other)
            if best is None or active < best_active:
                best, best_active = other, active
        return best


def host_hash_key(endpoint: Endpoint) -> str:
    """The string Envoy hashes for an endpoint: its address as ``Address::asString`` prints it.

    ``ip:port`` for IPv4 and ``[ip]:port`` for IPv6 (in ``inet_ntop``'s canonical form: lower
    case, the longest zero run compressed). A host name (meshlib's registry may hold one where
    Envoy would hold the address it resolved) is used as written."""
    host = endpoint.host
    if ":" in host:
        # a scoped address ("fe80::1%eth0") or not an address at all stays as written
        with contextlib.suppress(OSError, ValueError):
            host = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
        return f"[{host}]:{endpoint.port}"
    return f"{host}:{endpoint.port}"


def _weights(endpoints: Sequence[Endpoint]) -> list[float]:
    """Envoy's normalised host weights: ``weight / sum(weights)`` in double precision."""
    raw = [ep.weight if ep.weight > 1 else 1 for ep in endpoints]
    total = sum(raw)
    return [w * 1.0 / total for w in raw]


def ring_layout(
    endpoints: Sequence[Endpoint],
    minimum_ring_size: int = DEFAULT_MINIMUM_RING_SIZE,
    maximum_ring_size: int = DEFAULT_MAXIMUM_RING_SIZE,
) -> tuple[float, list[int]]:
    """Envoy's ring sizing: the scale and how many ring entries each endpoint gets.

    ``scale = min(ceil(w_min * minimum) / w_min, maximum)`` over the normalised weights, so the
    lightest endpoint gets a whole number of entries; then each endpoint in turn gets entries
    while a running count stays under the running target ``scale * (w_1 + ... + w_i)``. The
    arithmetic is IEEE double, as in Envoy, so the counts (and with them every entry) match."""
    weights = _weights(endpoints)
    lightest = min(1.0, *weights)
    scale = min(math.ceil(lightest * minimum_ring_size) / lightest, float(maximum_ring_size))
    counts: list[int] = []
    current = 0.0
    target = 0.0
    for weight in weights:
        target += scale * weight
        count = 0
        while current < target:
            count += 1
            current += 1.0
        counts.append(count)
    return scale, counts


@dataclass(frozen=True, slots=True)
class _Ring:
    """The ring: sorted entries, each one int ``hash << shift | i`` for its owner
    ``endpoints[i]``. Sorted, they order as the pairs (hash, i) would, and the ring is built
    without a tuple per entry or a second pass to split them (it is rebuilt on the request path
    whenever the endpoints change)."""

    endpoints: tuple[Endpoint, ...]
    entries: tuple[int, ...]
    shift: int

    def owner(self, position: int) -> Endpoint:
        return self.endpoints[self.entries[position] & ((1 << self.shift) - 1)]


class RingHash:
    """Envoy's ``RING_HASH`` ("ketama"): the same ring, entry for entry, as an Envoy sidecar's.

    Each endpoint ``e`` puts entries ``xxHash64("<address of e>_<i>")`` (seed 0) for ``i = 0, 1,
    ...`` on a ring of 64-bit hashes, as many as ``ring_layout`` gives it; a request goes to the
    first entry at or after its key, wrapping around to the first entry."""

    __slots__ = ("_lock", "_maximum_ring_size", "_minimum_ring_size", "_points", "_ring", "_rng")

    def __init__(
        self,
        rng: random.Random,
        minimum_ring_size: int = DEFAULT_MINIMUM_RING_SIZE,
        maximum_ring_size: int = DEFAULT_MAXIMUM_RING_SIZE,
    ) -> None:
        if minimum_ring_size < 1:
            raise ValueError("minimum_ring_size must be at least 1")
        if minimum_ring_size > maximum_ring_size:
            raise ValueError(
                f"ring hash: minimum_ring_size ({minimum_ring_size}) > "
                f"maximum_ring_size ({maximum_ring_size})"
            )
        self._rng = rng
        self._minimum_ring_size = minimum_ring_size
        self._maximum_ring_size = maximum_ring_size
        self._lock = threading.Lock()
        self._ring: _Ring | None = None
        self._points: dict[str, tuple[int, ...]] = {}

    @property
    def minimum_ring_size(self) -> int:
        return self._minimum_ring_size

    @property
    def maximum_ring_size(self) -> int:
        return self._maximum_ring_size

    def ring(self, endpoints: Sequence[Endpoint]) -> list[tuple[int, Endpoint]]:
        """The ring for ``endpoints`` as sorted (hash, endpoint) pairs, for inspection."""
        if not endpoints:
            return []
        ring = self._ring_for(endpoints)
        mask = (1 << ring.shift) - 1
        return [(e >> ring.shift, ring.endpoints[e & mask]) for e in ring.entries]

    def pick(
        self,
        endpoints: Sequence[Endpoint],
        hash_key: int | None,
        avoid: Collection[Endpoint] = (),
    ) -> Endpoint | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        ring = self._ring_for(endpoints)
        entries = ring.entries
        if not entries:  # a maximum ring size below the endpoint count can leave it empty
            return None
        key = hash_key & _MASK64 if hash_key is not None else self._rng.getrandbits(64)
        # the first entry whose hash is >= key: (key << shift) sorts before (key << shift | i)
        index = bisect.bisect_left(entries, key << ring.shift)
        if index == len(entries):
            index = 0
        owner = ring.owner(index)
        if avoid and owner in avoid:
            return self._walk(ring, index, avoid)
        return owner

    @staticmethod
    def _walk(ring: _Ring, start: int, avoid: Collection[Endpoint]) -> Endpoint:
        """The first endpoint after ``start`` on the ring that was not tried yet (Envoy's walk
        to the next entry when a retry host predicate rejects a host)."""
        fresh = False
        for ep in ring.endpoints:
            if ep not in avoid:
                fresh = True
                break
        if fresh:
            size = len(ring.entries)
            for step in range(1, size):
                owner = ring.owner((start + step) % size)
                if owner not in avoid:
                    return owner
        return ring.owner(start)

    def _ring_for(self, endpoints: Sequence[Endpoint]) -> _Ring:
        ring = self._ring
        if ring is None or not _same(ring.endpoints, endpoints):
            ring = self._build(endpoints)
        return ring

    def _build(self, endpoints: Sequence[Endpoint]) -> _Ring:
        with self._lock:
            ring = self._ring
            if ring is not None and _same(ring.endpoints, endpoints):
                return ring
            members = tuple(endpoints)
            _, counts = ring_layout(members, self._minimum_ring_size, self._maximum_ring_size)
            shift = len(members).bit_length()
            keys = [host_hash_key(ep) for ep in members]
            entries: list[int] = []
            for index, (key, count) in enumerate(zip(keys, counts, strict=True)):
                points = self._points_of(key, count)
                entries += [point << shift | index for point in islice(points, count)]
            entries.sort()
            ring = _Ring(members, tuple(entries), shift)
            self._ring = ring
            if len(self._points) > 2 * len(members) + 16:
                present = set(keys)
                self._points = {k: v for k, v in self._points.items() if k in present}
            return ring

    def _points_of(self, key: str, count: int) -> tuple[int, ...]:
        """The first ``count`` ring hashes of ``key`` (a longer list shares the prefix, so an
        endpoint that keeps its entries when the others change is not hashed again)."""
        known = self._points.get(key, ())
        if len(known) < count:
            prefix = f"{key}_"
            known += tuple(_xxh64(f"{prefix}{i}".encode()) for i in range(len(known), count))
            self._points[key] = known
        return known


def is_prime(x: int) -> bool:
    """Envoy's primality test for a Maglev table size (so 1 counts as prime, as in Envoy)."""
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    factor = 3
    while factor * factor <= x:
        if x % factor == 0:
            return False
        factor += 2
    return True


def _check_table_size(table_size: int) -> None:
    """Envoy's constructor refuses a table size that is not prime: with another size a
    permutation may never reach a free slot (the table would never be complete)."""
    if not isinstance(table_size, int) or table_size < 1 or not is_prime(table_size):
        raise ValueError(
            f"the Maglev table size must be a prime number (e.g. 65537), not {table_size!r}"
        )


def maglev_table(endpoints: Sequence[Endpoint], table_size: int) -> list[int]:
    """Envoy's Maglev lookup table: for each of ``table_size`` slots, the index in ``endpoints``
    of the endpoint that owns it.

    The endpoints are taken in the order of their hash keys (addresses); each has the
    permutation ``(offset + skip * j) % table_size`` with ``offset = xxHash64(key) % size`` and
    ``skip = xxHash64(key, seed=1) % (size - 1) + 1``. Round after round, every endpoint whose
    weight allows it this round (one slot per round at the largest normalised weight, fewer in
    proportion below it) takes the next free slot of its permutation, until all are taken."""
    _check_table_size(table_size)
    size = table_size
    order = sorted(range(len(endpoints)), key=lambda i: host_hash_key(endpoints[i]))
    weights = _weights(endpoints)
    heaviest = max(0.0, *weights) if weights else 0.0
    owners = [-1] * size
    if not endpoints:
        return owners
    slots: list[int] = []
    skips: list[int] = []
    for i in order:
        key = host_hash_key(endpoints[i]).encode()
        slots.append(_xxh64(key) % size)
        # Envoy divides by size - 1, which a table of size 1 would make zero.
        skips.append(_xxh64(key, 1) % (size - 1) + 1 if size > 1 else 1)
    entry_weights = [weights[i] for i in order]
    targets = [0.0] * len(order)
    filled = 0
    iteration = 1
    while filled < size:
        for j, index in enumerate(order):
            if filled >= size:
                break
            if iteration * entry_weights[j] < targets[j]:
                continue
            targets[j] += heaviest
            slot, skip = slots[j], skips[j]
            while owners[slot] >= 0:
                slot += skip
                if slot >= size:
                    slot -= size
            owners[slot] = index
            # the next probe of this endpoint starts one step further along its permutation
            slot += skip
            slots[j] = slot - size if slot >= size else slot
            filled += 1
        iteration += 1
    return owners


@dataclass(frozen=True, slots=True)
class _MaglevTable:
    """A Maglev table for one endpoint list: slot ``s`` belongs to ``members[owners[s]]``
    (``members`` in hash-key order, so a kept ``owners`` serves the same endpoints in any
    order without a pass over the slots)."""

    endpoints: tuple[Endpoint, ...]
    members: tuple[Endpoint, ...]
    owners: tuple[int, ...]


class Maglev:
    """Envoy's ``MAGLEV``: the same lookup table, slot for slot, as an Envoy sidecar's; a
    request goes to slot ``key % table_size``.

    A table costs about a second of CPU per million slots to build (65537 by default), once per
    endpoint list; the last ``MAGLEV_TABLES_KEPT`` tables are kept by the endpoints' addresses
    and weights, so an endpoint ejected and back again, or a list that comes back in another
    order, reuses its table."""

    __slots__ = ("_lock", "_recent", "_rng", "_table", "_table_size")

    def __init__(self, rng: random.Random, table_size: int = DEFAULT_MAGLEV_TABLE_SIZE) -> None:
        _check_table_size(table_size)
        self._rng = rng
        self._table_size = table_size
        self._lock = threading.Lock()
        self._table: _MaglevTable | None = None
        self._recent: dict[tuple[tuple[str, int], ...], tuple[int, ...]] = {}

    @property
    def table_size(self) -> int:
        return self._table_size

    def table(self, endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
        """The owner of every slot, for inspection."""
        if not endpoints:
            return ()
        table = self._table_for(endpoints)
        members = table.members
        return tuple([members[i] for i in table.owners])

    def pick(
        self,
        endpoints: Sequence[Endpoint],
        hash_key: int | None,
        avoid: Collection[Endpoint] = (),
    ) -> Endpoint | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        table = self._table_for(endpoints)
        members, owners = table.members, table.owners
        key = hash_key & _MASK64 if hash_key is not None else self._rng.getrandbits(64)
        size = self._table_size
        owner = members[owners[key % size]]
        if not avoid or owner not in avoid:
            return owner
        # Envoy's retry host predicate: attempt a flips the key to key ^ (2**64 - a), a new slot.
        for attempt in range(1, MAGLEV_RETRY_PROBES + 1):
            other = members[owners[(key ^ (_MASK64 - attempt + 1)) % size]]
            if other not in avoid:
                return other
        fresh = _prefer(endpoints, avoid)
        return fresh[key % len(fresh)]

    def _table_for(self, endpoints: Sequence[Endpoint]) -> _MaglevTable:
        table = self._table
        if table is not None and _same(table.endpoints, endpoints):
            return table
        with self._lock:
            table = self._table
            if table is not None and _same(table.endpoints, endpoints):
                return table
            members = tuple(endpoints)
            keys = [(host_hash_key(ep), ep.weight if ep.weight > 1 else 1) for ep in members]
            order = sorted(range(len(members)), key=lambda i: keys[i][0])
            ordered = [members[i] for i in order]
            signature = tuple(keys[i] for i in order)
            owners = self._recent.pop(signature, None)
            if owners is None:
                owners = tuple(maglev_table(ordered, self._table_size))
            self._recent[signature] = owners  # the most recent last
            while len(self._recent) > MAGLEV_TABLES_KEPT:
                del self._recent[next(iter(self._recent))]
            table = _MaglevTable(members, tuple(ordered), owners)
            self._table = table
            return table


def _ring_size(lb: m.ConsistentHashLB) -> int:
    """Istio's translation: ``ringHash.minimumRingSize``, else the deprecated top-level
    ``minimumRingSize``, else Envoy's default 1024 (a 0 counts as unset in both)."""
    if lb.ring_hash is not None and lb.ring_hash.minimum_ring_size:
        return lb.ring_hash.minimum_ring_size
    if lb.minimum_ring_size:
        return lb.minimum_ring_size
    return DEFAULT_MINIMUM_RING_SIZE


def make_picker(
    lb: m.LoadBalancerSettings | None, rng: random.Random, inflight: InFlight
) -> Picker:
    """The picker for a destination's ``loadBalancer`` settings (least request when unset)."""
    if lb is not None:
        consistent = lb.consistent_hash
        if consistent is not None:
            if consistent.maglev is not None:
                size = consistent.maglev.table_size or DEFAULT_MAGLEV_TABLE_SIZE
                return Maglev(rng, size)
            minimum = min(_ring_size(consistent), DEFAULT_MAXIMUM_RING_SIZE)
            return RingHash(rng, minimum)
        if lb.simple == "ROUND_ROBIN":
            return RoundRobin(rng)
        if lb.simple in ("RANDOM", "PASSTHROUGH"):
            return RandomPicker(rng)
    return LeastRequest(rng, inflight)


# --------------------------------------------------------------------------- hash keys


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of header ``name``, one per header line (``name`` in lower case).

    ``httpx.Headers`` (``get_list``) and multidicts (``getall``, as aiohttp's) give each line;
    a plain mapping holds one value per name."""
    get_list = getattr(headers, "get_list", None)
    if get_list is not None:
        return list(get_list(name))
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [] if value is None else [value]


def _cookie(values: Iterable[str], name: str) -> str | None:
    """The value of cookie ``name`` as Envoy's ``parseCookieValue`` reads it: the first cookie
    of that name across every ``Cookie`` line, split on ``;``, the name after leading spaces,
    the value after ``=`` with one pair of surrounding double quotes removed."""
    for line in values:
        for part in line.split(";"):
            if not part:
                continue
            equals = part.find("=")
            if equals < 0:
                continue
            if part[:equals].lstrip(" ") != name:
                continue
            value = part[equals + 1 :]
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def _query_parameter(query: str, name: str) -> str | None:
    """The first value of ``name`` in a raw query string as Envoy's ``parseQueryString`` reads
    it: split on ``&`` and the first ``=``, nothing percent-decoded, ``""`` for a bare name."""
    if query.startswith("?"):
        query = query[1:]
    for param in query.split("&"):
        if not param:
            continue
        key, sep, value = param.partition("=")
        if key == name:
            return value if sep else ""
    return None


def hash_key(
    lb: m.ConsistentHashLB | None,
    headers: Mapping[str, str],
    query: Mapping[str, str] | str,
    source_ip: str | None,
) -> int | None:
    """The request's 64-bit consistent-hash key as Envoy computes it, or None when the request
    carries none (the ring then picks at random, as Envoy does).

    Every key is xxHash64 with seed 0 over the value's bytes (UTF-8), as Envoy's hash policies:

    * ``httpHeaderName``: the header's value; with several header lines, their values sorted
      (bytewise) and hashed as one string, so their order does not matter.
    * ``httpCookie``: the cookie's value (see ``_cookie``); a missing or empty cookie gives no
      key (Envoy would then generate one when ``ttl`` is set; meshlib does not).
    * ``httpQueryParameterName``: the parameter's first value, still percent-encoded, when
      ``query`` is the raw query string (a mapping's values are taken as they are).
    * ``useSourceIp``: ``source_ip`` (Envoy hashes the downstream IP, without the port).

    ``headers`` must answer ``get`` for lowercase names (``httpx.Headers``, a multidict or a
    lowercase dict).
    """
    if lb is None:
        return None
    if lb.http_header_name is not None:
        values = _header_values(headers, lb.http_header_name.lower())
        if not values:
            return None
        encoding = _header_encoding(headers)
        if len(values) == 1:
            return _xxh64(values[0].encode(encoding, "surrogatepass"))
        return _xxh64(b"".join(sorted(v.encode(encoding, "surrogatepass") for v in values)))
    value: str | None
    if lb.http_cookie is not None:
        value = _cookie(_header_values(headers, "cookie"), lb.http_cookie.name)
        if not value:
            return None
        return _xxh64(value.encode(_header_encoding(headers), "surrogatepass"))
    if lb.http_query_parameter_name is not None:
        name = lb.http_query_parameter_name
        value = _query_parameter(query, name) if isinstance(query, str) else query.get(name)
    elif lb.use_source_ip:
        value = source_ip or None
    else:
        return None
    return None if value is None else _xxh64(value.encode("utf-8", "surrogatepass"))


def _header_encoding(headers: Mapping[str, str]) -> str:
    """The encoding that turns ``headers``' values back into the bytes sent: httpx decodes
    them as ASCII, else UTF-8, else Latin-1 (``Headers.encoding``); anything else is UTF-8."""
    encoding = getattr(headers, "encoding", None)
    return encoding if isinstance(encoding, str) else "utf-8"


# --------------------------------------------------------------------------- outlier detection


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """``outlierDetection`` with Istio's defaults applied. A threshold of 0 is off."""

    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 0
    consecutive_local_origin_failures: int = 5
    split_external_local_origin_errors: bool = False
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0
    http_error_codes: frozenset[int] | None = None
    always_eject_one_host: bool = False

    @classmethod
    def from_settings(
        cls, settings: m.OutlierDetection, *, always_eject_one_host: bool = False
    ) -> OutlierPolicy:
        consecutive_5xx = 5
        gateway = 0
        if settings.consecutive_errors:
            gateway = settings.consecutive_errors
            consecutive_5xx = 0
        if settings.consecutive_5xx_errors is not None:
            consecutive_5xx = settings.consecutive_5xx_errors
        if settings.consecutive_gateway_errors is not None:
            gateway = settings.consecutive_gateway_errors
        base = settings.base_ejection_time or 30.0
        codes = settings.outlier_detection_http_error_codes
        return cls(
            consecutive_5xx=consecutive_5xx,
            consecutive_gateway_errors=gateway,
            consecutive_local_origin_failures=settings.consecutive_local_origin_failures or 5,
            split_external_local_origin_errors=bool(settings.split_external_local_origin_errors),
            interval=settings.interval or 10.0,
            base_ejection_time=base,
            max_ejection_time=max(300.0, base),
            max_ejection_percent=settings.max_ejection_percent or 10,
            min_health_percent=settings.min_health_percent or 0,
            http_error_codes=frozenset(codes) if codes else None,
            always_eject_one_host=always_eject_one_host,
        )


@dataclass(frozen=True, slots=True)
class OutlierStatus:
    """One endpoint as the outlier detector sees it, for debugging and metrics."""

    address: str
    ejected: bool
    ejections: int
    ejected_for: float
    consecutive_5xx: int
    consecutive_gateway_errors: int
    consecutive_local_origin_failures: int


@dataclass(slots=True)
class _Health:
    """The detector's mutable record of one endpoint (guarded by the detector's lock)."""

    endpoint: Endpoint
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    consecutive_local: int = 0
    ejected_until: float | None = None
    returned_at: float | None = None
    ejections: int = 0
    backoff: int = 0


def _address_of(state: _Health) -> str:
    return state.endpoint.address


class OutlierDetector:
    """Passive health checking: ejects endpoints after consecutive failures, for a while."""

    __slots__ = (
        "_active",
        "_available",
        "_clock",
        "_generation",
        "_lock",
        "_next_return",
        "_on_eject",
        "_on_return",
        "_policy",
        "_seen",
        "_states",
    )

    def __init__(
        self,
        settings: m.OutlierDetection | OutlierPolicy,
        clock: Clock,
        on_eject: EjectListener | None = None,
        on_return: ReturnListener | None = None,
        *,
        always_eject_one_host: bool = False,
    ) -> None:
        if isinstance(settings, OutlierPolicy):
            self._policy = settings
        else:
            self._policy = OutlierPolicy.from_settings(
                settings, always_eject_one_host=always_eject_one_host
            )
        self._clock = clock
        self._on_eject = on_eject
        self._on_return = on_return
        self._lock = threading.Lock()
        self._states: dict[tuple[str, int], _Health] = {}
        self._active = 0
        self._next_return = _NO_RETURN
        self._seen: Sequence[Endpoint] | None = None
        #: Bumped whenever the set of ejected endpoints changes (ejection, return, prune).
        self._generation = 0
        #: The last answer of ``available``: for which list, at which generation, and what.
        self._available: tuple[Sequence[Endpoint], int, Sequence[Endpoint]] | None = None

    @property
    def policy(self) -> OutlierPolicy:
        return self._policy

    def available(self, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """The endpoints not ejected now, or all of them in panic mode (``minHealthPercent``).

        While some endpoint is ejected, the answer is filtered once per change — an ejection,
        a return, another endpoint list — and then handed out again, the same tuple: a pick
        costs no scan of the pool, and the picker sees the list it saw last time."""
        if endpoints is not self._seen:
            self._track(endpoints)
        if not self._active:
            return endpoints
        if self._clock.now() >= self._next_return:
            returned: list[Endpoint] = []
            with self._lock:
                now = self._clock.now()
                if now >= self._next_return:
                    returned = self._return_due(now)
            if returned:
                self._notify_returned(returned)
        known = self._available
        if known is not None and known[0] is endpoints and known[1] == self._generation:
            return known[2]
        with self._lock:
            generation = self._generation
            result = self._filter(endpoints)
            self._available = (endpoints, generation, result)
        return result

    def _filter(self, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """``available``'s answer, worked out (the caller holds the lock)."""
        if not self._active:
            return endpoints
        states = self._states
        healthy = [
            ep
            for ep in endpoints
            if (state := states.get((ep.host, ep.port))) is None or state.ejected_until is None
        ]
        if len(healthy) == len(endpoints):
            return endpoints
        if len(healthy) * 100 < self._policy.min_health_percent * len(endpoints):
            return endpoints
        return tuple(healthy)

    def record(
        self, endpoint: Endpoint, status: int | None, local_origin_failure: bool = False
    ) -> bool:
        """Count one attempt's outcome; True when it ejected ``endpoint``.

        ``status`` is the response status, or None when no response came; a local-origin
        failure is a connect failure, reset or timeout. An attempt with neither (e.g. cancelled
        by the caller) counts for nothing.
        """
        if status is None and not local_origin_failure:
            return False
        policy = self._policy
        if (
            not local_origin_failure
            and status is not None
            and status < 500
            and policy.http_error_codes is None
        ):
            # A success on an endpoint with nothing counted changes nothing: no lock needed.
            state = self._states.get((endpoint.host, endpoint.port))
            if state is None or not (
                state.consecutive_5xx or state.consecutive_gateway or state.consecutive_local
            ):
                return False
        ejected = False
        with self._lock:
            now = self._clock.now()
            returned = self._return_due(now) if now >= self._next_return else []
            key = (endpoint.host, endpoint.port)
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _Health(endpoint)
            if local_origin_failure:
                if policy.split_external_local_origin_errors:
                    state.consecutive_local += 1
                    tripped = state.consecutive_local == policy.consecutive_local_origin_failures
                    if tripped:
                        state.consecutive_local = 0
                else:
                    tripped = self._count_status(state, 503)
            elif status is not None:
                if policy.split_external_local_origin_errors:
                    state.consecutive_local = 0  # a response: the connection worked
                tripped = self._count_status(state, status)
            else:
                tripped = False
            if tripped:
                ejected = self._eject(state, now)
            count = state.ejections
        if returned:
            self._notify_returned(returned)
        if ejected and self._on_eject is not None:
            self._on_eject(state.endpoint, count)
        return ejected

    def is_ejected(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is ejected now."""
        with self._lock:
            now = self._clock.now()
            returned = self._return_due(now) if now >= self._next_return else []
            state = self._states.get((endpoint.host, endpoint.port))
            ejected = state is not None and state.ejected_until is not None
        if returned:
            self._notify_returned(returned)
        return ejected

    def ejections(self, endpoint: Endpoint) -> int:
        """How many times ``endpoint`` has been ejected (0 when unknown)."""
        with self._lock:
            state = self._states.get((endpoint.host, endpoint.port))
            return state.ejections if state is not None else 0

    def prune(self, current: Iterable[Endpoint]) -> None:
        """Forget the endpoints not in ``current`` (they left the registry)."""
        keep = {(ep.host, ep.port) for ep in current}
        with self._lock:
            states = self._states
            for key in [k for k in states if k not in keep]:
                if states.pop(key).ejected_until is not None:
                    self._active -= 1
            self._next_return = min(
                (s.ejected_until for s in states.values() if s.ejected_until is not None),
                default=_NO_RETURN,
            )
            self._seen = None
            self._generation += 1

    def snapshot(self) -> tuple[OutlierStatus, ...]:
        """Every known endpoint's state, sorted by address."""
        with self._lock:
            now = self._clock.now()
            returned = self._return_due(now) if now >= self._next_return else []
            result = tuple(
                OutlierStatus(
                    address=state.endpoint.address,
                    ejected=state.ejected_until is not None,
                    ejections=state.ejections,
                    ejected_for=(
                        state.ejected_until - now if state.ejected_until is not None else 0.0
                    ),
                    consecutive_5xx=state.consecutive_5xx,
                    consecutive_gateway_errors=state.consecutive_gateway,
                    consecutive_local_origin_failures=state.consecutive_local,
                )
                for state in sorted(self._states.values(), key=_address_of)
            )
        if returned:
            self._notify_returned(returned)
        return result

    # ---- internals (callers hold the lock unless said otherwise)

    def _track(self, endpoints: Sequence[Endpoint]) -> None:
        """Know every endpoint of the pool (the denominator of ``maxEjectionPercent``)."""
        with self._lock:
            states = self._states
            for ep in endpoints:
                key = (ep.host, ep.port)
                if key not in states:
                    states[key] = _Health(ep)
            self._seen = endpoints

    def _count_status(self, state: _Health, status: int) -> bool:
        """Count a response; True when a consecutive-error threshold was reached."""
        policy = self._policy
        codes = policy.http_error_codes
        if codes is not None:
            status = 500 if status in codes else 200
        if not 500 <= status <= 599:
            state.consecutive_5xx = 0
            state.consecutive_gateway = 0
            return False
        tripped = False
        if status in GATEWAY_ERRORS:
            state.consecutive_gateway += 1
            if state.consecutive_gateway == policy.consecutive_gateway_errors:
                state.consecutive_gateway = 0
                tripped = True
        else:
            state.consecutive_gateway = 0
        state.consecutive_5xx += 1
        if state.consecutive_5xx == policy.consecutive_5xx:
            state.consecutive_5xx = 0
            tripped = True
        return tripped

    def _eject(self, state: _Health, now: float) -> bool:
        if state.ejected_until is not None:
            return False
        policy = self._policy
        allowed = (self._active + 1) * 100 <= policy.max_ejection_percent * len(self._states)
        if not allowed and not (policy.always_eject_one_host and self._active == 0):
            return False
        if state.returned_at is not None:
            healthy_intervals = int((now - state.returned_at) // policy.interval)
            state.backoff = max(0, state.backoff - healthy_intervals)
            state.returned_at = None
        base = policy.base_ejection_time
        if state.backoff * base < policy.max_ejection_time + base:
            state.backoff += 1
        until = now + min(base * state.backoff, policy.max_ejection_time)
        state.ejected_until = until
        state.ejections += 1
        self._active += 1
        self._generation += 1
        self._next_return = min(self._next_return, until)
        return True

    def _return_due(self, now: float) -> list[Endpoint]:
        """Bring back the endpoints whose ejection time is over; returns them."""
        returned: list[Endpoint] = []
        next_return = _NO_RETURN
        for state in self._states.values():
            until = state.ejected_until
            if until is None:
                continue
            if until <= now:
                state.ejected_until = None
                state.returned_at = until
                state.consecutive_5xx = 0
                state.consecutive_gateway = 0
                state.consecutive_local = 0
                self._active -= 1
                returned.append(state.endpoint)
            elif until < next_return:
                next_return = until
        self._next_return = next_return
        if returned:
            self._generation += 1
        return returned

    def _notify_returned(self, returned: list[Endpoint]) -> None:
        """Tell the listener (called without the lock held)."""
        listener = self._on_return
        if listener is not None:
            for ep in returned:
                listener(ep)


# --------------------------------------------------------------------------- the balancer


class Balancer:
    """Load balancing for one destination (host and subset): ejection, then the picker."""

    __slots__ = ("detector", "inflight", "picker")

    def __init__(
        self,
        picker: Picker,
        detector: OutlierDetector | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self.picker = picker
        self.detector = detector
        self.inflight = inflight if inflight is not None else InFlight()

    @classmethod
    def from_policy(
        cls,
        policy: m.TrafficPolicy | None,
        rng: random.Random,
        clock: Clock,
        inflight: InFlight | None = None,
        on_eject: EjectListener | None = None,
        on_return: ReturnListener | None = None,
    ) -> Balancer:
        """The balancer a destination's effective traffic policy asks for."""
        inflight = inflight if inflight is not None else InFlight()
        lb = policy.load_balancer if policy is not None else None
        outlier = policy.outlier_detection if policy is not None else None
        detector = (
            OutlierDetector(outlier, clock, on_eject, on_return) if outlier is not None else None
        )
        return cls(make_picker(lb, rng, inflight), detector, inflight)

    def choose(
        self,
        endpoints: Sequence[Endpoint],
        hash_key: int | None = None,
        avoid: Collection[Endpoint] = (),
    ) -> Endpoint | None:
        """The endpoint for one attempt; None when no endpoint is available."""
        detector = self.detector
        if detector is not None:
            endpoints = detector.available(endpoints)
        return self.picker.pick(endpoints, hash_key, avoid)

    def report(
        self, endpoint: Endpoint, status: int | None, local_origin_failure: bool = False
    ) -> bool:
        """Feed one attempt's outcome to outlier detection; True when it ejected ``endpoint``."""
        detector = self.detector
        if detector is None:
            return False
        return detector.record(endpoint, status, local_origin_failure)
