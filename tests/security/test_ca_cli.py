"""``meshctl ca init`` and ``meshctl ca issue``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from meshlib.cli import main
from meshlib.security.ca import CertificateAuthority, WorkloadCertificate
from meshlib.security.identity import SpiffeId

Capsys = pytest.CaptureFixture[str]


def run(capsys: Capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_init_then_issue(tmp_path: Path, capsys: Capsys) -> None:
    code, out, err = run(capsys, "ca", "init", tmp_path / "ca", "--lifetime", "8760h")
    assert (code, err) == (0, "")
    assert "trust domain: cluster.local" in out
    assert "ca-key.pem (0600)" in out
    authority = CertificateAuthority.load(tmp_path / "ca")
    assert authority.not_after - authority.certificate.not_valid_before_utc == timedelta(
        hours=8760, minutes=5
    )

    code, out, err = run(
        capsys,
        "ca",
        "issue",
        tmp_path / "ca",
        "--namespace",
        "default",
        "--service-account",
        "bookinfo-details",
        "--lifetime",
        "1h",
        "--out",
        tmp_path / "details",
    )
    assert (code, err) == (0, "")
    issued = WorkloadCertificate.from_directory(tmp_path / "details")
    assert issued.spiffe_id == SpiffeId("cluster.local", "default", "bookinfo-details")
    assert "spiffe id:    spiffe://cluster.local/ns/default/sa/bookinfo-details" in out
    assert f"expires:      {issued.not_after.isoformat()}" in out
    assert issued.lifetime == timedelta(hours=1, minutes=5)
    assert (tmp_path / "details" / "key.pem").stat().st_mode & 0o777 == 0o600
    key_body = issued.private_key_pem.decode().split("\n")[1]
    assert "PRIVATE" not in out
    assert key_body not in out


def test_init_with_a_trust_domain_and_refusal_to_overwrite(tmp_path: Path, capsys: Capsys) -> None:
    assert run(capsys, "ca", "init", tmp_path, "--trust-domain", "example.org")[0] == 0
    assert CertificateAuthority.load(tmp_path).trust_domain == "example.org"
    code, out, err = run(capsys, "ca", "init", tmp_path)
    assert code == 1
    assert out == ""
    assert "already holds a CA" in err
    assert "--force" in err
    assert run(capsys, "ca", "init", tmp_path, "--force")[0] == 0
    assert CertificateAuthority.load(tmp_path).trust_domain == "cluster.local"


def test_issue_errors_are_one_line_and_exit_1(tmp_path: Path, capsys: Capsys) -> None:
    code, _, err = run(
        capsys, "ca", "issue", tmp_path / "none", "-n", "a", "-a", "b", "-o", tmp_path
    )
    assert code == 1
    assert err.startswith("meshctl ca issue: cannot read")
    run(capsys, "ca", "init", tmp_path / "ca")
    code, _, err = run(capsys, "ca", "issue", tmp_path / "ca", "-n", "Bad", "-a", "b", "-o", "x")
    assert code == 1
    assert "invalid namespace 'Bad'" in err
    (tmp_path / "ca" / "ca-key.pem").chmod(0o644)
    code, _, err = run(capsys, "ca", "issue", tmp_path / "ca", "-n", "a", "-a", "b", "-o", "x")
    assert code == 1
    assert "chmod 600" in err


@pytest.mark.parametrize("lifetime", ["0s", "soon", "-1h"])
def test_a_bad_lifetime_is_a_usage_error(tmp_path: Path, capsys: Capsys, lifetime: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["ca", "init", str(tmp_path), f"--lifetime={lifetime}"])
    assert caught.value.code == 2
    assert "--lifetime" in capsys.readouterr().err


def test_ca_alone_prints_help(capsys: Capsys) -> None:
    code, out, _ = run(capsys, "ca")
    assert code == 2
    assert "init" in out
    assert "issue" in out
