"""Upload keys hashed in bulk: equal strings hash equally wherever they sit in an array, any
difference changes the hash, and repeats across batches name the row each first came from."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from services.contracts.keyhash import KeyLedger, hash_strings


def pairs(values: pa.Array) -> list[tuple[int, int]]:
    first, second = hash_strings(values)
    return list(zip(first.tolist(), second.tolist(), strict=True))


def test_equal_strings_hash_equally_in_any_array_and_at_any_offset() -> None:
    words = ["", "a", "abcdefgh", "abcdefghi", "Zoë Ø'Brien\x1fNOM-17", "x" * 100]
    alone = [pairs(pa.array([w]))[0] for w in words]
    together = pairs(pa.array(words))
    shifted = pairs(pa.array(["padding", *words]).slice(1))
    large = pairs(pa.array(words, pa.large_string()))
    assert alone == together == shifted == large


def test_any_difference_changes_both_hashes() -> None:
    base = "OCC-2024-000001\x1fNOM-000001"
    variants = [base[:i] + chr(ord(base[i]) ^ 1) + base[i + 1 :] for i in range(len(base))]
    variants += [base + "\x00", base[:-1], "\x00" + base, "", "\x00", "\x00\x00"]
    hashed = pairs(pa.array([base, *variants]))
    assert len({h[0] for h in hashed}) == len(hashed)
    assert len({h[1] for h in hashed}) == len(hashed)


def test_a_million_distinct_keys_have_distinct_hashes() -> None:
    rng = random.Random(7)
    keys = [f"OCC-{i:09d}\x1fNOM-{rng.randrange(10**6):06d}" for i in range(1_000_000)]
    first, second = hash_strings(pa.array(keys))
    assert len(set(first.tolist())) == len(keys)
    assert len(set(zip(first.tolist(), second.tolist(), strict=True))) == len(keys)


def test_nulls_are_refused() -> None:
    with pytest.raises(ValueError):
        hash_strings(pa.array(["a", None]))


def test_repeats_across_batches_name_the_first_row() -> None:
    ledger = KeyLedger()
    # Each batch's keys are distinct within it, with the row each first came from.
    ledger.add(pa.array(["a", "b", "c"]), pa.array([1, 2, 4], pa.int64()))
    ledger.add(pa.array(["d", "b"]), pa.array([5, 6], pa.int64()))
    ledger.add(pa.array(["a", "e", "b"]), pa.array([7, 8, 9], pa.int64()))
    found, earlier = ledger.repeats()
    assert list(zip(found.tolist(), earlier.tolist(), strict=True)) == [(6, 2), (7, 1), (9, 2)]
    assert len(ledger) == 0  # forgotten once asked


def test_one_batch_has_no_repeats_to_find() -> None:
    ledger = KeyLedger()
    ledger.add(pa.array(["a", "b"]), pa.array([1, 2], pa.int64()))
    found, earlier = ledger.repeats()
    assert len(found) == 0 and len(earlier) == 0


def test_repeats_in_many_batches_match_a_dictionary_of_the_keys() -> None:
    """Keys spread over every partition of the ledger: exactly the repeats a dictionary of the
    keys finds, each with the row its key first came from (row numbers past 2**32 too)."""
    rng = random.Random(11)
    ledger = KeyLedger()
    seen: dict[str, int] = {}
    order: list[str] = []
    expected: list[tuple[int, int]] = []
    row = 0
    for batch in range(6):
        keys: list[str] = []
        rows: list[int] = []
        batch_keys: set[str] = set()
        for _ in range(20_000):
            row += 1
            number = row + (1 << 32 if batch == 5 else 0)
            repeat = order and rng.random() < 0.01
            key = rng.choice(order) if repeat else f"K{rng.getrandbits(64):x}"
            if key in batch_keys:
                continue
            batch_keys.add(key)
            keys.append(key)
            rows.append(number)
            if key in seen:
                expected.append((number, seen[key]))
            else:
                seen[key] = number
                order.append(key)
        ledger.add(pa.array(keys), pa.array(rows, pa.int64()))
    assert len(ledger) == len(seen) + len(expected)
    found, earlier = ledger.repeats()
    assert list(zip(found.tolist(), earlier.tolist(), strict=True)) == sorted(expected)
    assert len(expected) > 500


def test_rows_far_apart_in_a_batch_are_kept_exactly() -> None:
    ledger = KeyLedger()
    ledger.add(pa.array(["a", "b", "c"]), pa.array([1, 100_000, 1 << 33], pa.int64()))
    ledger.add(pa.array(["c", "b"]), pa.array([(1 << 34) + 3, (1 << 34) + 70_000], pa.int64()))
    found, earlier = ledger.repeats()
    assert list(zip(found.tolist(), earlier.tolist(), strict=True)) == [
        ((1 << 34) + 3, 1 << 33),
        ((1 << 34) + 70_000, 100_000),
    ]
