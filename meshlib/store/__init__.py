"""Where a fleet's rules and endpoints live: one machine's rules file, or an etcd cluster.

A service names its store in its ``Service`` document (``spec.store``); ``meshctl --store URL``
names it on the command line. The parts, from the pure core out to the I/O shells:

```
url.py           etcd://host:port[,host:port...]/prefix  |  file://path
layout.py        the keys under the prefix (registry, rules, rules-revision, status)   pure
state.py         FleetState: list and watch events applied by revision                 pure
rules.py         a rules change planned and checked whole; RuleStore: file or etcd      pure + I/O
etcd.py          EtcdClient: etcd v3's JSON gateway over httpx, member failover         I/O
feed.py          StoreFeed: the watch thread (list, watch, resume, re-list, stale)      I/O
link.py          StoreLink: one mesh's view of its store (registry, rules config)
registration.py  Registration: an endpoint on a lease kept alive in the background      I/O
```

The core decides; the shells only move bytes. ``meshlib.discovery`` reads endpoints from a
``FleetState`` like from any other registry.
"""

from meshlib.store.url import DEFAULT_PREFIX, StoreURL

__all__ = ["DEFAULT_PREFIX", "StoreURL"]
