"""osp-enroll renew's file handling: a run interrupted between its two renames is
finished by the next one; debris of a failed run never replaces a good pair."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from osp_server.client.enroll import EnrollError, _key_pem
from osp_server.client.enroll import main as osp_enroll
from osp_server.client.renew import _device_ids, finish_interrupted


def _pair(cn: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "customer 1000"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "device 42"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    key, cert = _pair("old")
    (tmp_path / "pkey.pem").write_bytes(key)
    (tmp_path / "localcert.pem").write_bytes(cert)
    return tmp_path


def test_nothing_to_finish(out: Path) -> None:
    assert finish_interrupted(out) is False


def test_both_new_files_are_installed(out: Path) -> None:
    key, cert = _pair("new")
    (out / "pkey.pem.new").write_bytes(key)
    (out / "localcert.pem.new").write_bytes(cert)
    assert finish_interrupted(out) is True
    assert (out / "pkey.pem").read_bytes() == key
    assert (out / "localcert.pem").read_bytes() == cert
    assert not list(out.glob("*.new"))


def test_the_certificate_follows_a_key_already_renamed(out: Path) -> None:
    key, cert = _pair("new")
    (out / "pkey.pem").write_bytes(key)
    (out / "localcert.pem.new").write_bytes(cert)
    assert finish_interrupted(out) is True
    assert (out / "localcert.pem").read_bytes() == cert


def test_debris_is_removed_and_the_old_pair_kept(out: Path) -> None:
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _, stray = _pair("other")
    (out / "localcert.pem.new").write_bytes(stray)
    (out / "pkey.pem.new").write_bytes(b"garbage")
    assert finish_interrupted(out) is False
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_device_ids_come_from_the_subject(out: Path) -> None:
    cert = x509.load_pem_x509_certificate((out / "localcert.pem").read_bytes())
    assert _device_ids(cert) == ("1000", "42")
    foreign = x509.load_pem_x509_certificate(_pair("x")[1])
    other = foreign.subject.rfc4514_string()
    assert "customer 1000" in other  # same shape, accepted
    from tests.integration.test_osp import self_signed

    _, plain = self_signed("gw", ca=False)
    with pytest.raises(EnrollError, match="not an osp-server device certificate"):
        _device_ids(plain)


def test_renew_needs_https_and_readable_files(tmp_path: Path) -> None:
    assert osp_enroll(["renew", "--url", "http://127.0.0.1:1/tep", "--out-dir", str(tmp_path)]) == 2
    assert (
        osp_enroll(["renew", "--url", "https://127.0.0.1:1/tep", "--out-dir", str(tmp_path)]) == 12
    )


def test_the_timer_example_runs_a_valid_command() -> None:
    """etc/device/osp-enroll-renew.service: its ExecStart parses as osp-enroll renew."""
    import shlex

    from osp_server.client.renew import build_parser

    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "etc" / "device" / "osp-enroll-renew.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0].endswith("osp-enroll") and argv[1] == "renew"
    args = build_parser().parse_args(argv[2:])
    assert args.url.startswith("https://") and args.out_dir
    timer = (repo / "etc" / "device" / "osp-enroll-renew.timer").read_text()
    assert "OnCalendar=daily" in timer


def test_then_runs_only_a_real_command(tmp_path: Path) -> None:
    from osp_server.client.renew import _run_then

    marker = tmp_path / "ran"
    assert _run_then(f"touch {marker}") == 0 and marker.exists()
    assert _run_then("false") == 12
    assert _run_then(str(tmp_path / "missing-program")) == 12
