"""Start-up of token signing: the signer's files, and a token factory checked against
``[osp] max_token_bytes`` before the first call is answered."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from twisted.logger import Logger

from osp_server.config import OSPConfig
from osp_server.osp.tokens import (
    DEFAULT_MAX_TOKEN_BYTES,
    CallIdDropped,
    TokenError,
    TokenFactory,
    TokenFormat,
    TokenSigner,
    reference_claims,
)
from osp_server.pki.ca import CertificateAuthority, is_compact_token_signer
from osp_server.pki.keys import ExternalKey
from osp_server.pki.profile import KeyType
from osp_server.tls.issued import IssuedFiles

log = Logger()

TOKEN_SIGNER_VALIDITY = timedelta(days=730)
# Short: the signer's subject travels inside every signed token.
TOKEN_SIGNER_NAME = "OSP tokens"


class TokenSetupError(Exception):
    """The configured default token format cannot fit the configured size limit."""


def token_signer_paths(data_dir: Path) -> tuple[Path, Path]:
    """(certificate, key) of the token signer in ``data_dir``."""
    directory = data_dir / "tokens"
    return directory / "signer.pem", directory / "signer.key"


def token_signer_files(data_dir: Path, osp: OSPConfig, ca: CertificateAuthority) -> IssuedFiles:
    """The token-signing key and certificate (EC P-256 by default), issued by our CA.

    Our own signer certificate is re-issued at start when it is not compact (an
    earlier version's, ~100 bytes larger in every signed token); an operator's is
    used as it is, and the start-up size check judges it.
    """
    cert_file, key_file = token_signer_paths(data_dir)
    key_type: KeyType = "ec-p256" if osp.token_signer_key == "ec-p256" else "rsa2048"
    return IssuedFiles(
        cert_file=cert_file,
        key_file=key_file,
        key_type=key_type,
        external_key=_token_key(osp, key_type),
        kind="token_signer",
        issue=lambda key, now: ca.issue_token_signer(
            key.public_key(),
            common_name=TOKEN_SIGNER_NAME,
            validity=TOKEN_SIGNER_VALIDITY,
            now=now,
        ),
        current=is_compact_token_signer,
        # Devices verify tokens against the CAs they know: the signer of the superseded
        # CA signs on through a rollover, and is renewed from the new one when due.
        follows_rollover=False,
    )


def _token_key(osp: OSPConfig, key_type: KeyType) -> Callable[[], ExternalKey] | None:
    """The token signer's key in the ``[pkcs11]`` token, when configured (generated there
    when absent)."""
    label, token = osp.token_signer_pkcs11_key_label, osp.token_signer_pkcs11
    if label is None or token is None:
        return None

    def find() -> ExternalKey:
        from osp_server.pki.pkcs11 import PKCS11Key

        return PKCS11Key(token, label, generate=key_type)

    return find


def log_call_id_dropped(event: CallIdDropped) -> None:
    """Log a token sent with CallId UNDEFINED because the Call-ID made it too large."""
    log.warn(
        "token_call_id_dropped: {token_format} token for transaction {transaction_id} did "
        "not fit with its {call_id_bytes}-byte Call-ID ({reason}); sent {size} bytes with "
        "CallId UNDEFINED (limit {limit}), so the terminating device skips the Call-ID check",
        token_format=event.token_format,
        transaction_id=event.transaction_id,
        call_id_bytes=event.call_id_bytes,
        reason=event.reason,
        size=event.size,
        limit=event.limit,
    )


def _size_advice(fmt: TokenFormat) -> str:
    if fmt == "signed":
        return (
            'use an EC P-256 or RSA-2048 CA with token_signer_key = "ec-p256", or '
            'osp.token_format = "xml" or "ascii", or raise osp.max_token_bytes (up to 3000) '
            "only if every validating device is Asterisk (4,096-byte buffer)"
        )
    return "raise osp.max_token_bytes"


def build_token_factory(
    osp: OSPConfig, signer: TokenSigner, *, now: datetime, source: str
) -> TokenFactory:
    """The token factory, checked against ``[osp] max_token_bytes``.

    A reference token (OpenSIPS-shaped: 11-digit numbers, a 40-byte Call-ID) in the
    default format must fit, or :class:`TokenSetupError`: otherwise OpenSIPS/Kamailio
    would drop every token. A customer override format that does not fit is only
    warned about, since its calls still get answers (a token with CallId UNDEFINED, or
    OSP status 400). ``source`` names the config file in the error.
    """
    factory = TokenFactory(
        default_format=osp.token_format,
        signer=signer,
        max_token_bytes=osp.max_token_bytes,
        on_call_id_dropped=log_call_id_dropped,
    )
    claims = reference_claims(now, amount=osp.call_time_limit_seconds)
    limit = factory.max_token_bytes
    formats: tuple[TokenFormat, ...] = ("signed", "xml", "ascii")
    for fmt in formats:
        try:
            size = factory.raw_size(claims, token_format=fmt)
            if size <= limit:
                continue
            problem = f"a reference token (11-digit numbers, 40-byte Call-ID) is {size} bytes"
        except TokenError as e:
            problem = f"a reference token cannot be built ({e})"
        if fmt == osp.token_format:
            raise TokenSetupError(
                f'{source}: osp.token_format = "{fmt}": {problem}, over '
                f"osp.max_token_bytes = {limit} (OpenSIPS and Kamailio drop raw tokens over "
                f"{DEFAULT_MAX_TOKEN_BYTES} bytes); {_size_advice(fmt)}"
            )
        log.warn(
            "{fmt} tokens (customers with --token-format {fmt}) do not fit: {problem}, over "
            "osp.max_token_bytes = {limit}; their tokens may say CallId UNDEFINED, or the "
            "answer is OSP status 400",
            fmt=fmt,
            problem=problem,
            limit=limit,
        )
    return factory
