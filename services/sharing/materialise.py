"""Materialising published tables: the product engine's result, written once as Parquet.

A table's content is a function of its resolved parameters, its sources' current versions, the
variant (suppression and areas of the reader) and the suppression threshold, exactly as for the
product cache. That is the fingerprint. Asking for a table's current version computes the
fingerprint (one query for the source versions) and returns the version stored under it, or
materialises a new one: the engine runs with the same inputs as a JSON read of the product, the
result is written as Parquet to the object store (durable and verified there), and only then is
the version committed. Two processes (replicas) materialising the same fingerprint at once both
write an object under a fresh random name; the unique constraint keeps one version, and the
other process's object is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.authz.service import ProductAccess
from services.kit.background import PeriodicThread
from services.kit.clock import utcnow
from services.kit.errors import TogetherError
from services.kit.ids import new_id
from services.kit.uow import transaction
from services.products import compute, disclosure, formats
from services.products import service as product_service
from services.products.definition import ProductDefinition
from services.products.parameters import normalise_parameters, parse_parameters
from services.products.service import ProductDeps
from services.sharing import protocol
from services.sharing.config import PublishedTable, SharingConfig, parameter_pairs
from services.sharing.models import SharingFile, SharingTableVersion
from services.storage import service as storage_service
from services.storage.objects import ObjectStore
from services.storage.service import SHARING_PREFIX

log = logging.getLogger(__name__)

# Bumped when the files' layout changes for the same rows (2: dates and timestamps typed).
EXPORT_FORMAT = 2


@dataclass(frozen=True)
class Variant:
    """What a table's rows depend on besides parameters and sources: the reader's disclosure."""

    suppressed: bool
    areas: tuple[str, ...] | None  # None: not limited to areas (Level 1)

    @classmethod
    def of(cls, access: ProductAccess, level: int) -> Variant:
        areas = tuple(sorted(access.areas)) if access.areas is not None else None
        return cls(suppressed=product_service.suppression_applies(level, access), areas=areas)

    def describe(self) -> dict[str, Any]:
        return {"suppressed": self.suppressed, "areas": list(self.areas) if self.areas else None}


@dataclass(frozen=True)
class Snapshot:
    table_key: str
    version: int
    variant: Variant
    parameters: dict[str, Any]
    sources: dict[str, int]
    row_count: int
    schema_string: str
    created_at: str
    file_id: str
    file_key: str  # the object's key in the store
    size_bytes: int
    sha256: str


def today() -> date:
    return utcnow().date()


def current_snapshot(
    products: ProductDeps,
    store: ObjectStore,
    table: PublishedTable,
    variant: Variant,
    *,
    day: date | None = None,
) -> Snapshot:
    """The table's version for this variant as of now, materialised if it does not exist yet."""
    definition = products.catalogue[table.product]
    params = parse_parameters(definition, parameter_pairs(table, definition, day or today()))
    used = definition.used_sources(params)
    with products.sessions() as session:
        versions = storage_service.current_versions(session, products.storage, used)
    normalised = normalise_parameters(definition, params)
    sources = {dataset: versions[dataset].version for dataset in used if dataset in versions}
    fingerprint = _fingerprint(table, definition, normalised, sources, variant, products.k)
    for _attempt in range(5):
        with products.sessions() as session:
            found = _by_fingerprint(session, store, table.key, fingerprint)
        if found is not None:
            return found
        result = compute.run(
            definition,
            params,
            versions=versions,
            suppress=variant.suppressed,
            k=products.k,
            areas=frozenset(variant.areas) if variant.areas is not None else None,
            protector=products.protector,
        )
        created = _store(
            products.sessions,
            store,
            table,
            definition,
            variant,
            fingerprint,
            result.parameters,
            sources,
            len(result.rows),
            formats.to_parquet(result),
        )
        if created is not None:
            return created
    raise RuntimeError(f"could not materialise {table.key}: concurrent writers kept winning")


def _fingerprint(
    table: PublishedTable,
    definition: ProductDefinition,
    parameters: dict[str, Any],
    sources: dict[str, int],
    variant: Variant,
    k: int,
) -> str:
    document = {
        "table": table.key,
        "product": table.product,
        # A revised definition (or export) is a new version, even over the same sources.
        "definition": hashlib.sha256(definition.spec.model_dump_json().encode()).hexdigest(),
        "export": EXPORT_FORMAT,
        "parameters": parameters,
        "sources": sources,
        "variant": variant.describe(),
        "k": k,
        # A revised disclosure rule is a new version too: no file made under the old one stays.
        "disclosure": disclosure.RULE_VERSION,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _snapshot(store: ObjectStore, version: SharingTableVersion, file: SharingFile) -> Snapshot:
    return Snapshot(
        table_key=version.table_key,
        version=version.version,
        variant=Variant(
            version.suppressed, tuple(version.areas) if version.areas is not None else None
        ),
        parameters=dict(version.parameters),
        sources=dict(version.sources),
        row_count=version.row_count,
        schema_string=version.schema_string,
        created_at=version.created_at.isoformat(),
        file_id=file.id,
        file_key=SHARING_PREFIX + file.path,
        size_bytes=file.size_bytes,
        sha256=file.sha256,
    )


def _by_fingerprint(
    session: Session, store: ObjectStore, table_key: str, fingerprint: str
) -> Snapshot | None:
    row = session.execute(
        select(SharingTableVersion, SharingFile)
        .join(SharingFile, SharingFile.version_pk == SharingTableVersion.id)
        .where(
            SharingTableVersion.table_key == table_key,
            SharingTableVersion.fingerprint == fingerprint,
        )
    ).first()
    return None if row is None else _snapshot(store, row[0], row[1])


def snapshot_of_file(
    session: Session, store: ObjectStore, file_id: str
) -> tuple[Snapshot, str] | None:
    """A file's snapshot and the table it belongs to (for a file URL)."""
    row = session.execute(
        select(SharingTableVersion, SharingFile)
        .join(SharingFile, SharingFile.version_pk == SharingTableVersion.id)
        .where(SharingFile.id == file_id)
    ).first()
    return None if row is None else (_snapshot(store, row[0], row[1]), row[0].product)


def _store(
    factory: sessionmaker[Session],
    store: ObjectStore,
    table: PublishedTable,
    definition: ProductDefinition,
    variant: Variant,
    fingerprint: str,
    parameters: dict[str, Any],
    sources: dict[str, int],
    rows: int,
    body: bytes,
) -> Snapshot | None:
    """Write the object durably, then commit the version; None when another writer won.

    The version row is bookkeeping with no event of its own: what a recipient reads of it is
    audited by the query or file read that asked for it (``sharing.queried``,
    ``sharing.file_read``), and the refresher materialises for no reader at all.
    """
    file_id = new_id()
    # The name is a fresh random id: the store tells nothing about the tables in it.
    name = f"{new_id()}.parquet"
    store.put_bytes(SHARING_PREFIX + name, body)
    try:
        with transaction(factory) as session:
            return _add_version(
                session,
                store,
                table,
                definition,
                variant,
                fingerprint,
                file_id,
                name,
                parameters,
                sources,
                rows,
                body,
            )
    except IntegrityError:
        store.delete(SHARING_PREFIX + name)
        return None


def _add_version(
    session: Session,
    store: ObjectStore,
    table: PublishedTable,
    definition: ProductDefinition,
    variant: Variant,
    fingerprint: str,
    file_id: str,
    name: str,
    parameters: dict[str, Any],
    sources: dict[str, int],
    rows: int,
    body: bytes,
) -> Snapshot:
    number = (
        session.execute(
            select(func.max(SharingTableVersion.version)).where(
                SharingTableVersion.table_key == table.key
            )
        ).scalar_one_or_none()
        or 0
    ) + 1
    version = SharingTableVersion(
        id=new_id(),
        table_key=table.key,
        version=number,
        fingerprint=fingerprint,
        product=definition.id,
        suppressed=variant.suppressed,
        areas=list(variant.areas) if variant.areas is not None else None,
        parameters=parameters,
        sources=sources,
        row_count=rows,
        schema_string=protocol.schema_string(body),
        created_at=utcnow(),
    )
    session.add(version)
    session.flush()
    file = SharingFile(
        id=file_id,
        version_pk=version.id,
        path=name,
        row_count=rows,
        size_bytes=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
    )
    session.add(file)
    return _snapshot(store, version, file)


def known_variants(session: Session, table: PublishedTable) -> set[Variant]:
    """The variants of a table materialised before (the readers it has had)."""
    found: set[Variant] = set()
    for suppressed, areas in session.execute(
        select(SharingTableVersion.suppressed, SharingTableVersion.areas).where(
            SharingTableVersion.table_key == table.key
        )
    ):
        found.add(Variant(bool(suppressed), tuple(areas) if areas is not None else None))
    return found


def refresh_all(products: ProductDeps, store: ObjectStore, config: SharingConfig) -> list[Snapshot]:
    """Bring every table up to date for every variant it has had (both variants at Level 1).

    Run by each server process every few minutes and by ``together sharing refresh``: a new
    upload is then already materialised when recipients next ask.
    """
    refreshed: list[Snapshot] = []
    for table in config.tables:
        with products.sessions() as session:
            variants = known_variants(session, table)
        if table.level == 1:
            variants |= {Variant(True, None), Variant(False, None)}
        for variant in sorted(variants, key=lambda v: (v.suppressed, v.areas or ())):
            try:
                refreshed.append(current_snapshot(products, store, table, variant))
            except TogetherError as exc:
                # One table that cannot be made today must not hold up the others.
                log.warning("cannot materialise %s: %s", table.key, exc.detail)
    return refreshed


class Refresher(PeriodicThread):
    """Calls ``refresh_all`` every few seconds on a daemon thread of each server process.

    A failed round is logged and the next one retries; recipients' queries materialise on
    demand anyway.
    """

    def __init__(self, work: Callable[[], object], interval_seconds: float) -> None:
        super().__init__("sharing-refresh", work, interval_seconds)
