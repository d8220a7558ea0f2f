"""Every storage test runs on both backends: a local folder and a real S3 server (SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.kit.settings import Settings
from services.storage.objects import ObjectStore, open_store
from tests.fixtures.app import plain_settings
from tests.fixtures.seaweedfs import SeaweedServer


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
        plain_settings(data_dir, database_url, key_file, audit_key_file), backend, request
    )


def on_backend(base: Settings, backend: str, request: pytest.FixtureRequest) -> Settings:
    """`base` storing in the local folder, or in this test's prefix of the run's S3 server."""
    if backend == "local":
        return base.model_copy(update={"storage_url": None})
    server: SeaweedServer = request.getfixturevalue("seaweedfs")
    prefix: str = request.getfixturevalue("s3_prefix")
    return base.model_copy(update=server.settings_update(prefix))


def store_of(settings: Settings, *, cache_max_bytes: int | None = None) -> ObjectStore:
    s3_key = settings.s3_access_key_id
    s3_secret = settings.s3_secret_access_key
    return open_store(
        settings.storage_url,
        default_root=settings.storage_dir,
        cache_dir=settings.data_dir / "cache",
        cache_max_bytes=(
            settings.storage_cache_max_bytes if cache_max_bytes is None else cache_max_bytes
        ),
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=s3_key.get_secret_value() if s3_key else None,
        secret_access_key=s3_secret.get_secret_value() if s3_secret else None,
    )


def delete_behind(settings: Settings, key: str) -> None:
    """Remove an object as an operator's mistake would: not through the platform, and with
    no copy left in this replica's cache (as on a replica that never read it)."""
    if settings.storage_url is None:
        (settings.storage_dir / key).unlink()
        return
    server_store = store_of(settings, cache_max_bytes=0)
    server_store.delete(key)
    cached = settings.data_dir / "cache" / key
    cached.unlink(missing_ok=True)
