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
