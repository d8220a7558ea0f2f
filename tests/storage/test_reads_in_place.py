"""A replica with no copy of a version's object (S3) reads the columns a product needs from the
object in place, answers exactly what a local copy answers, and then fetches a copy in the
background; an object that went away meanwhile is the same named 503 as before."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.kit.settings import Settings
from services.platform import Platform
from services.storage import objects, repository
from services.storage import service as storage_service
from services.storage.objects import S3Store
from tests.fixtures.audit_events import events
from tests.fixtures.snapshots import Loading
from tests.gateway.test_products_api import LEVEL, PARAMS, load_products_data
from tests.ingestion.helpers import police_rows, to_csv
from tests.storage.conftest import delete_behind

pytestmark = pytest.mark.parametrize("backend", ["s3"], indirect=True)

# Every shipped Level 1 and 2 product, each read by a role of its level.
READERS = {1: "l1_analyst", 2: "l2_reader"}


def _answers(api: TestClient, tokens: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for product, level in LEVEL.items():
        headers = {"Authorization": f"Bearer {tokens[READERS[level]]}"}
        response = api.get(f"/v1/products/{product}", params=PARAMS[product], headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        found[product] = (body["rows"], body.get("notes"), body["sources"])
    return found


def _drop_copies(platform: Platform) -> list[str]:
    """Every object's local copy and every held result gone, as on a replica that never read."""
    store = platform.storage.store
    assert isinstance(store, S3Store)
    _wait_for_fills(store)
    with platform.sessions() as session:
        keys = sorted({row.path for row in repository.all_version_files(session)})
    for key in keys:
        store.forget_local_copy(key)
    with platform.products.cache_lock:
        platform.products.cache.clear()
    return keys


def _wait_for_fills(store: S3Store) -> None:
    deadline = time.monotonic() + 30
    while store.filling():
        assert time.monotonic() < deadline, "a background fetch never finished"
        time.sleep(0.02)


def test_a_read_without_a_copy_answers_as_with_one_then_keeps_a_copy(
    settings: Settings,
    loading: Loading,
    api: TestClient,
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = load_products_data(loading)
    store = platform.storage.store
    assert isinstance(store, S3Store)
    with_copies = _answers(api, tokens)
    keys = _drop_copies(platform)
    assert not any(store.cache.path(key).exists() for key in keys)
    police = next(key for key in keys if key.startswith("police.occurrences/"))
    location = store.cache.path(police)
    found = objects.remote(location)
    assert found is not None and found.key == police

    fetched_by: list[str] = []
    fetch = store.local_path

    def watched(key: str) -> Path:
        fetched_by.append(threading.current_thread().name)
        return fetch(key)

    monkeypatch.setattr(store, "local_path", watched)
    in_place = _answers(api, tokens)
    assert in_place == with_copies
    _wait_for_fills(store)
    # Whole copies were fetched only in the background, after the answers.
    assert fetched_by and all(name.startswith("cache-fill") for name in fetched_by)
    # Each object read in place is then fetched whole, once, into the cache.
    _wait_for_fills(store)
    assert location.is_file()
    assert objects.remote(location) is None
    size = store.info(police)
    assert size is not None and location.stat().st_size == size.size
    with platform.products.cache_lock:
        platform.products.cache.clear()
    assert _answers(api, tokens) == with_copies


def test_an_appended_version_read_partly_in_place_answers_as_whole(
    settings: Settings, loading: Loading, api: TestClient, platform: Platform
) -> None:
    """A version of two files, one with a copy and one without: one relation of both."""
    tokens = load_products_data(loading)
    police_token = loading.token_for(loading.make_client())
    rows = police_rows(400, seed=12)
    appended = api.post(
        "/v1/datasets/police.occurrences/uploads",
        params={"mode": "append"},
        content=to_csv(
            [{**row, "occurrence_ref": f"APPENDED-{row['occurrence_ref']}"} for row in rows]
        ),
        headers={
            "Authorization": f"Bearer {police_token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": "append-in-place",
        },
    )
    assert appended.status_code == 201, appended.text
    whole = _answers(api, tokens)
    keys = _drop_copies(platform)
    police = sorted(key for key in keys if key.startswith("police.occurrences/"))
    assert len(police) == 2
    store = platform.storage.store
    assert isinstance(store, S3Store)
    store.local_path(police[0])  # one copy back; the other file is read in place
    assert _answers(api, tokens) == whole


def test_an_object_gone_after_its_version_was_located_is_a_named_503(
    settings: Settings, loading: Loading, api: TestClient, platform: Platform
) -> None:
    tokens = load_products_data(loading)
    headers = {"Authorization": f"Bearer {tokens['l1_analyst']}"}
    first = api.get("/v1/products/sv-counts", params=PARAMS["sv-counts"], headers=headers)
    assert first.status_code == 200
    keys = _drop_copies(platform)
    delete_behind(settings, next(k for k in keys if k.startswith("police.occurrences/")))
    # The replica still holds the version's location (nothing told it of the deletion).
    again = api.get("/v1/products/sv-counts", params=PARAMS["sv-counts"], headers=headers)
    assert again.status_code == 503, again.text
    assert again.json()["code"] == "STORED_VERSION_MISSING"
    assert "police.occurrences" in again.json()["detail"]
    refused = events(platform, "product.refused")
    assert [e.reason for e in refused] == ["stored_version_missing"]


def test_the_prefetcher_fetches_the_current_versions_once_an_epoch(
    settings: Settings, loading: Loading, platform: Platform
) -> None:
    load_products_data(loading)
    store = platform.storage.store
    assert isinstance(store, S3Store)
    _drop_copies(platform)
    with platform.sessions() as session:
        current = repository.current_files(session)
    assert current and not any(store.cache.path(key).exists() for key, _ in current)
    epoch = [7]
    prefetch = storage_service.Prefetcher(platform.sessions, platform.storage, lambda: epoch[0])
    assert prefetch() == len(current)
    for key, size in current:
        assert store.cache.path(key).stat().st_size == size
    store.forget_local_copy(current[0][0])
    assert prefetch() == 0  # the same epoch: nothing changed, nothing fetched
    epoch[0] += 1
    assert prefetch() == 1  # a change: what is missing is fetched again
