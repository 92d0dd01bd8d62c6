"""Backups that are proven by restoring them: `hospital backup DIR` and `hospital restore DIR`.

A backup directory holds the database (PostgreSQL: `pg_dump --format=custom`, which reads one
snapshot, so the dump is consistent however many writers run meanwhile; the embedded SQLite file:
SQLite's online backup API, likewise one consistent copy), the DICOM store (`dicom/`), the model
files (`models/`), the audit rows retention archived (`audit-archive/`), and `manifest.json`, written last: the format, when, the schema revision
(Alembic) and the SHA-256 and size of every file. A directory without a manifest is an unfinished
backup.

Order matters: the database is copied first, the files after. An instance is fsynced to disk
before its row commits (imaging_orders/archive/ingest.py), so every instance row in the dump has
its file by the time the files are copied; files that arrive later are copied too, as harmless
extras no row names. Half-written files (`.incoming-*`) are skipped.

`restore` goes into an empty installation only (no tables in the database, nothing in the storage
directories): it never merges into or overwrites live data. It checks every hash against the
manifest before touching anything, restores the database (`pg_restore --single-transaction`: the
audit trail's triggers are created after its rows are loaded, so the rows keep their ids and
hashes), copies the files, checks the schema revision, and verifies the audit hash chain.

Backup and restore are audited (an "E" AuditEvent on `Backup`): who can read a whole backup can read
every record in it. Production also wants point-in-time recovery (WAL archiving): docs/operations.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from flask import Flask
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from hospital.audit import ChainReport, record_access, verify_chain
from hospital.db import get_db

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
POSTGRES_DUMP = "database.dump"
SQLITE_COPY = "database.sqlite3"
# Files that are not (yet) data: an instance being written, a readiness probe.
_SKIPPED_PREFIXES = (".incoming-", ".readyz-")
_CHUNK = 1024 * 1024


# The file trees a backup carries, by folder in the backup and the config key of their directory. The
# audit archive holds the audit rows retention removed from the database (hospital.retention).
FILE_FOLDERS = (("dicom", "DICOM_STORAGE_DIR"), ("models", "AI_MODELS_DIR"), ("audit-archive", "AUDIT_ARCHIVE_DIR"))


class BackupError(RuntimeError):
    """A backup could not be made or a restore was refused; the message says why."""


class BackupIntegrityError(BackupError):
    """A backup's files do not match its manifest (changed, truncated or missing)."""


class RestoreRefused(BackupError):
    """The target installation is not empty, or does not fit the backup."""


@dataclass(frozen=True)
class RestoreResult:
    manifest: dict[str, Any]
    audit: ChainReport


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files_under(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(_SKIPPED_PREFIXES):
            yield path


def _libpq_environment(url: URL) -> dict[str, str]:
    """pg_dump/pg_restore read the connection from the environment: a password on a command line
    is visible to every user of the machine (ps)."""
    env = dict(os.environ)
    for key, value in (("PGHOST", url.host), ("PGPORT", url.port), ("PGUSER", url.username),
                       ("PGPASSWORD", url.password), ("PGDATABASE", url.database)):
        if value is not None:
            env[key] = str(value)
    return env


def schema_revision(database_url: str) -> str | None:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    return ",".join(sorted(heads)) or None


def _record_backup_event(app: Flask, description: str) -> None:
    with get_db(app).transaction() as session:
        record_access(session, None, "E", "Backup", description=description, source="system")


def backup(app: Flask, target: Path) -> dict[str, Any]:
    """Write a backup of `app`'s installation into `target` (absent or empty); return the manifest."""
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"backup directory {target} is not empty")
    target.mkdir(parents=True, exist_ok=True)
    url = make_url(app.config["DATABASE_URL"])
    # Recorded before the copy, so the backup holds the record of its own making.
    _record_backup_event(app, f"backup to {target.name} started")
    revision = schema_revision(app.config["DATABASE_URL"])
    files: dict[str, dict[str, Any]] = {}
    if url.get_backend_name() == "postgresql":
        kind, database_file = "postgresql", target / POSTGRES_DUMP
        result = subprocess.run(
            ["pg_dump", "--format=custom", "--no-password", f"--file={database_file}"],
            env=_libpq_environment(url), capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise BackupError(f"pg_dump failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    elif url.get_backend_name() == "sqlite":
        kind, database_file = "sqlite", target / SQLITE_COPY
        with sqlite3.connect(str(url.database)) as source, sqlite3.connect(database_file) as copy:
            source.backup(copy)
    else:
        raise BackupError(f"no backup method for database {url.get_backend_name()!r}")
    _fsync_file(database_file)
    files[database_file.name] = {"sha256": _sha256(database_file), "size": database_file.stat().st_size}
    for folder, key in FILE_FOLDERS:
        root = Path(app.config[key])
        for path in _files_under(root):
            relative = f"{folder}/{path.relative_to(root).as_posix()}"
            copy_path = target / relative
            copy_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(path, copy_path)
            except FileNotFoundError:
                continue  # removed since it was listed (a merge rewrote it): no row of the dump needs it
            _fsync_file(copy_path)
            files[relative] = {"sha256": _sha256(copy_path), "size": copy_path.stat().st_size}
    manifest = {
        "format": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "schema_revision": revision,
        "database": {"kind": kind, "file": database_file.name},
        "files": files,
    }
    manifest_path = target / MANIFEST
    partial = target / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _fsync_file(partial)
    os.replace(partial, manifest_path)
    logger.info("backup written to %s: %d files, schema %s", target, len(files), revision)
    return manifest


def verify_backup(source: Path) -> dict[str, Any]:
    """Read the manifest and check every file it lists; raise `BackupIntegrityError` at the first
    that is missing or whose hash differs."""
    source = Path(source)
    manifest_path = source / MANIFEST
    if not manifest_path.is_file():
        raise BackupIntegrityError(f"{source} has no {MANIFEST}: not a backup, or an unfinished one")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise BackupIntegrityError(f"manifest format {manifest.get('format')!r} is not {FORMAT_VERSION}")
    for relative, expected in sorted(manifest["files"].items()):
        path = source / relative
        if ".." in Path(relative).parts or not path.is_file():
            raise BackupIntegrityError(f"{relative} is listed in the manifest but missing")
        actual = _sha256(path)
        if actual != expected["sha256"]:
            raise BackupIntegrityError(f"{relative}: sha256 {actual} does not match the manifest ({expected['sha256']})")
    return manifest


def _refuse_unless_empty(app: Flask) -> None:
    engine = create_engine(app.config["DATABASE_URL"], poolclass=NullPool)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise RestoreRefused(f"the target database is not empty ({len(tables)} tables, e.g. {sorted(tables)[0]}); "
                             "restore only into an empty one")
    for _folder, key in FILE_FOLDERS:
        root = Path(app.config[key])
        if root.is_dir() and any(_files_under(root)):
            raise RestoreRefused(f"{key} ({root}) is not empty; restore only into empty storage")


def restore(app: Flask, source: Path) -> RestoreResult:
    """Restore the backup in `source` into `app`'s installation, which must be empty."""
    source = Path(source)
    manifest = verify_backup(source)
    _refuse_unless_empty(app)
    url = make_url(app.config["DATABASE_URL"])
    kind = manifest["database"]["kind"]
    database_file = source / manifest["database"]["file"]
    if kind != url.get_backend_name():
        raise RestoreRefused(f"the backup holds a {kind} database; the target is {url.get_backend_name()}")
    if kind == "postgresql":
        # Ownership and grants name roles of the source cluster; run `hospital db grant-app-role` after.
        result = subprocess.run(
            ["pg_restore", "--no-owner", "--no-acl", "--exit-on-error", "--single-transaction", "--no-password",
             f"--dbname={url.database}", str(database_file)],
            env=_libpq_environment(url), capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise BackupError(f"pg_restore failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    else:
        target_db = Path(str(url.database))
        target_db.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(database_file) as copy, sqlite3.connect(target_db) as restored:
            copy.backup(restored)
    for folder, key in FILE_FOLDERS:
        root = Path(app.config[key])
        for relative in manifest["files"]:
            if not relative.startswith(f"{folder}/"):
                continue
            destination = root / relative.removeprefix(f"{folder}/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, destination)
            _fsync_file(destination)
    revision = schema_revision(app.config["DATABASE_URL"])
    if revision != manifest["schema_revision"]:
        raise BackupError(f"restored schema is at {revision}, the manifest says {manifest['schema_revision']}")
    # A fresh engine: the app's pool may hold connections from before the tables existed.
    get_db(app).engine.dispose()
    _record_backup_event(app, f"restored from the backup made at {manifest['created_at']}")
    with get_db(app).session() as session:
        report = verify_chain(session)
    if report.broken is not None:
        raise BackupError(f"restored audit chain broken at audit_event {report.broken.event_id}: {report.broken.reason}")
    logger.info("restored %s: schema %s, %d audit rows, chain intact", source, revision, report.rows)
    return RestoreResult(manifest, report)
