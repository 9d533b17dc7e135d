"""The fleet's store at scale: 1,000 services x 10 endpoints in a real etcd (started here).

    python -m bench.store [--services N] [--endpoints N] [--changes N] [--json]

The Makefile's ``bench`` target runs it; the figures also go to ``bench/results/store.json``.

* **register**: every service gets a lease, and its endpoints are written on it, one
  transaction per service (as 10 instances registering would write them, batched).
* **list**: a service's first look at the fleet (``StoreFeed.list_now``: one range over the
  registry and the rules, decoded into ``FleetState``), its time; and the memory the state
  holds per endpoint (``tracemalloc`` around ``FleetState.reset`` of the same listing: what it
  allocated and kept, over the endpoint count).
* **change seen**: one endpoint changes (a put of a new label); the time until a watching
  client's ``FleetState`` shows it, over ``--changes`` changes (p50, p99, max). Target: < 1 s.
* **watch CPU**: the CPU time of the watching thread (``time.thread_time``) for ``--changes``
  changes, with the full fleet, and again with a fleet a hundred times smaller: it grows with
  the number of changes, not with the size of the fleet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from meshlib.store.etcd import EtcdClient
from meshlib.store.feed import StoreFeed
from meshlib.store.layout import Layout
from meshlib.store.local import EtcdCluster
from meshlib.store.state import Change, FleetState, encode_endpoint

RESULTS = Path(__file__).parent / "results" / "store.json"


def register(client: EtcdClient, layout: Layout, services: int, endpoints: int) -> float:
    started = time.perf_counter()
    for s in range(services):
        lease = client.grant(60)
        operations = [
            EtcdClient.op_put(
                layout.endpoint("default", f"svc{s}", f"10.{s // 250}.{s % 250}.{e}:8080"),
                encode_endpoint(
                    f"10.{s // 250}.{s % 250}.{e}:8080", {"version": f"v{e % 3}"}, f"v{e % 3}"
                ),
                lease,
            )
            for e in range(endpoints)
        ]
        client.txn([], operations)
    return time.perf_counter() - started


def measure(
    cluster: EtcdCluster, prefix: str, services: int, endpoints: int, changes: int
) -> dict[str, Any]:
    layout = Layout(prefix)
    writer = EtcdClient(cluster.endpoints)
    took_register = register(writer, layout, services, endpoints)

    seen: dict[str, float] = {}
    counted = threading.Event()
    lock = threading.Lock()
    state_changes = [0]

    def on_change(change: Change) -> None:
        now = time.perf_counter()
        with lock:
            for host in change.hosts:
                seen.setdefault(host, now)
            state_changes[0] += 1
            if state_changes[0] >= changes:
                counted.set()

    reader = EtcdClient(cluster.endpoints)
    feed = StoreFeed(reader, layout, on_change=on_change, idle=30.0)
    started = time.perf_counter()
    feed.list_now()
    took_list = time.perf_counter() - started
    count = feed.state.endpoint_count()
    # memory: the same listing applied to a new state, traced
    kvs, revision = reader.range(*layout.watched())
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state = FleetState(layout)
    state.reset(kvs, revision)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del kvs
    state_changes[0] = 0
    seen.clear()

    cpu: list[float] = []

    def watch() -> None:
        start = time.thread_time()
        try:
            for _ in range(50):
                if counted.is_set():
                    break
                feed.watch_once()
        finally:
            cpu.append(time.thread_time() - start)

    # the watcher runs until it has applied ``changes`` changes
    thread = threading.Thread(target=_until(counted, feed, watch), daemon=True)
    thread.start()
    time.sleep(0.3)  # the watch is open
    latencies = []
    for i in range(changes):
        s = i % services
        address = f"10.{s // 250}.{s % 250}.0:8080"
        host = f"svc{s}.default.svc.cluster.local"
        with lock:
            seen.pop(host, None)
        sent = time.perf_counter()
        writer.put(
            layout.endpoint("default", f"svc{s}", address),
            encode_endpoint(address, {"version": "v0", "change": str(i)}, "v0"),
        )
        deadline = sent + 5
        while True:
            with lock:
                at = seen.get(host)
            if at is not None and at >= sent:
                latencies.append(at - sent)
                break
            if time.perf_counter() > deadline:
                latencies.append(float("inf"))
                break
            time.sleep(0.0005)
    counted.wait(10)
    reader.close()  # ends the watch
    thread.join(10)
    writer.close()
    latencies.sort()
    return {
        "services": services,
        "endpoints_per_service": endpoints,
        "endpoints": count,
        "register_s": round(took_register, 3),
        "list_s": round(took_list, 3),
        "bytes_per_endpoint": round(held / max(count, 1)),
        "changes": changes,
        "change_seen_p50_ms": round(1000 * statistics.median(latencies), 2),
        "change_seen_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
        "change_seen_max_ms": round(1000 * latencies[-1], 2),
        "watch_cpu_ms": round(1000 * (cpu[0] if cpu else float("nan")), 1),
        "watch_cpu_us_per_change": round(1e6 * (cpu[0] if cpu else float("nan")) / changes, 1),
    }


def _until(done: threading.Event, feed: StoreFeed, body: Any) -> Any:
    def run() -> None:
        try:
            body()
        except Exception:  # the client was closed under the watch: the measurement is over
            if not done.is_set():
                raise

    return run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with EtcdCluster(1, extra_args=("--quota-backend-bytes", str(2 * 1024**3))) as cluster:
        full = measure(cluster, "/bench-full", args.services, args.endpoints, args.changes)
        small = measure(
            cluster, "/bench-small", max(args.services // 100, 1), args.endpoints, args.changes
        )
    result = {"full": full, "small": small, "etcd": "one member, 127.0.0.1", "cpus": os.cpu_count()}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"store: {full['services']} services x {full['endpoints_per_service']} endpoints in etcd")
    print(f"  register (a lease and one txn per service)  {full['register_s']:.2f} s")
    print(f"  list (a service's first look)               {full['list_s']:.3f} s")
    print(f"  memory per endpoint (FleetState)            {full['bytes_per_endpoint']} bytes")
    print(
        f"  a change seen by a watching client          p50 {full['change_seen_p50_ms']} ms, "
        f"p99 {full['change_seen_p99_ms']} ms, max {full['change_seen_max_ms']} ms "
        f"({full['changes']} changes; target < 1000 ms)"
    )
    print(
        f"  watch CPU for {full['changes']} changes: {full['endpoints']} endpoints "
        f"{full['watch_cpu_ms']} ms ({full['watch_cpu_us_per_change']} us/change), "
        f"{small['endpoints']} endpoints {small['watch_cpu_ms']} ms "
        f"({small['watch_cpu_us_per_change']} us/change)"
    )


if __name__ == "__main__":
    main()
