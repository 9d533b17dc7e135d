"""``meshctl --store URL apply|delete|get|status``: the fleet's rules, as ``kubectl`` and
``istioctl proxy-status`` show a cluster's.

    meshctl --store etcd://10.0.0.1:2379,10.0.0.2:2379/meshlib apply -f reviews.yaml
    meshctl --store etcd://... delete -f reviews.yaml
    meshctl --store etcd://... get [KIND [NAME]]
    meshctl --store etcd://... status

``--store`` defaults to ``$MESHLIB_STORE``. A ``file://path`` store is the rules file of one
machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from meshlib import control
from meshlib.errors import ConfigError, StoreError
from meshlib.store.rules import (
    EtcdRuleStore,
    Instance,
    RuleStore,
    apply_files,
    delete_files,
    open_rule_store,
)

STORE_ENV = "MESHLIB_STORE"


def register(commands: Any, parser: argparse.ArgumentParser) -> None:
    """Add ``--store`` to meshctl and the ``apply``, ``delete``, ``get`` and ``status``
    commands to its subparsers."""
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help=f"the fleet's store: etcd://host:port[,host:port...]/prefix or file://path "
        f"(default ${STORE_ENV})",
    )

    def waits(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--wait",
            type=float,
            default=None,
            metavar="SECONDS",
            help="then wait until every registered service runs the new rules (etcd store)",
        )

    apply = commands.add_parser(
        "apply",
        help="create or replace resources in the store",
        description="Create each resource of the files in the store, or replace the one of the "
        "same kind, namespace and name; the others stay (kubectl apply). The files are "
        "validated together first: a change with an error writes nothing. An etcd store gets "
        "the whole change in one transaction.",
    )
    apply.add_argument(
        "-f", "--filename", action="append", required=True, metavar="FILE", dest="files"
    )
    waits(apply)
    apply.set_defaults(run=_apply)

    delete = commands.add_parser(
        "delete",
        help="remove the resources named in files from the store",
        description="Remove the resources the files name (kind, namespace, name).",
    )
    delete.add_argument(
        "-f", "--filename", action="append", required=True, metavar="FILE", dest="files"
    )
    waits(delete)
    delete.set_defaults(run=_delete)

    get = commands.add_parser(
        "get",
        help="list the store's resources, or print one",
        description="With no KIND, every resource; with KIND, those of that kind; with KIND "
        "and NAME ([namespace/]name), that resource as YAML.",
    )
    get.add_argument("kind", nargs="?", metavar="KIND")
    get.add_argument("name", nargs="?", metavar="NAME")
    get.set_defaults(run=_get)

    status = commands.add_parser(
        "status",
        help="every registered service and the rules revision it runs (etcd store)",
        description="Every service instance registered in the store, its version and address, "
        "the rules revision it reports running, and whether that is the store's (as istioctl "
        "proxy-status). Exit 0 when every instance runs the current rules, 1 otherwise.",
    )
    status.set_defaults(run=_status)


def _store(args: argparse.Namespace) -> RuleStore | None:
    text = args.store or os.environ.get(STORE_ENV)
    if not text:
        print(f"meshctl: name the store with --store URL or ${STORE_ENV}", file=sys.stderr)
        return None
    try:
        return open_rule_store(text)
    except ValueError as exc:
        print(f"meshctl: --store: {exc}", file=sys.stderr)
        return None


def _refused(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print("nothing applied: the rules in the store stay", file=sys.stderr)
    return 1


def _unreachable(store: RuleStore, exc: StoreError) -> int:
    print(f"meshctl: store {store.url}: {exc}", file=sys.stderr)
    return 1


def _apply(args: argparse.Namespace, out: TextIO) -> int:
    return _write(args, out, apply_files)


def _delete(args: argparse.Namespace, out: TextIO) -> int:
    return _write(args, out, delete_files)


def _write(args: argparse.Namespace, out: TextIO, how: Any) -> int:
    store = _store(args)
    if store is None:
        return 2
    try:
        written = how(store, args.files)
        for key, what in written.changes:
            print(f"{control.describe(key)} {what}", file=out)
        print(f"rules revision {written.revision}", file=out)
        if args.wait is not None and isinstance(store, EtcdRuleStore):
            return wait_printed(store, int(written.revision), args.wait, out)
        return 0
    except ConfigError as exc:
        return _refused(exc)
    except StoreError as exc:
        return _unreachable(store, exc)
    finally:
        store.close()


def wait_in_sync(
    store: EtcdRuleStore, revision: int, timeout: float, interval: float = 0.1
) -> tuple[bool, list[Instance]]:
    """Poll until every registered instance reports running ``revision`` or later."""
    deadline = time.monotonic() + timeout
    while True:
        instances, _ = store.instances()
        behind = [i for i in instances if (i.rules_revision or 0) < revision]
        if not behind or time.monotonic() >= deadline:
            return not behind, instances
        time.sleep(interval)


def wait_printed(store: EtcdRuleStore, revision: int, timeout: float, out: TextIO) -> int:
    started = time.monotonic()
    done, instances = wait_in_sync(store, revision, timeout)
    took = time.monotonic() - started
    if done:
        print(f"all {len(instances)} registered services run it ({took:.1f}s)", file=out)
        return 0
    _print_instances(instances, revision, out)
    return 1


def _get(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    if store is None:
        return 2
    try:
        rules = store.read()
    except (StoreError, ConfigError) as exc:
        print(f"meshctl get: {store.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    documents = list(rules.documents)
    if args.kind:
        wanted = _kind(args.kind)
        documents = [d for d in documents if str(d.get("kind", "")).lower() == wanted]
    if args.name:
        namespace, _, name = args.name.rpartition("/")
        found = [
            d
            for d in documents
            if control.key_of(d)[2] == name and (not namespace or control.key_of(d)[1] == namespace)
        ]
        if not found:
            print(f"meshctl get: no {args.kind} {args.name} in {store.url}", file=sys.stderr)
            return 1
        out.write("---\n".join(yaml.safe_dump(d, sort_keys=False) for d in found))
        return 0
    if not documents:
        print(f"no resources in {store.url} (rules revision {rules.revision})", file=out)
        return 0
    keys = sorted(control.key_of(d) for d in documents)
    width = max(len("KIND"), *(len(k[0]) for k in keys)) + 2
    nswidth = max(len("NAMESPACE"), *(len(k[1]) for k in keys)) + 2
    print(f"{'KIND':<{width}}{'NAMESPACE':<{nswidth}}NAME", file=out)
    for kind, namespace, name in keys:
        print(f"{kind:<{width}}{namespace:<{nswidth}}{name}", file=out)
    print(f"rules revision {rules.revision}", file=out)
    return 0


#: kubectl's short names of Istio's kinds.
SHORT_NAMES = {
    "vs": "virtualservice",
    "dr": "destinationrule",
    "se": "serviceentry",
    "ap": "authorizationpolicy",
    "pa": "peerauthentication",
    "ra": "requestauthentication",
}


def _kind(text: str) -> str:
    """``VirtualService``, ``virtualservice``, ``virtualservices`` and ``vs`` name one kind."""
    lowered = text.lower()
    if lowered in SHORT_NAMES:
        return SHORT_NAMES[lowered]
    if lowered.endswith("policies"):
        return lowered[: -len("ies")] + "y"
    return lowered[:-1] if lowered.endswith("s") and not lowered.endswith("ss") else lowered


def _status(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    if store is None:
        return 2
    try:
        if not isinstance(store, EtcdRuleStore):
            rules = store.read()
            print(
                f"{store.url}: rules digest {rules.revision}; a file store has no registry: "
                "each service's GET /_mesh/config says which rules it runs",
                file=out,
            )
            return 0
        instances, revision = store.instances()
    except (StoreError, ConfigError) as exc:
        print(f"meshctl status: {store.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"rules revision {revision} in {store.url}", file=out)
    return _print_instances(instances, revision, out)


def _print_instances(instances: Sequence[Instance], revision: int, out: TextIO) -> int:
    if not instances:
        print("no registered services", file=out)
        return 0
    rows = [("NAME", "VERSION", "ADDRESS", "RULES", "STATE")]
    behind = 0
    for i in sorted(instances, key=lambda i: (i.namespace, i.service, i.address)):
        if i.rules_revision is None:
            state = "NO REPORT"
        elif i.stale:
            state = "STALE (its store is unreachable)"
        elif i.rules_revision >= revision:
            state = "SYNCED"
        else:
            state = "NOT SYNCED"
        behind += state != "SYNCED"
        rules = "-" if i.rules_revision is None else str(i.rules_revision)
        rows.append((f"{i.service}.{i.namespace}", i.version or "-", i.address, rules, state))
    widths = [max(len(r[c]) for r in rows) + 2 for c in range(4)]
    for row in rows:
        print("".join(f"{row[c]:<{widths[c]}}" for c in range(4)) + row[4], file=out)
    return 1 if behind else 0


__all__ = ["STORE_ENV", "register", "wait_in_sync", "wait_printed"]
