"""The OCSP responder's certificate and answers, and where issued certificates say the
CRL and the responder are; checked with pkilint and with openssl as a relying party."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from osp_server.pki import ocsp as responder_pki
from osp_server.pki.ca import CertificateAuthority, create_ca
from osp_server.pki.ocsp import CertificateStatus, OCSPRequestError, Responder
from osp_server.pki.profile import toolkit_compatibility_problems
from tests.unit.test_pki_ca import NOW
from tests.unit.test_pki_csr import build_csr
from tests.unit.test_pki_issue import DEVICE, SUBJECT, YEAR, der, lint_errors, write_pem

OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Path]:
    base = tmp_path_factory.mktemp("ocsp")
    ca = create_ca(
        base / "ca.key",
        base / "ca.pem",
        key_type="rsa2048",
        subject=SUBJECT,
        validity=10 * YEAR,
        profile="secure",
        now=NOW,
    )
    return ca, base


@pytest.fixture(scope="module")
def responder(setting: tuple[CertificateAuthority, Path]) -> Responder:
    ca, _ = setting
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = ca.issue_ocsp_responder(key.public_key(), validity=timedelta(days=90), now=NOW)
    return Responder.delegated(ca.certificate, cert, key)


def _device(ca: CertificateAuthority, *, published: str | None = None) -> x509.Certificate:
    from osp_server.pki.csr import validate_csr

    ca.publish_at(published)
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = validate_csr(build_csr(key), profile="secure")
        return ca.issue_device_certificate(csr, DEVICE, validity=YEAR, now=NOW)
    finally:
        ca.publish_at(None)


def test_responder_certificate_profile(responder: Responder) -> None:
    cert = responder.certificate
    assert lint_errors(der(cert)) == []
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert cert.subject.rfc4514_string() == "CN=OSP Issuing CA OCSP"
    cert.verify_directly_issued_by(responder.ca)


def test_publication_in_issued_certificates(setting: tuple[CertificateAuthority, Path]) -> None:
    ca, _ = setting
    plain = _device(ca)
    with pytest.raises(x509.ExtensionNotFound):
        plain.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    published = _device(ca, published="http://osp.example.net:5045/")
    points = published.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [p.full_name for p in points] == [
        [x509.UniformResourceIdentifier(f"http://osp.example.net:5045/crl/{ca.key_id_hex}")]
    ]
    access = published.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method, a.access_location.value) for a in access] == [
        (x509.oid.AuthorityInformationAccessOID.OCSP, "http://osp.example.net:5045/ocsp")
    ]
    assert lint_errors(der(published)) == []
    # The toolkit leaves extension contents alone: still a certificate it reads.
    assert toolkit_compatibility_problems(der(published)) == ()


def _request(
    cert: x509.Certificate, issuer: x509.Certificate, *, nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_answers_good_revoked_unknown(
    setting: tuple[CertificateAuthority, Path], responder: Responder
) -> None:
    ca, _ = setting
    device = _device(ca)
    request = responder_pki.parse_request(_request(device, ca.certificate, nonce=b"n" * 16))
    assert responder_pki.asks_about(request, ca.certificate)
    good = ocsp.load_der_ocsp_response(
        responder_pki.build_response(request, CertificateStatus("good"), responder, now=NOW)
    )
    assert good.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == device.serial_number
    assert good.next_update_utc == NOW + responder_pki.NEXT_UPDATE
    assert good.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    assert good.certificates == [responder.certificate]
    revoked = ocsp.load_der_ocsp_response(
        responder_pki.build_response(
            request,
            CertificateStatus("revoked", NOW, x509.ReasonFlags.key_compromise),
            responder,
            now=NOW,
        )
    )
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
    assert revoked.revocation_time_utc == NOW
    unknown = ocsp.load_der_ocsp_response(
        responder_pki.build_response(request, CertificateStatus("unknown"), responder, now=NOW)
    )
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


def test_bad_and_foreign_requests(
    setting: tuple[CertificateAuthority, Path], responder: Responder, tmp_path: Path
) -> None:
    ca, _ = setting
    for garbage in (b"", b"\x30\x03\x02\x01\x01", b"x" * 9000):
        with pytest.raises(OCSPRequestError) as caught:
            responder_pki.parse_request(garbage)
        assert caught.value.status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    other = create_ca(
        tmp_path / "o.key",
        tmp_path / "o.pem",
        key_type="ec-p256",
        subject=SUBJECT,  # the same name: only the key hash tells them apart
        validity=YEAR,
        profile="secure",
        now=NOW,
    )
    foreign = responder_pki.parse_request(_request(_device(other), other.certificate))
    assert not responder_pki.asks_about(foreign, ca.certificate)
    answer = ocsp.load_der_ocsp_response(
        responder_pki.unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    )
    assert answer.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_openssl_verifies_the_response(
    setting: tuple[CertificateAuthority, Path], responder: Responder, tmp_path: Path
) -> None:
    """openssl ocsp as a relying party: it builds the request, and checks our signed
    response against the CA (through the delegated responder certificate)."""
    from datetime import UTC, datetime

    ca, base = setting
    device = _device(ca)
    device_pem = write_pem(tmp_path / "device.pem", device)
    ca_pem = base / "ca.pem"
    subprocess.run(
        [str(OPENSSL), "ocsp", "-issuer", str(ca_pem), "-cert", str(device_pem),
         "-reqout", str(tmp_path / "req.der"), "-no_nonce"],
        check=True, capture_output=True,
    )  # fmt: skip
    request = responder_pki.parse_request((tmp_path / "req.der").read_bytes())
    for status, expected in (
        (CertificateStatus("good"), ": good"),
        (
            CertificateStatus("revoked", NOW, x509.ReasonFlags.cessation_of_operation),
            "Reason: cessationOfOperation",
        ),
    ):
        (tmp_path / "resp.der").write_bytes(
            responder_pki.build_response(request, status, responder, now=datetime.now(UTC))
        )
        result = subprocess.run(
            [str(OPENSSL), "ocsp", "-respin", str(tmp_path / "resp.der"), "-issuer",
             str(ca_pem), "-cert", str(device_pem), "-CAfile", str(ca_pem)],
            capture_output=True, text=True,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert "Response verify OK" in output, output
        assert expected in output, output


def test_a_repeated_extension_is_a_malformed_request(
    setting: tuple[CertificateAuthority, Path],
) -> None:
    """Two nonces: refused as malformedRequest when parsed, not an error later."""
    from osp_server.pki.der import children, encode_tlv, read_single

    ca, _ = setting
    der = _request(_device(ca), ca.certificate, nonce=b"n" * 16)
    top = read_single(der, 0x30)
    (tbs,) = children(der, top)
    request_list, explicit = children(der, tbs)
    (extensions,) = children(der, explicit)
    (extension,) = children(der, extensions)
    one = der[extension.start : extension.end]
    doubled = encode_tlv(
        0x30,
        encode_tlv(
            0x30,
            der[request_list.start : request_list.end]
            + encode_tlv(0xA2, encode_tlv(0x30, one + one)),
        ),
    )
    with pytest.raises(OCSPRequestError) as caught:
        responder_pki.parse_request(doubled)
    assert caught.value.status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
