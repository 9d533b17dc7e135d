"""The watch loop against an in-memory etcd: resumed without missing or replaying an event, a
re-list after compaction, stale reported once per spell."""

from __future__ import annotations

import logging
import random

import pytest

from meshlib.store.feed import Backoff, Health, StoreFeed
from meshlib.store.layout import Layout
from meshlib.store.state import Change, encode_endpoint
from meshlib.testing import FakeClock
from tests.store.fake import FakeEtcd

LAYOUT = Layout("/mesh")
REVIEWS = "reviews.default.svc.cluster.local"


def key(n: int) -> str:
    return LAYOUT.endpoint("default", "reviews", f"10.0.0.{n}:9080")


def value(n: int) -> bytes:
    return encode_endpoint(f"10.0.0.{n}:9080", {}, None)


def feed_of(fake: FakeEtcd, changes: list[Change] | None = None, **kw: object) -> StoreFeed:
    return StoreFeed(
        fake,  # type: ignore[arg-type]
        LAYOUT,
        on_change=changes.append if changes is not None else None,
        clock=FakeClock(),
        rng=random.Random(1),
        **kw,  # type: ignore[arg-type]
    )


def addresses(feed: StoreFeed) -> list[str]:
    return [e.address for e in feed.state.endpoints(REVIEWS)]


def test_a_broken_watch_resumes_at_the_next_revision_and_misses_nothing() -> None:
    fake = FakeEtcd()
    fake.put(key(1), value(1))
    changes: list[Change] = []
    feed = feed_of(fake, changes)
    assert feed.step() == 0.0  # list, then watch to the end of the history
    assert addresses(feed) == ["10.0.0.1:9080"]
    for n in range(2, 7):
        fake.put(key(n), value(n))
    fake.break_after = 2  # the stream breaks after two of the five revisions
    wait = feed.step()
    assert wait > 0  # watched again after a short pause, from the next revision
    assert not feed.health.stale  # a running watch that broke is no outage by itself
    assert addresses(feed) == [f"10.0.0.{n}:9080" for n in (1, 2, 3)]
    fake.break_after = None
    assert feed.step() == 0.0
    assert not feed.health.stale
    assert addresses(feed) == [f"10.0.0.{n}:9080" for n in range(1, 7)]
    # each watch began right after the last revision applied: no gap, no replay
    assert fake.watch_starts == [3, 3, 5]
    assert sum(c.replayed for c in changes) == 0
    assert [len(c.hosts) for c in changes] == [1] * 6  # the list, then one change per revision
    assert feed.lists == 1


def test_a_compacted_revision_means_a_new_list_whose_difference_is_one_change() -> None:
    fake = FakeEtcd()
    fake.put(key(1), value(1))
    fake.put(key(2), value(2))
    changes: list[Change] = []
    feed = feed_of(fake, changes)
    feed.step()
    fake.down = True
    assert feed.step() > 0  # away while the fleet changes and etcd compacts
    fake.delete(key(1))
    fake.put(key(3), value(3))
    fake.compact()
    fake.down = False
    changes.clear()
    assert feed.step() == 0.0  # the watch is refused as compacted: list next
    assert feed.step() == 0.0
    assert feed.lists == 2
    assert addresses(feed) == ["10.0.0.2:9080", "10.0.0.3:9080"]
    assert len(changes) == 1
    assert changes[0].hosts == {REVIEWS}
    assert feed.state.revision == fake.revision


def test_a_store_whose_revision_went_back_is_listed_again() -> None:
    fake = FakeEtcd()
    for n in range(1, 5):
        fake.put(key(n), value(n))
    feed = feed_of(fake)
    feed.step()
    replaced = FakeEtcd()  # a new cluster: its revisions start again
    replaced.put(key(9), value(9))
    feed.client = replaced  # type: ignore[assignment]
    feed.step()
    feed.step()
    assert addresses(feed) == ["10.0.0.9:9080"]
    assert feed.state.revision == replaced.revision


def test_stale_is_reported_once_per_spell_and_the_last_state_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeEtcd()
    fake.put(key(1), value(1))
    health: list[bool] = []
    feed = feed_of(fake, on_health=health.append)
    caplog.set_level(logging.INFO, logger="meshlib.store")
    feed.step()
    fake.down = True
    for _ in range(5):
        feed.step()
    assert feed.health.stale
    assert addresses(feed) == ["10.0.0.1:9080"]
    fake.down = False
    fake.put(key(2), value(2))
    feed.step()
    assert health == [False, True, False]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert messages[0].startswith("store fake:2379 read (revision 2, rules revision 0)")
    assert messages[1].startswith(
        "store fake:2379 unreachable, keeping the last known endpoints and rules (revision 2)"
    )
    assert messages[2].startswith("store fake:2379 reachable again (revision 2, rules revision 0)")
    assert addresses(feed) == ["10.0.0.1:9080", "10.0.0.2:9080"]


def test_health_with_a_fake_clock() -> None:
    clock = FakeClock(wall=1000.0)
    health = Health(clock)
    assert health.stale
    assert not health.synced
    assert health.lost("refused")
    assert not health.lost("refused again")
    clock.advance(3)
    assert health.reached()
    assert not health.stale
    assert health.synced
    assert health.status().last_contact == clock.wall()
    health.announced = False
    assert health.lost("gone")
    assert health.status().stale_since == clock.wall()
    assert health.status().last_error == "gone"


def test_backoff_doubles_to_its_cap_with_seeded_jitter() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(7))
    delays = [backoff.delay() for _ in range(6)]
    bases = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(0.8 * b <= d <= 1.2 * b for d, b in zip(delays, bases, strict=True))
    again = Backoff(0.1, 1.0, random.Random(7))
    assert [again.delay() for _ in range(6)] == delays  # seeded: the same every run
    backoff.reset()
    assert backoff.delay() <= 0.12
