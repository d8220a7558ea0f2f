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
