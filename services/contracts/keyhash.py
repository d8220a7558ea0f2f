"""Duplicate keys across a whole upload in bounded memory: 80 bits of hash a key, not the key.

An upload's key (one or more fields joined) must be unique across every batch of the file. The
keys of a ten-million-row file are some 400 MB of text, and grouping them needs as much again:
instead each batch's distinct keys are hashed here, vectorised, into two independent 64-bit
hashes, of which the ledger keeps the first and the top 16 bits of the second with the row the
key came from (as an offset from its batch's first row: 12 bytes a key), in one of 16
partitions by the first hash's top bits; the file's repeats are found at the end by sorting one
partition at a time, so the end needs a sixteenth of the ledger again, not all of it. Two
different keys share those 80 bits with a probability of about n^2 / 2^81 (10^-10 for ten
million keys): a repeat of the pair is a repeat of the key.

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


# Partitions of the ledger, by the first hash's top bits.
_PARTITION_BITS = 4
_PARTITIONS = 1 << _PARTITION_BITS
_SHIFT = np.uint64(64 - _PARTITION_BITS)
_HIGH = np.uint64(48)


@dataclass
class _Partition:
    first: list[np.ndarray] = field(default_factory=list)
    second: list[np.ndarray] = field(default_factory=list)
    # Each batch's rows as offsets from `bases` (the batch's first row).
    rows: list[np.ndarray] = field(default_factory=list)
    bases: list[int] = field(default_factory=list)

    def repeats(self) -> tuple[np.ndarray, np.ndarray]:
        """This partition's repeated rows and, for each, the row its key first came from."""
        first = np.concatenate(self.first) if self.first else np.empty(0, np.uint64)
        self.first = []
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
        h2 = np.concatenate(self.second)[picked] if self.second else np.empty(0, np.uint16)
        batches = zip(self.rows, self.bases, strict=True)
        every_row = [offsets.astype(np.int64) + base for offsets, base in batches]
        rows = np.concatenate(every_row)[picked] if every_row else np.empty(0, np.int64)
        del every_row
        self.second, self.rows, self.bases = [], [], []
        # Group the candidates by both hashes, rows ascending within a group: the first row of
        # a group is where the key first came; every other row repeats it.
        by_key = np.lexsort((rows, h2, h1))
        h1, h2, rows = h1[by_key], h2[by_key], rows[by_key]
        starts = np.ones(len(rows), dtype=bool)
        starts[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
        earlier = rows[starts][np.cumsum(starts) - 1]
        repeated = ~starts
        return rows[repeated], earlier[repeated]


@dataclass
class KeyLedger:
    """The distinct keys of each batch, as hashes, with the row each first came from."""

    _partitions: list[_Partition] = field(
        default_factory=lambda: [_Partition() for _ in range(_PARTITIONS)]
    )
    _batches: int = 0
    _count: int = 0

    def add(self, keys: pa.Array, rows: pa.Array) -> None:
        """Keys distinct within their batch (no nulls), and their rows, in ascending order."""
        first, second = hash_strings(keys)
        numbers = np.asarray(rows.to_numpy(zero_copy_only=False), dtype=np.int64)
        base = int(numbers.min()) if len(numbers) else 0
        offsets = numbers - base
        span = int(offsets.max()) if len(offsets) else 0
        kept: np.ndarray = offsets
        for narrow in (np.uint16, np.uint32):
            if span <= np.iinfo(narrow).max:
                kept = offsets.astype(narrow)
                break
        high = (second >> _HIGH).astype(np.uint16)
        part = (first >> _SHIFT).astype(np.intp)
        # Each partition's share of the batch, rows still ascending within it.
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(_PARTITIONS + 1))
        for index, partition in enumerate(self._partitions):
            taken = order[bounds[index] : bounds[index + 1]]
            if len(taken):
                partition.first.append(first[taken])
                partition.second.append(high[taken])
                partition.rows.append(kept[taken])
                partition.bases.append(base)
        self._batches += 1
        self._count += len(numbers)

    def repeats(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row whose key an earlier row had, ascending, with that earlier (first) row.
        Forgets the keys."""
        partitions, batches = self._partitions, self._batches
        self._partitions = [_Partition() for _ in range(_PARTITIONS)]
        self._batches = self._count = 0
        if batches < 2:  # keys are distinct within a batch
            return np.empty(0, np.int64), np.empty(0, np.int64)
        found_parts: list[np.ndarray] = []
        before_parts: list[np.ndarray] = []
        for partition in partitions:
            found, before = partition.repeats()
            found_parts.append(found)
            before_parts.append(before)
        found = np.concatenate(found_parts)
        before = np.concatenate(before_parts)
        ascending = np.argsort(found, kind="stable")
        return found[ascending], before[ascending]

    def __len__(self) -> int:
        return self._count
