"""Streams a request body to a file: size-limited before and while reading, gzip bounded."""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from services.kit.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from services.kit.ids import new_id

_CHUNK_OUT = 1 << 20


@dataclass
class ReceivedBody:
    path: Path
    sha256: str
    size_bytes: int  # bytes on the wire
    content_bytes: int  # after decompression


def declared_length(request: Request, limit: int) -> None:
    values = request.headers.getlist("content-length")
    if len(values) > 1:
        raise BadRequest("more than one Content-Length header")
    if values:
        try:
            length = int(values[0])
        except ValueError as exc:
            raise BadRequest("Content-Length is not a number") from exc
        if length < 0:
            raise BadRequest("Content-Length is negative")
        if length > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")


async def receive_to_file(
    request: Request, directory: Path, *, limit: int, decompressed_limit: int
) -> ReceivedBody:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UnsupportedMediaType("Content-Encoding must be gzip or absent")
    declared_length(request, limit)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{new_id()}.body"
    digest = hashlib.sha256()
    received = 0
    written = 0
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    try:
        with open(path, "wb") as handle:

            def emit(data: bytes) -> None:
                nonlocal written
                written += len(data)
                if written > decompressed_limit:
                    raise PayloadTooLarge(
                        f"the body decompresses beyond the limit of {decompressed_limit} bytes"
                    )
                digest.update(data)
                handle.write(data)

            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
                if decompressor is None:
                    emit(chunk)
                    continue
                try:
                    # max_length bounds the memory one small, highly compressed chunk can claim.
                    data = decompressor.decompress(chunk, _CHUNK_OUT)
                    emit(data)
                    while decompressor.unconsumed_tail:
                        data = decompressor.decompress(decompressor.unconsumed_tail, _CHUNK_OUT)
                        emit(data)
                except zlib.error as exc:
                    raise BadRequest("the body is not valid gzip") from exc
                if decompressor.eof and decompressor.unused_data:
                    raise BadRequest("concatenated gzip members are not accepted")
            if decompressor is not None:
                if not decompressor.eof:
                    raise BadRequest("the gzip body is truncated")
                emit(decompressor.flush())
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return ReceivedBody(path, digest.hexdigest(), received, written)
