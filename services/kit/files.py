"""Durable files: a reader never sees a half-written file, and a crash never loses a renamed one.

The order is the one POSIX needs: write under a temporary name in the same folder, fsync the
file, rename it into place, fsync the folder (the rename itself is only durable then).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make the renames and creations in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, final: Path) -> None:
    """Move a file already written and fsynced into place, durably."""
    os.replace(temp, final)
    fsync_dir(final.parent)


def write_durably(path: Path, body: bytes) -> None:
    """Write `body` to `path` so that it is either all there after a crash or not there at all."""
    temp = path.with_name(f".{path.name}.partial")
    try:
        with open(temp, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        publish(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_secret(path: Path, body: bytes) -> None:
    """Create a key file readable by its owner only (0600), durably; never overwrite one.

    A key that is lost after a crash makes every ciphertext and signature made with it useless,
    and overwriting one does the same: hence exclusive creation and fsync before returning.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
