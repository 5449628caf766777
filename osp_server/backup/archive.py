"""The backup archive: one tar file with a manifest, the keys encrypted with a passphrase.

Members (each optional except the manifest):

- ``manifest.json``: format, version, when, the engine and schema revision, and for
  every member its SHA-256 and whether it is encrypted;
- ``database.sqlite3``: a consistent copy of a SQLite database (SQLite's online backup
  API); a PostgreSQL database is backed up with ``pg_dump`` instead (README);
- ``ca.pem``, ``tls.pem``, ``tokens.pem``, ``ocsp.pem``: certificates, as they are;
- ``ca.key``, ``tls.key``, ``tokens.key``, ``ocsp.key``: private keys, encrypted
  (AES-256-GCM under a key derived from the passphrase with scrypt, the member name as
  associated data);
- ``journal.log``: the certificate journal, copied after the database, so that it holds
  everything the database copy does and more.

Reading trusts nothing: only the names above, regular files, sizes within limits, and
every checksum verified (and every key decrypted) before anything is restored.
Blocking code: osp-admin runs it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import tarfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from osp_server.pki.files import fsync_directory

FORMAT: Final = "osp-server-backup"
VERSION: Final = 1
MANIFEST: Final = "manifest.json"
MANIFEST_MAC: Final = "manifest.mac"
DATABASE: Final = "database.sqlite3"
JOURNAL: Final = "journal.log"
CERTIFICATES: Final = ("ca.pem", "tls.pem", "tokens.pem", "ocsp.pem")
KEYS: Final = ("ca.key", "tls.key", "tokens.key", "ocsp.key")
MEMBERS: Final = (DATABASE, JOURNAL, *CERTIFICATES, *KEYS)

MIN_PASSPHRASE_CHARS: Final = 12
MAX_MANIFEST_BYTES: Final = 64 * 1024
MAX_SMALL_MEMBER_BYTES: Final = 1 << 20
"""Keys and certificates are a few KiB; the journal and database have no such cap."""

# scrypt at 128 MiB and about half a second: one derivation per backup or restore,
# and an offline guess at the passphrase costs the same.
SCRYPT_N: Final = 1 << 17
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_NONCE_BYTES: Final = 12


class BackupError(Exception):
    """The archive cannot be written or read: the message says which and why."""


def check_passphrase(passphrase: str) -> bytes:
    """The passphrase as bytes, or :class:`BackupError` when it is too short to guard
    a CA key."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise BackupError(
            f"the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters "
            f"(got {len(passphrase)})"
        )
    return passphrase.encode("utf-8")


@dataclass(frozen=True)
class KeyDerivation:
    """The scrypt parameters and salt the archive's key is derived with."""

    salt: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    @classmethod
    def fresh(cls) -> KeyDerivation:
        """New parameters with a random salt (one per archive)."""
        return cls(salt=os.urandom(_SALT_BYTES))

    def derive(self, passphrase: bytes) -> ArchiveKeys:
        """The keys derived from ``passphrase``: one seals the private keys, the other
        authenticates the manifest (and through its checksums, every member)."""
        kdf = Scrypt(salt=self.salt, length=64, n=self.n, r=self.r, p=self.p)
        material = kdf.derive(passphrase)
        return ArchiveKeys(cipher=AESGCM(material[:32]), mac_key=material[32:])

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``kdf`` object."""
        return {
            "name": "scrypt",
            "salt": base64.b64encode(self.salt).decode(),
            "n": self.n,
            "r": self.r,
            "p": self.p,
        }

    @classmethod
    def from_json(cls, document: object) -> KeyDerivation:
        """Read the manifest's ``kdf`` object; bounded so that a hostile archive cannot
        make the derivation take all memory or forever."""
        if not isinstance(document, dict) or document.get("name") != "scrypt":
            raise BackupError("manifest: kdf is not scrypt")
        try:
            salt = base64.b64decode(str(document["salt"]), validate=True)
            n, r, p = document["n"], document["r"], document["p"]
        except (KeyError, ValueError, TypeError):
            raise BackupError("manifest: unreadable kdf parameters") from None
        if not all(type(v) is int for v in (n, r, p)):
            raise BackupError("manifest: scrypt parameters must be integers")
        # At most 256 MiB of memory (128 * n * r) and p 1-2: a hostile archive cannot
        # make the derivation exhaust the machine.
        if not (
            1 << 14 <= n <= 1 << 18
            and n & (n - 1) == 0
            and 1 <= r <= 16
            and 128 * n * r <= 256 << 20
            and 1 <= p <= 2
        ):
            raise BackupError(f"manifest: scrypt parameters out of range (n={n}, r={r}, p={p})")
        if not 8 <= len(salt) <= 64:
            raise BackupError("manifest: bad scrypt salt")
        return cls(salt=salt, n=n, r=r, p=p)


@dataclass(frozen=True)
class ArchiveKeys:
    """What the passphrase unlocks: the cipher for private keys, the manifest MAC key."""

    cipher: AESGCM
    mac_key: bytes

    def mac(self, manifest: bytes) -> bytes:
        """The manifest's authentication tag (HMAC-SHA-256)."""
        return hmac.new(self.mac_key, manifest, hashlib.sha256).digest()


def encrypt(cipher: AESGCM, name: str, plaintext: bytes) -> bytes:
    """``plaintext`` sealed for member ``name``: nonce then ciphertext and tag."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, plaintext, name.encode())


def decrypt(cipher: AESGCM, name: str, sealed: bytes) -> bytes:
    """The plaintext of member ``name``, or :class:`BackupError` (wrong passphrase, or
    the member was altered or moved)."""
    try:
        return cipher.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], name.encode())
    except (InvalidTag, ValueError):
        raise BackupError(
            f"{name}: cannot decrypt: wrong passphrase, or the archive was altered"
        ) from None


@dataclass
class Manifest:
    """What the archive holds (``members``: name -> {"sha256", "size", "encrypted"})."""

    created_at: datetime
    engine: str
    schema_revision: str | None
    kdf: KeyDerivation
    members: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The manifest as JSON."""
        document = {
            "format": FORMAT,
            "version": VERSION,
            "created_at": self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "engine": self.engine,
            "schema_revision": self.schema_revision,
            "kdf": self.kdf.to_json(),
            "members": self.members,
        }
        return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Read and check a manifest."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise BackupError("manifest.json is not JSON") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise BackupError("not an osp-server backup (manifest format)")
        if document.get("version") != VERSION:
            raise BackupError(
                f"backup format version {document.get('version')!r}: this server reads {VERSION}"
            )
        members = document.get("members")
        if not isinstance(members, dict):
            raise BackupError("manifest: no members")
        for name, entry in members.items():
            if name not in MEMBERS:
                raise BackupError(f"manifest: unknown member {name!r}")
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("size"), int)
            ):
                raise BackupError(f"manifest: bad entry for {name}")
            if bool(entry.get("encrypted")) != (name in KEYS):
                raise BackupError(
                    f"manifest: {name} must {'' if name in KEYS else 'not '}be encrypted"
                )
        try:
            created_at = datetime.strptime(str(document["created_at"]), "%Y-%m-%dT%H:%M:%SZ")
        except (KeyError, ValueError):
            raise BackupError("manifest: bad created_at") from None
        engine = document.get("engine")
        revision = document.get("schema_revision")
        # "none": a CA export (osp_server.backup.ca_transfer), no database involved.
        if engine not in ("sqlite", "postgresql", "none") or not (
            revision is None or isinstance(revision, str)
        ):
            raise BackupError("manifest: bad engine or schema revision")
        return cls(
            created_at=created_at.replace(tzinfo=UTC),
            engine=engine,
            schema_revision=revision,
            kdf=KeyDerivation.from_json(document.get("kdf")),
            members=members,
        )


def create_private_file(path: Path) -> int:
    """A new file at ``path`` (0600) opened for writing: never an existing file or a
    symlink someone put there (a shared directory such as /tmp)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} exists (left by an interrupted run?): remove it") from None


class _HashingReader:
    """``handle``'s ``read``, with the SHA-256 of everything read so far."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        return data


class ArchiveWriter:
    """Builds an archive at ``path`` (0600, written to a temporary name and renamed
    into place once complete and fsynced, so a failed backup leaves nothing)."""

    def __init__(self, path: Path, manifest: Manifest, keys: ArchiveKeys) -> None:
        self.path = path
        self.manifest = manifest
        self._keys = keys
        self._tmp = path.with_name(f".{path.name}.partial")
        fd = create_private_file(self._tmp)
        os.fchmod(fd, 0o600)  # whatever the umask
        self._file = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)

    def add_bytes(self, name: str, data: bytes) -> None:
        """Add member ``name`` (keys are encrypted here)."""
        assert name in MEMBERS, name
        encrypted = name in KEYS
        payload = encrypt(self._keys.cipher, name, data) if encrypted else data
        self._add(name, io.BytesIO(payload), len(payload))
        self.manifest.members[name] = {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
            "encrypted": encrypted,
        }

    def add_file(self, name: str, source: Path) -> None:
        """Add a large unencrypted member from a file, streamed."""
        assert name in MEMBERS and name not in KEYS, name
        size = source.stat().st_size
        with source.open("rb") as handle:
            # Hashed as tar copies it: the file (a database, gigabytes) is read once.
            reader = _HashingReader(handle)
            self._add(name, reader, size)
        self.manifest.members[name] = {
            "sha256": reader.digest.hexdigest(),
            "size": size,
            "encrypted": False,
        }

    def _add(self, name: str, data: IO[bytes] | _HashingReader, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o600
        info.mtime = int(self.manifest.created_at.timestamp())
        self._tar.addfile(info, data)

    def finish(self) -> None:
        """Write the manifest and its MAC last, make it durable, rename into place."""
        manifest = self.manifest.to_bytes()
        self._add(MANIFEST, io.BytesIO(manifest), len(manifest))
        tag = self._keys.mac(manifest)
        self._add(MANIFEST_MAC, io.BytesIO(tag), len(tag))
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        # A hard link fails if the name was taken meanwhile: an archive never replaces
        # a file (os.replace would).
        try:
            os.link(self._tmp, self.path)
        except FileExistsError:
            self._tmp.unlink(missing_ok=True)
            raise BackupError(f"{self.path} exists: choose a new name") from None
        self._tmp.unlink()
        fsync_directory(self.path.parent)

    def abort(self) -> None:
        """Drop the partial archive."""
        try:
            self._tar.close()
        finally:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


@dataclass
class OpenedArchive:
    """A verified archive: its manifest, the decrypted keys and small members, and the
    database copy extracted to a temporary file (removed by :func:`open_archive`)."""

    manifest: Manifest
    small: Mapping[str, bytes]
    database: Path | None


@contextmanager
def open_archive(path: Path, passphrase: bytes, scratch: Path) -> Iterator[OpenedArchive]:
    """Read and verify ``path``: checksums, then keys decrypted.  The database member
    is extracted into ``scratch`` (a directory on the database's file system, so the
    restore can rename it into place); it is removed on exit unless moved away."""
    try:
        tar = tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as e:
        raise BackupError(f"{path}: not a readable backup archive ({e})") from None
    extracted: Path | None = None
    try:
        with tar:
            members = _regular_members(tar)
            raw_manifest = _read(tar, members, MANIFEST, MAX_MANIFEST_BYTES)
            manifest = Manifest.from_bytes(raw_manifest)
            # The manifest carries every member's checksum: authenticated first, so
            # that nothing in the archive can be altered (a journal line added, a
            # database swapped) without the passphrase.
            keys = manifest.kdf.derive(passphrase)
            tag = _read(tar, members, MANIFEST_MAC, 64) if MANIFEST_MAC in members else b""
            if not hmac.compare_digest(tag, keys.mac(raw_manifest)):
                raise BackupError(
                    f"{path}: the archive does not authenticate: wrong passphrase, or it "
                    "was altered"
                )
            small: dict[str, bytes] = {}
            for name, entry in manifest.members.items():
                if name not in members:
                    raise BackupError(f"{path}: {name} is listed but missing")
                if members[name].size != entry["size"]:
                    raise BackupError(f"{name}: size differs from the manifest")
                if name == DATABASE:
                    extracted = scratch / f".osp-restore-{os.getpid()}.sqlite3"
                    _extract(tar, members[name], extracted, entry)
                    continue
                limit = None if name == JOURNAL else MAX_SMALL_MEMBER_BYTES
                data = _read(tar, members, name, limit)
                _check(name, data, entry)
                small[name] = data
            for name in KEYS:
                if name in small:
                    small[name] = decrypt(keys.cipher, name, small[name])
        yield OpenedArchive(manifest=manifest, small=small, database=extracted)
    finally:
        if extracted is not None:
            extracted.unlink(missing_ok=True)


def _regular_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    try:
        for info in tar:
            if info.name not in (MANIFEST, MANIFEST_MAC, *MEMBERS):
                raise BackupError(f"unexpected member {info.name[:80]!r} in the archive")
            if not info.isreg() or info.issparse():
                raise BackupError(f"member {info.name} is not a regular file")
            if info.name in members:
                raise BackupError(f"member {info.name} appears twice")
            members[info.name] = info
    except tarfile.TarError as e:
        raise BackupError(f"damaged archive: {e}") from None
    if MANIFEST not in members:
        raise BackupError("no manifest.json: not an osp-server backup")
    return members


def _read(
    tar: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], name: str, limit: int | None
) -> bytes:
    info = members[name]
    if limit is not None and info.size > limit:
        raise BackupError(f"{name}: {info.size} bytes, more than {limit}")
    handle = tar.extractfile(info)
    if handle is None:
        raise BackupError(f"{name}: unreadable")
    try:
        return handle.read()
    except (OSError, tarfile.TarError) as e:
        raise BackupError(f"{name}: damaged ({e})") from None


def _check(name: str, data: bytes, entry: Mapping[str, Any]) -> None:
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise BackupError(f"{name}: checksum mismatch: the archive is damaged or was altered")


def _extract(
    tar: tarfile.TarFile, info: tarfile.TarInfo, target: Path, entry: Mapping[str, Any]
) -> None:
    handle = tar.extractfile(info)
    if handle is None:
        raise BackupError(f"{info.name}: unreadable")
    digest = hashlib.sha256()
    target.unlink(missing_ok=True)  # our own name in a private directory
    fd = create_private_file(target)
    with os.fdopen(fd, "wb") as out:
        try:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        except (OSError, tarfile.TarError) as e:
            raise BackupError(f"{info.name}: damaged ({e})") from None
        out.flush()
        os.fsync(out.fileno())
    if info.size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise BackupError(f"{info.name}: checksum mismatch: the archive is damaged or was altered")
