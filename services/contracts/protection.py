"""Protection at rest: keyed pseudonyms, deterministic encryption and person keys.

Pure functions over Arrow arrays. Keys are handed in by the caller (the platform's key store:
bytes, or the data encryption keys by id); nothing here reads files or the environment.

Every operation works once per DISTINCT value: the column is dictionary-encoded, the (smaller)
dictionary is processed in a Python loop, and the result is taken back to the rows. Real
columns repeat values heavily (one suspect, many offences), and a per-row Python loop over a
million rows would cost seconds.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.kit.keys import ORIGINAL_KEY_ID, EncryptionKeys

SEPARATOR = "\x1f"
"""Between a domain (or aad) and the value, so that no value can imitate another domain."""

PERSON_DOMAIN = "person"
CIPHERTEXT_VERSION = 1
"""Format 1: version byte, IV, ciphertext and tag; always under the original key (id 0)."""
KEYED_CIPHERTEXT_VERSION = 2
"""Format 2: version byte, 4-byte big-endian key id, IV, ciphertext and tag."""
KEY_ID_LENGTH = 4
IV_LENGTH = 12
TAG_LENGTH = 16
MIN_HMAC_KEY_LENGTH = 32
ENCRYPTION_KEY_LENGTH = 32

# HKDF labels. The raw encryption key is never used directly: one subkey encrypts, another
# makes synthetic IVs, so a weakness in one use cannot leak into the other.
_AES_KEY_INFO = b"together/contracts/aes-256-gcm/v1"
_IV_KEY_INFO = b"together/contracts/synthetic-iv/v1"

# Letters that NFKD leaves whole but that partner systems often write without the stroke or
# ligature (e.g. Soren for Søren); folding them lets the same person link across agencies.
_EXTRA_FOLDS = str.maketrans(
    {
        "ø": "o",
        "ł": "l",
        "đ": "d",
        "ħ": "h",
        "\u0131": "i",
        "æ": "ae",
        "œ": "oe",
        "þ": "th",
        "ð": "d",
    }
)
# \W is "not alphanumeric and not _" in Unicode; combining marks are not alphanumeric, so this
# drops accents (after NFKD) along with spaces and punctuation.
_NOT_LETTER_OR_DIGIT = re.compile(r"[\W_]+")
_NOT_ASCII_LETTER_OR_DIGIT = re.compile(r"[^a-z0-9]+")

ArrayLike: TypeAlias = "pa.Array | pa.ChunkedArray"
Items: TypeAlias = Sequence[bytes | None]


# The loops below hold the GIL; every this many values they let other threads run.
_CHUNK = 512


def _chunks(items: Items) -> Iterator[Items]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _yield_gil() -> None:
    # Threads checking other columns with Arrow need the GIL briefly between kernels; without
    # this they wait for the interpreter's switch interval (5 ms) each time.
    time.sleep(0)


class DecryptionError(Exception):
    """A ciphertext that is damaged, from another column, or made with another key."""


class _DataKey:
    """One data encryption key as used: its AES-GCM subkey and its synthetic-IV subkey."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != ENCRYPTION_KEY_LENGTH:
            raise ValueError(f"the encryption key must be {ENCRYPTION_KEY_LENGTH} bytes")
        self.aead = AESGCM(_derive(key, _AES_KEY_INFO))
        self.iv_key = _derive(key, _IV_KEY_INFO)


def ciphertext_key_id(token: bytes) -> int:
    """The id of the key a ciphertext was made with (format 1 means the original key).

    Raises ``DecryptionError`` for bytes that are not a ciphertext of this platform.
    """
    if len(token) >= 1 + IV_LENGTH + TAG_LENGTH and token[0] == CIPHERTEXT_VERSION:
        return ORIGINAL_KEY_ID
    if (
        len(token) >= 1 + KEY_ID_LENGTH + IV_LENGTH + TAG_LENGTH
        and token[0] == KEYED_CIPHERTEXT_VERSION
    ):
        return int.from_bytes(token[1 : 1 + KEY_ID_LENGTH], "big")
    raise DecryptionError("not a ciphertext of this platform")


def _header(key_id: int) -> bytes:
    # The original key keeps format 1, so data and snapshots written before key ids read and
    # compare as they did; every later key names itself.
    if key_id == ORIGINAL_KEY_ID:
        return bytes([CIPHERTEXT_VERSION])
    return bytes([KEYED_CIPHERTEXT_VERSION]) + key_id.to_bytes(KEY_ID_LENGTH, "big")


class _KeyedHash:
    """HMAC-SHA256 of ``prefix + value`` with the key and prefix absorbed once.

    The standard ``hmac`` module rebuilds the padded key state for every message; copying a
    precomputed state is several times faster, which matters at hundreds of thousands of
    distinct values per upload. This is RFC 2104 exactly (tests compare it with ``hmac``).
    """

    _BLOCK = 64

    def __init__(self, key: bytes, prefix: bytes) -> None:
        if len(key) > self._BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(self._BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._inner.update(prefix)
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, value: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(value)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hexdigests(self, items: Items) -> list[str | None]:
        # One loop with everything bound locally: this runs once per distinct value of an
        # upload, so call overhead is a real share of the cost.
        inner_copy, outer_copy = self._inner.copy, self._outer.copy
        result: list[str | None] = []
        append = result.append
        for chunk in _chunks(items):
            for item in chunk:
                if item is None:
                    append(None)
                    continue
                inner = inner_copy()
                inner.update(item)
                outer = outer_copy()
                outer.update(inner.digest())
                append(outer.hexdigest())
            _yield_gil()
        return result


def _as_array(values: ArrayLike) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 0:
            return pa.array([], values.type)
        return values.combine_chunks()
    return values


def _text(values: pa.Array) -> pa.Array:
    """The array as UTF-8 text (dictionary arrays keep their encoding)."""
    if pa.types.is_dictionary(values.type):
        dictionary = values.dictionary
        if not pa.types.is_string(dictionary.type):
            dictionary = pc.cast(dictionary, pa.string())
        return pa.DictionaryArray.from_arrays(values.indices, dictionary)
    if not pa.types.is_string(values.type):
        return pc.cast(values, pa.string())
    return values


def _encoded(values: pa.Array) -> pa.DictionaryArray:
    if pa.types.is_dictionary(values.type):
        return values
    return pc.dictionary_encode(values)


def _as_bytes(values: pa.Array) -> list[bytes | None]:
    if not pa.types.is_binary(values.type):
        # Viewing text as bytes is free; encoding each Python string again is not.
        values = values.cast(pa.binary())
    items: list[bytes | None] = values.to_pylist()
    return items


# Most values one memo keeps (see DistinctMemo.resolve).
MEMO_MAX_VALUES = 1 << 18


class DistinctMemo:
    """Results already computed for earlier batches of one upload, looked up with Arrow.

    The same people recur across the batches of an upload; computing their pseudonyms and
    ciphertexts once per upload instead of once per batch saves most of the cryptography.
    One memo per column and operation, owned by one upload (never shared between requests).
    """

    def __init__(self) -> None:
        self._values: pa.Array | None = None
        self._results: pa.Array | None = None

    def _positions(self, distinct: pa.Array) -> pa.Array:
        """Per value of ``distinct``, its position in the memo (null when not held).

        The memo (up to ``MEMO_MAX_VALUES``) is looked up in a hash of the batch's few distinct
        values, not the other way round: hashing the whole memo again for every batch cost
        more than the cryptography the memo saves.
        """
        assert self._values is not None
        found = pc.index_in(self._values, value_set=distinct)
        held = pc.is_valid(found)
        at = np.full(len(distinct), -1, dtype=np.int64)
        at[pc.filter(found, held).to_numpy()] = pc.indices_nonzero(held).to_numpy()
        return pa.array(at, mask=at < 0)

    def resolve(
        self,
        distinct: pa.Array,
        compute: Callable[[pa.Array], pa.Array],
    ) -> pa.Array:
        """Results aligned with ``distinct``, computing only values not seen before."""
        if self._values is None or self._results is None:
            results = compute(distinct)
            valid = pc.is_valid(distinct)
            self._values = pc.filter(distinct, valid)
            self._results = pc.filter(results, valid)
            return results
        positions = self._positions(distinct)
        unseen = pc.and_(pc.is_null(positions), pc.is_valid(distinct))
        new_values = pc.filter(distinct, unseen)
        if not len(new_values):
            return pc.take(self._results, positions)
        new_results = compute(new_values)
        # New values go to the end of the memo in the order they appear in `distinct`.
        rank = pc.subtract(pc.cumulative_sum(pc.cast(unseen, pa.int64())), 1)
        appended = pc.add(rank, len(self._values))
        positions = pc.if_else(unseen, appended, pc.cast(positions, pa.int64()))
        values = pa.concat_arrays([self._values, new_values])
        results = pa.concat_arrays([self._results, new_results])
        answer = pc.take(results, positions)
        if len(values) > MEMO_MAX_VALUES:
            # Bounded: each batch looks the memo up (a hash of all of it) and extends it (a
            # copy), so an unbounded memo makes a large upload quadratic in time and memory.
            # Starting again from this batch keeps the values that recur nearby.
            valid = pc.is_valid(distinct)
            values, results = pc.filter(distinct, valid), pc.filter(answer, valid)
        self._values, self._results = values, results
        return answer


def map_distinct(
    values: ArrayLike,
    function: Callable[[list[Any]], Sequence[Any]],
    result_type: pa.DataType,
    *,
    as_bytes: bool = False,
    dictionary: bool = False,
    memo: DistinctMemo | None = None,
) -> pa.Array:
    """``function`` applied to the list of distinct values, its results spread over the rows.

    ``function`` gets a list (nulls included as None) and returns one result per item. A
    dictionary array is used as it comes (its dictionary may hold nulls or repeats; both are
    harmless), so a caller that already encoded a column does not pay for it twice. With
    ``dictionary=True`` the result stays a dictionary array (results + row indices), for a
    caller that spreads it over the rows elsewhere (e.g. on another thread).
    """
    encoded = _encoded(_as_array(values))

    def compute(distinct: pa.Array) -> pa.Array:
        items = _as_bytes(distinct) if as_bytes else distinct.to_pylist()
        return pa.array(function(items), type=result_type)

    if memo is None:
        results = compute(encoded.dictionary)
    else:
        results = memo.resolve(encoded.dictionary, compute)
    return _spread(results, encoded.indices, dictionary)


def _spread(results: pa.Array, indices: pa.Array, dictionary: bool) -> pa.Array:
    if dictionary:
        return pa.DictionaryArray.from_arrays(indices, results)
    return pc.take(results, indices)


def normalise_name(value: str) -> str:
    """A name folded for matching: case, accents, spaces and punctuation do not count.

    ``O'Brien``, ``obrien`` and `` O BRIEN `` agree, as do ``Zoë`` and ``Zoe``.
    """
    if value.isascii():
        return _NOT_ASCII_LETTER_OR_DIGIT.sub("", value.lower())
    decomposed = unicodedata.normalize("NFKD", value)
    # Case folding can produce characters that decompose further (and the reverse), so fold
    # between two decompositions.
    folded = unicodedata.normalize("NFKD", decomposed.casefold().translate(_EXTRA_FOLDS))
    return _NOT_LETTER_OR_DIGIT.sub("", folded)


def _fold(names: list[str | None]) -> list[str | None]:
    # A name of only punctuation folds to nothing; it must not link unrelated people.
    return [None if name is None else normalise_name(name) or None for name in names]


def _encoded_dates(dob: pa.Array) -> pa.DictionaryArray:
    """Dates of birth, encoded, with a dictionary of 'YYYY-MM-DD' text.

    Text must already be a real ISO date; it is round-tripped through date32 so that only
    canonical dates take part in keys.
    """
    encoded = _encoded(dob)
    dictionary = encoded.dictionary
    if pa.types.is_string(dictionary.type) or pa.types.is_large_string(dictionary.type):
        dictionary = pc.cast(pc.utf8_trim_whitespace(dictionary), pa.date32())
    elif pa.types.is_timestamp(dictionary.type) or pa.types.is_date64(dictionary.type):
        dictionary = pc.cast(dictionary, pa.date32())
    if not pa.types.is_date32(dictionary.type):
        raise TypeError(f"a date of birth must be a date or ISO text, not {dob.type}")
    return pa.DictionaryArray.from_arrays(encoded.indices, pc.cast(dictionary, pa.string()))


def _positions(encoded: pa.DictionaryArray) -> pa.Array:
    return pc.cast(encoded.indices, pa.int64())


class Protector:
    """Pseudonymisation and encryption with the platform's keys."""

    def __init__(self, hmac_key: bytes, encryption_key: bytes | EncryptionKeys) -> None:
        """``encryption_key`` is one key (the original, id 0) or the platform's keys by id:
        new ciphertext is made with the current one, and any held key reads its own."""
        if not isinstance(hmac_key, bytes) or len(hmac_key) < MIN_HMAC_KEY_LENGTH:
            raise ValueError(f"the HMAC key must be at least {MIN_HMAC_KEY_LENGTH} bytes")
        if not isinstance(encryption_key, EncryptionKeys):
            encryption_key = EncryptionKeys(ORIGINAL_KEY_ID, {ORIGINAL_KEY_ID: encryption_key})
        self._hmac_key = hmac_key
        self._data_keys = {key_id: _DataKey(key) for key_id, key in encryption_key.keys.items()}
        self._key_id = encryption_key.current_id
        current = self._data_keys[self._key_id]
        self._aead = current.aead
        self._iv_key = current.iv_key
        self._header = _header(self._key_id)

    @property
    def encryption_key_id(self) -> int:
        """The id of the key new ciphertext is made with."""
        return self._key_id

    def __repr__(self) -> str:
        return "Protector(<keys hidden>)"

    # Pseudonyms

    def _hasher(self, domain: str) -> _KeyedHash:
        return _KeyedHash(self._hmac_key, (domain + SEPARATOR).encode())

    def pseudonymise(
        self,
        values: ArrayLike,
        *,
        domain: str,
        dictionary: bool = False,
        memo: DistinctMemo | None = None,
    ) -> pa.Array:
        """Keyed HMAC-SHA256 hex of ``domain + "\\x1f" + value`` for each value; nulls stay null.

        ``dictionary=True`` returns a dictionary array (as ``map_distinct``).
        """
        return map_distinct(
            _text(_as_array(values)),
            self._hasher(domain).hexdigests,
            pa.string(),
            as_bytes=True,
            dictionary=dictionary,
            memo=memo,
        )

    def pseudonymise_value(self, value: str, *, domain: str) -> str:
        """One pseudonym, e.g. to look up a police person id typed in by a Level 3 reader."""
        result = self._hasher(domain).hexdigests([value.encode()])[0]
        assert result is not None
        return result

    # Deterministic encryption

    def _encrypt_all(self, items: Items, aad: str) -> list[bytes | None]:
        aad_bytes = aad.encode()
        iv_hash = _KeyedHash(self._iv_key, aad_bytes + SEPARATOR.encode())
        synthetic_iv, seal = iv_hash.digest, self._aead.encrypt
        version = self._header
        result: list[bytes | None] = []
        append = result.append
        for chunk in _chunks(items):
            for item in chunk:
                if item is None:
                    append(None)
                    continue
                iv = synthetic_iv(item)[:IV_LENGTH]
                append(version + iv + seal(iv, item, aad_bytes))
            _yield_gil()
        return result

    def encrypt(
        self,
        values: ArrayLike,
        *,
        aad: str,
        dictionary: bool = False,
        memo: DistinctMemo | None = None,
    ) -> pa.Array:
        """AES-256-GCM with a synthetic IV: a header naming the key (format 1: version byte;
        format 2: version byte and 4-byte key id), 12-byte IV, ciphertext and tag.

        The IV is the first 12 bytes of HMAC(iv-subkey, aad + "\\x1f" + value), so equal values
        in one column encrypt equally (needed to encrypt once per distinct value, and to keep
        the column compressible) while the same value in another column does not. ``aad``
        (``<dataset>/<field>``) is authenticated: a ciphertext moved elsewhere fails to decrypt.
        """
        return map_distinct(
            _text(_as_array(values)),
            lambda items: self._encrypt_all(items, aad),
            pa.binary(),
            as_bytes=True,
            dictionary=dictionary,
            memo=memo,
        )

    def encrypt_value(self, value: str, *, aad: str) -> bytes:
        result = self._encrypt_all([value.encode()], aad)[0]
        assert result is not None
        return result

    def _decrypt_all(self, tokens: Items, aad: str) -> list[str | None]:
        aad_bytes = aad.encode()
        result: list[str | None] = []
        for token in tokens:
            if token is None:
                result.append(None)
                continue
            key_id = ciphertext_key_id(token)
            data_key = self._data_keys.get(key_id)
            if data_key is None:
                raise DecryptionError(
                    f"ciphertext under encryption key {key_id}, which this platform does not "
                    "hold (retired, or from another installation)"
                )
            start = 1 if token[0] == CIPHERTEXT_VERSION else 1 + KEY_ID_LENGTH
            iv = token[start : start + IV_LENGTH]
            try:
                plaintext = data_key.aead.decrypt(iv, token[start + IV_LENGTH :], aad_bytes)
            except InvalidTag:
                raise DecryptionError(
                    "ciphertext does not authenticate (wrong column, wrong key or damaged)"
                ) from None
            result.append(plaintext.decode())
        return result

    def decrypt(self, values: ArrayLike, *, aad: str) -> pa.Array:
        """The text that ``encrypt`` was given; raises ``DecryptionError`` for any bad value."""
        return map_distinct(
            values, lambda tokens: self._decrypt_all(tokens, aad), pa.string(), as_bytes=True
        )

    def decrypt_value(self, token: bytes, *, aad: str) -> str:
        result = self._decrypt_all([token], aad)[0]
        assert result is not None
        return result

    # Person keys

    def person_keys(
        self,
        surname: ArrayLike,
        forename: ArrayLike,
        dob: ArrayLike,
        *,
        dictionary: bool = False,
        memo: DistinctMemo | None = None,
    ) -> pa.Array:
        """HMAC-SHA256 hex (domain "person") of normalised surname | forename | ISO dob.

        Null when any part is null, or when a name has nothing left after normalisation (a
        name of only punctuation would otherwise link unrelated people born on one day).
        Dictionary arrays are welcome and save an encoding each.
        """
        surnames = _encoded(_text(_as_array(surname)))
        forenames = _encoded(_text(_as_array(forename)))
        dobs = _encoded_dates(_as_array(dob))
        folded_surnames = pa.array(_fold(surnames.dictionary.to_pylist()), pa.string())
        folded_forenames = pa.array(_fold(forenames.dictionary.to_pylist()), pa.string())
        n_dobs = len(dobs.dictionary)
        span = len(folded_forenames) * n_dobs
        if len(folded_surnames) * span >= 2**62:  # pragma: no cover - beyond any real upload
            raise ValueError("too many distinct names and dates of birth in one batch")
        # Each row's triple is one integer made of its three dictionary positions, so finding
        # the distinct triples hashes integers instead of a million joined strings.
        combined = pc.add(
            pc.add(
                pc.multiply(_positions(surnames), span),
                pc.multiply(_positions(forenames), n_dobs),
            ),
            _positions(dobs),
        )
        triples = pc.dictionary_encode(combined)
        codes = triples.dictionary
        if len(codes):
            surname_at = pc.divide(codes, span)
            rest = pc.subtract(codes, pc.multiply(surname_at, span))
            forename_at = pc.divide(rest, n_dobs)
            dob_at = pc.subtract(rest, pc.multiply(forename_at, n_dobs))
            # Folded names hold only letters and digits, so "|" cannot come from a name; a
            # null part (empty after folding) makes the whole message null.
            messages = pc.binary_join_element_wise(
                pc.take(folded_surnames, surname_at),
                pc.take(folded_forenames, forename_at),
                pc.take(dobs.dictionary, dob_at),
                "|",
            )
        else:
            messages = pa.array([], pa.string())
        hasher = self._hasher(PERSON_DOMAIN)

        def compute(distinct: pa.Array) -> pa.Array:
            return pa.array(hasher.hexdigests(_as_bytes(distinct)), pa.string())

        messages = messages.cast(pa.string())
        keys = compute(messages) if memo is None else memo.resolve(messages, compute)
        return _spread(keys, triples.indices, dictionary)

    def person_key(self, surname: str, forename: str, dob: date | str) -> str | None:
        """One person key, for looking a person up; same rules as ``person_keys``."""
        result = self.person_keys(
            pa.array([surname], pa.string()),
            pa.array([forename], pa.string()),
            pa.array([dob], pa.date32() if isinstance(dob, date) else pa.string()),
        )
        value: str | None = result[0].as_py()
        return value


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)
