"""Keys in a PKCS#11 token (an HSM, or SoftHSM2): the CA key and the token-signing key.

Configured in ``[pkcs11]`` (module path, token label, PIN file) with a key label per
key (``[ca] pkcs11_key_label``, ``[osp] token_signer_pkcs11_key_label``).  The private
key never leaves the token: :class:`PKCS11Key` implements
:class:`~osp_server.pki.keys.ExternalKey`, and :mod:`osp_server.pki.keys` assembles
what it signs.  RSA (PKCS#1 v1.5 with SHA-256, or MD5 for the legacy profile where the
token offers CKM_MD5_RSA_PKCS, as SoftHSM2 does) and EC P-256 (ECDSA with SHA-256).

One logged-in session per token and process (PKCS#11 logs an application in once),
used under a lock: signing runs on the CPU pool's threads, and a session must not be
used by two at once.  Blocking: call from a
thread (or at start-up).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key

from osp_server.config import PKCS11Config
from osp_server.pki.keys import HashName, PublicKey
from osp_server.pki.profile import KeyType

MAX_PIN_FILE_BYTES = 4096


class PKCS11Error(Exception):
    """The token, the key or the PIN cannot be used; the message says which and why."""


def read_pin(path: Path) -> str:
    """The user PIN: the file's first line; refused when group or others may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise PKCS11Error(f"{path}: cannot open the PIN file: {e.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PKCS11Error(f"{path}: the PIN file is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise PKCS11Error(
                f"{path}: the PIN file is readable by group or others; chmod 600 {path}"
            )
        data = handle.read(MAX_PIN_FILE_BYTES + 1)
    lines = data.decode("utf-8", "replace").splitlines()
    if len(data) > MAX_PIN_FILE_BYTES or not lines or not lines[0]:
        raise PKCS11Error(f"{path}: the PIN file must hold the PIN on its first line")
    return lines[0]


def _library() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise PKCS11Error(
            "PKCS#11 keys need python-pkcs11: pip install 'osp-server[hsm]'"
        ) from None
    return pkcs11


class PKCS11Key:
    """A private key in a PKCS#11 token, found by its label (ExternalKey)."""

    def __init__(self, config: PKCS11Config, label: str, *, generate: KeyType | None = None):
        pkcs11 = _library()
        self._config = config
        self._label = label
        self._session, self._lock = _logged_in(config)
        with self._lock:
            try:
                self._private, self._public = self._find(pkcs11)
            except PKCS11Error:
                if generate is None:
                    raise
                self._private, self._public = self._generate(pkcs11, generate)
            self._public_key = _public_key(pkcs11, self._public)

    @property
    def description(self) -> str:
        """Where the key is."""
        return f"PKCS#11 key {self._label!r} in token {self._config.token_label!r}"

    def _find(self, pkcs11: Any) -> tuple[Any, Any]:
        try:
            private = self._session.get_key(
                object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=self._label
            )
            public = self._session.get_key(
                object_class=pkcs11.ObjectClass.PUBLIC_KEY, label=self._label
            )
        except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as e:
            raise PKCS11Error(
                f"{self.description}: {type(e).__name__} (a private and a public key "
                "with that label are needed)"
            ) from None
        return private, public

    def _generate(self, pkcs11: Any, key_type: KeyType) -> tuple[Any, Any]:
        private_template = {
            pkcs11.Attribute.SENSITIVE: True,
            pkcs11.Attribute.EXTRACTABLE: False,
            pkcs11.Attribute.SIGN: True,
        }
        if key_type == "ec-p256":
            from pkcs11.util.ec import encode_named_curve_parameters

            parameters = self._session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            public, private = parameters.generate_keypair(
                store=True, label=self._label, private_template=private_template
            )
        else:
            bits = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}[key_type]
            public, private = self._session.generate_keypair(
                pkcs11.KeyType.RSA,
                bits,
                store=True,
                label=self._label,
                private_template=private_template,
            )
        return private, public

    def _reconnect(self, pkcs11: Any) -> None:
        _forget(self._config, self._session)
        self._session, self._lock = _logged_in(self._config)
        with self._lock:
            self._private, self._public = self._find(pkcs11)

    def public_key(self) -> PublicKey:
        """The public half, as ``cryptography`` holds it."""
        return self._public_key

    def sign_bytes(self, data: bytes, hash_name: HashName) -> bytes:
        """``data`` signed in the token (ExternalKey)."""
        pkcs11 = _library()
        if isinstance(self._public_key, rsa.RSAPublicKey):
            mechanism = {
                "sha256": pkcs11.Mechanism.SHA256_RSA_PKCS,
                "md5": pkcs11.Mechanism.MD5_RSA_PKCS,
            }[hash_name]
        elif hash_name == "sha256":
            # CKM_ECDSA over the digest: every token has it (SoftHSM2 lacks the
            # hashing CKM_ECDSA_SHA256).
            mechanism = pkcs11.Mechanism.ECDSA
            data = hashlib.sha256(data).digest()
        else:
            raise PKCS11Error(f"{self.description}: EC keys sign with SHA-256 only")
        try:
            with self._lock:
                signature: bytes = self._private.sign(data, mechanism=mechanism)
        except _lost_session_errors(pkcs11):
            # The token was restarted or the session dropped: log in again, once.
            self._reconnect(pkcs11)
            with self._lock:
                signature = self._private.sign(data, mechanism=mechanism)
        if isinstance(self._public_key, ec.EllipticCurvePublicKey):
            # PKCS#11 returns r || s; X.509 and PKCS#7 carry ECDSA-Sig-Value (DER).
            half = len(signature) // 2
            return encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
        return signature


_SESSIONS: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
_SESSIONS_LOCK = threading.Lock()


def _logged_in(config: PKCS11Config) -> tuple[Any, threading.Lock]:
    """The process's one logged-in session with the token, and the lock that guards it
    (PKCS#11 logs in per application: a second login fails as already logged in)."""
    pkcs11 = _library()
    key = (str(config.module), config.token_label)
    with _SESSIONS_LOCK:
        if key in _SESSIONS:
            return _SESSIONS[key]
        try:
            library = pkcs11.lib(str(config.module))
            token = library.get_token(token_label=config.token_label)
        except Exception as e:
            raise PKCS11Error(
                f"PKCS#11 module {config.module}: no token labelled {config.token_label!r} ({e!r})"
            ) from None
        try:
            session = token.open(user_pin=read_pin(config.pin_file), rw=True)
        except PKCS11Error:
            raise
        except Exception as e:
            raise PKCS11Error(
                f"token {config.token_label!r}: cannot log in with the PIN in "
                f"{config.pin_file} ({e!r})"
            ) from None
        _SESSIONS[key] = (session, threading.Lock())
        return _SESSIONS[key]


def _lost_session_errors(pkcs11: Any) -> tuple[type[Exception], ...]:
    e = pkcs11.exceptions
    return (
        e.SessionHandleInvalid,
        e.SessionClosed,
        e.DeviceRemoved,
        e.TokenNotPresent,
        e.UserNotLoggedIn,
    )


def _forget(config: PKCS11Config, session: Any) -> None:
    """Drop the cached session (if it is still this one): the next use logs in again."""
    key = (str(config.module), config.token_label)
    with _SESSIONS_LOCK:
        if key in _SESSIONS and _SESSIONS[key][0] is session:
            del _SESSIONS[key]
    try:
        session.close()
    except Exception:
        pass  # already gone with the token


def _public_key(pkcs11: Any, public: Any) -> PublicKey:
    if public.key_type == pkcs11.KeyType.RSA:
        return rsa.RSAPublicNumbers(
            int.from_bytes(public[pkcs11.Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(public[pkcs11.Attribute.MODULUS], "big"),
        ).public_key()
    if public.key_type == pkcs11.KeyType.EC:
        from pkcs11.util.ec import encode_ec_public_key

        key = load_der_public_key(encode_ec_public_key(public))
        if isinstance(key, ec.EllipticCurvePublicKey):
            return key
    raise PKCS11Error(f"PKCS#11 key type {public.key_type} is not supported (RSA or EC)")
