"""Key material: where it comes from and how development keys are made.

Keys live outside the metadata database: in a key file (mode 0600) or in environment variables
supplied by the deployment's secret store. In development the platform writes its own key file
in the data folder on first use so that `make run` needs no set-up.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from services.kit.errors import ConfigurationError
from services.kit.files import fsync_dir, write_secret
from services.kit.settings import Settings

ORIGINAL_KEY_ID = 0
"""The id of the key file's first encryption key (``encryption_key``): ciphertext written before
keys had ids (format 1) is under it."""


@dataclass(frozen=True)
class EncryptionKeys:
    """Every data encryption key the platform holds, by id, and the one new writes use.

    Older keys stay for reading: a dataset version written under one is read until it is
    re-written or dropped by its retention. ``together keys rotate`` adds a key and makes it
    current; ``together keys retire`` removes one nothing is stored under.
    """

    current_id: int
    keys: Mapping[int, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.current_id not in self.keys:
            raise ConfigurationError(f"current encryption key {self.current_id} is not in the file")

    @property
    def current(self) -> bytes:
        return self.keys[self.current_id]


@dataclass(frozen=True)
class KeyMaterial:
    hmac_key: bytes
    encryption_key: EncryptionKeys
    jwt_private_key_pem: bytes


def generate_key_document() -> dict[str, str]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "hmac_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "encryption_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "jwt_private_key": pem,
    }


def write_key_file(path: Path) -> None:
    write_secret(path, json.dumps(generate_key_document(), indent=2).encode("utf-8"))


def _decode(name: str, value: str, length: int | None) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ConfigurationError(f"{name} is not valid base64") from exc
    if length is not None and len(raw) != length:
        raise ConfigurationError(f"{name} must be {length} bytes (base64), got {len(raw)}")
    if len(raw) < 32:
        raise ConfigurationError(f"{name} must be at least 32 bytes")
    return raw


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def key_file_path(settings: Settings) -> Path | None:
    """The key file the platform reads: TOGETHER_KEY_FILE, or in development the data folder's."""
    if settings.key_file is None and settings.is_development:
        return settings.data_dir / "keys" / "keys.json"
    return settings.key_file


def load_keys(settings: Settings) -> KeyMaterial:
    document: dict[str, str] = {}
    key_file = settings.key_file
    if key_file is None and settings.is_development:
        key_file = settings.data_dir / "keys" / "keys.json"
        if not key_file.exists():
            # Another process may create it first: then read theirs.
            with contextlib.suppress(FileExistsError):
                write_key_file(key_file)
    if key_file is not None:
        try:
            document = json.loads(key_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read key file {key_file.name}") from exc
    hmac_value = _secret(settings.hmac_key) or document.get("hmac_key")
    enc_value = _secret(settings.encryption_key) or document.get("encryption_key")
    jwt_value = _secret(settings.jwt_private_key) or document.get("jwt_private_key")
    missing = [
        name
        for name, value in (
            ("hmac_key", hmac_value),
            ("encryption_key", enc_value),
            ("jwt_private_key", jwt_value),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(
            "missing key material: "
            + ", ".join(missing)
            + " (set TOGETHER_KEY_FILE or the TOGETHER_* key variables)"
        )
    assert hmac_value and enc_value and jwt_value
    return KeyMaterial(
        hmac_key=_decode("hmac_key", hmac_value, None),
        encryption_key=_encryption_keys(document, _decode("encryption_key", enc_value, 32)),
        jwt_private_key_pem=jwt_value.encode(),
    )


def _encryption_keys(document: Mapping[str, Any], original: bytes) -> EncryptionKeys:
    """The original key (id 0) and the keys added by rotation, with the current one's id."""
    keys = {ORIGINAL_KEY_ID: original}
    for entry in _rotated_entries(document):
        keys[entry["id"]] = _decode(f"encryption key {entry['id']}", entry["key"], 32)
    current = document.get("current_encryption_key", ORIGINAL_KEY_ID)
    if not isinstance(current, int):
        raise ConfigurationError("current_encryption_key must be a key id")
    return EncryptionKeys(current_id=current, keys=keys)


def _rotated_entries(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = document.get("encryption_keys", [])
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("id"), int)
        and 0 < entry["id"] < 2**32
        and isinstance(entry.get("key"), str)
        for entry in entries
    ):
        raise ConfigurationError("encryption_keys must be a list of {id, key, created}")
    ids = [entry["id"] for entry in entries]
    if len(set(ids)) != len(ids):
        raise ConfigurationError("encryption_keys holds one id twice")
    return entries


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read key file {path.name}") from exc
    if not isinstance(document, dict) or not document.get("encryption_key"):
        raise ConfigurationError(f"{path.name} holds no encryption key")
    return document


def _replace_document(path: Path, document: Mapping[str, Any]) -> None:
    """The key file replaced at once and durably: a crash leaves the old file or the new one.

    The new text is written beside it with exclusive creation (so two rotations at once cannot
    both proceed: the second finds the file and stops), synced, then renamed over the old one.
    """
    pending = path.with_name(path.name + ".pending")
    write_secret(pending, json.dumps(document, indent=2).encode("utf-8"))
    try:
        os.replace(pending, path)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def key_file_ids(path: Path) -> list[dict[str, Any]]:
    """The encryption keys of a key file without their secrets: id, created, current."""
    document = _read_document(path)
    current = document.get("current_encryption_key", ORIGINAL_KEY_ID)
    rows: list[dict[str, Any]] = [
        {"id": ORIGINAL_KEY_ID, "created": None, "current": current == ORIGINAL_KEY_ID}
    ]
    for entry in _rotated_entries(document):
        rows.append(
            {"id": entry["id"], "created": entry.get("created"), "current": current == entry["id"]}
        )
    return rows


def rotate_encryption_key(path: Path) -> int:
    """Add a new data encryption key to the key file and make it current; returns its id.

    Earlier keys stay in the file: data written under them is still read. Running servers keep
    the keys they started with until they restart.
    """
    document = _read_document(path)
    entries = _rotated_entries(document)
    new_id = max([ORIGINAL_KEY_ID, *(entry["id"] for entry in entries)]) + 1
    entries.append(
        {
            "id": new_id,
            "key": base64.b64encode(secrets.token_bytes(32)).decode(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    _replace_document(
        path, {**document, "encryption_keys": entries, "current_encryption_key": new_id}
    )
    return new_id


def retire_encryption_key(path: Path, key_id: int) -> None:
    """Remove a rotated key that is no longer current. The caller has made sure that nothing
    stored is under it: once removed, its ciphertext can never be read again."""
    document = _read_document(path)
    entries = _rotated_entries(document)
    if key_id == document.get("current_encryption_key", ORIGINAL_KEY_ID):
        raise ConfigurationError(f"encryption key {key_id} is current; rotate first")
    if key_id == ORIGINAL_KEY_ID:
        raise ConfigurationError("the original encryption key cannot be removed")
    kept = [entry for entry in entries if entry["id"] != key_id]
    if len(kept) == len(entries):
        raise ConfigurationError(f"no encryption key {key_id} in {path.name}")
    _replace_document(path, {**document, "encryption_keys": kept})
