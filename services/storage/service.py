"""Immutable dataset versions on Parquet. The only package that does pyarrow file IO.

Durability order: write the file under a temporary name, fsync it, rename it into place, fsync
the directory (services/kit/files.py), and only then commit the metadata row that points at it.
A row therefore never points at a file that is not durable; a file with no row (a crash between
the two) is an orphan that no reader can see, removed by `sweep_orphans`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.kit import files as durable
from services.kit.clock import utcnow
from services.kit.ids import new_id
from services.storage import repository
from services.storage.models import Dataset, DatasetVersion, UploadMode, VersionFile

PARQUET_COMPRESSION = "zstd"


@dataclass(frozen=True)
class StoredFile:
    relative_path: str
    row_count: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class VersionInfo:
    dataset_id: str
    version: int
    contract_version: str
    row_count: int
    files: tuple[Path, ...]
    created_at: str


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / dataset_id

    def absolute(self, relative_path: str) -> Path:
        return self.root / relative_path

    def new_writer(
        self, dataset_id: str, schema: pa.Schema, *, name: str | None = None
    ) -> ParquetVersionWriter:
        """A writer of one new file, named `name` (a server id) or a fresh id."""
        directory = self.dataset_dir(dataset_id)
        directory.mkdir(parents=True, exist_ok=True)
        return ParquetVersionWriter(self.root, directory, schema, name=name)

    def discard(self, dataset_id: str, name: str) -> None:
        """Remove what a writer of `name` left (its partial or finished file), if anything:
        for a writer in a process that died, or a file whose version was never committed."""
        directory = self.dataset_dir(dataset_id)
        (directory / f".{name}.parquet.partial").unlink(missing_ok=True)
        (directory / f"{name}.parquet").unlink(missing_ok=True)

    def read_columns(self, files: tuple[Path, ...], columns: list[str]) -> pa.Table:
        tables = [pq.read_table(path, columns=columns) for path in files]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables)

    def sweep_orphans(self, session: Session, *, older_than_seconds: float = 3600) -> list[str]:
        """Delete files no version references, once they are old enough not to be in flight."""
        referenced = repository.all_referenced_paths(session)
        removed: list[str] = []
        if not self.root.exists():
            return removed
        cutoff = time.time() - older_than_seconds
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            relative = path.relative_to(self.root).as_posix()
            if relative in referenced or path.stat().st_mtime > cutoff:
                continue
            path.unlink(missing_ok=True)
            removed.append(relative)
        return removed


class ParquetVersionWriter:
    """Writes one new immutable file; `finish` makes it durable and returns its description."""

    def __init__(
        self, root: Path, directory: Path, schema: pa.Schema, *, name: str | None = None
    ) -> None:
        self._root = root
        self._directory = directory
        self._final = directory / f"{name or new_id()}.parquet"
        self._temp = directory / f".{self._final.name}.partial"
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self._temp, schema, compression=PARQUET_COMPRESSION
        )
        # Encoding and compressing a batch releases the GIL: one thread writes batch n while
        # the caller validates batch n+1. One pending write at a time bounds the memory.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-write")
        self._pending: Future[None] | None = None
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        assert self._writer is not None
        self.flush()
        self._pending = self._pool.submit(self._writer.write_batch, batch)
        self.rows += batch.num_rows

    def flush(self) -> None:
        """Wait for the write in flight (re-raising its error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.flush()
        self._pool.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._temp.unlink(missing_ok=True)

    def finish(self) -> StoredFile:
        assert self._writer is not None
        self.flush()
        self._pool.shutdown(wait=True)
        self._writer.close()
        self._writer = None
        digest = hashlib.sha256()
        with open(self._temp, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
            os.fsync(handle.fileno())
        size = self._temp.stat().st_size
        durable.publish(self._temp, self._final)
        return StoredFile(
            relative_path=self._final.relative_to(self._root).as_posix(),
            row_count=self.rows,
            size_bytes=size,
            sha256=digest.hexdigest(),
        )


def current_version(session: Session, storage: Storage, dataset_id: str) -> VersionInfo | None:
    dataset = repository.get_dataset(session, dataset_id)
    if dataset is None or dataset.current_version is None:
        return None
    version = repository.get_version(session, dataset_id, dataset.current_version)
    if version is None:
        return None
    files = repository.version_files(session, version.id)
    return VersionInfo(
        dataset_id=dataset_id,
        version=version.version,
        contract_version=version.contract_version,
        row_count=version.row_count,
        files=tuple(storage.absolute(f.path) for f in files),
        created_at=version.created_at.isoformat(),
    )


@dataclass(frozen=True)
class VersionRecord:
    """How the current version of a dataset came to be: for its owner and reviewers."""

    version: int
    contract_version: str
    mode: str
    row_count: int
    created_at: str
    upload_id: str


def version_record(session: Session, dataset_id: str) -> VersionRecord | None:
    version = repository.current_version_of(session, dataset_id)
    if version is None:
        return None
    return VersionRecord(
        version=version.version,
        contract_version=version.contract_version,
        mode=version.mode,
        row_count=version.row_count,
        created_at=version.created_at.isoformat(),
        upload_id=version.upload_id,
    )


def current_versions(
    session: Session, storage: Storage, dataset_ids: list[str]
) -> dict[str, VersionInfo]:
    """The current version of several datasets in one round trip (a product's sources)."""
    found: dict[str, VersionInfo] = {}
    for row in repository.current_version_rows(session, dataset_ids):
        info = found.get(row.dataset_id)
        path = storage.absolute(row.path)
        files = (path,) if info is None else (*info.files, path)
        found[row.dataset_id] = VersionInfo(
            dataset_id=row.dataset_id,
            version=row.version,
            contract_version=row.contract_version,
            row_count=row.row_count,
            files=files,
            created_at=row.created_at.isoformat(),
        )
    return found


def publish(
    session: Session,
    *,
    dataset_id: str,
    contract_version: str,
    mode: UploadMode,
    upload_id: str,
    new_file: StoredFile,
) -> int:
    """Make a new version current. Append keeps the previous files; replace supersedes them.

    Runs inside the caller's transaction: the version becomes visible when, and only when, that
    transaction commits, together with the upload's record and its audit event.
    """
    dataset = repository.get_dataset(session, dataset_id, for_update=True)
    now = utcnow()
    if dataset is None:
        # Two first uploads of a dataset can both find no row: the second INSERT waits for the
        # first to commit and then fails on the key. Its savepoint goes, and it takes the row the
        # first made (locked, as above), instead of answering a 500.
        try:
            with session.begin_nested():
                session.add(Dataset(id=dataset_id, current_version=None, updated_at=now))
        except IntegrityError:
            pass
        dataset = repository.get_dataset(session, dataset_id, for_update=True)
        assert dataset is not None
    previous_files: list[VersionFile] = []
    previous_rows = 0
    if mode == UploadMode.APPEND and dataset.current_version is not None:
        previous = repository.get_version(session, dataset_id, dataset.current_version)
        if previous is not None:
            previous_files = repository.version_files(session, previous.id)
            previous_rows = previous.row_count
    number = (dataset.current_version or 0) + 1
    version = DatasetVersion(
        id=new_id(),
        dataset_id=dataset_id,
        version=number,
        contract_version=contract_version,
        mode=mode,
        row_count=previous_rows + new_file.row_count,
        upload_id=upload_id,
        created_at=now,
    )
    session.add(version)
    session.flush()
    for old in previous_files:
        session.add(
            VersionFile(
                version_pk=version.id,
                path=old.path,
                row_count=old.row_count,
                size_bytes=old.size_bytes,
                sha256=old.sha256,
            )
        )
    session.add(
        VersionFile(
            version_pk=version.id,
            path=new_file.relative_path,
            row_count=new_file.row_count,
            size_bytes=new_file.size_bytes,
            sha256=new_file.sha256,
        )
    )
    dataset.current_version = number
    dataset.updated_at = now
    session.flush()
    return number
