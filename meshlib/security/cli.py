"""``meshctl ca``: the mesh's local CA from the command line.

meshctl ca init DIR [--trust-domain TD] [--lifetime 8760h] [--force]
meshctl ca issue DIR --namespace NS --service-account SA [--lifetime 24h] --out OUTDIR

``init`` writes ``DIR/ca.pem`` and ``DIR/ca-key.pem`` (0600). ``issue`` writes ``OUTDIR/cert.pem``,
``OUTDIR/key.pem`` (0600) and ``OUTDIR/ca.pem``, and prints the SPIFFE ID and the expiry; no
command ever prints a private key. Exit 0 on success, 1 when the CA or the files refuse.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Any, TextIO

from meshlib.config.model import parse_duration
from meshlib.errors import IdentityError
from meshlib.security.ca import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority
from meshlib.security.identity import SpiffeId


def register(subparsers: Any) -> None:
    """Add ``ca`` and its subcommands to meshctl's subparsers."""
    group = subparsers.add_parser(
        "ca",
        help="the mesh's local CA: create it, issue workload certificates",
        description="A local certificate authority for the mesh, as Istio's own CA: a root "
        "certificate every workload trusts and short-lived workload certificates whose only SAN "
        "is the workload's SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<account>).",
    )
    group.set_defaults(run=lambda args, out: _help(group, out))
    sub = group.add_subparsers(dest="ca_command", metavar="COMMAND")

    init = sub.add_parser(
        "init",
        help="create a CA in a directory (ca.pem, ca-key.pem)",
        description="Create a self-signed root CA: DIR/ca.pem (the bundle workloads trust) and "
        "DIR/ca-key.pem (mode 0600). An existing CA is never overwritten without --force.",
    )
    init.add_argument("directory", metavar="DIR")
    init.add_argument(
        "--trust-domain",
        default="cluster.local",
        metavar="TD",
        help="the mesh's trust domain (default cluster.local, Istio's)",
    )
    init.add_argument(
        "--lifetime",
        type=_duration,
        default=timedelta(hours=8760),
        metavar="DURATION",
        help="how long the root is valid (default 8760h: one year)",
    )
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA (workloads must be reissued)"
    )
    init.set_defaults(run=_init)

    issue = sub.add_parser(
        "issue",
        help="issue a workload certificate (cert.pem, key.pem, ca.pem)",
        description="Issue a certificate for spiffe://<trust-domain>/ns/NS/sa/SA, signed by the "
        "CA in DIR, into OUTDIR: cert.pem, key.pem (mode 0600) and ca.pem. Prints the SPIFFE "
        "ID and the expiry.",
    )
    issue.add_argument("directory", metavar="DIR", help="the CA's directory")
    issue.add_argument("-n", "--namespace", required=True, metavar="NS")
    issue.add_argument("-a", "--service-account", required=True, metavar="SA")
    issue.add_argument(
        "--lifetime",
        type=_duration,
        default=timedelta(hours=24),
        metavar="DURATION",
        help="how long the certificate is valid (default 24h, Istio's)",
    )
    issue.add_argument(
        "-o", "--out", required=True, metavar="OUTDIR", help="where to write the files"
    )
    issue.set_defaults(run=_issue)


def _init(args: argparse.Namespace, out: TextIO) -> int:
    try:
        ca = CertificateAuthority.init(
            args.directory,
            trust_domain=args.trust_domain,
            lifetime=args.lifetime,
            force=args.force,
        )
    except IdentityError as exc:
        print(f"meshctl ca init: {exc}", file=sys.stderr)
        return 1
    print(f"trust domain: {ca.trust_domain}", file=out)
    print(f"certificate:  {ca.directory / CA_CERT_FILE}", file=out)
    print(f"key:          {ca.directory / CA_KEY_FILE} (0600)", file=out)
    print(f"expires:      {ca.not_after.isoformat()}", file=out)
    return 0


def _issue(args: argparse.Namespace, out: TextIO) -> int:
    try:
        ca = CertificateAuthority.load(args.directory)
        spiffe_id = SpiffeId(ca.trust_domain, args.namespace, args.service_account)
        certificate = ca.issue(spiffe_id, args.lifetime)
        folder = certificate.write(args.out)
    except IdentityError as exc:
        print(f"meshctl ca issue: {exc}", file=sys.stderr)
        return 1
    print(f"spiffe id:    {certificate.spiffe_id}", file=out)
    print(f"serial:       {certificate.serial_number:#x}", file=out)
    print(f"expires:      {certificate.not_after.isoformat()}", file=out)
    print(f"files:        {folder}/cert.pem, key.pem (0600), ca.pem", file=out)
    return 0


def _duration(text: str) -> timedelta:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    return timedelta(seconds=seconds)


def _help(parser: argparse.ArgumentParser, out: TextIO) -> int:
    parser.print_help(out)
    return 2


__all__ = ["register"]
