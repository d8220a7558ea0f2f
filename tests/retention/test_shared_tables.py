"""A deletion reaches the Delta Sharing materialisations: every shared table file computed over
a version that held the removed rows is deleted with it, listed on the certificate, and the
table is built again over the new version; on the local folder and S3."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.kit.settings import Settings
from services.platform import Platform
from services.retention import service as governance
from services.retention.models import DataDeletion
from services.sharing import materialise
from services.sharing.materialise import Variant
from services.sharing.models import SharingFile, SharingTableVersion
from services.storage.service import SHARING_PREFIX
from tests.retention.test_governance import POLICE, TODAY, _expired, _loaded
from tests.sharing.helpers import sharing_settings

TABLE = "strategic.violence.flags"


@pytest.fixture
def settings(data_dir: Path, database_url: str, key_file: Path, audit_key_file: Path) -> Settings:
    return sharing_settings(data_dir, database_url, key_file, audit_key_file)


def _table_files(platform: Platform) -> list[tuple[dict[str, int], str]]:
    """Each materialised file of the table: the source versions it was computed over, its key."""
    with platform.sessions() as session:
        rows = session.execute(
            select(SharingTableVersion.sources, SharingFile.path)
            .join(SharingFile, SharingFile.version_pk == SharingTableVersion.id)
            .where(SharingTableVersion.table_key == TABLE)
        ).all()
    return [(dict(sources), SHARING_PREFIX + path) for sources, path in rows]


def test_retention_deletes_the_shared_tables_built_over_expired_rows_and_rebuilds_them(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    rows = _loaded(api, police_token)
    assert _expired(rows) > 0
    (table,) = [t for t in platform.sharing.config.tables if t.key == TABLE]
    built = materialise.current_snapshot(
        platform.sharing.products,
        platform.sharing.store,
        table,
        Variant(suppressed=True, areas=None),
    )
    assert built.row_count > 0
    old = _table_files(platform)
    assert [key for _, key in old] == [built.file_key]
    store = platform.sharing.store
    assert store.info(built.file_key) is not None

    outcomes = governance.run_retention(platform.governance, today=TODAY)
    assert outcomes is not None
    certificate = next(o for o in outcomes if o.dataset == POLICE).certificate
    with platform.sessions() as session:
        deletion = session.get(DataDeletion, certificate)
        assert deletion is not None
        assert deletion.state == "certified"
        # The certificate names the shared file with its checksum; the object is gone.
        assert [(f["key"], f["sha256"]) for f in deletion.sharing_files] == [
            (built.file_key, built.sha256)
        ]
        new_version = deletion.to_version
    assert store.info(built.file_key) is None

    # Built again over the version without the expired rows (each variant of a Level 1 table:
    # suppressed and not), and held in the store.
    rebuilt = _table_files(platform)
    assert rebuilt and {sources[POLICE] for sources, _ in rebuilt} == {new_version}
    assert all(store.info(key) is not None for _, key in rebuilt)
    again = materialise.current_snapshot(
        platform.sharing.products,
        platform.sharing.store,
        table,
        Variant(suppressed=True, areas=None),
    )
    assert again.sources[POLICE] == new_version
    assert again.file_key in {key for _, key in rebuilt}
