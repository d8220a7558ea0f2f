"""Duplicate keys across a whole upload in bounded memory: 128 bits of hash a key, not the key.

An upload's key (one or more fields joined) must be unique across every batch of the file. The
keys of a ten-million-row file are some 400 MB of text, and grouping them needs as much again:
instead each batch's distinct keys are hashed here, vectorised, into two independent 64-bit
hashes (24 bytes a key with the row it came from), and the file's repeats are found at the end
by one sort. Two different keys share both hashes with a probability of about n^2 / 2^129
(10^-25 for ten million keys): a repeat of the pair is a repeat of the key.

The hash reads each string eight bytes at a time (the last word masked to the string's length),
mixes each word into two accumulators with different multipliers, then finishes with the length
and a 64-bit avalanche (the splitmix64 finaliser). It is not a cryptographic hash, and need not
be: the keys are the partner's own, and a collision could only refuse an upload, never accept a
duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_SEED1 = np.uint64(0x243F6A8885A308D3)
_SEED2 = np.uint64(0x13198A2E03707344)
_F1 = np.uint64(0xBF58476D1CE4E5B9)
_F2 = np.uint64(0x94D049BB133111EB)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


def _avalanche(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(30)
    h *= _F1
    h ^= h >> np.uint64(27)
    h *= _F2
    h ^= h >> np.uint64(31)
    return h


def hash_strings(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes of each string of `values` (no nulls)."""
    if values.null_count:
        raise ValueError("keys to hash must not be null")
    if pa.types.is_large_string(values.type):
        offset_type: type[np.signedinteger] = np.int64  # type: ignore[type-arg]
    else:
        values = values.cast(pa.string())
        offset_type = np.int32
    count = len(values)
    _, offsets_buffer, data_buffer = values.buffers()
    assert offsets_buffer is not None
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[
        values.offset : values.offset + count + 1
    ].astype(np.int64)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    raw = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0)
    # Eight zero bytes after the data, so that a word read at any string's end stays inside.
    padded = np.zeros(len(raw) + 8, dtype=np.uint8)
    padded[: len(raw)] = raw
    # The little-endian 64-bit word starting at each byte (an unaligned, overlapping view).
    words = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    h1 = np.full(count, _SEED1, dtype=np.uint64)
    h2 = np.full(count, _SEED2, dtype=np.uint64)
    longest = int(lengths.max()) if count else 0
    for word in range(0, longest, 8):
        remaining = np.clip(lengths - word, 0, 8).astype(np.uint64)
        # The low `remaining` bytes of the word; none once a string has ended.
        mask = np.where(
            remaining == 8, _ALL, (np.uint64(1) << (remaining * np.uint64(8))) - np.uint64(1)
        )
        value = words[np.minimum(starts + word, len(words) - 1)] & mask
        # A string that has ended is left as it is: its hash must not depend on how long the
        # longest string beside it in the batch is.
        going = remaining > 0
        mixed = (h1 ^ value) * _M1
        h1 = np.where(going, mixed ^ (mixed >> np.uint64(29)), h1)
        mixed = (h2 ^ value) * _M2
        h2 = np.where(going, mixed ^ (mixed >> np.uint64(32)), h2)
    size = lengths.astype(np.uint64)
    return _avalanche(h1 ^ size), _avalanche(h2 ^ (size * _M1))


@dataclass
class KeyLedger:
    """The distinct keys of each batch, as hashes, with the row each first came from."""

    _first: list[np.ndarray] = field(default_factory=list)
    _second: list[np.ndarray] = field(default_factory=list)
    _rows: list[np.ndarray] = field(default_factory=list)

    def add(self, keys: pa.Array, rows: pa.Array) -> None:
        """Keys distinct within their batch (no nulls), and their rows, in ascending order."""
        first, second = hash_strings(keys)
        self._first.append(first)
        self._second.append(second)
        self._rows.append(np.asarray(rows.to_numpy(zero_copy_only=False), dtype=np.int64))

    def repeats(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row whose key an earlier row had, ascending, with that earlier (first) row.
        Forgets the keys."""
        parts_first, parts_second, parts_rows = self._first, self._second, self._rows
        self._first, self._second, self._rows = [], [], []
        if len(parts_first) < 2:  # keys are distinct within a batch
            return np.empty(0, np.int64), np.empty(0, np.int64)
        first = np.concatenate(parts_first)
        del parts_first
        order = np.argsort(first, kind="stable")
        ordered = first[order]
        # Only keys whose first hash another key shares can repeat (none, in a good file).
        same = ordered[1:] == ordered[:-1]
        shared = np.zeros(len(ordered), dtype=bool)
        shared[1:] |= same
        shared[:-1] |= same
        picked = order[shared]
        del order, ordered, same, shared
        h1 = first[picked]
        del first
        h2 = np.concatenate(parts_second)[picked]
        del parts_second
        rows = np.concatenate(parts_rows)[picked]
        del parts_rows, picked
        # Group the candidates by both hashes, rows ascending within a group: the first row of
        # a group is where the key first came; every other row repeats it.
        by_key = np.lexsort((rows, h2, h1))
        h1, h2, rows = h1[by_key], h2[by_key], rows[by_key]
        starts = np.ones(len(rows), dtype=bool)
        starts[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
        earlier = rows[starts][np.cumsum(starts) - 1]
        repeated = ~starts
        found, before = rows[repeated], earlier[repeated]
        ascending = np.argsort(found, kind="stable")
        return found[ascending], before[ascending]

    def __len__(self) -> int:
        return sum(len(part) for part in self._rows)
