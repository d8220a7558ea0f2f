from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.storage.models import Dataset, DatasetVersion, VersionFile


def get_dataset(session: Session, dataset_id: str, *, for_update: bool = False) -> Dataset | None:
    statement = select(Dataset).where(Dataset.id == dataset_id)
    if for_update:
        statement = statement.with_for_update()
    return session.execute(statement).scalar_one_or_none()


def get_version(session: Session, dataset_id: str, version: int) -> DatasetVersion | None:
    return session.execute(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset_id, DatasetVersion.version == version
        )
    ).scalar_one_or_none()


def current_version_of(session: Session, dataset_id: str) -> DatasetVersion | None:
    """The version a dataset's readers see now (none until its first upload)."""
    return session.execute(
        select(DatasetVersion)
        .join(
            Dataset,
            (Dataset.id == DatasetVersion.dataset_id)
            & (Dataset.current_version == DatasetVersion.version),
        )
        .where(Dataset.id == dataset_id)
    ).scalar_one_or_none()


def version_files(session: Session, version_pk: str) -> list[VersionFile]:
    return list(
        session.execute(
            select(VersionFile).where(VersionFile.version_pk == version_pk).order_by(VersionFile.id)
        ).scalars()
    )


def current_version_rows(session: Session, dataset_ids: list[str]) -> list[Any]:
    statement = (
        select(
            DatasetVersion.dataset_id,
            DatasetVersion.version,
            DatasetVersion.contract_version,
            DatasetVersion.row_count,
            DatasetVersion.created_at,
            VersionFile.path,
        )
        .join(
            Dataset,
            (Dataset.id == DatasetVersion.dataset_id)
            & (Dataset.current_version == DatasetVersion.version),
        )
        .join(VersionFile, VersionFile.version_pk == DatasetVersion.id)
        .where(Dataset.id.in_(dataset_ids))
        .order_by(DatasetVersion.dataset_id, VersionFile.id)
    )
    return list(session.execute(statement).all())


def current_files(session: Session) -> list[tuple[str, int]]:
    """The path and size of every file of every dataset's current version, by path."""
    statement = (
        select(VersionFile.path, VersionFile.size_bytes)
        .join(DatasetVersion, DatasetVersion.id == VersionFile.version_pk)
        .join(
            Dataset,
            (Dataset.id == DatasetVersion.dataset_id)
            & (Dataset.current_version == DatasetVersion.version),
        )
        .order_by(VersionFile.path)
    )
    return [(path, size) for path, size in session.execute(statement).all()]


def all_referenced_paths(session: Session) -> set[str]:
    return set(session.execute(select(VersionFile.path)).scalars())


def held_paths(session: Session) -> set[str]:
    """The objects of versions a deletion has not purged (a file an append or a deletion kept
    is held by a later version too)."""
    return set(
        session.execute(
            select(VersionFile.path)
            .join(DatasetVersion, DatasetVersion.id == VersionFile.version_pk)
            .where(DatasetVersion.purged_at.is_(None))
        ).scalars()
    )


def purged_files(session: Session) -> list[Any]:
    """Every file of a purged version that no held version shares: deleted, and certified so."""
    held = held_paths(session)
    statement = (
        select(DatasetVersion.dataset_id, DatasetVersion.version, VersionFile.path)
        .join(VersionFile, VersionFile.version_pk == DatasetVersion.id)
        .where(DatasetVersion.purged_at.is_not(None))
        .order_by(DatasetVersion.dataset_id, DatasetVersion.version, VersionFile.id)
    )
    return [row for row in session.execute(statement).all() if row.path not in held]


def all_version_files(session: Session) -> list[Any]:
    """Every file of every version still held (a file appears once per version that holds it;
    a version a deletion purged has no files left to check)."""
    statement = (
        select(
            DatasetVersion.dataset_id,
            DatasetVersion.version,
            VersionFile.path,
            VersionFile.size_bytes,
            VersionFile.sha256,
        )
        .join(VersionFile, VersionFile.version_pk == DatasetVersion.id)
        .where(DatasetVersion.purged_at.is_(None))
        .order_by(DatasetVersion.dataset_id, DatasetVersion.version, VersionFile.id)
    )
    return list(session.execute(statement).all())


def withdrawn(session: Session, dataset_ids: list[str]) -> list[str]:
    """Which of these datasets their owners have withdrawn (and not shared again since)."""
    return list(
        session.execute(
            select(Dataset.id).where(Dataset.id.in_(dataset_ids), Dataset.withdrawn_at.is_not(None))
        ).scalars()
    )
