"""``meshctl``: check configs and see what the mesh will do with a request.

meshctl validate [-s SERVICE.yaml]... FILE...  every problem as file:line: path: message
meshctl explain -c FILE [-H 'name: value'] METHOD URL [--json]
meshctl bookinfo apply|delete|reset|routes|load  the running Bookinfo demo (bookinfo.py)
meshctl ca init|issue                          the mesh's local CA (security/cli.py)
meshctl run [-c FILE] [--port P] MODULE:APP     serve an app with the mesh's identity (runner.py)
meshctl --store URL apply|delete -f FILE...     the fleet's rules in its store (store/cli.py)
meshctl --store URL get [KIND [NAME]] | status
meshctl dashboard [--bookinfo|--admin|--registry] [--prometheus URL]   the live mesh page
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from meshlib import bookinfo
from meshlib.config.lint import lint
from meshlib.config.load import load_config
from meshlib.dashboard import cli as dashboard_cli
from meshlib.errors import ConfigError
from meshlib.mesh import Mesh
from meshlib.routing import RouteDecision
from meshlib.security import cli as security_cli
from meshlib.server import run_command
from meshlib.store import cli as store_cli

#: The exit code when the reader of meshctl's output goes away (``meshctl ... | head``): the
#: one a shell shows for git, kubectl or cat ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        result: int = args.run(args, sys.stdout)
        sys.stdout.flush()  # a broken pipe shows here, not at exit
    except BrokenPipeError:
        # stop quietly, as a command that SIGPIPE ends does; the rest of the output goes
        # nowhere, so that Python's own flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl", description="meshlib's command line: validate configs, explain routing."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check config files (taken together) and print every error and warning",
        description="Check config files, taken together as one service's config. Prints every "
        "problem as file:line: path: message. Exit 0 when valid (warnings allowed), 1 on errors.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    validate.add_argument(
        "-s",
        "--service",
        action="append",
        default=[],
        metavar="FILE",
        help="another service's config (a glob pattern is fine; repeatable): its declared app "
        "timeouts (spec.appTimeouts) and route timeouts join the check of injected delays",
    )
    validate.set_defaults(run=_validate)

    explain = commands.add_parser(
        "explain",
        help="show where a request goes and under which policies",
        description="Show the routing decision for one request: route, destination, subset, "
        "fault, timeout, retries, traffic policy, and why each earlier route did not match.",
    )
    explain.add_argument(
        "-c",
        "--config",
        action="append",
        required=True,
        metavar="FILE",
        help="config file (repeatable)",
    )
    explain.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="request header (repeatable)",
    )
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    explain.add_argument("--seed", type=int, default=None, help="seed for the weighted pick")
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("url", metavar="URL")
    explain.set_defaults(run=_explain)

    store_cli.register(commands, parser)
    bookinfo.add_parser(commands)
    security_cli.register(commands)
    run_command.register(commands)
    dashboard_cli.register(commands)
    return parser


def _validate(args: argparse.Namespace, out: TextIO) -> int:
    try:
        config = load_config(args.files)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        print(f"{len(exc.problems)} error(s)", file=out)
        return 1
    services = []
    for pattern in args.service:
        for name in sorted(glob.glob(pattern)) or [pattern]:
            try:
                services.append(load_config([name]))
            except ConfigError as exc:
                for problem in exc.problems:
                    print(problem, file=out)
                print(f"{len(exc.problems)} error(s) in the service config {name}", file=out)
                return 1
    warnings = lint(config, services)
    if not args.quiet:
        for problem in warnings:
            print(problem, file=out)
    applicable = sum(1 for r in config.resources if r.spec is not None)
    print(
        f"valid: {len(config.files)} file(s), {len(config.resources)} resource(s) "
        f"({applicable} used in-process), {len(warnings)} warning(s)",
        file=out,
    )
    return 0


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    headers: dict[str, str] = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            print(f"meshctl: bad header {raw!r}: write it as 'name: value'", file=sys.stderr)
            return 2
        headers[name.strip().lower()] = value.strip()
    try:
        mesh = Mesh.from_files(args.config, seed=args.seed)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    decision = mesh.explain(args.method, args.url, headers)
    if args.json:
        json.dump(decision.to_dict(), out, indent=2)
        out.write("\n")
    else:
        out.write(describe(decision))
    return 0


def describe(decision: RouteDecision) -> str:
    """A human-readable account of a decision, as ``meshctl explain`` prints it."""
    lines: list[str] = [f"host:         {decision.host}"]
    if decision.virtual_service:
        lines.append(f"virtual svc:  {decision.virtual_service}")
    for skipped in decision.skipped:
        name = f" ({skipped.route_name})" if skipped.route_name else ""
        lines.append(f"skipped:      http[{skipped.route_index}]{name}")
        lines += [f"                {reason}" for reason in skipped.reasons]
    if not decision.matched:
        lines.append(f"result:       no route (flag {decision.flag})")
        if decision.note:
            lines.append(f"                {decision.note}")
        return "\n".join(lines) + "\n"
    if decision.route_index is None:
        route = decision.route_name or "default"
    else:
        route = f"http[{decision.route_index}]"
        if decision.route_name:
            route += f" ({decision.route_name})"
    lines.append(f"route:        {route}")
    target = decision.destination
    if target is not None:
        where = target.host + (f":{target.port}" if target.port else "")
        subset = f", subset {target.subset}" if target.subset else ""
        if target.subset and not target.subset_defined:
            subset += " (NOT DEFINED: calls get 503 NC)"
        lines.append(f"destination:  {where}{subset} (weight {target.weight})")
        if target.subset_labels:
            lines.append(f"  endpoints with labels {target.subset_labels}")
    if decision.redirect is not None:
        lines.append(
            f"redirect:     {decision.redirect.model_dump(by_alias=True, exclude_none=True)}"
        )
    if decision.direct_response is not None:
        lines.append(f"direct resp.: status {decision.direct_response.status}")
    fault = decision.fault
    if fault.delay is not None:
        lines.append(f"fault delay:  {fault.delay:g}s for {fault.delay_percentage:g}% of requests")
    if fault.abort_status is not None or fault.abort_grpc_status is not None:
        status = fault.abort_status or f"grpc {fault.abort_grpc_status}"
        lines.append(f"fault abort:  {status} for {fault.abort_percentage:g}% of requests")
    lines.append("timeout:      " + (f"{decision.timeout:g}s" if decision.timeout else "none"))
    retry = decision.retry
    if retry.attempts:
        per_try = f", {retry.per_try_timeout:g}s per try" if retry.per_try_timeout else ""
        origin = " (mesh default)" if retry.source == "default" else ""
        codes = sorted(retry.retriable_status_codes)
        lines.append(
            f"retries:      {retry.attempts} on {','.join(retry.retry_on)}"
            + (f" {codes}" if codes else "")
            + f"{per_try}{origin}"
        )
    else:
        why = " (disabled by the route's fault)" if retry.source == "disabled-by-fault" else ""
        lines.append(f"retries:      none{why}")
    policy = decision.traffic_policy
    if policy is not None:
        dumped = policy.model_dump(mode="json", by_alias=True, exclude_none=True)
        lines.append(f"policy:       {json.dumps(dumped, sort_keys=True)}")
    if decision.note:
        lines.append(f"note:         {decision.note}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
