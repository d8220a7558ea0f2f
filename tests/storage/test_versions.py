"""Dataset versions in the store, through the real API and CLI, on both backends: a missing
object answers a clear 503 and is audited, `together storage check` lists it, `sweep` removes
orphans, and a store that stops during an upload commits nothing and lets the key be retried."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from services.kit.settings import Settings
from services.platform import Platform, build_platform
from services.storage import repository
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


def _push(api: TestClient, token: str, key: str) -> int:
    """The status of one upload; a 503 must be the store's."""
    response = api.post(
        UPLOAD,
        params={"mode": "replace"},
        content=to_csv(police_rows(200, seed=3)),
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
