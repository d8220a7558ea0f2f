"""Staged upload bodies: ciphertext at rest, read back through a seekable file that decrypts one
chunk at a time (never the whole body in memory), refusing any tampered chunk."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
from cryptography.exceptions import InvalidTag

from services.storage import staging
from services.storage.inputs import MEDIA_CSV, InputLimits, open_input

LIMITS = InputLimits(max_rows=10_000_000, max_decompressed_bytes=1 << 40)


def stage(directory: Path, body: bytes, pieces: int = 7) -> staging.StagedBody:
    writer = staging.StagingWriter(directory, gzip=False, limit=1 << 40, decompressed_limit=1 << 40)
    step = max(1, len(body) // pieces)
    for start in range(0, len(body), step):
        writer.feed(body[start : start + step])
    return writer.finish()


@pytest.mark.parametrize("size", [0, 1, staging.CHUNK - 1, staging.CHUNK, 3 * staging.CHUNK + 17])
def test_reads_seeks_and_sizes_match_the_plaintext(tmp_path: Path, size: int) -> None:
    body = random.Random(size).randbytes(size)
    staged = stage(tmp_path, body)
    assert staged.size == size
    if size >= 64:
        assert body[:64] not in staged.path.read_bytes()  # ciphertext at rest
    with staged.open() as handle:
        assert handle.read() == body
        rng = random.Random(1)
        for _ in range(50):
            offset = rng.randrange(0, size + 2)
            length = rng.randrange(0, 2 * staging.CHUNK)
            handle.seek(offset)
            assert handle.read(length) == body[offset : offset + length]
        if size >= 5:
            handle.seek(-5, io.SEEK_END)
            assert handle.read() == body[-5:]
    staged.release()


def test_a_changed_byte_fails_its_chunk_tag(tmp_path: Path) -> None:
    body = b"x" * (2 * staging.CHUNK + 10)
    staged = stage(tmp_path, body)
    raw = bytearray(staged.path.read_bytes())
    raw[len(raw) - 20] ^= 1  # in the last chunk
    staged.path.write_bytes(bytes(raw))
    with staged.open() as handle:
        assert handle.read(staging.CHUNK) == body[: staging.CHUNK]  # earlier chunks still read
        with pytest.raises(InvalidTag):
            handle.seek(2 * staging.CHUNK)
            handle.read()


def test_a_truncated_file_is_refused_before_any_read(tmp_path: Path) -> None:
    staged = stage(tmp_path, b"y" * (staging.CHUNK + 100))
    with open(staged.path, "r+b") as handle:
        handle.truncate(os.path.getsize(staged.path) - 1)
    with pytest.raises(ValueError, match="length"):
        staged.open()


def test_a_csv_body_parses_through_the_decrypting_reader(tmp_path: Path) -> None:
    """The CSV reader reads a staged body the same as a plain file, in several passes (scan,
    header, parse), with a BOM, CRLF and a quoted line break spanning a chunk boundary."""
    header = "\ufeffid,name\r\n"
    rows = [f'{i},"Zoë\r\n{i}"\r\n' if i == 9000 else f"{i},Zoë {i}\r\n" for i in range(60_000)]
    text = header + "".join(rows)
    plain = tmp_path / "plain.csv"
    plain.write_text(text, encoding="utf-8", newline="")
    staged = stage(tmp_path / "staging", text.encode("utf-8"))
    from_file = [b.to_pylist() for b in open_input(plain, MEDIA_CSV, LIMITS).batches()]
    from_stage = [b.to_pylist() for b in open_input(staged, MEDIA_CSV, LIMITS).batches()]
    assert from_stage == from_file
    assert sum(len(b) for b in from_stage) == pacsv.read_csv(plain).num_rows == 60_000
