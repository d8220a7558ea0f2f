"""Removing rows from a dataset for good: the one engine of retention, erasure, rectification
and withdrawal.

A deletion runs in three steps, each safe to be killed in:

1. **Plan and write.** Every stored file of the dataset is counted with the selector's columns
   alone. Each file of the current version that holds rows to remove is rewritten without them
   (a new immutable file, put into the store); files with nothing to remove are kept as they
   are. A failure here leaves the current version current and nothing recorded: the new files
   have no row, and are removed at once (or by `together storage sweep`).
2. **Switch.** One transaction makes a new version of the kept and rewritten files current (for
   a withdrawal: no version at all), records the deletion as `deleting` with every file to
   delete (the rewritten ones, and every older file that holds the rows), and commits the
   `deletion.started` audit event with them. From here no reader can see the rows.
3. **Delete and certify.** The files are deleted from the store (and any cached copy), with the
   Delta Sharing materialisations built over the versions that held them; then one transaction
   marks those versions purged, commits the `deletion.certified` event and stores the signed
   certificate naming both events' sequence numbers. A process that dies in this step leaves
   the deletion `deleting`; `complete_pending` (every retention run, and the next erasure or
   withdrawal of the dataset) finishes it. Deleting a missing object is not an error, so a
   step repeated is harmless.

The process that deletes also drops its own cached copies. Every other server process finds
the deletion within `TOGETHER_DELETED_COPIES_INTERVAL_SECONDS` (`DeletedCopies`, a background
thread) and removes what it holds of the same data: its read-through copies of the deleted
objects and its cached product results computed from the dataset.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.checkpoints import CheckpointSigner
from services.audit.service import AuditRecord, RequestContext
from services.kit.clock import utcnow
from services.kit.errors import TogetherError
from services.kit.ids import new_id
from services.kit.uow import audited
from services.retention import certificates
from services.retention.models import DataDeletion, DeletionKind, DeletionState
from services.retention.selectors import Selector
from services.sharing.models import SharingFile, SharingTableVersion
from services.storage import repository
from services.storage.models import DatasetVersion, VersionFile
from services.storage.objects import ObjectMissing, ObjectStore
from services.storage.service import SHARING_PREFIX, Storage, StoredFile

log = logging.getLogger(__name__)

# Rows read and written at a time when a file is rewritten (bounded memory for any file size).
_BATCH_ROWS = 64 * 1024
# How long after its certificate a deletion is still looked at by `DeletedCopies`.
_SETTLED = timedelta(minutes=10)
# A switch that finds a new upload in between starts again; this many times at most.
_ATTEMPTS = 5


# How a version made by a deletion names what made it (`DatasetVersion.mode`, ten characters).
_VERSION_MODE = {
    DeletionKind.RETENTION: "retention",
    DeletionKind.ERASURE: "erasure",
    DeletionKind.RECTIFICATION: "rectify",
}


class DatasetBusy(TogetherError):
    code = "DATASET_BUSY"
    status = 409
    title = "The dataset kept changing while rows were being removed"


@dataclass
class DeletionDeps:
    sessions: sessionmaker[Session]
    storage: Storage
    signer: CheckpointSigner
    # Rebuilds the shared tables after their materialisations were deleted (None: rebuilt by
    # the next query that asks for them).
    rebuild_sharing: Callable[[], object] | None = None
    # Forgets this process's cached product results computed from a dataset.
    forget_cached: Callable[[str], object] | None = None
    # Where the Delta Sharing materialisations are (None: the dataset store; the default local
    # layout keeps them in the data folder's sharing/, beside the datasets' folder).
    sharing_store: ObjectStore | None = None

    @property
    def shared_files(self) -> ObjectStore:
        return self.sharing_store if self.sharing_store is not None else self.storage.store


@dataclass(frozen=True)
class DeletionRequest:
    kind: DeletionKind
    dataset_id: str
    owner: str
    requested_by: str
    # The rows to remove; None removes everything (a withdrawal).
    selector: Selector | None
    contract_version: str | None = None
    reason: str | None = None
    case_reference: str | None = None
    confirmed_by: str | None = None
    # A rectification keeps the rows of the partner's corrected upload.
    keep_upload: str | None = None
    # An existing `requested` row (a confirmed withdrawal) to carry on with.
    deletion_id: str | None = None


@dataclass
class FileCount:
    file: VersionFile
    removed: int


@dataclass
class Plan:
    from_version: int | None
    contract_version: str | None
    current: list[FileCount]
    # Files of older versions (not in the current one) that hold rows to remove, by key.
    older: dict[str, FileCount] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_removed(self) -> int:
        return sum(item.removed for item in self.current)

    @property
    def touched(self) -> bool:
        return self.rows_removed > 0 or bool(self.older)

    def as_json(self) -> dict[str, Any]:
        return {
            "from_version": self.from_version,
            "rows_removed": self.rows_removed,
            "files_rewritten": sum(1 for item in self.current if item.removed),
            "older_files_deleted": len(self.older),
            "notes": self.notes,
        }


def _count(storage: Storage, key: str, selector: Selector | None) -> int:
    """Rows of one stored file the selector removes (every row, with no selector)."""
    if selector is None:
        return storage.object_rows(key)
    return storage.stored_rows(key, list(selector.columns), selector.removed)


def _upload_files(session: Session, dataset_id: str, upload_id: str) -> set[str]:
    """The files an upload added (not those its version kept from the one before)."""
    version = session.execute(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset_id, DatasetVersion.upload_id == upload_id
        )
    ).scalar_one_or_none()
    if version is None:
        return set()
    own = {f.path for f in repository.version_files(session, version.id)}
    previous = repository.get_version(session, dataset_id, version.version - 1)
    if previous is not None and version.mode == "append":
        own -= {f.path for f in repository.version_files(session, previous.id)}
    return own


def plan(deps: DeletionDeps, request: DeletionRequest) -> Plan:
    """What the deletion would remove; reads files, writes nothing."""
    with deps.sessions() as session:
        current = repository.current_version_of(session, request.dataset_id)
        current_files = repository.version_files(session, current.id) if current else []
        older_rows = list(
            session.execute(
                select(VersionFile)
                .join(DatasetVersion, DatasetVersion.id == VersionFile.version_pk)
                .where(
                    DatasetVersion.dataset_id == request.dataset_id,
                    DatasetVersion.purged_at.is_(None),
                )
                .order_by(VersionFile.id)
            ).scalars()
        )
        keep = (
            _upload_files(session, request.dataset_id, request.keep_upload)
            if request.keep_upload
            else set()
        )
    result = Plan(
        from_version=current.version if current else None,
        contract_version=current.contract_version if current else None,
        current=[],
    )
    in_current = {f.path for f in current_files}
    for file in current_files:
        removed = 0 if file.path in keep else _counted(deps, request, file, result)
        result.current.append(FileCount(file, removed))
    for file in older_rows:
        if file.path in in_current or file.path in result.older or file.path in keep:
            continue
        removed = _counted(deps, request, file, result)
        if removed:
            result.older[file.path] = FileCount(file, removed)
    return result


def _counted(deps: DeletionDeps, request: DeletionRequest, file: VersionFile, into: Plan) -> int:
    try:
        return _count(deps.storage, file.path, request.selector)
    except ObjectMissing:
        into.notes.append(f"{file.path} is not in the store (already gone)")
        return 0
    except KeyError as exc:
        into.notes.append(f"{request.dataset_id}: {exc.args[0]}")
        return 0


def _rewrite(deps: DeletionDeps, request: DeletionRequest, file: VersionFile) -> StoredFile:
    """The file without the rows the selector removes, put into the store."""
    assert request.selector is not None
    return deps.storage.rewrite_without(
        request.dataset_id, file.path, request.selector.removed, batch_rows=_BATCH_ROWS
    )


def _new_name(stored: StoredFile) -> str:
    return stored.relative_path.rsplit("/", 1)[-1].removesuffix(".parquet")


def _file_json(file: VersionFile | FileCount) -> dict[str, Any]:
    found = file.file if isinstance(file, FileCount) else file
    return {
        "key": found.path,
        "sha256": found.sha256,
        "bytes": found.size_bytes,
        "rows": found.row_count,
    }


def execute(deps: DeletionDeps, ctx: RequestContext, request: DeletionRequest) -> str | None:
    """Run a deletion to its certificate; the deletion's id (None: a retention run with
    nothing to remove). An erasure that matches nothing is still certified, as a search."""
    complete_pending(deps, ctx, request.dataset_id)
    for _attempt in range(_ATTEMPTS):
        found = plan(deps, request)
        if not found.touched and request.kind is DeletionKind.RETENTION:
            return None
        written: list[StoredFile] = []
        try:
            replaced: dict[str, StoredFile] = {}
            if request.selector is not None:
                for item in found.current:
                    if item.removed:
                        stored = _rewrite(deps, request, item.file)
                        written.append(stored)
                        replaced[item.file.path] = stored
            deletion_id = _switch(deps, ctx, request, found, replaced)
        except BaseException:
            for stored in written:
                deps.storage.discard(request.dataset_id, _new_name(stored))
            raise
        if deletion_id is not None:
            complete(deps, ctx, deletion_id)
            return deletion_id
        # An upload became current in between: its rows are planned afresh.
        for stored in written:
            deps.storage.discard(request.dataset_id, _new_name(stored))
    raise DatasetBusy(
        f"{request.dataset_id} received {_ATTEMPTS} uploads while rows were being removed; "
        "try again"
    )


def _switch(
    deps: DeletionDeps,
    ctx: RequestContext,
    request: DeletionRequest,
    found: Plan,
    replaced: dict[str, StoredFile],
) -> str | None:
    """Step 2: the version without the rows becomes current, with the deletion's record and
    its first audit event, in one transaction; None when the dataset moved on meanwhile."""
    with audited(deps.sessions, f"the {request.kind} of {request.dataset_id}") as uow:
        session = uow.session
        dataset = repository.get_dataset(session, request.dataset_id, for_update=True)
        now_version = dataset.current_version if dataset is not None else None
        if now_version != found.from_version:
            return None
        doomed: dict[str, dict[str, Any]] = {}
        for item in found.current:
            if request.selector is None or item.removed:
                doomed[item.file.path] = _file_json(item)
        for key, item in found.older.items():
            doomed[key] = _file_json(item)
        if request.selector is None:
            # A withdrawal: every file of every version still held.
            for file in _held_files(session, request.dataset_id):
                doomed.setdefault(file.path, _file_json(file))
        versions = _versions_holding(session, request.dataset_id, set(doomed))
        to_version: int | None = None
        now = utcnow()
        deletion_id = request.deletion_id or new_id()
        if dataset is not None and request.selector is None:
            dataset.current_version = None
            dataset.withdrawn_at = now
            dataset.updated_at = now
        elif dataset is not None and replaced:
            kept = [_kept(item, replaced) for item in found.current]
            to_version = _publish(
                session, request, found, deletion_id, [k for k in kept if k.row_count], now
            )
        row = session.get(DataDeletion, deletion_id) if request.deletion_id else None
        if row is None:
            row = DataDeletion(id=deletion_id, requested_at=now, requested_by=request.requested_by)
            session.add(row)
        row.dataset_id = request.dataset_id
        row.owner = request.owner
        row.kind = request.kind.value
        row.state = DeletionState.DELETING.value
        row.confirmed_by = request.confirmed_by
        row.reason = request.reason
        row.case_reference = request.case_reference
        row.contract_version = request.contract_version or found.contract_version
        row.criteria = (
            request.selector.certified(deletion_id) if request.selector is not None else {}
        )
        if request.keep_upload:
            row.criteria = row.criteria | {"kept_upload": request.keep_upload}
        row.rows_removed = found.rows_removed
        row.from_version = found.from_version
        row.to_version = to_version
        row.versions = versions
        row.files = sorted(doomed.values(), key=lambda f: str(f["key"]))
        row.sharing_files = []
        session.flush()

        def write(session: Session) -> object:
            event = audit_service.record(session, ctx, _started_event(row, found))
            row.audit_seq_start = event.seq
            return event

        uow.audit(write)
        return deletion_id


def _kept(item: FileCount, replaced: dict[str, StoredFile]) -> VersionFile:
    stored = replaced.get(item.file.path)
    if stored is None:
        return item.file
    return VersionFile(
        path=stored.relative_path,
        row_count=stored.row_count,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
    )


def _held_files(session: Session, dataset_id: str) -> list[VersionFile]:
    return list(
        session.execute(
            select(VersionFile)
            .join(DatasetVersion, DatasetVersion.id == VersionFile.version_pk)
            .where(DatasetVersion.dataset_id == dataset_id, DatasetVersion.purged_at.is_(None))
            .order_by(VersionFile.id)
        ).scalars()
    )


def _versions_holding(session: Session, dataset_id: str, keys: set[str]) -> list[int]:
    if not keys:
        return []
    return sorted(
        session.execute(
            select(DatasetVersion.version)
            .join(VersionFile, VersionFile.version_pk == DatasetVersion.id)
            .where(DatasetVersion.dataset_id == dataset_id, VersionFile.path.in_(keys))
            .distinct()
        ).scalars()
    )


def _publish(
    session: Session,
    request: DeletionRequest,
    found: Plan,
    deletion_id: str,
    files: list[VersionFile],
    now: Any,
) -> int:
    """A new current version of `files` (the kept and the rewritten ones)."""
    dataset = repository.get_dataset(session, request.dataset_id)
    assert dataset is not None
    highest = session.execute(
        select(func.max(DatasetVersion.version)).where(
            DatasetVersion.dataset_id == request.dataset_id
        )
    ).scalar_one()
    number = int(highest or 0) + 1
    version = DatasetVersion(
        id=new_id(),
        dataset_id=request.dataset_id,
        version=number,
        contract_version=found.contract_version or "",
        mode=_VERSION_MODE[request.kind],
        row_count=sum(f.row_count for f in files),
        # A version made by a deletion names the deletion where an upload's would be.
        upload_id=deletion_id,
        created_at=now,
    )
    session.add(version)
    session.flush()
    for file in files:
        session.add(
            VersionFile(
                version_pk=version.id,
                path=file.path,
                row_count=file.row_count,
                size_bytes=file.size_bytes,
                sha256=file.sha256,
            )
        )
    dataset.current_version = number
    dataset.updated_at = now
    return number


def _started_event(row: DataDeletion, found: Plan) -> AuditRecord:
    return AuditRecord(
        action=AuditAction.DELETION_STARTED,
        outcome=Outcome.SUCCESS,
        resource_type="dataset",
        resource=row.dataset_id,
        resource_org=row.owner,
        reason=row.reason,
        case_reference=row.case_reference,
        rows=row.rows_removed,
        details={
            "deletion": row.id,
            "kind": row.kind,
            "from_version": row.from_version,
            "to_version": row.to_version,
            "versions": row.versions,
            "files": len(row.files),
            "criteria": row.criteria,
            "notes": found.notes,
        },
    )


def complete_pending(deps: DeletionDeps, ctx: RequestContext, dataset_id: str | None) -> list[str]:
    """Finish every deletion a process left half done (of one dataset, or of all)."""
    with deps.sessions() as session:
        statement = select(DataDeletion.id).where(
            DataDeletion.state == DeletionState.DELETING.value
        )
        if dataset_id is not None:
            statement = statement.where(DataDeletion.dataset_id == dataset_id)
        pending = list(session.execute(statement.order_by(DataDeletion.requested_at)).scalars())
    for deletion_id in pending:
        complete(deps, ctx, deletion_id)
    return pending


def _sharing_files(session: Session, dataset_id: str, versions: set[int]) -> list[SharingFile]:
    """Materialised shared tables computed over any of the dataset's `versions`."""
    if not versions:
        return []
    used = SharingTableVersion.sources[dataset_id].as_integer()
    return list(
        session.execute(
            select(SharingFile)
            .join(SharingTableVersion, SharingFile.version_pk == SharingTableVersion.id)
            .where(used.in_(sorted(versions)))
            .order_by(SharingFile.path)
        ).scalars()
    )


def complete(deps: DeletionDeps, ctx: RequestContext, deletion_id: str) -> None:
    """Step 3: delete the files, then certify (see the module docstring)."""
    with deps.sessions() as session:
        row = session.get(DataDeletion, deletion_id)
        if row is None or row.state != DeletionState.DELETING.value:
            return
        keys = [str(f["key"]) for f in row.files]
        versions = set(row.versions)
        if row.kind == DeletionKind.WITHDRAWAL.value:
            # A withdrawn dataset's tables were all built over versions now gone.
            versions |= set(
                session.execute(
                    select(DatasetVersion.version).where(
                        DatasetVersion.dataset_id == row.dataset_id
                    )
                ).scalars()
            )
        shared = _sharing_files(session, row.dataset_id, versions)
        shared_json = [
            {"key": SHARING_PREFIX + f.path, "sha256": f.sha256, "bytes": f.size_bytes}
            for f in shared
        ]
        shared_ids = [f.id for f in shared]
        dataset_id = row.dataset_id
    if deps.forget_cached is not None:
        deps.forget_cached(dataset_id)
    for key in keys:
        deps.storage.store.delete(key)
    for item in shared_json:
        deps.shared_files.delete(str(item["key"]))
    with audited(deps.sessions, "certifying a deletion") as uow:
        session = uow.session
        row = session.get(DataDeletion, deletion_id, with_for_update=True)
        if row is None or row.state != DeletionState.DELETING.value:
            return
        if shared_ids:
            session.execute(delete(SharingFile).where(SharingFile.id.in_(shared_ids)))
        now = utcnow()
        if row.versions:
            session.execute(
                update(DatasetVersion)
                .where(
                    DatasetVersion.dataset_id == row.dataset_id,
                    DatasetVersion.version.in_(row.versions),
                    DatasetVersion.purged_at.is_(None),
                )
                .values(purged_at=now, purged_by=row.id)
            )
        row.sharing_files = sorted(
            (row.sharing_files or []) + shared_json, key=lambda f: str(f["key"])
        )
        row.state = DeletionState.CERTIFIED.value
        row.certified_at = now
        session.flush()

        def write(session: Session) -> object:
            event = audit_service.record(session, ctx, _certified_event(row))
            row.audit_seq_end = event.seq
            row.body, row.signature = certificates.sign(certificate_body(row), deps.signer)
            row.key_id = deps.signer.key_id
            return event

        uow.audit(write)
    if shared_json and deps.rebuild_sharing is not None:
        # The tables are rebuilt over the new version for their readers; a failure here only
        # means the next query materialises them itself.
        with contextlib.suppress(Exception):
            deps.rebuild_sharing()


def _certified_event(row: DataDeletion) -> AuditRecord:
    return AuditRecord(
        action=AuditAction.DELETION_CERTIFIED,
        outcome=Outcome.SUCCESS,
        resource_type="dataset",
        resource=row.dataset_id,
        resource_org=row.owner,
        case_reference=row.case_reference,
        rows=row.rows_removed,
        details={
            "deletion": row.id,
            "kind": row.kind,
            "files": len(row.files),
            "sharing_files": len(row.sharing_files),
            "versions": row.versions,
            "audit_seq_start": row.audit_seq_start,
        },
    )


def _iso(moment: Any) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def certificate_body(row: DataDeletion) -> dict[str, Any]:
    """What the certificate states (the signer adds `type` and `key_id`)."""
    return {
        "certificate_id": row.id,
        "kind": row.kind,
        "dataset": row.dataset_id,
        "owner": row.owner,
        "contract_version": row.contract_version,
        "reason": row.reason,
        "case_reference": row.case_reference,
        "criteria": row.criteria,
        "rows_removed": row.rows_removed,
        "from_version": row.from_version,
        "to_version": row.to_version,
        "versions_deleted": row.versions,
        "files_deleted": row.files,
        "sharing_files_deleted": row.sharing_files,
        "requested_by": row.requested_by,
        "requested_at": _iso(row.requested_at),
        "confirmed_by": row.confirmed_by,
        "audit_seq_start": row.audit_seq_start,
        "audit_seq_end": row.audit_seq_end,
        "certified_at": _iso(row.certified_at),
    }


class DeletedCopies:
    """Forgets, in this process, what the deletions of any replica deleted: local copies of
    the deleted objects (an S3 store's read-through cache) and cached product results computed
    from the dataset. Each deletion is handled until some minutes after it is certified (a
    download begun before its objects were deleted has ended by then), then never again; a new
    process handles every deletion once, at start."""

    def __init__(self, deps: DeletionDeps) -> None:
        self._deps = deps
        self._done: set[str] = set()

    def __call__(self) -> int:
        """Forget what the deletions not yet handled deleted; the number of copies removed."""
        deps = self._deps
        live = (DeletionState.DELETING.value, DeletionState.CERTIFIED.value)
        with deps.sessions() as session:
            ids = [
                deletion_id
                for deletion_id in session.execute(
                    select(DataDeletion.id).where(DataDeletion.state.in_(live))
                ).scalars()
                if deletion_id not in self._done
            ]
            found = [
                row
                for start in range(0, len(ids), 500)
                for row in session.execute(
                    select(
                        DataDeletion.id,
                        DataDeletion.state,
                        DataDeletion.dataset_id,
                        DataDeletion.files,
                        DataDeletion.sharing_files,
                        DataDeletion.certified_at,
                    ).where(DataDeletion.id.in_(ids[start : start + 500]))
                ).all()
            ]
        removed = 0
        settled = utcnow() - _SETTLED
        for deletion_id, state, dataset_id, files, sharing_files, certified_at in found:
            if deps.forget_cached is not None:
                deps.forget_cached(dataset_id)
            copies = [(deps.storage.store, item) for item in files or []] + [
                (deps.shared_files, item) for item in sharing_files or []
            ]
            for store, item in copies:
                if store.forget_local_copy(str(item["key"])):
                    removed += 1
            settled_now = certified_at is not None and certified_at < settled
            if state == DeletionState.CERTIFIED.value and settled_now:
                self._done.add(deletion_id)
        if removed:
            log.info("removed %d local copies of deleted objects", removed)
        return removed
