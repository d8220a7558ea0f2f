"""The object store on both backends: durable verified writes, reads, the read-through cache."""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.kit.settings import Settings
from services.storage import service as storage_service
from services.storage.objects import LocalStore, ObjectMissing, S3Store, present
from tests.storage.conftest import delete_behind, store_of


def _write(store_settings: Settings, key: str, body: bytes, cache: int | None = None) -> None:
    store = store_of(store_settings, cache_max_bytes=cache)
    temp = store.staging_path(key)
    temp.write_bytes(body)
    store.put_file(temp, key)
    assert not temp.exists()


def test_write_read_verify_list_delete(settings: Settings) -> None:
    store = store_of(settings)
    body = os.urandom(300_000)
    _write(settings, "ds.one/a.parquet", body)
    found = store.info("ds.one/a.parquet")
    assert found is not None and found.size == len(body)
    assert store.sha256("ds.one/a.parquet") == hashlib.sha256(body).hexdigest()
    assert store.local_path("ds.one/a.parquet").read_bytes() == body
    with store.open_read("ds.one/a.parquet") as handle:
        assert handle.read() == body
    store.put_bytes("ds.two/b.parquet", b"second")
    assert [item.key for item in store.list()] == ["ds.one/a.parquet", "ds.two/b.parquet"]
    assert [item.key for item in store.list("ds.two")] == ["ds.two/b.parquet"]
    store.delete("ds.one/a.parquet")
    assert store.info("ds.one/a.parquet") is None
    with pytest.raises(ObjectMissing):
        store.local_path("ds.one/a.parquet")
    with pytest.raises(ValueError):
        store.info("../escape")


def test_local_reads_in_place_and_s3_reads_through_the_cache(settings: Settings) -> None:
    body = os.urandom(50_000)
    # Written with no cache: the first read is a cold one.
    _write(settings, "ds/cold.parquet", body, cache=0)
    store = store_of(settings)
    path = store.local_path("ds/cold.parquet")
    assert path.read_bytes() == body
    if isinstance(store, LocalStore):
        assert path == settings.storage_dir / "ds/cold.parquet"  # in place, no copy
        assert not (settings.data_dir / "cache").exists()
        return
    assert isinstance(store, S3Store)
    assert path == settings.data_dir / "cache" / "ds/cold.parquet"
    # Warm: the same copy, not downloaded again (its inode is unchanged).
    inode = path.stat().st_ino
    assert store.local_path("ds/cold.parquet").stat().st_ino == inode
    # A truncated copy (a crash mid-write of another tool, a full disk) is never used.
    with open(path, "r+b") as handle:
        handle.truncate(1000)
    again = store.local_path("ds/cold.parquet")
    assert again.read_bytes() == body
    # A copy evicted after its path was handed out is fetched again when it is read.
    path.unlink()
    assert present(path).read_bytes() == body
    # No partial download is left behind.
    assert not list((settings.data_dir / "cache").rglob("*.partial"))


def test_cache_evicts_the_least_recently_used(settings: Settings) -> None:
    store = store_of(settings, cache_max_bytes=250_000)
    bodies = {f"ds/{name}.parquet": os.urandom(100_000) for name in ("a", "b", "c")}
    for key, body in bodies.items():
        _write(settings, key, body, cache=0)
    for key in bodies:
        assert store.local_path(key).read_bytes() == bodies[key]
    if isinstance(store, LocalStore):
        assert {item.key for item in store.list()} == set(bodies)  # nothing evicted in place
        return
    cache = settings.data_dir / "cache" / "ds"
    held = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    # Three 100 kB objects, a 250 kB cache: the first read is the one that went.
    assert held == ["b.parquet", "c.parquet"]
    # Evicted is only uncached: it is read again from the store.
    assert store.local_path("ds/a.parquet").read_bytes() == bodies["ds/a.parquet"]


def test_an_object_deleted_behind_the_platform_is_missing(settings: Settings) -> None:
    _write(settings, "ds/gone.parquet", b"x" * 10)
    delete_behind(settings, "ds/gone.parquet")
    with pytest.raises(ObjectMissing):
        store_of(settings).local_path("ds/gone.parquet")


def test_a_version_file_gathers_batches_into_row_groups(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are written as row groups of at least ROW_GROUP_ROWS rows (fewer, larger column
    chunks for a reader of the object in place), the rest as a last one; nothing lost."""
    monkeypatch.setattr(storage_service, "ROW_GROUP_ROWS", 100)
    storage = storage_service.Storage(store_of(settings))
    schema = pa.schema([("n", pa.int64()), ("text", pa.string())])
    writer = storage.new_writer("test.rows", schema)
    for start in range(0, 260, 40):
        count = min(40, 260 - start)
        numbers = list(range(start, start + count))
        writer.write(pa.record_batch([numbers, [f"row {n}" for n in numbers]], schema=schema))
    stored = writer.finish()
    storage.put(stored)
    assert stored.row_count == 260
    parquet = pq.ParquetFile(storage.absolute(stored.relative_path))
    groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert groups == [120, 120, 20]
    assert parquet.read().column("n").to_pylist() == list(range(260))
