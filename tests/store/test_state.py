"""The pure core: FleetState applies a list and watch events by revision."""

from __future__ import annotations

import json

from meshlib.discovery import Endpoint
from meshlib.store.layout import Layout
from meshlib.store.state import Event, FleetState, decode_endpoint, encode_endpoint

LAYOUT = Layout("/mesh")
REVIEWS = "reviews.default.svc.cluster.local"


def endpoint(address: str, version: str = "v1", revision: int = 2) -> Event:
    value = encode_endpoint(address, {"version": version}, version)
    return Event("put", LAYOUT.endpoint("default", "reviews", address), value, revision)


def gone(address: str, revision: int) -> Event:
    return Event("delete", LAYOUT.endpoint("default", "reviews", address), b"", revision)


def rule(name: str, text: str, revision: int) -> Event:
    return Event("put", LAYOUT.rule("VirtualService", "default", name), text.encode(), revision)


def test_a_list_then_events_give_each_host_its_endpoints_in_key_order() -> None:
    state = FleetState(LAYOUT)
    change = state.reset([endpoint("10.0.0.2:9080"), endpoint("10.0.0.1:9080")], revision=5)
    assert change.host_set
    assert change.hosts == {REVIEWS}
    assert [e.address for e in state.endpoints(REVIEWS)] == ["10.0.0.1:9080", "10.0.0.2:9080"]
    assert state.hosts() == {REVIEWS}
    change = state.apply([endpoint("10.0.0.3:9080", "v2", 6), gone("10.0.0.1:9080", 6)])
    assert change.hosts == {REVIEWS}
    assert not change.host_set
    assert not change.rules
    assert [(e.address, e.labels["version"]) for e in state.endpoints(REVIEWS)] == [
        ("10.0.0.2:9080", "v1"),
        ("10.0.0.3:9080", "v2"),
    ]
    assert state.revision == 6


def test_events_at_or_below_the_applied_revision_are_replays_and_ignored() -> None:
    state = FleetState(LAYOUT)
    state.reset([endpoint("10.0.0.1:9080", revision=3)], revision=7)
    change = state.apply([gone("10.0.0.1:9080", 5), endpoint("10.0.0.9:9080", revision=7)])
    assert change.replayed == 2
    assert change.empty
    assert [e.address for e in state.endpoints(REVIEWS)] == ["10.0.0.1:9080"]


def test_the_last_endpoint_gone_removes_the_host() -> None:
    state = FleetState(LAYOUT)
    state.reset([endpoint("10.0.0.1:9080")], revision=2)
    change = state.apply([gone("10.0.0.1:9080", 3)])
    assert change.host_set
    assert state.hosts() == frozenset()
    assert state.endpoints(REVIEWS) == ()


def test_a_rewritten_endpoint_with_the_same_value_changes_nothing() -> None:
    state = FleetState(LAYOUT)
    state.reset([endpoint("10.0.0.1:9080")], revision=2)
    before = state.endpoints(REVIEWS)
    change = state.apply([endpoint("10.0.0.1:9080", revision=3)])
    assert change.empty
    assert state.endpoints(REVIEWS) is before


def test_a_relist_after_compaction_turns_the_difference_into_one_change() -> None:
    state = FleetState(LAYOUT)
    state.reset([endpoint("10.0.0.1:9080"), rule("a", "x: 1\n", 2)], revision=2)
    # while the watch was away: 10.0.0.1 left, 10.0.0.5 came, rule a went, the revision moved on
    change = state.reset([endpoint("10.0.0.5:9080", revision=9)], revision=12)
    assert change.hosts == {REVIEWS}
    assert change.rules
    assert not change.host_set
    assert [e.address for e in state.endpoints(REVIEWS)] == ["10.0.0.5:9080"]
    assert state.rules() == []
    assert state.revision == 12


def test_the_rules_revision_is_the_marker_written_with_each_change() -> None:
    state = FleetState(LAYOUT)
    state.reset([], revision=1)
    marker = Event("put", LAYOUT.revision, b"{}", 4)
    change = state.apply([rule("a", "x: 1\n", 4), marker])
    assert change.rules
    assert state.rules_revision == 4
    delete = Event("delete", LAYOUT.rule("VirtualService", "default", "a"), b"", 8)
    change = state.apply([delete, Event("put", LAYOUT.revision, b"{}", 8)])
    assert change.rules
    assert state.rules_revision == 8
    assert state.rules() == []
    # a listing of the same rules is no change
    assert not state.reset([Event("put", LAYOUT.revision, b"{}", 8)], revision=9).rules


def test_values_that_do_not_decode_are_left_out_and_named() -> None:
    state = FleetState(LAYOUT)
    key = LAYOUT.endpoint("default", "reviews", "10.0.0.1:9080")
    bad = [
        Event("put", key, b"not json", 2),
        Event("put", LAYOUT.endpoint("default", "reviews", "10.0.0.2:9080"), b"[1]", 2),
        Event("put", "/mesh/registry/too/short", b"{}", 2),  # no meaning here: ignored
        Event("put", "/elsewhere/x", b"{}", 2),
    ]
    change = state.reset([*bad, endpoint("10.0.0.3:9080")], revision=2)
    assert change.problems == (f"{key}: not JSON", f"{bad[1].key}: must be a JSON object")
    assert [e.address for e in state.endpoints(REVIEWS)] == ["10.0.0.3:9080"]
    # a good endpoint whose value turns bad is taken out
    change = state.apply([Event("put", endpoint("10.0.0.3:9080").key, b"{", 3)])
    assert state.endpoints(REVIEWS) == ()
    assert change.host_set


def test_decode_endpoint_checks_every_field() -> None:
    def reason(data: object, address: str = "10.0.0.1:9080") -> str:
        try:
            decode_endpoint(json.dumps(data).encode(), "default", "r", address, 1)
        except ValueError as exc:
            return str(exc)
        return "ok"

    assert reason({"address": "10.0.0.2:9080"}) == (
        "address '10.0.0.2:9080' differs from the key's '10.0.0.1:9080'"
    )
    assert reason({"labels": {"a": 1}}) == "labels must map strings to strings"
    assert reason({"weight": 0}) == "weight must be an integer >= 1"
    assert reason({"weight": True}) == "weight must be an integer >= 1"
    assert reason({"version": 2}) == "version must be a string"
    assert reason({}, "10.0.0.1:99999") == "address '10.0.0.1:99999': port must be 1-65535"
    endpoint_, registered = decode_endpoint(
        encode_endpoint("[::1]:80", {"version": "v3"}, "v3", 2), "ns", "r", "[::1]:80", 4
    )
    assert endpoint_ == Endpoint("::1", 80, {"version": "v3"}, 2)
    assert (registered.version, registered.revision) == ("v3", 4)
