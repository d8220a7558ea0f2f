"""Key material: where it comes from and how development keys are made.

Keys live outside the metadata database: in a key file (mode 0600) or in environment variables
supplied by the deployment's secret store. In development the platform writes its own key file
in the data folder on first use so that `make run` needs no set-up.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from services.kit.errors import ConfigurationError
from services.kit.files import write_secret
from services.kit.settings import Settings


@dataclass(frozen=True)
class KeyMaterial:
    hmac_key: bytes
    encryption_key: bytes
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
        encryption_key=_decode("encryption_key", enc_value, 32),
        jwt_private_key_pem=jwt_value.encode(),
    )
