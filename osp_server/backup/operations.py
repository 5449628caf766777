"""``osp-admin backup`` and ``osp-admin restore``: what goes into an archive and how
it comes back (the archive format is osp_server.backup.archive).

A restore never rolls back a revocation: the archive's journal is merged into the
data directory's (which, if present, is newer), and the whole journal is replayed
into the restored database (osp_server.storage.reconcile).  Files that exist and
differ from the archive's are kept unless the operator asks to replace them: a data
directory that survived is newer than any backup.

Blocking code, for the command line; the server must be stopped for a restore.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from osp_server.backup.archive import (
    DATABASE,
    JOURNAL,
    ArchiveWriter,
    BackupError,
    KeyDerivation,
    Manifest,
    create_private_file,
    open_archive,
)
from osp_server.config import Config
from osp_server.osp.token_setup import token_signer_paths
from osp_server.pki.files import fsync_directory, make_private_directory
from osp_server.pki.journal import CertificateJournal, JournalEvent
from osp_server.storage.db import (
    SQLITE_SUFFIXES,
    create_db_engine,
    migrate_schema,
    open_database,
    schema_status,
    sqlite_path,
)
from osp_server.tls.server import ocsp_responder_paths

RUNNING_IF_HEARTBEAT_WITHIN = timedelta(seconds=30)
"""A heartbeat older than this is not a running server's (web.ready writes one every
5 s, and withdraws it at a clean stop)."""
BACKUP_STEP_PAGES = 1024
RECHECK_AFTER_SECONDS = 11.0
"""Two heartbeat intervals and a little: long enough for a running server to write."""


def archive_files(config: Config) -> dict[str, Path]:
    """Archive member -> where that file lives under ``config``."""
    tokens_cert, tokens_key = token_signer_paths(config.data_dir)
    ocsp_cert, ocsp_key = ocsp_responder_paths(config.data_dir)
    return {
        "ca.pem": config.ca.cert_file,
        "ca.key": config.ca.key_file,
        "tls.pem": config.tls.cert_file,
        "tls.key": config.tls.key_file,
        "tokens.pem": tokens_cert,
        "tokens.key": tokens_key,
        "ocsp.pem": ocsp_cert,
        "ocsp.key": ocsp_key,
    }


def give_to_data_dir_owner(config: Config, *paths: Path) -> None:
    """Run as root (an operator's osp-admin), give files it wrote to the owner of the
    data directory: the server runs as that user and must read them."""
    if os.geteuid() != 0:
        return
    owner = config.data_dir.stat()
    for path in paths:
        for name in (Path(f"{path}{suffix}") for suffix in SQLITE_SUFFIXES):
            if name.exists():
                os.chown(name, owner.st_uid, owner.st_gid)


def _engine_name(config: Config) -> str:
    return "sqlite" if sqlite_path(config.database.url) is not None else "postgresql"


def _schema_revision(config: Config) -> str | None:
    engine = create_db_engine(config.database.url, pool_size=1)
    try:
        return schema_status(engine)[0]
    finally:
        engine.dispose()


Progress = Callable[[int, int], object]
"""``progress(done, total)`` in database pages, as a copy advances."""


def make_backup(
    config: Config,
    output: Path,
    passphrase: bytes,
    *,
    now: datetime,
    progress: Progress | None = None,
) -> Manifest:
    """Write a backup of ``config``'s server to ``output`` (which must not exist)."""
    if output.exists() or output.is_symlink():
        raise BackupError(f"{output} exists: choose a new name")
    database = sqlite_path(config.database.url)
    if database is not None and not database.exists():
        raise BackupError(f"no database at {database}: nothing to back up")
    kdf = KeyDerivation.fresh()
    manifest = Manifest(
        created_at=now,
        engine=_engine_name(config),
        schema_revision=_schema_revision(config),
        kdf=kdf,
    )
    writer = ArchiveWriter(output, manifest, kdf.derive(passphrase))
    try:
        if database is not None:
            # The database first, the journal after: the journal copy then holds at
            # least every certificate event the database copy does.
            copy = output.with_name(f".{output.name}.db")
            try:
                _sqlite_online_backup(database, copy, progress)
                _forget_heartbeats(copy)
                writer.add_file(DATABASE, copy)
            finally:
                copy.unlink(missing_ok=True)
        for name, path in archive_files(config).items():
            if path.exists():
                writer.add_bytes(name, path.read_bytes())
        journal = CertificateJournal.in_data_dir(config.data_dir)
        segments = journal.segments()
        if segments:
            joined = output.with_name(f".{output.name}.journal")
            try:
                # A rotation between listing and reading would hide the segment it
                # closed: read again until the list did not change meanwhile.
                while True:
                    joined.unlink(missing_ok=True)  # the previous round's copy
                    _join_segments(segments, joined)
                    listed = journal.segments()
                    if listed == segments:
                        break
                    segments = listed
                writer.add_file(JOURNAL, joined)
            finally:
                joined.unlink(missing_ok=True)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return manifest


def _join_segments(segments: list[Path], target: Path) -> None:
    """Every journal segment, oldest first, into one file; a segment that ends in a
    torn line gets a newline, so that the next segment's first event stays whole."""
    fd = create_private_file(target)
    with os.fdopen(fd, "wb") as out:
        for segment in segments:
            data = segment.read_bytes()
            out.write(data)
            if data and not data.endswith(b"\n"):
                out.write(b"\n")


def _sqlite_online_backup(database: Path, target: Path, progress: Progress | None) -> None:
    """A consistent copy of a live SQLite database (its online backup API), in steps of
    BACKUP_STEP_PAGES so that the server's writers get their turn and progress shows."""
    fd = create_private_file(target)
    os.close(fd)
    try:
        source = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
        try:
            copy = sqlite3.connect(target)
            try:
                source.backup(
                    copy,
                    pages=BACKUP_STEP_PAGES,
                    progress=(
                        None
                        if progress is None
                        else lambda _status, remaining, total: progress(total - remaining, total)
                    ),
                )
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as e:
        raise BackupError(f"{database}: cannot back up: {e}") from None


def _forget_heartbeats(copy: Path) -> None:
    """A backup holds no heartbeat: restored, it would look like a running server's."""
    from osp_server.storage.heartbeats import clear_all_txn

    engine = create_db_engine(f"sqlite:///{copy}", pool_size=1)
    try:
        with engine.begin() as conn:
            clear_all_txn(conn)
    finally:
        engine.dispose()


@dataclass
class RestoreReport:
    """What a restore did, for the operator."""

    created_at: datetime
    database: str = "not in the archive"
    files: dict[str, str] = field(default_factory=dict)
    journal_events_added: int = 0
    journal_events: int = 0
    recorded_again: int = 0
    revoked_again: int = 0
    skipped: int = 0


def restore_backup(
    config: Config,
    archive: Path,
    passphrase: bytes,
    *,
    now: datetime,
    replace_files: bool = False,
    force: bool = False,
    sleep: Callable[[float], object] = time.sleep,
) -> RestoreReport:
    """Restore ``archive`` into ``config``'s server (module docstring).  Everything is
    verified and decrypted before the first file is touched."""
    database = sqlite_path(config.database.url)
    if not force:
        _refuse_if_running(config, database, now, sleep)
    make_private_directory(config.data_dir)
    scratch = database.parent if database is not None else config.data_dir
    make_private_directory(scratch)
    with open_archive(archive, passphrase, scratch) as opened:
        manifest = opened.manifest
        if opened.database is not None and database is None:
            raise BackupError(
                "the archive holds a SQLite database, but this server is configured for "
                "PostgreSQL ([database] url)"
            )
        report = RestoreReport(created_at=manifest.created_at)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        if opened.database is not None and database is not None:
            _check_sqlite(opened.database)
            _check_schema(opened.database)
            _put_database_in_place(opened.database, database, stamp)
            report.database = f"restored to {database}"
        elif manifest.engine == "postgresql":
            report.database = "PostgreSQL: not in the archive (restore it with pg_restore first)"
        written: list[Path] = []
        for name, target in archive_files(config).items():
            if name in opened.small:
                outcome, wrote = _restore_file(
                    target, opened.small[name], stamp, replace=replace_files
                )
                report.files[name] = outcome
                if wrote:
                    written.append(target)
        journal = CertificateJournal.in_data_dir(config.data_dir)
        events = list(journal.events())
        if JOURNAL in opened.small:
            added = _merge_journal(journal, events, opened.small[JOURNAL])
            report.journal_events_added = len(added)
            events += added  # what the journal holds now, without reading it again
    migrate_schema(config.database.url)
    from osp_server.storage.reconcile import reconcile_txn

    db = open_database(config.database, None, migrate=False)  # migrated just above
    try:
        replayed = db.transact_sync(reconcile_txn, events, now=now)
    finally:
        db.engine.dispose()
    give_to_data_dir_owner(config, *written, *([database] if database is not None else []))
    report.journal_events = len(events)
    report.recorded_again = len(replayed.recorded)
    report.revoked_again = len(replayed.revoked)
    report.skipped = len(replayed.skipped)
    return report


def _refuse_if_running(
    config: Config, database: Path | None, now: datetime, sleep: Callable[[float], object]
) -> None:
    """:class:`BackupError` when a server still writes heartbeats to the database.

    A recent heartbeat alone proves nothing: a database just restored with pg_restore
    carries the one written when its dump was taken.  So a recent one is read again
    after two heartbeat intervals: a running server has moved it on by then."""
    if database is not None and not database.exists():
        return
    first = dict(_heartbeats(config))
    if not any(now - at < RUNNING_IF_HEARTBEAT_WITHIN for at in first.values()):
        return
    sleep(RECHECK_AFTER_SECONDS)
    for node, at in _heartbeats(config):
        if first.get(node) != at:
            raise BackupError(
                f"a server is running on this database (node {node} is writing "
                "heartbeats): stop it before restoring, or pass --force if it is gone"
            )


def _heartbeats(config: Config) -> list[tuple[str, datetime]]:
    from osp_server.storage.heartbeats import latest_txn

    engine = create_db_engine(config.database.url, pool_size=1)
    try:
        with engine.connect() as conn:
            return latest_txn(conn)
    finally:
        engine.dispose()


def _check_schema(path: Path) -> None:
    """The archive's database must be an osp-server schema this program can migrate,
    checked before the live database is touched."""
    from osp_server.storage.db import known_revision

    engine = create_db_engine(f"sqlite:///{path}", pool_size=1)
    try:
        current, _head = schema_status(engine)
    finally:
        engine.dispose()
    if current is None:
        raise BackupError("the archive's database has no osp-server schema")
    if not known_revision(current):
        raise BackupError(
            f"the archive's database is at schema revision {current}, which this version "
            "does not know: restore it with the osp-server version that made it"
        )


def _check_sqlite(path: Path) -> None:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = connection.execute("PRAGMA integrity_check").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as e:
        raise BackupError(f"the archive's database is not a SQLite database: {e}") from None
    if result is None or result[0] != "ok":
        raise BackupError(f"the archive's database fails SQLite's integrity check: {result}")


def _put_database_in_place(restored: Path, database: Path, stamp: str) -> None:
    """The current database (with its -wal and -shm) moves aside, the restored one in."""
    for suffix in SQLITE_SUFFIXES:
        current = Path(f"{database}{suffix}")
        if current.exists():
            current.rename(Path(f"{database}.before-restore-{stamp}{suffix}"))
    restored.rename(database)
    fsync_directory(database.parent)


def _restore_file(target: Path, data: bytes, stamp: str, *, replace: bool) -> tuple[str, bool]:
    """Put ``data`` at ``target`` unless a different file there is kept: what was done
    (for the report), and whether the file was written."""
    from osp_server.pki.files import write_new_file

    mode = 0o600 if target.suffix == ".key" else 0o644
    if target.exists():
        if target.read_bytes() == data:
            return "unchanged", False
        if not replace:
            return "kept (differs from the archive; --replace-files to restore it)", False
        target.rename(target.with_name(f"{target.name}.before-restore-{stamp}"))
        write_new_file(target, data, mode, "restored file")
        return "replaced (the previous one kept as .before-restore-*)", True
    make_private_directory(target.parent)
    write_new_file(target, data, mode, "restored file")
    return "restored", True


def _merge_journal(
    journal: CertificateJournal, existing: list[JournalEvent], archived: bytes
) -> list[JournalEvent]:
    """Append the archive's events the journal (holding ``existing``) lacks; the events
    appended."""
    present = {event.to_line() for event in existing}
    missing: list[JournalEvent] = []
    for line in archived.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            continue  # torn when the backup was taken
        try:
            event = JournalEvent.from_line(line)
        except (ValueError, KeyError, TypeError):
            continue
        if event.to_line() not in present:
            present.add(event.to_line())
            missing.append(event)
    journal.append(missing)
    return missing
