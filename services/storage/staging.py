"""Upload bodies at rest while they wait to be parsed: encrypted under a key held only in memory.

A body is streamed to `staging/<id>.body` as it arrives (never held whole in memory), sealed in
1 MiB chunks with AES-256-GCM under a random key made for that upload alone. The key lives in the
`StagedBody` of the process serving the upload and nowhere else: when the upload ends, or the
process dies, nothing can decrypt the file, so a body left behind by a crash (names, dates of
birth) is ciphertext. Each chunk's nonce is its index and a last-chunk flag, so chunks cannot be
reordered, dropped or the file truncated without the tag check failing.

The file stays locked (`flock`) by the process that owns it while its upload runs; `sweep`
removes every staging file that no live process holds and that is older than a grace period.

Reading: `open_plain` gives a seekable file object that decrypts the chunk a read falls in (the
chunks have a fixed size, so any offset maps to one chunk), checking its tag each time. The
readers read through it, several passes if they need them: the clear text is never written
anywhere, and a parser holds one chunk of it at a time beyond its own buffers, whatever the
body's size (a 2 GB body decrypted whole into memory would take 2 GB).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.kit.errors import BadRequest, PayloadTooLarge
from services.kit.ids import new_id

CHUNK = 1 << 20
_TAG = 16
_MAGIC = b"TGSTAGE1"
_SUFFIX = ".body"
_INFLATE_STEP = 1 << 20


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(8, "big") + (b"\x00\x00\x00\x01" if last else b"\x00\x00\x00\x00")


@dataclass
class StagedBody:
    """A received body: where its ciphertext is, the key to it, and what it was."""

    path: Path
    key: bytes = field(repr=False)
    sha256: str
    size_bytes: int  # on the wire
    content_bytes: int  # after decompression: the plaintext's size
    _fd: int | None = field(default=None, repr=False)

    def chunks(self) -> list[int]:
        """Plaintext size of each chunk (all but the last are CHUNK)."""
        full, rest = divmod(self.content_bytes, CHUNK)
        return [CHUNK] * full + [rest]

    @property
    def size(self) -> int:
        """The plaintext's size (a reader's `Body`)."""
        return self.content_bytes

    def open(self) -> io.BufferedReader:
        """The plaintext as a seekable, read-only file object, decrypted chunk by chunk as it
        is read (a reader's `Body`); a tampered chunk raises `InvalidTag` when read."""
        return io.BufferedReader(_PlainReader(self), buffer_size=CHUNK)

    def release(self) -> None:
        """Delete the ciphertext and forget the key (the upload is over)."""
        self.path.unlink(missing_ok=True)
        self.key = b""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _PlainReader(io.RawIOBase):
    """Random access to a staged body's plaintext: the chunk holding an offset is decrypted
    (its tag checked) when first read from, and the last one is kept."""

    def __init__(self, staged: StagedBody) -> None:
        self._aead = AESGCM(staged.key)
        self._sizes = staged.chunks()
        self._size = staged.content_bytes
        self._file = open(staged.path, "rb")  # noqa: SIM115 (closed with this object)
        if self._file.read(len(_MAGIC)) != _MAGIC:
            self._file.close()
            raise ValueError("not a staging file")
        expected = len(_MAGIC) + self._size + _TAG * len(self._sizes)
        if os.fstat(self._file.fileno()).st_size != expected:
            self._file.close()
            raise ValueError("the staging file's length does not match its body")
        self._position = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def _chunk(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        self._file.seek(len(_MAGIC) + index * (CHUNK + _TAG))
        sealed = self._file.read(self._sizes[index] + _TAG)
        plain = self._aead.decrypt(_nonce(index, index == len(self._sizes) - 1), sealed, None)
        self._cached = (index, plain)
        return plain

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        done = 0
        while done < len(target) and self._position < self._size:
            index, within = divmod(self._position, CHUNK)
            chunk = self._chunk(index)
            take = min(len(chunk) - within, len(target) - done)
            target[done : done + take] = chunk[within : within + take]
            done += take
            self._position += take
        return done

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            self._cached = None
        super().close()


class StagingWriter:
    """Receives a body chunk by chunk: size limits, gzip bounded, hashed, encrypted to disk.

    `limit` bounds the bytes on the wire, `decompressed_limit` what gzip may expand them to:
    the inflater is asked for at most 1 MiB at a time, so one small, highly compressed chunk
    cannot claim more memory than that, and the budget stops a bomb as soon as it is exceeded.
    Only one gzip layer is undone; a nested gzip is bytes no reader accepts.
    """

    def __init__(self, directory: Path, *, gzip: bool, limit: int, decompressed_limit: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{new_id()}{_SUFFIX}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # this process owns the file: `sweep` leaves it
        self._key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(self._key)
        self._limit = limit
        self._decompressed_limit = decompressed_limit
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self._digest = hashlib.sha256()
        self._pending = bytearray()
        self._index = 0
        self.received = 0
        self.written = 0
        self._write(_MAGIC)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _seal(self, plain: bytes | bytearray | memoryview, last: bool) -> None:
        self._write(self._aead.encrypt(_nonce(self._index, last), plain, None))
        self._index += 1

    def _emit(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self._decompressed_limit:
            raise PayloadTooLarge(
                f"the body decompresses beyond the limit of {self._decompressed_limit} bytes"
            )
        self._digest.update(data)
        self._pending += data
        if len(self._pending) < CHUNK:
            return
        view = memoryview(self._pending)
        sealed = 0
        while len(view) - sealed >= CHUNK:
            self._seal(view[sealed : sealed + CHUNK], last=False)
            sealed += CHUNK
        view.release()
        del self._pending[:sealed]

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self._limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {self._limit} bytes")
        if self._inflater is None:
            self._emit(chunk)
            return
        inflater = self._inflater
        try:
            self._emit(inflater.decompress(chunk, _INFLATE_STEP))
            while inflater.unconsumed_tail:
                self._emit(inflater.decompress(inflater.unconsumed_tail, _INFLATE_STEP))
        except zlib.error as exc:
            raise BadRequest("the body is not valid gzip") from exc
        if inflater.eof and inflater.unused_data:
            raise BadRequest("concatenated gzip members are not accepted")

    def finish(self) -> StagedBody:
        """Seal the last chunk. The file is not fsynced: after a crash it is unreadable anyway."""
        if self._inflater is not None:
            if not self._inflater.eof:
                raise BadRequest("the gzip body is truncated")
            self._emit(self._inflater.flush())
        self._seal(self._pending, last=True)
        self._pending = bytearray()
        body = StagedBody(
            path=self.path,
            key=self._key,
            sha256=self._digest.hexdigest(),
            size_bytes=self.received,
            content_bytes=self.written,
            _fd=self._fd,
        )
        self._key = b""
        return body

    def abort(self) -> None:
        self.path.unlink(missing_ok=True)
        self._key = b""
        os.close(self._fd)


def is_storage_full(exc: BaseException) -> bool:
    """A write failed for want of space (or quota), however the library reported it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def sweep(directory: Path, *, older_than_seconds: float) -> list[str]:
    """Delete staging files that no live upload holds and that are older than the grace period.

    A live upload's process holds an exclusive `flock` on its file; a lock dies with its process,
    so after a crash the file is free to go (and was unreadable ciphertext all along). The grace
    period covers the instant between a file's creation and its lock.
    """
    removed: list[str] = []
    if not directory.exists():
        return removed
    cutoff = time.time() - older_than_seconds
    for path in directory.iterdir():
        try:
            if not path.is_file() or path.stat().st_mtime > cutoff:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live upload's
            path.unlink(missing_ok=True)
            removed.append(path.name)
        finally:
            os.close(fd)
    return removed
