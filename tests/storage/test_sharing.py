"""Delta Sharing files in the store, on both backends: a file URL answered by another replica
(with a data folder of its own on S3), and two replicas materialising one table at once."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from services.kit.settings import Settings
from services.platform import Platform, build_platform
from services.sharing import materialise
from tests.fixtures.snapshots import Loading
from tests.sharing.helpers import sharing_settings
from tests.sharing.test_api import load_people
from tests.storage.conftest import on_backend

TABLE = "strategic.violence.flags"
QUERY = "/delta-sharing/shares/strategic/schemas/violence/tables/flags/query"


@pytest.fixture
def settings(
    backend: str,
    request: pytest.FixtureRequest,
    data_dir: Path,
    database_url: str,
    key_file: Path,
    audit_key_file: Path,
) -> Settings:
    return on_backend(
        sharing_settings(data_dir, database_url, key_file, audit_key_file), backend, request
    )


@pytest.fixture
def replica(settings: Settings, tmp_path: Path) -> Iterator[Platform]:
    """A second server process's platform: same database and store; on S3 no shared folder."""
    other = settings
    if settings.storage_url is not None:
        (tmp_path / "replica").mkdir()
        other = settings.model_copy(update={"data_dir": tmp_path / "replica"})
    built = build_platform(other)
    yield built
    built.close()


def test_a_file_url_is_served_by_another_replica(
    settings: Settings, loading: Loading, api: TestClient, replica: Platform
) -> None:
    people = load_people(loading)
    response = api.post(
        QUERY,
        json={},
        headers={"Authorization": f"Bearer {people['reader_token']}"},
    )
    assert response.status_code == 200, response.text
    line = json.loads(response.text.splitlines()[2])["file"]
    with TestClient(create_app(replica.settings, replica)) as other:
        fetched = other.get(line["url"])
    assert fetched.status_code == 200, fetched.text
    assert len(fetched.content) == line["size"]
    rows = pq.read_table(io.BytesIO(fetched.content)).num_rows
    assert rows == json.loads(line["stats"])["numRecords"]
    # The bytes came from the store: the materialisation is an object under sharing/.
    assert [item.size for item in replica.sharing.store.list("sharing")] == [line["size"]]


def test_two_replicas_materialising_one_table_keep_one_version(
    settings: Settings, loading: Loading, platform: Platform, replica: Platform
) -> None:
    load_people(loading)
    table = platform.sharing.config.find(*TABLE.split("."))
    variant = materialise.Variant(True, None)
    found: list[Any] = []
    barrier = threading.Barrier(2)

    def materialise_on(p: Platform) -> None:
        barrier.wait()
        found.append(materialise.current_snapshot(p.products, p.sharing.store, table, variant))

    threads = [threading.Thread(target=materialise_on, args=(p,)) for p in (platform, replica)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 2
    assert {(s.version, s.file_id) for s in found} == {(found[0].version, found[0].file_id)}
    # The loser's object is gone: one object for the one version.
    assert [item.key for item in platform.sharing.store.list("sharing")] == [found[0].file_key]
