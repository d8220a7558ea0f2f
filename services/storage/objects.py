"""Where immutable files live: a local folder or S3-compatible object storage, one interface.

Objects are named by keys such as ``<dataset>/<id>.parquet``; a key is written once and never
changed, so a local copy of one can never go stale. The local backend gives its files in
place, the S3 backend a read-through cache in the data folder's ``cache/`` (downloaded to a
temporary name and renamed, so a half-downloaded file is never used; the least recently used go
beyond the configured size). A product's views may instead read an S3 object the cache has no
copy of in place (``remote``: only the columns they read are fetched), after which a copy is
fetched in the background (``S3Store.fetch_later``).

Writers produce a local file first (``staging_path``) and hand it to ``put_file``, which returns
only once the object is durable and verified (its size read back from the store): the metadata
row that points at it is committed after that, never before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from services.kit import files as durable
from services.kit.errors import StorageUnavailable
from services.kit.ids import new_id

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# A cold read fetches an object in parts of this size, this many at once: one stream of small
# reads costs a round trip a megabyte (measured on SeaweedFS: 60 MB in 620 ms by 1 MB reads,
# 230 ms by 8 MB parts four at a time).
_PART = 8 << 20
_PARTS_AT_ONCE = 4


class ObjectMissing(Exception):
    """A key the metadata names is not in the store."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch


class ObjectStore(Protocol):
    description: str

    def staging_path(self, key: str) -> Path:
        """A local path, on the same file system as the final place, to write `key`'s bytes."""
        ...

    def put_file(self, temp: Path, key: str) -> None:
        """Move the finished, fsynced `temp` into the store as `key`, durably and verified."""
        ...

    def put_bytes(self, key: str, body: bytes) -> None: ...

    def local_path(self, key: str) -> Path:
        """A local file holding `key`'s bytes (in place, or a cached copy)."""
        ...

    def locate(self, key: str) -> Path:
        """Where a local copy of `key` is or would be, without fetching it (`present` fetches
        it when a reader needs the bytes; `remote` names it for a reader that fetches only the
        columns it reads); ObjectMissing if the store has not got it."""
        ...

    def open_read(self, key: str) -> BinaryIO: ...

    def info(self, key: str) -> ObjectInfo | None: ...

    def sha256(self, key: str) -> str: ...

    def delete(self, key: str) -> None: ...

    def forget_local_copy(self, key: str) -> bool:
        """Remove this process's local copy of an object another process deleted; True when
        there was one. The store itself is not touched."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...


def _digest(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _checked_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not an object key: {key!r}")
    return key


class LocalStore:
    """A folder: today's behaviour, files read in place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"file://{root}"

    def path(self, key: str) -> Path:
        return self.root / _checked_key(key)

    def staging_path(self, key: str) -> Path:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.partial")

    def put_file(self, temp: Path, key: str) -> None:
        durable.publish(temp, self.path(key))

    def put_bytes(self, key: str, body: bytes) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        durable.write_durably(final, body)

    def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise ObjectMissing(key)
        return path

    def locate(self, key: str) -> Path:
        return self.local_path(key)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def info(self, key: str) -> ObjectInfo | None:
        try:
            stat = self.path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, stat.st_size, stat.st_mtime)

    def sha256(self, key: str) -> str:
        with self.open_read(key) as handle:
            return _digest(handle)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def forget_local_copy(self, key: str) -> bool:
        # The folder is the store: there is no copy beside the object.
        return False

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        found: list[ObjectInfo] = []
        for path in base.rglob("*"):
            if path.is_file():
                stat = path.stat()
                key = path.relative_to(self.root).as_posix()
                found.append(ObjectInfo(key, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda o: o.key)


class ReadCache:
    """Local copies of immutable objects, least recently used evicted beyond `max_bytes`."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        return self.root / _checked_key(key)

    def temp_path(self, key: str) -> Path:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.{new_id()}.partial")

    def get(self, key: str, size: int) -> Path | None:
        """The cached copy, if whole (a file of another size is never used, and goes)."""
        path = self.path(key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if stat.st_size != size:
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recency for eviction
        return path

    def admit(self, temp: Path, key: str) -> Path:
        final = self.path(key)
        os.replace(temp, final)
        self.evict(keep=final)
        return final

    def stale_partials(self, cutoff: float) -> list[Path]:
        if not self.root.exists():
            return []
        return [
            path
            for path in self.root.rglob("*.partial")
            if path.is_file() and path.stat().st_mtime < cutoff
        ]

    def evict(self, keep: Path | None = None) -> None:
        with self._lock:
            if not self.root.exists():
                return
            entries = []
            for path in self.root.rglob("*"):
                if path.is_file() and not path.name.endswith(".partial"):
                    with contextlib.suppress(FileNotFoundError):
                        stat = path.stat()
                        # get() touches the mtime: the oldest is the least recently used.
                        entries.append((stat.st_mtime, stat.st_size, path))
            total = sum(e[1] for e in entries)
            for _, size, path in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                if path == keep:
                    continue
                path.unlink(missing_ok=True)
                total -= size


# The cache folders of the S3 stores of this process, for `present`.
_CACHES: dict[Path, S3Store] = {}


def _uncached(path: Path) -> tuple[S3Store, str] | None:
    """The S3 store and key whose cached copy `path` would be, when the copy is not there."""
    if path.is_file():
        return None
    for root, store in list(_CACHES.items()):
        if path.is_relative_to(root):
            return store, path.relative_to(root).as_posix()
    return None


def present(path: Path) -> Path:
    """`path` itself if the file is there; a cached copy that the cache evicted since it was
    handed out (callers keep a version's paths for as long as the version is current) is
    fetched again. Any other path is returned as it is."""
    found = _uncached(path)
    return path if found is None else found[0].local_path(found[1])


@dataclass(frozen=True)
class RemoteObject:
    """An object a reader may read in place, fetching only the byte ranges it needs."""

    filesystem: pafs.FileSystem
    path: str
    key: str
    store: S3Store

    def dataset(self) -> pads.Dataset:
        """The object as one Parquet file a scan reads in place: only the footer and the
        column chunks of the columns and row groups the scan needs are fetched (measured on
        SeaweedFS, coalescing a row group's ranges, ``pre_buffer``, was slower). ObjectMissing
        if the object is gone."""
        try:
            return pads.dataset(self.path, filesystem=self.filesystem, format="parquet")
        except FileNotFoundError:
            raise ObjectMissing(self.key) from None
        except OSError as exc:
            raise StorageUnavailable(f"reading {self.key}") from exc

    def exists(self) -> bool:
        """Whether the store holds the object (StorageUnavailable if it does not answer)."""
        return self.store.info(self.key) is not None


def remote(path: Path) -> RemoteObject | None:
    """The object behind `path` when `path` is where an S3 store's cache would keep a copy and
    holds none: a reader that needs a few columns reads them from the store (ranged requests)
    instead of fetching the whole object. None for any other path."""
    found = _uncached(path)
    return None if found is None else found[0].remote(found[1])


class S3Store:
    """S3-compatible object storage through pyarrow.fs, with a local read-through cache."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        bucket: str,
        prefix: str,
        cache: ReadCache,
        *,
        description: str,
    ) -> None:
        self._fs = filesystem
        self._base = f"{bucket}/{prefix}".rstrip("/")
        self.cache = cache
        self.description = description
        # Copies fetched in the background after a reader read an object in place.
        self._filling: set[str] = set()
        self._filling_lock = threading.Lock()
        self._filler: ThreadPoolExecutor | None = None
        _CACHES[cache.root] = self

    def _full(self, key: str) -> str:
        return f"{self._base}/{_checked_key(key)}"

    def _key(self, full: str) -> str:
        return full[len(self._base) + 1 :]

    def staging_path(self, key: str) -> Path:
        # Named by the key (a fresh id each), so that a writer's leftovers can be found.
        final = self.cache.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.partial")

    def put_file(self, temp: Path, key: str) -> None:
        size = temp.stat().st_size
        try:
            with open(temp, "rb") as source, self._fs.open_output_stream(self._full(key)) as sink:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    sink.write(chunk)
            found = self._fs.get_file_info(self._full(key))
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StorageUnavailable(f"writing {key}") from exc
        if found.type != pafs.FileType.File or found.size != size:
            temp.unlink(missing_ok=True)
            raise StorageUnavailable(f"{key} was not stored whole")
        if self.cache.max_bytes > 0:
            self.cache.admit(temp, key)
        else:
            temp.unlink(missing_ok=True)

    def put_bytes(self, key: str, body: bytes) -> None:
        temp = self.cache.temp_path(key)
        with open(temp, "wb") as handle:
            handle.write(body)
        self.put_file(temp, key)

    def local_path(self, key: str) -> Path:
        found = self.info(key)
        if found is None:
            raise ObjectMissing(key)
        cached = self.cache.get(key, found.size)
        if cached is not None:
            return cached
        temp = self.cache.temp_path(key)
        try:
            self._download(key, temp, found.size)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if self.cache.max_bytes == 0:
            # No cache: the caller reads this one copy; it is swept with the other partials.
            return temp
        return self.cache.admit(temp, key)

    def locate(self, key: str) -> Path:
        found = self.info(key)
        if found is None:
            raise ObjectMissing(key)
        return self.cache.get(key, found.size) or self.cache.path(key)

    def remote(self, key: str) -> RemoteObject:
        return RemoteObject(self._fs, self._full(key), key, self)

    def fetch_later(self, key: str) -> None:
        """Fetch a copy of `key` into the cache in the background (one object at a time, each
        once however many readers ask), so that the next reads are local. Without a cache,
        nothing."""
        if self.cache.max_bytes <= 0:
            return
        with self._filling_lock:
            if key in self._filling:
                return
            self._filling.add(key)
            if self._filler is None:
                self._filler = ThreadPoolExecutor(1, thread_name_prefix="cache-fill")
            filler = self._filler
        filler.submit(self._fill, key)

    def _fill(self, key: str) -> None:
        try:
            self.local_path(key)
        except (ObjectMissing, StorageUnavailable) as exc:
            # A read reports it; the next read in place asks again.
            log.warning("fetching a copy of %s: %s", key, exc)
        finally:
            with self._filling_lock:
                self._filling.discard(key)

    def filling(self) -> bool:
        """Whether a background fetch is queued or running."""
        with self._filling_lock:
            return bool(self._filling)

    def _download(self, key: str, temp: Path, size: int) -> None:
        """`key`'s bytes into `temp`: parts of `_PART` bytes fetched by up to `_PARTS_AT_ONCE`
        ranged requests at once, each written at its offset (memory: the parts in flight)."""
        try:
            with self._fs.open_input_file(self._full(key)) as source:
                descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:

                    def fetch(offset: int) -> int:
                        part = source.read_at(min(_PART, size - offset), offset)
                        os.pwrite(descriptor, part, offset)
                        return len(part)

                    offsets = range(0, size, _PART)
                    if len(offsets) <= 1:
                        fetched = sum(fetch(offset) for offset in offsets)
                    else:
                        with ThreadPoolExecutor(min(_PARTS_AT_ONCE, len(offsets))) as pool:
                            fetched = sum(pool.map(fetch, offsets))
                finally:
                    os.close(descriptor)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        except OSError as exc:
            raise StorageUnavailable(f"reading {key}") from exc
        if fetched != size or temp.stat().st_size != size:
            raise StorageUnavailable(f"{key} was read short")

    def open_read(self, key: str) -> BinaryIO:
        return open(self.local_path(key), "rb")

    def info(self, key: str) -> ObjectInfo | None:
        try:
            found = self._fs.get_file_info(self._full(key))
        except OSError as exc:
            raise StorageUnavailable(f"describing {key}") from exc
        if found.type != pafs.FileType.File:
            return None
        mtime = found.mtime.timestamp() if found.mtime is not None else time.time()
        return ObjectInfo(key, found.size or 0, mtime)

    def sha256(self, key: str) -> str:
        try:
            with self._fs.open_input_stream(self._full(key)) as source:
                digest = hashlib.sha256()
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                return digest.hexdigest()
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        except OSError as exc:
            raise StorageUnavailable(f"reading {key}") from exc

    def delete(self, key: str) -> None:
        try:
            self._fs.delete_file(self._full(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageUnavailable(f"deleting {key}") from exc
        self.cache.path(key).unlink(missing_ok=True)

    def forget_local_copy(self, key: str) -> bool:
        path = self.cache.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = f"{self._base}/{prefix}".rstrip("/")
        try:
            found = self._fs.get_file_info(
                pafs.FileSelector(base, recursive=True, allow_not_found=True)
            )
        except OSError as exc:
            raise StorageUnavailable("listing objects") from exc
        return sorted(
            (
                ObjectInfo(
                    self._key(item.path),
                    item.size or 0,
                    item.mtime.timestamp() if item.mtime is not None else time.time(),
                )
                for item in found
                if item.type == pafs.FileType.File
            ),
            key=lambda o: o.key,
        )


def s3_filesystem(
    *,
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
) -> pafs.S3FileSystem:
    """A pyarrow S3 file system; unset keys fall back to the standard AWS_* variables."""
    options: dict[str, object] = {"region": region or "us-east-1"}
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        if parsed.scheme in ("http", "https") and parsed.netloc:
            options["endpoint_override"] = parsed.netloc
            options["scheme"] = parsed.scheme
        else:
            options["endpoint_override"] = endpoint_url
    if access_key_id and secret_access_key:
        options["access_key"] = access_key_id
        options["secret_key"] = secret_access_key
    # A stopped store must fail the request in seconds, not hang it on retries.
    options["connect_timeout"] = 3
    options["request_timeout"] = 30
    options["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=2)
    return pafs.S3FileSystem(**options)  # type: ignore[arg-type]


def open_store(
    url: str | None,
    *,
    default_root: Path,
    cache_dir: Path,
    cache_max_bytes: int,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> ObjectStore:
    """The store a `TOGETHER_STORAGE_URL` names (unset: the local default folder)."""
    if not url:
        default_root.mkdir(parents=True, exist_ok=True)
        return LocalStore(default_root)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        root = Path(unquote(parsed.path))
        root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root)
    if parsed.scheme == "s3" and parsed.netloc:
        filesystem = s3_filesystem(
            endpoint_url=endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        return S3Store(
            filesystem,
            parsed.netloc,
            parsed.path.strip("/"),
            ReadCache(cache_dir, cache_max_bytes),
            description=url,
        )
    raise ValueError("TOGETHER_STORAGE_URL must be file:///path or s3://bucket/prefix")
