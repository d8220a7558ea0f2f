"""Dataset versions in the store, through the real API and CLI, on both backends: a missing
object answers a clear 503 and is audited, `together storage check` lists it, `sweep` removes
orphans, and a store that stops during an upload (between two uploads, or while a version's
object is being put) commits nothing and lets the key be retried."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow.fs as pafs
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gateway.app import create_app
from services.audit.catalogue import AuditAction
from services.ingestion.models import Upload
from services.kit.settings import Settings
from services.platform import Platform, build_platform
from services.storage import repository
from services.storage.models import DatasetVersion
from services.storage.objects import S3Store
from tests.fixtures.app import client_maker, token_issuer
from tests.fixtures.audit_events import events
from tests.fixtures.cli import run_cli
from tests.fixtures.seaweedfs import SeaweedServer
from tests.fixtures.snapshots import Loading
from tests.gateway.test_products_api import PARAMS, load_products_data
from tests.ingestion.helpers import police_rows, to_csv
from tests.storage.conftest import delete_behind, store_of

UPLOAD = "/v1/datasets/police.occurrences/uploads"


def _police_keys(platform: Platform) -> list[str]:
    with platform.sessions() as session:
        return sorted({r.path for r in repository.all_version_files(session) if "police" in r.path})


def test_missing_object_is_a_named_503_audited_and_checked(
    settings: Settings, loading: Loading, api: TestClient, platform: Platform
) -> None:
    tokens = load_products_data(loading)
    assert run_cli(settings, "storage", "check").returncode == 0
    [police] = _police_keys(platform)
    delete_behind(settings, police)

    headers = {"Authorization": f"Bearer {tokens['l1_analyst']}"}
    response = api.get("/v1/products/sv-counts", params=PARAMS["sv-counts"], headers=headers)
    assert response.status_code == 503, response.text
    problem = response.json()
    assert problem["code"] == "STORED_VERSION_MISSING"
    assert "police.occurrences" in problem["detail"] and "version 1" in problem["detail"]
    refused = events(platform, "product.refused")
    assert [e.reason for e in refused] == ["stored_version_missing"]

    checked = run_cli(settings, "storage", "check")
    assert checked.returncode == 1
    assert f"police.occurrences v1: {police} missing" in checked.stdout
    # The other datasets are whole, and not listed.
    assert checked.stdout.count("missing") == 1


def test_check_finds_a_changed_object_and_sweep_removes_orphans(
    settings: Settings, loading: Loading, platform: Platform
) -> None:
    load_products_data(loading)
    store = platform.storage.store
    [police] = _police_keys(platform)
    # Same size, other bytes: only the checksum tells.
    body = store.local_path(police).read_bytes()
    delete_behind(settings, police)
    store_of(settings, cache_max_bytes=0).put_bytes(police, bytes(len(body)))
    checked = run_cli(settings, "storage", "check")
    assert checked.returncode == 1
    assert f"{police} sha256" in checked.stdout
    assert run_cli(settings, "storage", "check", "--no-checksums").returncode == 0

    orphan = "police.occurrences/left-by-a-crash.parquet"
    store.put_bytes(orphan, b"no row names me")
    before = {item.key for item in store.list()}
    swept = run_cli(settings, "storage", "sweep", "--older-than", "0")
    assert swept.returncode == 0, swept.stderr
    assert "removed 1 orphan file(s)" in swept.stdout
    assert {item.key for item in store.list()} == before - {orphan}


def _push(api: TestClient, token: str, key: str, body: bytes | None = None) -> int:
    """The status of one upload; a 503 must be the store's."""
    response = api.post(
        UPLOAD,
        params={"mode": "replace"},
        content=to_csv(police_rows(200, seed=3)) if body is None else body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": key,
        },
    )
    if response.status_code == 503:
        assert response.json()["code"] == "STORAGE_UNAVAILABLE", response.text
    return response.status_code


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_store_stopping_during_an_upload_commits_nothing_and_the_key_retries(
    settings: Settings, tmp_path: Path
) -> None:
    # A server of this test's own: stopping it disturbs no other test.
    own = SeaweedServer(tmp_path / "s3")
    own.start()
    try:
        local = settings.model_copy(update=own.settings_update("outage"))
        platform = build_platform(local)
        try:
            with TestClient(create_app(local, platform)) as api:
                token = token_issuer(api)(client_maker(platform)())
                assert _push(api, token, str(uuid.uuid4())) == 201
                own.stop()
                key = str(uuid.uuid4())
                assert _push(api, token, key) == 503
                with platform.sessions() as session:
                    versions = repository.current_version_of(session, "police.occurrences")
                    assert versions is not None and versions.version == 1
                own.start()
                assert _push(api, token, key) == 201
                # The retry was the one upload: a second retry replays it.
                assert _push(api, token, key) in (200, 201)
                with platform.sessions() as session:
                    versions = repository.current_version_of(session, "police.occurrences")
                    assert versions is not None and versions.version == 2
        finally:
            platform.close()
    finally:
        own.stop()


class _StreamStoppingTheStore:
    """An object being written to S3; the server is stopped once its first bytes are in."""

    def __init__(self, inner: pafs.NativeFile, owner: _FilesystemStoppingTheStore) -> None:
        self._inner = inner
        self._owner = owner

    def __enter__(self) -> _StreamStoppingTheStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            self._inner.close()
        except OSError:
            self._owner.failed_after_stop = self._owner.stopped
            raise

    def write(self, data: bytes) -> int:
        if self._owner.stopped:
            self._owner.writes_after_stop += 1
        written: int = self._inner.write(data)
        if not self._owner.stopped:
            self._owner.stopped = True
            self._owner.server.stop()
        return written


class _FilesystemStoppingTheStore:
    """The store's own S3 client, except that the first object it writes stops the server
    after that object's first chunk: the put is under way, its other bytes and its completion
    still to come. Everything else (and every later write) is the real client's."""

    def __init__(self, inner: pafs.FileSystem, server: SeaweedServer) -> None:
        self._inner = inner
        self.server = server
        self.stopped = False
        self.writes_after_stop = 0
        self.failed_after_stop = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def open_output_stream(self, path: str, *args: Any, **kwargs: Any) -> Any:
        stream = self._inner.open_output_stream(path, *args, **kwargs)
        return stream if self.stopped else _StreamStoppingTheStore(stream, self)


def _committed(platform: Platform) -> tuple[int, int, int]:
    """Police versions, uploads and `dataset.ingested` events in the database."""
    with platform.sessions() as session:
        versions = session.scalar(
            select(func.count())
            .select_from(DatasetVersion)
            .where(DatasetVersion.dataset_id == "police.occurrences")
        )
        uploads = session.scalar(select(func.count()).select_from(Upload))
    ingested = len(events(platform, AuditAction.DATASET_INGESTED))
    return int(versions or 0), int(uploads or 0), ingested


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_store_stopping_while_a_version_is_put_commits_nothing_and_the_key_retries(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server of this test's own: stopping it disturbs no other test.
    own = SeaweedServer(tmp_path / "s3")
    own.start()
    try:
        local = settings.model_copy(update=own.settings_update("outage"))
        platform = build_platform(local)
        try:
            store = platform.storage.store
            assert isinstance(store, S3Store)
            client = _FilesystemStoppingTheStore(store._fs, own)
            monkeypatch.setattr(store, "_fs", client)
            # Large enough that its version's file is several chunks of the put.
            body = to_csv(police_rows(20_000, seed=3))
            key = str(uuid.uuid4())
            with TestClient(create_app(local, platform)) as api:
                token = token_issuer(api)(client_maker(platform)())
                assert _push(api, token, key, body) == 503
                # The server stopped inside the put, which then failed on what was left.
                assert client.stopped and client.failed_after_stop
                assert client.writes_after_stop >= 1
                assert _committed(platform) == (0, 0, 0)

                own.start()
                # No object was left behind: the put never completed.
                assert [o.key for o in store.list("police.occurrences")] == []
                retried = api.post(
                    UPLOAD,
                    params={"mode": "replace"},
                    content=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "text/csv",
                        "Idempotency-Key": key,
                    },
                )
                assert retried.status_code == 201, retried.text
                assert retried.json()["version"] == 1
                # The retry was the one upload: a second retry replays it.
                assert _push(api, token, key, body) in (200, 201)
                assert _committed(platform) == (1, 1, 1)
                [ingested] = events(platform, AuditAction.DATASET_INGESTED)
                assert ingested.details["upload_id"] == retried.json()["upload_id"]
                assert len(store.list("police.occurrences")) == 1
        finally:
            platform.close()
    finally:
        own.stop()
