"""The certificate journal: every issued and revoked serial, outside the database.

A database restored from a backup has forgotten what happened after the backup: a
certificate revoked since would be accepted again, and one issued since would be
unknown.  So every issuance (with the certificate itself) and every revocation is also
appended here, fsynced, after the database committed it and before anyone is told
(the device gets its certificate, the operator sees "revoked").  At start-up, and with
``osp-admin db reconcile``, the journal is replayed into the database
(osp_server.storage.reconcile): nothing in it can be rolled back by a restore.

One JSON object per line, append-only; a line torn by a crash (the last one) is
skipped when read.  Appending the same event twice is harmless: replay is idempotent.
Stdlib only, blocking: callers run it on a thread (or at start-up).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from osp_server.pki.files import fsync_directory, make_private_directory

JOURNAL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024
MAX_SEGMENT_BYTES = 64 << 20
KINDS = ("device", "server", "token_signer", "ocsp_responder")


class JournalError(Exception):
    """The journal cannot be written or read; the message names the file."""


@dataclass(frozen=True)
class JournalEvent:
    """An issued or revoked certificate (``der``, customer and device for issued)."""

    event: Literal["issued", "revoked"]
    serial: str
    at: datetime
    der: bytes | None = None
    customer_id: str | None = None
    device_id: str | None = None
    reason: str | None = None
    kind: str = "device"
    """What the certificate is for (the server's own TLS and token-signer certificates
    are journaled too: after a restore they would look like an operator's, never
    renewed)."""

    def to_line(self) -> bytes:
        """The event as one JSON line."""
        document: dict[str, object] = {
            "v": JOURNAL_VERSION,
            "event": self.event,
            "serial": self.serial,
            "at": self.at.isoformat(),
        }
        if self.der is not None:
            document["der"] = base64.b64encode(self.der).decode("ascii")
        for key in ("customer_id", "device_id", "reason"):
            value = getattr(self, key)
            if value is not None:
                document[key] = value
        if self.kind != "device":
            document["kind"] = self.kind
        return json.dumps(document, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> JournalEvent:
        """Parse one line; ValueError (or KeyError/TypeError) when it is not an event."""
        document = json.loads(line)
        if document.get("v") != JOURNAL_VERSION or document.get("event") not in (
            "issued",
            "revoked",
        ):
            raise ValueError("not a journal event of this version")
        serial = document["serial"]
        if not isinstance(serial, str) or not serial or len(serial) > 42:
            raise ValueError("bad serial")
        der = document.get("der")
        kind = document.get("kind", "device")
        if kind not in KINDS:
            raise ValueError(f"unknown certificate kind {kind!r}")
        return cls(
            kind=kind,
            event=document["event"],
            serial=serial.lower(),
            at=datetime.fromisoformat(document["at"]),
            der=base64.b64decode(der, validate=True) if der is not None else None,
            customer_id=document.get("customer_id"),
            device_id=document.get("device_id"),
            reason=document.get("reason"),
        )


def _owned_like_parent(path: Path, fd: int | None = None) -> None:
    """When running as root (osp-admin by an operator), give a file or directory the
    journal just created to the owner of its parent: otherwise the server, running as
    its own user, could no longer append (a new segment owned by root would fail every
    enrollment)."""
    if os.geteuid() != 0:
        return
    parent = path.parent.stat()
    if fd is not None:
        os.fchown(fd, parent.st_uid, parent.st_gid)
    else:
        os.chown(path, parent.st_uid, parent.st_gid)


class CertificateJournal:
    """The journal file ``path`` (created 0600 in a 0700 directory).

    Once ``path`` holds ``max_segment_bytes``, the next append first renames it to
    ``<name>.<UTC time>`` (a closed segment) and starts a new file.  Closed segments are
    never deleted here: replay after a restore needs every event since the backup, and
    an issuance is only a few KiB.  Reading goes through every segment, oldest first.
    """

    def __init__(self, path: Path, *, max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        self.path = path
        self.max_segment_bytes = max_segment_bytes

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> CertificateJournal:
        """The server's journal: ``<data_dir>/journal/certificates.log``."""
        return cls(data_dir / "journal" / "certificates.log")

    def append(self, events: Iterable[JournalEvent]) -> None:
        """Append ``events`` durably (write, fsync; the directory too when created)."""
        data = b"".join(event.to_line() for event in events)
        if not data:
            return
        try:
            created = make_private_directory(self.path.parent)
            if created:
                _owned_like_parent(self.path.parent)
            fd = self._open_locked()
            try:
                size = os.fstat(fd).st_size
                if size >= self.max_segment_bytes:
                    # Renamed while we hold its lock: a writer waiting on the old file
                    # finds it renamed once it gets the lock, and re-opens.
                    self._close_segment()
                    os.close(fd)
                    fd = -1
                    created = True
                    fd = self._open_locked()
                    size = os.fstat(fd).st_size
                # Decided under the lock: once it is released, another writer may
                # rename the file away.
                created = created or size == 0
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A line torn by a crash: start afresh, or this event would be
                    # glued to it and lost with it.
                    data = b"\n" + data
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                if fd >= 0:
                    os.close(fd)
            if created:
                fsync_directory(self.path.parent)
        except OSError as e:
            raise JournalError(f"certificate journal {self.path}: {e.strerror or e}") from None

    def _open_locked(self) -> int:
        """The current file, opened for appending, under an exclusive lock: workers and
        osp-admin append to the same file, one writer at a time from the torn-line
        check to the fsync, so lines never interleave."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size == 0:
                _owned_like_parent(self.path, fd)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (
                opened.st_ino,
                opened.st_dev,
            ):
                return fd
            # Another process rotated the file between our open and our lock.
            os.close(fd)

    def _close_segment(self) -> None:
        """Rename the current file to ``<name>.<UTC time>`` (caller holds its lock)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        os.rename(self.path, self.path.with_name(f"{self.path.name}.{stamp}"))
        fsync_directory(self.path.parent)

    def segments(self) -> list[Path]:
        """Every file of the journal, oldest first: the closed segments, then the
        current file (when it exists)."""
        closed = sorted(
            p
            for p in self.path.parent.glob(f"{self.path.name}.*")
            if p.name[len(self.path.name) + 1 :].endswith("Z")
        )
        return [*closed, *([self.path] if self.path.exists() else [])]

    def events(self) -> Iterator[JournalEvent]:
        """Every event of every segment, oldest first; a torn or foreign line is skipped."""
        for segment in self.segments():
            yield from self._segment_events(segment)

    def _segment_events(self, segment: Path) -> Iterator[JournalEvent]:
        try:
            handle = segment.open("rb")
        except FileNotFoundError:
            return
        except OSError as e:
            raise JournalError(f"certificate journal {segment}: {e.strerror or e}") from None
        with handle:
            for line in handle:
                if len(line) > MAX_LINE_BYTES or not line.endswith(b"\n"):
                    continue  # torn by a crash mid-write, or not ours
                try:
                    yield JournalEvent.from_line(line)
                except (ValueError, KeyError, TypeError):
                    continue
