"""Which data encryption keys stored data is under: what decides whether a key may be retired.

Every Parquet object of the store is read, through services/storage/objects.py (the current
and older versions of every dataset, and any object a crash left behind: a superset, so a key
still needed is never reported free). Only the encrypted columns are read (``<field>_enc``,
binary), once per distinct value.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.contracts.protection import DecryptionError, ciphertext_key_id
from services.storage.objects import ObjectStore

_ENCRYPTED_SUFFIX = "_enc"


def _encrypted_columns(schema: pa.Schema) -> list[str]:
    return [
        item.name
        for item in schema
        if item.name.endswith(_ENCRYPTED_SUFFIX)
        and (pa.types.is_binary(item.type) or pa.types.is_large_binary(item.type))
    ]


def _key_ids(column: pa.ChunkedArray) -> set[int]:
    found: set[int] = set()
    for token in pc.unique(column).to_pylist():
        if token is None:
            continue
        try:
            found.add(ciphertext_key_id(token))
        except DecryptionError:
            continue  # not ciphertext of this platform: no key can read it anyway
    return found


def encryption_keys_in_use(store: ObjectStore, prefix: str = "") -> Counter[int]:
    """Key id -> the number of Parquet objects (under `prefix`) holding ciphertext under it."""
    usage: Counter[int] = Counter()
    for item in store.list(prefix):
        if not item.key.endswith(".parquet"):
            continue
        path = store.local_path(item.key)
        names = _encrypted_columns(pq.read_schema(path))
        if not names:
            continue
        table = pq.read_table(path, columns=names)
        ids: set[int] = set()
        for name in names:
            ids |= _key_ids(table.column(name))
        usage.update(ids)
    return usage
