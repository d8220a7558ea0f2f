"""The Merkle tree against RFC 6962's test vectors, and the canonical form against RFC 8785."""

from __future__ import annotations

import json
import math

import pytest

from services.audit import merkle
from services.audit.canonical import NotCanonicalisable, canonical_json, format_float, is_canonical

# The leaves and roots of the RFC 6962 reference test data (certificate-transparency).
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_roots_match_rfc6962_test_vectors() -> None:
    hashes = [merkle.leaf_hash(leaf) for leaf in LEAVES]
    compact = merkle.CompactRange()
    assert compact.root() == merkle.EMPTY_ROOT
    for size, expected in enumerate(ROOTS, start=1):
        compact.append(hashes[size - 1])
        assert merkle.root(hashes[:size]).hex() == expected
        assert compact.root().hex() == expected


def test_inclusion_and_consistency_proofs() -> None:
    hashes = [merkle.leaf_hash(b"event %d" % i) for i in range(37)]
    for size in range(1, 38):
        root = merkle.root(hashes[:size])
        for index in range(size):
            proof = merkle.inclusion_proof(hashes[:size], index)
            assert merkle.verify_inclusion(hashes[index], index, size, proof, root)
            assert not merkle.verify_inclusion(hashes[index - 1], index, size, proof, root) or (
                size == 1
            )
        for old in range(1, size + 1):
            proof = merkle.consistency_proof(hashes[:size], old)
            old_root = merkle.root(hashes[:old])
            assert merkle.verify_consistency(old, size, proof, old_root, root)
            if old < size:
                # A log that rewrote its history (leaf 0 changed) is not consistent.
                forged = merkle.root([merkle.leaf_hash(b"x"), *hashes[1:size]])
                assert not merkle.verify_consistency(old, size, proof, old_root, forged)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (0.5, "0.5"),
        (0.001, "0.001"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (123.456, "123.456"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (-1.25e26, "-1.25e+26"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (333333333.3333333, "333333333.3333333"),
    ],
)
def test_floats_are_written_as_ecmascript_does(value: float, text: str) -> None:
    assert format_float(value) == text
    assert float(text) == value


def test_canonical_form_is_rfc8785() -> None:
    document = {
        "b": [1, 2.0, None, True, False],
        "a": 'tab\there "quoted" \\ \u2028 \x01 é',
        "\U0001f600": 1,  # UTF-16 order: the surrogate pair sorts before U+FB33
        "\ufb33": 2,
        "nested": {"z": {}, "y": []},
    }
    text = canonical_json(document)
    assert text == (
        '{"a":"tab\\there \\"quoted\\" \\\\ \u2028 \\u0001 é","b":[1,2,null,true,false],'
        '"nested":{"y":[],"z":{}},"\U0001f600":1,"\ufb33":2}'
    )
    assert json.loads(text) == {**document, "b": [1, 2, None, True, False]}
    assert is_canonical(text.encode())
    assert not is_canonical(b'{"b":1, "a":2}')
    assert not is_canonical(b'{"a":1.0}')
    for bad in (math.nan, math.inf, {1: "x"}, {"a": object()}, "\ud800"):
        with pytest.raises(NotCanonicalisable):
            canonical_json(bad)


def test_the_fast_writer_gives_the_pure_writers_bytes_or_stands_aside() -> None:
    """Whatever the fast path (orjson where installed) writes is byte for byte what the pure
    RFC 8785 writer writes; documents it cannot show that for fall back to the pure writer."""
    import enum
    import random
    import uuid

    from services.audit import canonical

    class Colour(enum.Enum):
        RED = "red"

    rng = random.Random(8785)
    alphabet = [chr(c) for c in range(128)] + ["é", "\u2028", "\U0001f600"]

    def value(depth: int) -> object:
        kind = rng.randrange(8 if depth < 3 else 5)
        if kind == 0:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(6)))
        if kind == 1:
            return rng.choice([0, -1, 2**53, -(2**63), 2**63 - 1, rng.randrange(-999, 999)])
        if kind == 2:
            return rng.choice([True, False, None])
        if kind == 3:
            return rng.choice([1.0, 0.5, 1e21])
        if kind == 4:
            return rng.choice([uuid.UUID(int=7), Colour.RED, (1, "a")])
        if kind == 5:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        keys = ["".join(rng.choice(alphabet[32:]) for _ in range(3)) for _ in range(4)]
        return {key: value(depth + 1) for key in keys}

    fast_taken = 0
    for _ in range(3000):
        document = {"k": value(0), "id": "x", **({"n": 1} if rng.random() < 0.5 else {})}
        fast = canonical._fast(document)
        try:
            out: list[str] = []
            canonical._write(document, out)
            pure: str | None = "".join(out)
        except canonical.NotCanonicalisable:
            pure = None
        if fast is not None:
            fast_taken += 1
            assert fast == pure, document
    assert fast_taken > 500  # the fast path is really exercised
    # Refused the same way whichever path meets it.
    for bad in ({"a": 2**64}, {"a": "\ud800"}, {"a": uuid.UUID(int=1)}, {"a": Colour.RED}):
        assert canonical._fast(bad) is None
